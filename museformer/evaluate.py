"""``instruct-eval``: how human is a set of rendered performances? (definitions: docs/evaluation.md)

    instruct-eval PRED_DIR REF_DIR [--name NAME] [--baseline NAME=DIR ...] [--pairing pooled|per-reference]
                  [--out DIR] [--skip-bad]
    instruct-eval --tokens TOK_DIR --checkpoint CKPT [--split test] [--max-pieces P] [--per-piece N]
                  [--max-bars B] [--no-markings] [--plain-scores [VIEW]]

Pianist Transformer's distribution metrics (velocity, key-release duration, IOI, sustain-pedal patterns;
JS distance base 2 and intersection) of every ``*.mid`` under PRED_DIR, and of each baseline directory,
against every ``*.mid`` under REF_DIR (the human performances). Writes ``results.md``, ``results.json``
and ``histograms.png`` under --out. This module is pure music code (numpy, scipy, miditoolkit,
matplotlib): it imports neither torch nor fairseq (``--tokens`` hands over to ``museformer.eval_split``).

Pairing: ``pooled`` (default) pools every file of a set once: the Pianist Transformer benchmark README's
table ("every human file against every file of a method"). ``per-reference`` follows Pianist Transformer's
``get_evaluate_list``: each reference file ``{piece}-{k}.mid`` is paired with the prediction
``{piece}.mid``, so a prediction counts once for each human performance of its piece (the paper's
weighting).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from museformer.decoding import DecodeConfig
from instruct_tokenizer.score import PLAIN_VIEWS
from instruct_tokenizer.metrics import (FEATURES, BINS, MidiReadError, NoteFeatures, compare, fmt, midi_features,
                                        pooled_histograms)

COLUMNS = [f"{f}_js" for f in FEATURES] + ["overall_js", "overall_inter"]
PAIRINGS = ("pooled", "per-reference")
Item = Union[str, Path, NoteFeatures]


class EvalInputError(Exception):
    """A bad input file or directory; the message names it and says why."""


def midi_files(path: Union[str, Path]) -> List[Path]:
    """The ``*.mid``/``*.midi`` files under a directory (sorted), or the file itself."""
    p = Path(path)
    if p.is_dir():
        return sorted(set(p.rglob("*.mid")) | set(p.rglob("*.midi")))
    return [p]


def read_set(paths: Sequence[Item], skip_bad: bool = False, report: Callable[[str], None] = print,
             cache: Optional[Dict[str, NoteFeatures]] = None) -> List[NoteFeatures]:
    """Features of every file (NoteFeatures pass through). A bad file raises EvalInputError naming it,
    or with ``skip_bad`` is reported on one line and left out."""
    out = []
    for p in paths:
        if isinstance(p, NoteFeatures):
            out.append(p)
            continue
        key = str(Path(p).resolve())
        if cache is not None and key in cache:
            out.append(cache[key])
            continue
        try:
            f = midi_features(p)
        except MidiReadError as e:
            if not skip_bad:
                raise EvalInputError(f"{p}: {e}") from None
            report(f"skipped {p}: {e}")
            continue
        if cache is not None:
            cache[key] = f
        out.append(f)
    return out


def piece_of(path: Union[str, Path]) -> str:
    """Piece key of a reference file name: ``12-3.mid`` -> ``12`` (the stem before its last '-')."""
    stem = Path(path).stem
    return stem.rsplit("-", 1)[0] if "-" in stem else stem


def pair_per_reference(pred: Sequence[Path], human: Sequence[Path]) -> List[Path]:
    """Pianist Transformer's weighting: for every reference ``{piece}-{k}.mid`` the prediction
    ``{piece}.mid`` (one entry per reference file; references without a prediction are left out)."""
    by_stem = {Path(p).stem: Path(p) for p in pred}
    missing = sorted({piece_of(h) for h in human} - set(by_stem))
    if len(missing) == len({piece_of(h) for h in human}):
        raise EvalInputError(f"no prediction is named like a reference piece (e.g. {piece_of(human[0])}.mid)")
    return [by_stem[piece_of(h)] for h in human if piece_of(h) in by_stem]


def evaluate_sets(rows: Dict[str, Sequence[Item]], human: Sequence[Item], skip_bad: bool = False,
                  report: Callable[[str], None] = print) -> Dict[str, Dict]:
    """Distribution metrics of each row (a list of MIDI paths or NoteFeatures) against the pooled human
    set. Returns {"human": {...}, name: {"metrics", "histograms", "files"}} in row order; a row with
    no readable file is left out. Files read once (shared cache across rows)."""
    cache: Dict[str, NoteFeatures] = {}
    ref_feats = read_set(human, skip_bad, report, cache)
    if not ref_feats:
        raise EvalInputError("the reference set has no readable MIDI file")
    ref = pooled_histograms(ref_feats)
    results: Dict[str, Dict] = {"human": {"histograms": ref, "files": len(ref_feats)}}
    for name, items in rows.items():
        feats = read_set(items, skip_bad, report, cache)
        if not feats:
            report(f"row {name!r}: no readable MIDI file, left out")
            continue
        hist = pooled_histograms(feats)
        results[name] = {"metrics": compare(hist, ref), "histograms": hist, "files": len(feats)}
    return results


def markdown_table(results: Dict[str, Dict], extra: Optional[Dict[str, Dict[str, float]]] = None,
                   reference: Optional[Dict[str, Sequence[float]]] = None) -> str:
    """One row per method: JS distance per feature, overall JS, overall intersection; ``extra`` adds
    columns (e.g. per-note r, n/a where undefined); ``reference`` adds "(ref x.xxx)" rows below a method,
    e.g. a published table, as {row name: (velocity, duration, IOI, pedal, overall JS, overall inter)}."""
    extra_cols = sorted({c for v in (extra or {}).values() for c in v})
    head = ["method vs human"] + [c.replace("_js", " JS").replace("_inter", " intersection").replace("ioi", "IOI")
                                  for c in COLUMNS] + extra_cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        if "metrics" not in res:
            continue
        cells = [fmt(res["metrics"][c]) for c in COLUMNS]
        cells += [fmt((extra or {}).get(name, {}).get(c)) for c in extra_cols]
        lines.append(f"| {name} ({res['files']} files) | " + " | ".join(cells) + " |")
        if reference and name in reference:
            ref = list(reference[name]) + [None] * (len(COLUMNS) - len(reference[name]))
            lines.append(f"| ↳ published | " + " | ".join(fmt(x) for x in ref) + " |" + " |" * len(extra_cols))
    return "\n".join(lines) + "\n"


def plot_histograms(results: Dict[str, Dict], path: Path, rows: Optional[Sequence[str]] = None) -> None:
    """The four pooled histograms, human first, then the given rows (default: all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    names = ["human"] + [n for n in (rows if rows is not None else results) if n != "human" and n in results]
    for ax, feat in zip(axes, FEATURES):
        bins, (lo, hi) = BINS[feat]
        x = lo + (np.arange(bins) + 0.5) * (hi - lo) / bins
        for name in names:
            h = results[name]["histograms"][feat]
            if feat == "pedal":
                ax.step(np.arange(bins), h, where="mid", label=name, lw=2 if name == "human" else 1)
            else:
                ax.plot(x, h, label=name, lw=2 if name == "human" else 1, color="k" if name == "human" else None)
        ax.set_title(feat if feat != "ioi" else "IOI")
        ax.set_xlabel({"velocity": "MIDI velocity", "duration": "key-release duration (ms)", "ioi": "IOI (ms)",
                       "pedal": "pattern (bit 3 = at onset)"}[feat])
        ax.set_ylabel("probability")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(results: Dict[str, Dict], extra: Optional[Dict[str, Dict]] = None) -> Dict:
    out = {}
    for k, v in results.items():
        row = {"files": v["files"]}
        if "metrics" in v:
            row["metrics"] = v["metrics"]
        if extra and k in extra:
            row["extra"] = {c: (None if x is None or not np.isfinite(x) else x) for c, x in extra[k].items()}
        out[k] = row
    return out


def write_outputs(results: Dict[str, Dict], out: Path, extra=None, title: str = "", reference=None,
                  plot_rows: Optional[Sequence[str]] = None, meta: Optional[Dict] = None) -> str:
    """results.md (markdown table), results.json and histograms.png under ``out``; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, extra, reference)
    (out / "results.md").write_text((f"# {title}\n\n" if title else "") + table)
    payload = {"rows": to_json(results, extra), **(meta or {})}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_histograms(results, out / "histograms.png", plot_rows)
    return table


def _error(msg: str) -> int:
    print(f"instruct-eval: error: {msg}", file=sys.stderr)
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="instruct-eval", description=__doc__.splitlines()[0])
    ap.add_argument("pred", nargs="?", help="directory (or file) of rendered MIDI")
    ap.add_argument("ref", nargs="?", help="directory of human performance MIDI")
    ap.add_argument("--name", default="model", help="row name of PRED")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=DIR",
                    help="more rows, e.g. deadpan=score_midis/ (repeatable)")
    ap.add_argument("--pairing", choices=PAIRINGS, default="pooled",
                    help="pooled: every file once (benchmark README); per-reference: prediction {piece}.mid "
                         "once per reference {piece}-{k}.mid (Pianist Transformer's evaluate.py)")
    ap.add_argument("--skip-bad", action="store_true", help="leave out unreadable files instead of stopping")
    ap.add_argument("--out", default="outputs/eval", help="output directory")
    ap.add_argument("--tokens", default=None, metavar="DIR",
                    help="evaluate on a split of this instruct-tokenize build instead (rendered with --checkpoint)")
    ap.add_argument("--split", default="test", help="split of --tokens to evaluate")
    ap.add_argument("--checkpoint", default=None,
                    help="model checkpoint for --tokens (default: the released model, as instruct-render's)")
    ap.add_argument("--data", default=None, help="fairseq data dir (dictionaries) for --checkpoint")
    ap.add_argument("--max-pieces", type=int, default=None, help="evaluate at most this many pieces")
    ap.add_argument("--per-piece", type=int, default=None, metavar="N",
                    help="--tokens: evaluate only the first N performances of each piece")
    ap.add_argument("--max-bars", type=int, default=None, metavar="B",
                    help="--tokens: only the first B bars of each performance (every row and the human reference)")
    ap.add_argument("--no-markings", action="store_true", help="--tokens: leave out the markings baseline row")
    ap.add_argument("--plain-scores", nargs="?", const="markings-dropped", default=None, choices=PLAIN_VIEWS,
                    metavar="VIEW",
                    help="--tokens: render each piece from its score without the MusicXML markings (the notated "
                         "tempo mark kept; without one, the estimate from the content); no markings row. VIEW: "
                         "markings-dropped (the default: the notated lengths), score-midi (as a notation "
                         "program's score MIDI export writes it: staccato notes a half, staccatissimo a third of "
                         "their length; instruct_tokenizer.score.as_score_midi) or score-midi-dynamics (that, with "
                         "the dynamic levels its velocities state read back, as instruct-render reads them)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="--tokens: sampling temperature of the model row (1.0: the instruct-render default)")
    DecodeConfig.add_args(ap, profile="render")  # --tokens: the model row's decoding rules, as instruct-render's
    ap.add_argument("--generator", default="lean", choices=["lean", "fairseq"],
                    help="--tokens: sampling loop of the model row, as instruct-render's (lean, or fairseq's "
                         "SequenceGenerator: the same tokens, slower)")
    a = ap.parse_args(argv)
    if a.tokens:
        return eval_tokens(a)
    if not (a.pred and a.ref):
        ap.error("PRED and REF are required (or --tokens DIR --checkpoint CKPT)")
    sets = {a.name: a.pred}
    for item in a.baseline:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return _error(f"--baseline {item!r}: expected NAME=DIR")
        sets[name] = path
    files = {}
    for name, path in list(sets.items()) + [("reference", a.ref)]:
        if not Path(path).exists():
            return _error(f"{path}: no such file or directory")
        files[name] = midi_files(path)
        if not files[name]:
            return _error(f"{path}: no .mid files")
    human = files.pop("reference")
    try:
        if a.pairing == "per-reference":
            files = {name: pair_per_reference(paths, human) for name, paths in files.items()}
        results = evaluate_sets(files, human, skip_bad=a.skip_bad)
    except EvalInputError as e:
        return _error(str(e))
    meta = {"pairing": a.pairing, "reference": str(a.ref), "sets": {k: str(v) for k, v in sets.items()}}
    table = write_outputs(results, Path(a.out), title=f"Distribution metrics vs human ({a.pairing})", meta=meta)
    print(table)
    print(f"wrote {a.out}/results.md, results.json, histograms.png")
    return 0


def eval_tokens(a: argparse.Namespace) -> int:
    """``--tokens``: render a tokenized split with a checkpoint and evaluate it (museformer.eval_split)."""
    from museformer.eval_split import SplitSourceError, evaluate_split, markdown
    from museformer.render import DEFAULT_CHECKPOINT, Renderer, RenderError, Sampling

    try:
        renderer = Renderer.from_checkpoint(a.checkpoint or str(DEFAULT_CHECKPOINT), a.data,
                                            decode=DecodeConfig.from_args(a))
    except RenderError as e:
        return _error(str(e))
    for flag, value in (("--per-piece", a.per_piece), ("--max-bars", a.max_bars), ("--max-pieces", a.max_pieces)):
        if value is not None and value < 1:
            return _error(f"{flag} must be at least 1")
    if not a.temperature > 0:
        return _error("--temperature must be > 0")
    if not (Path(a.tokens) / "manifest.jsonl").is_file():
        return _error(f"{a.tokens}: no manifest.jsonl (not an instruct-tokenize build)")
    try:
        results = evaluate_split(a.tokens, renderer, a.out, a.split,
                                 Sampling(seed=a.seed, temperature=a.temperature, generator=a.generator), a.max_pieces,
                                 per_piece=a.per_piece, max_bars=a.max_bars, markings=not a.no_markings,
                                 plain=a.plain_scores)
    except SplitSourceError as e:
        return _error(str(e))
    out = Path(a.out)
    table = markdown(results)
    (out / "results.md").write_text(f"# {a.split} split of {a.tokens}\n\n" + table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"wrote {out}/results.md, results.json, curves-*.png, midi/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
