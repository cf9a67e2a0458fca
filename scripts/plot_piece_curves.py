#!/usr/bin/env python
"""Tempo and velocity curves of several performances of one score, over the score position (beats).

    python scripts/plot_piece_curves.py SCORE.mid --perf human=H.mid --perf ours=O.mid \
        --perf "Pianist Transformer=P.mid" -o curves.png [--max-beats 64]

Every performance is aligned to the score MIDI note by note, per pitch and in onset order (the k-th
score note of a pitch <-> the k-th played note of that pitch): exact for renderers that play every
score note once (ours, Pianist Transformer), approximate for humans (a wrong or missed note shifts that
pitch's pairing; such pairs are dropped as tempo outliers). Curves:
- tempo (beats per minute): the slope of performed onset (s) against score onset (beats) over a
  sliding window of ``--window`` beats (Theil-Sen: the median of pairwise slopes, robust to mis-pairs);
- velocity (MIDI): the mean velocity of the aligned notes in the same window.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np


def score_notes(path: str) -> List[Tuple[float, int]]:
    """(onset in beats, pitch) of every note of a score MIDI, sorted by onset then pitch."""
    import miditoolkit

    midi = miditoolkit.MidiFile(path)
    return sorted((n.start / midi.ticks_per_beat, n.pitch) for i in midi.instruments for n in i.notes)


def perf_notes(path: str) -> List[Tuple[float, int, int]]:
    """(onset in seconds, pitch, velocity) of every note of a performance MIDI, sorted by onset."""
    import miditoolkit

    midi = miditoolkit.MidiFile(path)
    tick_s = midi.get_tick_to_time_mapping()
    last = len(tick_s) - 1
    return sorted((float(tick_s[min(n.start, last)]), n.pitch, n.velocity) for i in midi.instruments for n in i.notes)


def align(score: List[Tuple[float, int]], perf: List[Tuple[float, int, int]]) -> np.ndarray:
    """Per-pitch, onset-order pairing -> array (N, 3): score beat, performed onset s, velocity."""
    by_pitch: Dict[int, List[Tuple[float, int]]] = {}
    for t, p, v in perf:
        by_pitch.setdefault(p, []).append((t, v))
    seen: Dict[int, int] = {}
    rows = []
    for beat, p in score:
        k = seen.get(p, 0)
        seen[p] = k + 1
        if k < len(by_pitch.get(p, [])):
            t, v = by_pitch[p][k]
            rows.append((beat, t, v))
    return np.array(rows, dtype=float).reshape(-1, 3)


def theil_sen_slope(x: np.ndarray, y: np.ndarray, min_dx: float = 0.5) -> float:
    """Median of the pairwise slopes dy/dx over pairs at least ``min_dx`` apart in x (robust to the
    few mis-paired notes of the per-pitch alignment); NaN when no such pair."""
    i, j = np.triu_indices(len(x), 1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    ok = dx >= min_dx
    return float(np.median(dy[ok] / dx[ok])) if ok.any() else float("nan")


def curves(pairs: np.ndarray, centres: np.ndarray, window: float) -> Tuple[np.ndarray, np.ndarray]:
    """(tempo in BPM, mean velocity) at each centre beat; NaN where too few notes."""
    bpm, vel = np.full(len(centres), np.nan), np.full(len(centres), np.nan)
    for j, c in enumerate(centres):
        sel = pairs[np.abs(pairs[:, 0] - c) <= window / 2]
        if len(sel) < 4 or np.ptp(sel[:, 0]) < 1.0:
            continue
        slope = theil_sen_slope(sel[:, 0], sel[:, 1])
        if slope > 0:
            bpm[j] = 60.0 / slope
        vel[j] = sel[:, 2].mean()
    return bpm, vel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("score", help="score MIDI")
    ap.add_argument("--perf", action="append", required=True, help="NAME=performance.mid (repeatable)")
    ap.add_argument("-o", "--output", required=True, help="PNG path")
    ap.add_argument("--window", type=float, default=4.0, help="sliding window in beats")
    ap.add_argument("--max-beats", type=float, default=0.0, help="plot only the first N beats (0: all)")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        score = score_notes(a.score)
        perfs = {name: perf_notes(path) for name, path in (p.split("=", 1) for p in a.perf)}
    except (OSError, ValueError, EOFError) as e:
        print(f"plot_piece_curves: error: {e}", file=sys.stderr)
        return 1
    end = max(b for b, _ in score)
    if a.max_beats > 0:
        end = min(end, a.max_beats)
    centres = np.arange(a.window / 2, end - a.window / 2 + 1e-9, 0.5)
    fig, (ax_t, ax_v) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for name, notes in perfs.items():
        pairs = align([n for n in score if n[0] <= end], notes)
        bpm, vel = curves(pairs, centres, a.window)
        ax_t.plot(centres, bpm, label=name, lw=1.2)
        ax_v.plot(centres, vel, label=name, lw=1.2)
    ax_t.set_ylabel("tempo (beats/min)")
    ax_v.set_ylabel("mean velocity")
    ax_v.set_xlabel("score position (beats)")
    ax_t.legend(fontsize=8)
    ax_t.set_title(a.title or Path(a.score).name)
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
