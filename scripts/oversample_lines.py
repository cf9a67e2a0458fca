"""Repeat the training examples that hold a rare token, so that a warm-started model sees it often.

    python scripts/oversample_lines.py TOK --token After_fermata --times 8 --out-prefix TOK/train.os

reads TOK/train.score and TOK/train.perf (line i of one is line i of the other) and writes
OUT_PREFIX.score / OUT_PREFIX.perf: every pair, and each pair whose score line holds TOKEN (a whole
token, not a substring) TIMES times in all. The source files are left as they are; the output is written
to a temporary file and renamed, so a failed run leaves nothing half-written. fairseq-preprocess then
takes ``--trainpref OUT_PREFIX``. Rare-event oversampling is class rebalancing: it changes how often the
model sees those examples, not what they hold.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def oversample(score_lines, perf_lines, token: str, times: int):
    """Yield (score, perf) pairs; a pair whose score holds ``token`` comes ``times`` times in all."""
    for s, p in zip(score_lines, perf_lines):
        k = times if token in s.split() else 1
        for _ in range(k):
            yield s, p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tok", help="instruct-tokenize build directory")
    ap.add_argument("--split", default="train", help="split to read (default train)")
    ap.add_argument("--token", required=True, help="score token whose examples are repeated, e.g. After_fermata")
    ap.add_argument("--times", type=int, required=True, help="how often such an example occurs in all (>= 1)")
    ap.add_argument("--out-prefix", required=True, help="writes OUT_PREFIX.score and OUT_PREFIX.perf")
    a = ap.parse_args(argv)
    tok = Path(a.tok)
    src = {lang: tok / f"{a.split}.{lang}" for lang in ("score", "perf")}
    for path in src.values():
        if not path.is_file():
            print(f"oversample_lines: error: {path}: not found", file=sys.stderr)
            return 1
    if a.times < 1:
        print("oversample_lines: error: --times must be >= 1", file=sys.stderr)
        return 1
    score = src["score"].read_text().splitlines()
    perf = src["perf"].read_text().splitlines()
    if len(score) != len(perf):
        print(f"oversample_lines: error: {src['score']} has {len(score)} lines, {src['perf']} {len(perf)}",
              file=sys.stderr)
        return 1
    pairs = list(oversample(score, perf, a.token, a.times))
    for i, lang in enumerate(("score", "perf")):
        out = Path(f"{a.out_prefix}.{lang}")
        tmp = out.with_name(out.name + ".part")
        tmp.write_text("".join(pair[i] + "\n" for pair in pairs))
        os.replace(tmp, out)
    held = sum(a.token in s.split() for s in score)
    print(f"oversample_lines: {held} of {len(score)} {a.split} examples hold {a.token}; wrote {len(pairs)} "
          f"pairs to {a.out_prefix}.score/.perf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
