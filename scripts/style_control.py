#!/usr/bin/env python
"""Does instruct control work? Render one held-out score with opposite style settings and print the
rendered mean velocity and tempo (seconds per quarter) for each, same seeds, same run.

    python scripts/style_control.py SCORE [--checkpoint CKPT] [--bars 24] [--seeds 2]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instruct_tokenizer.metrics import per_note_features  # noqa: E402
from instruct_tokenizer.encode import split_bars  # noqa: E402
from museformer.render import DEFAULT_CHECKPOINT, Renderer, Sampling  # noqa: E402

PAIRS = [("dynamics", "soft", "loud"), ("tempo", "slow", "fast"), ("articulation", "staccato", "legato")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("score")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--bars", type=int, default=24, help="render the first N bars")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    r = Renderer.from_checkpoint(a.checkpoint)
    print("| setting | mean velocity | mean s per quarter | mean articulation (log2) |")
    print("|---|---|---|---|")
    for key, lo, hi in PAIRS:
        for level in (lo, hi):
            toks = r.score_tokens(a.score, style={key: level})
            prefix, bars = split_bars(toks)
            toks = prefix + [t for b in bars[: a.bars] for t in b]
            vel, per, art = [], [], []
            for seed in range(a.seeds):
                f = per_note_features(toks, r.render_tokens(toks, Sampling(seed=seed), progress=False))
                vel.append(np.nanmean(f["velocity"]))
                per.append(np.nanmean(np.exp(f["log_tempo"])))
                art.append(np.nanmean(f["articulation"]))
            print(f"| {key}={level} | {np.mean(vel):.1f} | {np.mean(per):.3f} | {np.mean(art):+.3f} |", flush=True)


if __name__ == "__main__":
    main()
