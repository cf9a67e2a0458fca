#!/usr/bin/env python
"""Does instruct control work? Render one held-out score at each style key's low, mid and high level and
print what each key asks for (the plans' offsets of ``instruct_tokenizer/data/style_levels.json``, what the
training pianists of a piece's lowest and highest thirds do) beside what the rendering does, same seeds,
same run: mean velocity and its standard deviation (dynamics, range), mean seconds per quarter (tempo), the
standard deviation of the log beat tempo (rubato), mean articulation (log2).

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

KEYS = ("dynamics", "range", "tempo", "rubato", "articulation")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("score")
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--bars", type=int, default=24, help="render the first N bars")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    r = Renderer.from_checkpoint(a.checkpoint)
    from instruct_tokenizer import vocab as V
    from instruct_tokenizer.style_levels import load_offsets

    offsets = load_offsets()
    print("| setting | asks (offset) | mean velocity | velocity sd | mean s per quarter | beat tempo sd (ln) | "
          "mean articulation (log2) |")
    print("|---|---|---|---|---|---|---|")
    for key in KEYS:
        for level in V.INSTRUCT_LEVELS[V.STYLE_KEYS[key]]:
            toks = r.score_tokens(a.score, style={key: level})
            prefix, bars = split_bars(toks)
            toks = prefix + [t for b in bars[: a.bars] for t in b]
            rows = []
            for seed in range(a.seeds):
                f = per_note_features(toks, r.render_tokens(toks, Sampling(seed=seed), progress=False))
                rows.append((np.nanmean(f["velocity"]), np.nanstd(f["velocity"]), np.nanmean(np.exp(f["log_tempo"])),
                             np.nanstd(f["beat_tempo"]), np.nanmean(f["articulation"])))
            m = np.mean(rows, axis=0)
            print(f"| {key}={level} | {offsets[key][level]:+.3f} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.3f} | {m[3]:.3f} | "
                  f"{m[4]:+.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
