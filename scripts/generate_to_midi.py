#!/usr/bin/env python
"""fairseq-generate output (``H-`` lines) + the token dir's ``manifest.jsonl`` -> one whole-piece
performance MIDI per test performance.

    fairseq-generate BIN --user-dir museformer --task museformer_s2p --path CKPT --gen-subset test \
        --sampling --sampling-topp 0.95 --seed 1 > gen.txt
    python scripts/generate_to_midi.py gen.txt TOK_DIR --split test --out OUT_DIR

Each line of ``{split}.score`` is one bar-range segment of one performance (the manifest says which);
the generated segments of a performance are stitched (overlapping bars: the earlier segment's bars up
to the middle of the overlap, the later one's after it) together with the score segments, then decoded
with :func:`instruct_tokenizer.decode.tokens_to_midi`. A model of the relative tempo encoding draws a
``TempoLevel`` per line: the later segments are re-expressed at the first one's level
(:func:`instruct_tokenizer.encode.rebase_tempo_level`, every beat period kept), as one stream has one level.
A performance with a missing or undecodable hypothesis gets one error line and no file; the others are
still written.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instruct_tokenizer.decode import DecodeError, tokens_to_midi  # noqa: E402
from instruct_tokenizer.encode import rebase_tempo_level, stitch  # noqa: E402


def read_hypotheses(path: Path) -> Dict[int, List[str]]:
    """``H-{id}\\t{score}\\t{tokens}`` lines -> {sample id: tokens}; the first hypothesis of each id
    (fairseq prints the best first under ``--nbest``)."""
    hyps: Dict[int, List[str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("H-"):
            head, _score, text = line.split("\t", 2)
            hyps.setdefault(int(head[2:]), text.split())
    return hyps


def performance_key(row: dict) -> Tuple[str, str]:
    return row["source"], row.get("augment", "")


def output_name(row: dict) -> str:
    stem = f"{row['composer']}_{row['title']}_{row['performer']}"
    if row.get("augment"):
        stem += f"_{row['augment']}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) + ".mid"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generate_output", type=Path, help="fairseq-generate stdout saved to a file")
    ap.add_argument("tokens", type=Path, help="instruct-tokenize build output dir (manifest.jsonl, {split}.score)")
    ap.add_argument("--split", default="test", help="the --gen-subset that was generated")
    ap.add_argument("--out", type=Path, required=True, help="output directory for the MIDI files")
    a = ap.parse_args()
    try:
        hyps = read_hypotheses(a.generate_output)
        manifest = [json.loads(x) for x in (a.tokens / "manifest.jsonl").read_text().splitlines()]
        score_lines = (a.tokens / f"{a.split}.score").read_text().splitlines()
    except (OSError, ValueError) as e:
        print(f"generate_to_midi: error: {e}", file=sys.stderr)
        return 1
    groups: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
    for row in manifest:
        if row["split"] == a.split:
            groups[performance_key(row)].append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for rows in groups.values():
        name = output_name(rows[0])
        missing = [r["line"] for r in rows if r["line"] not in hyps]
        if missing:
            print(f"generate_to_midi: error: {name}: no hypothesis for lines {missing}", file=sys.stderr)
            continue
        try:
            score = stitch([(r["bar_start"], r["bar_end"], score_lines[r["line"]].split()) for r in rows])
            segs = sorted((r["bar_start"], r["bar_end"], hyps[r["line"]]) for r in rows)
            level = segs[0][2][:1]  # relative tempo: each line drew its own TempoLevel; keep each one's tempo
            perf = stitch([(a_, b_, rebase_tempo_level(p, level[0]) if level else p) for a_, b_, p in segs])
            tokens_to_midi(score, perf, str(a.out / name))
        except (DecodeError, ValueError) as e:
            print(f"generate_to_midi: error: {name}: {e}", file=sys.stderr)
            continue
        written += 1
    print(f"wrote {written} of {len(groups)} performances to {a.out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
