"""How far human tempo levels stray: the figures behind ``--tempo-band`` (docs/tokens.md, Tempo band).

Reads a tokenized build's ``train.score`` / ``train.perf`` (every Nth line) and prints, in tempo bins
(3 % steps), with the decoder's own level arithmetic (``museformer.decoding.functions.tempo_level_update``, periods
relative to the notated tempo):
- the windowed level (8 quarters) against the performance's level so far, after the first 16 quarters
  (what the ``self`` anchor bounds);
- each line's whole level against the notated tempo, for lines whose score states a tempo other than
  120 and for those that do not (what the ``notated`` anchor bounds).

    python scripts/tempo_level_stats.py outputs/nasap/tok --every 5
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instruct_tokenizer.grammar import beat_period_s, states_tempo, tempo_slot_gaps  # noqa: E402
from museformer.decoding.functions import TEMPO_BAND_WARMUP_Q, tempo_level_update  # noqa: E402

BIN_LOG = math.log(beat_period_s("Tempo_1") / beat_period_s("Tempo_0"))
NOTATED = 0.5  # s per quarter relative to the notated tempo: the notated tempo itself


def line_levels(score: list, perf: list) -> tuple:
    """(window-vs-so-far deviations after the warm-up, whole-line level) of one line, in bins / s."""
    gaps, scales = tempo_slot_gaps(score)
    level, devs = torch.zeros(1, 4, dtype=torch.float64), []
    for tok, gap, scale in zip(perf, gaps, scales):
        period = beat_period_s(tok) if gap == gap else None
        if period is None:
            continue
        warm = level[0, 3].item() >= TEMPO_BAND_WARMUP_Q
        level = tempo_level_update(level, torch.tensor([period], dtype=torch.float64),
                                   torch.tensor([gap], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64))
        if warm and gap > 0:
            devs.append(math.log((level[0, 0] / level[0, 1]) / (level[0, 2] / level[0, 3])) / BIN_LOG)
    whole = (level[0, 2] / level[0, 3]).item() if level[0, 3] > 0 else float("nan")
    return devs, whole


def summary(name: str, values: np.ndarray) -> str:
    a = np.abs(values)
    q = np.percentile(a, [50, 90, 95, 99]).round(1).tolist() if len(a) else []
    within = {w: round(float((a <= w).mean()), 3) for w in (6, 8, 12)} if len(a) else {}
    return f"{name}: n={len(a)}, |bins| median/90/95/99 % {q}, share within 6/8/12 bins {within}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", help="instruct-tokenize build directory (train.score, train.perf)")
    ap.add_argument("--every", type=int, default=5, help="read every Nth training line")
    a = ap.parse_args()
    root = Path(a.tokens)
    if not (root / "train.score").is_file() or not (root / "train.perf").is_file():
        print(f"tempo_level_stats: error: {root}: no train.score / train.perf", file=sys.stderr)
        return 1
    window, stated, unstated = [], [], []
    with open(root / "train.score") as fs, open(root / "train.perf") as fp:
        for k, (s, p) in enumerate(tqdm(zip(fs, fp), desc="lines", unit="line")):
            if k % a.every:
                continue
            score, perf = s.split(), p.split()
            devs, whole = line_levels(score, perf)
            window += devs
            if whole == whole:
                (stated if states_tempo(score) else unstated).append(math.log(whole / NOTATED) / BIN_LOG)
    print(summary("window (8 quarters) vs level so far", np.array(window)))
    print(summary("line level vs notated tempo, tempo stated", np.array(stated)))
    print(summary("line level vs 120 per quarter, no tempo stated", np.array(unstated)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
