"""The page's pictures, drawn with matplotlib (Agg, object API: safe in worker threads).

- :func:`piano_roll`: the performance over time (s): notes coloured by velocity, bar lines numbered,
  sustain and soft pedal drawn below the keyboard, a re-rendered passage shaded. Returns where the time
  axis lies in the image, so the page can draw the playhead over it.
- :func:`curves`: tempo (quarter notes per minute) and velocity over the score position (bars), of one or
  two performances and the deadpan/markings reference.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import Performance, decode_performance
from instruct_tokenizer.metrics import beat_log_tempo
from instruct_tokenizer.score import nominal_bar_len_q

from .passage import bar_grid_times

DPI = 100
ROLL_HEIGHT_IN = 4.2
ROLL_PX_PER_S = 16  # image width per second of music, between the two bounds below
ROLL_MIN_PX, ROLL_MAX_PX = 1100, 4800
CURVE_WINDOW_BEATS = 4  # moving average (quarters) of the tempo and velocity curves
VELOCITY_CMAP = "plasma"
_DRAWING = threading.Lock()  # matplotlib is not thread-safe: one picture is rendered at a time


@dataclass
class Axis:
    """Where the time axis of a picture lies: pixels from the image's left edge at ``t0_s`` and ``t1_s``
    of an image ``width_px`` wide."""

    width_px: int
    x0_px: float
    x1_px: float
    t0_s: float
    t1_s: float


def bar_starts_q(score_tokens: Sequence[str]) -> np.ndarray:
    """Score time (quarters from the first bar) of every bar start, and of the end of the last bar as the
    final entry, by the rules of ``score.score_timeline`` (``BarLen`` overrides the time signature)."""
    starts: List[float] = []
    bar_len, ts, t = 4.0, (4, 4), 0.0
    for token in score_tokens:
        type_, _, value = token.partition("_")
        if type_ == V.BAR:
            if starts:
                t += bar_len
            starts.append(t)
            bar_len = nominal_bar_len_q(ts)
        elif not starts:
            continue
        elif type_ == V.TIME_SIG:
            num, den = value.split("/")
            ts = (int(num), int(den))
            bar_len = nominal_bar_len_q(ts)
        elif type_ == V.BAR_LEN:
            bar_len = int(value) / V.GRID
    return np.array(starts + [t + bar_len]) if starts else np.zeros(1)


def bar_position(q: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Score time (quarters) -> bar number (1-based, with the fraction of the bar)."""
    q = np.asarray(q, float)
    b = np.clip(np.searchsorted(starts, q, side="right") - 1, 0, len(starts) - 2)
    length = np.maximum(starts[b + 1] - starts[b], 1e-9)
    return b + 1 + (q - starts[b]) / length


def _moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean over ``window`` values, ignoring NaNs (NaN where the window has none)."""
    ok = np.isfinite(x)
    kernel = np.ones(window)
    total = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
    count = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def beat_curves(perf: Performance) -> Dict[str, np.ndarray]:
    """Per quarter-note beat of the score: ``q`` (its start, quarters), ``qpm`` (quarter notes per minute,
    from the beat's performed length, ``metrics.beat_log_tempo``) and ``velocity`` (mean MIDI velocity of
    the notes played in it; NaN in a beat without one), both smoothed over ``CURVE_WINDOW_BEATS``."""
    tl = perf.timeline
    if tl.n_groups == 0:
        return {"q": np.zeros(0), "qpm": np.zeros(0), "velocity": np.zeros(0)}
    first, last = int(np.floor(tl.group_q.min())), int(np.floor(tl.group_q.max()))
    q = np.arange(first, last + 1, dtype=float)
    log_period = beat_log_tempo(tl.group_q, perf.group_grid_s, q)
    note_q = tl.group_q[tl.note_group]
    beat_of_note = np.floor(note_q).astype(np.int64) - first
    vel = np.full(len(q), np.nan)
    played = perf.played
    sums = np.bincount(beat_of_note[played], weights=perf.velocity[played].astype(float), minlength=len(q))
    counts = np.bincount(beat_of_note[played], minlength=len(q))
    vel[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return {"q": q, "qpm": _moving_mean(60.0 / np.exp(log_period), CURVE_WINDOW_BEATS),
            "velocity": _moving_mean(vel, CURVE_WINDOW_BEATS)}


def _figure(width_px: int, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    part = path.with_name(path.name + ".part.png")
    with _DRAWING:
        fig.savefig(part, dpi=DPI)
    part.replace(path)


def piano_roll(score_tokens: Sequence[str], perf_tokens: Sequence[str], path: Path,
               passage_bars: Optional[Tuple[int, int]] = None, title: str = "") -> Axis:
    """Draw the performance's piano roll to ``path`` (PNG); ``passage_bars``: [start, end) bars (0-based)
    to shade. Returns the time axis' place in the image."""
    from matplotlib import cm, colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    perf = decode_performance(score_tokens, perf_tokens)
    idx = np.nonzero(perf.played)[0]
    on, off = perf.onset_s[idx], np.maximum(perf.offset_s[idx], perf.onset_s[idx] + 0.02)
    pitch, vel = perf.pitch[idx], perf.velocity[idx]
    t0 = min(0.0, float(on.min())) if len(on) else 0.0
    sounding_end = [float(off.max()) if len(off) else 1.0] + [t for t, _ in perf.sustain + perf.soft]
    t1 = max(sounding_end) + 0.5
    width = int(np.clip((t1 - t0) * ROLL_PX_PER_S, ROLL_MIN_PX, ROLL_MAX_PX))
    fig = _figure(width, ROLL_HEIGHT_IN)
    margin_l, margin_r = 60 / width, 1 - 90 / width
    ax = fig.add_axes((margin_l, 0.28, margin_r - margin_l, 0.62))
    ped = fig.add_axes((margin_l, 0.10, margin_r - margin_l, 0.13), sharex=ax)
    cax = fig.add_axes((margin_r + 20 / width, 0.28, 12 / width, 0.62))
    norm = Normalize(1, 127)
    cmap = colormaps[VELOCITY_CMAP]
    boxes = [[(a, p - 0.42), (b, p - 0.42), (b, p + 0.42), (a, p + 0.42)] for a, b, p in zip(on, off, pitch)]
    ax.add_collection(PolyCollection(boxes, facecolors=cmap(norm(vel)), edgecolors="none"))
    lo, hi = (int(pitch.min()) - 2, int(pitch.max()) + 2) if len(pitch) else (48, 84)
    ax.set_ylim(lo, hi)
    ax.set_xlim(t0, t1)
    bar_t = bar_grid_times(perf)
    for b, t in enumerate(bar_t):
        if t is None:
            continue
        ax.axvline(t, color="0.75", lw=0.6, zorder=0)
        if b % _bar_label_step(len(bar_t), width) == 0:
            ax.text(t, hi, str(b + 1), fontsize=7, color="0.35", va="bottom", ha="left")
    if passage_bars is not None:
        a, b = _span_s(bar_t, passage_bars, t1)
        for axis in (ax, ped):
            axis.axvspan(a, b, color="#ffd54f", alpha=0.25, zorder=0)
    ax.set_ylabel("pitch (MIDI)")
    ax.tick_params(labelbottom=False)
    _draw_pedal(ped, perf.sustain, t1, 0.0, "#1e88e5")
    _draw_pedal(ped, perf.soft, t1, 1.1, "#8e24aa")
    ped.set_ylim(-0.1, 2.1)
    ped.set_yticks([0.45, 1.55], ["sustain", "soft"], fontsize=7)
    ped.set_xlabel("performance time (s)")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax).set_label("velocity", fontsize=8)
    if title:
        fig.text(margin_l, 0.97, title, fontsize=9, va="top")
    _save(fig, path)
    return Axis(width_px=width, x0_px=margin_l * width, x1_px=margin_r * width, t0_s=t0, t1_s=t1)


