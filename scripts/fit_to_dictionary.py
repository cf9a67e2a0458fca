"""Map a tokenized build onto an older model's dictionary, so that the model can be fine-tuned on it
without new embedding rows.

Later builds quantise some values more finely than the released model's dictionary holds (``Time`` in
8 ms steps past +-160 ms, wider pedal offsets: ``docs/tokens.md``). A ``Type_Value`` token that the
dictionary lacks becomes the dictionary's nearest value of the same type (numeric values only); any
other missing token is an error. The files are rewritten beside the originals as ``{prefix}.score`` /
``{prefix}.perf`` with the dictionary copied as ``dict.txt``; the originals are left as they are.

    python scripts/fit_to_dictionary.py BUILD DICT --out DIR

DICT is a fairseq ``dict.txt`` or a released model file (``release_checkpoint.py`` embeds its dictionary),
read through fairseq's checkpoint loader (torch's ``weights_only`` loader, as ``instruct-render`` loads it).
"""
import argparse
import bisect
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from instruct_tokenizer.build import SPLITS


class NoCounterpart(ValueError):
    """A token that the dictionary lacks and has no value of the same type for."""



def numeric_values(tokens: Sequence[str]) -> Dict[str, List[Tuple[float, str]]]:
    """Per token type, the dictionary's (numeric value, token) pairs, sorted by value."""
    values: Dict[str, List[Tuple[float, str]]] = defaultdict(list)
    for t in tokens:
        kind, _, value = t.partition("_")
        try:
            values[kind].append((float(value), t))
        except ValueError:
            continue
    return {k: sorted(v) for k, v in values.items()}


def nearest_token(token: str, values: Dict[str, List[Tuple[float, str]]]) -> Optional[str]:
    """The dictionary's token of the same type with the nearest value, or None."""
    kind, _, value = token.partition("_")
    try:
        x = float(value)
    except ValueError:
        return None
    grid = values.get(kind)
    if not grid:
        return None
    i = bisect.bisect_left(grid, (x, ""))
    return min(grid[max(i - 1, 0):i + 1], key=lambda g: abs(g[0] - x))[1]


def dictionary_lines(path: str) -> List[str]:
    """The dictionary's lines: a ``dict.txt``, or the one embedded in a released model file."""
    if not path.endswith(".pt"):
        return Path(path).read_text().splitlines(keepends=True)
    from fairseq import checkpoint_utils

    import museformer  # noqa: F401  (registers the architectures the checkpoint's args name)

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    if "dictionary" not in state:
        raise ValueError("no embedded dictionary (a training checkpoint: pass its data-bin dict.perf.txt)")
    return state["dictionary"].splitlines(keepends=True)


def fit_file(src: Path, dst: Path, have: set, values: Dict[str, List[Tuple[float, str]]],
             mapping: Dict[str, str], moved: Counter) -> None:
    """Write ``src`` to ``dst`` with every token the dictionary lacks moved to its nearest value;
    ``mapping`` and ``moved`` collect what was moved. Raises NoCounterpart."""
    with open(src) as f, open(dst, "w") as g:
        for line in f:
            toks = line.split()
            for i, t in enumerate(toks):
                if t in have:
                    continue
                if t not in mapping:
                    near = nearest_token(t, values)
                    if near is None:
                        raise NoCounterpart(f"{src}: token {t} has no counterpart")
                    mapping[t] = near
                moved[t.partition("_")[0]] += 1
                toks[i] = mapping[t]
            g.write(" ".join(toks) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build", help="instruct-tokenize build output ({split}.score/.perf)")
    p.add_argument("dictionary", help="the older model's dict.txt (fairseq format) or its released .pt file")
    p.add_argument("--out", required=True, help="output folder (must differ from the build)")
    a = p.parse_args(argv)
    build, out = Path(a.build), Path(a.out)
    if build.resolve() == out.resolve():
        print(f"fit_to_dictionary: error: {out}: the output must not be the build", file=sys.stderr)
        return 2
    try:
        lines = dictionary_lines(a.dictionary)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"fit_to_dictionary: error: {a.dictionary}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    known = [line.split()[0] for line in lines if line.strip()]
    have, values = set(known), numeric_values(known)
    mapping: Dict[str, str] = {}
    moved: Counter = Counter()
    out.mkdir(parents=True, exist_ok=True)
    sources = [build / f"{split}.{side}" for split in SPLITS for side in ("score", "perf")]
    done: List[Tuple[Path, Path]] = []  # (temporary, final): renamed only once every file is written
    try:
        for src in (p for p in sources if p.is_file()):
            done.append((out / f".{src.name}.tmp", out / src.name))
            fit_file(src, done[-1][0], have, values, mapping, moved)
    except NoCounterpart as e:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        print(f"fit_to_dictionary: error: {e} in {a.dictionary}", file=sys.stderr)
        return 1
    for tmp, final in done:
        tmp.replace(final)
    (out / "dict.txt").write_text("".join(lines))
    for extra in ("manifest.jsonl", "summary.json"):
        if (build / extra).is_file():
            shutil.copyfile(build / extra, out / extra)
    print(f"fit_to_dictionary: {sum(moved.values())} tokens moved to the nearest value "
          f"({dict(moved)}); {len(mapping)} distinct -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