def _bar_label_step(n_bars: int, width_px: int) -> int:
    for step in (1, 2, 4, 5, 10, 20, 50):
        if n_bars / step * 22 <= width_px:
            return step
    return 100


def _span_s(bar_t: Sequence[Optional[float]], bars: Tuple[int, int], t_end: float) -> Tuple[float, float]:
    """Performance times (s) of the start of bar ``bars[0]`` and of bar ``bars[1]`` (the piece's end)."""
    def first_at_or_after(b: int) -> float:
        return next((t for t in bar_t[b:] if t is not None), t_end)

    return first_at_or_after(bars[0]), first_at_or_after(bars[1]) if bars[1] < len(bar_t) else t_end


def _draw_pedal(ax, changes: Sequence[Tuple[float, bool]], t_end: float, y: float, color: str) -> None:
    """Fill the spans where the pedal is down, at height [y, y + 0.9]."""
    down_at = None
    for t, down in list(changes) + [(t_end, False)]:
        if down and down_at is None:
            down_at = t
        elif not down and down_at is not None:
            ax.fill_between([down_at, t], y, y + 0.9, color=color, alpha=0.7, lw=0)
            down_at = None


def curves(score_tokens: Sequence[str], takes: Sequence[Tuple[str, Sequence[str]]],
           reference: Optional[Sequence[str]], path: Path, passage_bars: Optional[Tuple[int, int]] = None,
           reference_label: str = "score (deadpan / markings rules)") -> None:
    """Draw the tempo and velocity curves of ``takes`` ((label, performance tokens), drawn in that order)
    and of the ``reference`` performance, over the score position in bars, to ``path`` (PNG)."""
    starts = bar_starts_q(score_tokens)
    fig = _figure(1100, 4.4)
    ax_t, ax_v = fig.subplots(2, 1, sharex=True)
    series = [(reference_label, reference, dict(color="0.45", ls="--", lw=1.2))] if reference is not None else []
    colors = ["#1e88e5", "#e65100", "#2e7d32"]
    series += [(label, toks, dict(color=colors[k % len(colors)], lw=1.5)) for k, (label, toks) in enumerate(takes)]
    for label, toks, style in series:
        c = beat_curves(decode_performance(score_tokens, toks))
        x = bar_position(c["q"] + 0.5, starts)
        ax_t.plot(x, c["qpm"], label=label, **style)
        ax_v.plot(x, c["velocity"], label=label, **style)
    if passage_bars is not None:
        for ax in (ax_t, ax_v):
            ax.axvspan(passage_bars[0] + 1, passage_bars[1] + 1, color="#ffd54f", alpha=0.3, zorder=0)
    n_bars = len(starts) - 1
    ax_t.set_xlim(1, n_bars + 1)
    ax_t.set_ylabel("tempo (quarters/min)")
    ax_v.set_ylabel("velocity (MIDI)")
    ax_v.set_xlabel("score position (bar)")
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    _save(fig, path)
