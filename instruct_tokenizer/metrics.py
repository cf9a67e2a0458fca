"""Evaluation metrics (definitions in docs/evaluation.md).

Distribution metrics follow Pianist Transformer (arXiv 2512.02652, appendix A.4) so that figures stand
side by side with theirs: note times are read in seconds through each MIDI file's tempo map and
expressed in ms (their rewrite at 500 ticks per beat and 120 BPM makes 1 tick = 1 ms); features are
pooled over all notes of all files of a set; histograms are normalised, 1e-10 is added, renormalised;
scores are the Jensen-Shannon *distance* (base 2) and the intersection sum(min(p, q)).

- velocity: 128 bins over 0..127;
- duration: key-release duration (note off - note on, not pedal-extended), ms, [0, 500) in 250 bins;
- IOI: differences of consecutive onsets of all notes sorted by onset (chords give 0), ms, [0, 200)
  in 200 bins;
- pedal: for each note, sustain (CC64 >= 64) sampled at 0, 1/4, 1/2, 3/4 of the gap to the next
  note's onset, read as a 4-bit pattern (16 bins).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

FEATURES = ("velocity", "duration", "ioi", "pedal")
BINS = {"velocity": (128, (0, 128)), "duration": (250, (0, 500)), "ioi": (200, (0, 200)), "pedal": (16, (0, 16))}
EPS = 1e-10


class MidiReadError(Exception):
    """A MIDI file that cannot be read (the message says why)."""


@dataclass
class NoteFeatures:
    """Per-note features of one performance (times in ms)."""

    onset_ms: np.ndarray
    duration_ms: np.ndarray
    velocity: np.ndarray
    pitch: np.ndarray
    pedal_pattern: np.ndarray  # int 0..15

    def values(self, feature: str) -> np.ndarray:
        if feature == "ioi":
            return np.diff(np.sort(self.onset_ms))
        if feature == "pedal":
            return self.pedal_pattern
        if feature == "duration":
            return self.duration_ms
        return self.velocity


def pedal_patterns(onset_ms: np.ndarray, pedal_times_ms: np.ndarray, pedal_down: np.ndarray) -> np.ndarray:
    """4-bit sustain pattern per note (notes sorted by onset): bit k = pedal down at onset + k/4 * gap."""
    order = np.argsort(onset_ms, kind="stable")
    on = onset_ms[order]
    nxt = np.append(on[1:], on[-1]) if len(on) else on
    gap = nxt - on
    pattern = np.zeros(len(on), np.int64)
    for k in range(4):
        t = on + gap * (k / 4.0)
        idx = np.searchsorted(pedal_times_ms, t, side="right") - 1
        down = np.where(idx >= 0, pedal_down[np.clip(idx, 0, None)] if len(pedal_down) else False, False)
        pattern |= down.astype(np.int64) << (3 - k)
    out = np.empty_like(pattern)
    out[order] = pattern
    return out


def midi_features(path: str) -> NoteFeatures:
    """Per-note features of a MIDI file, all instruments pooled."""
    import miditoolkit

    try:
        midi = miditoolkit.MidiFile(str(path))
    except Exception as e:  # mido raises many types on junk
        raise MidiReadError(f"not a readable MIDI file ({type(e).__name__})") from None
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        raise MidiReadError("no notes")
    ccs = sorted((c.time, c.value) for inst in midi.instruments for c in inst.control_changes if c.number == 64)
    max_tick = max([n.end for n in notes] + [c[0] for c in ccs] + [0]) + 1
    seconds = _tick_seconds(midi, max_tick)
    start = np.array([n.start for n in notes])
    end = np.array([n.end for n in notes])
    # the rewrite at 500 ticks/beat, 120 BPM puts every event on an integer millisecond
    onset_ms = np.round(seconds[start] * 1000.0)
    duration_ms = np.round(seconds[end] * 1000.0) - onset_ms
    ped_t = np.array([np.round(seconds[t] * 1000.0) for t, _ in ccs])
    ped_down = np.array([v >= 64 for _, v in ccs], bool)
    return NoteFeatures(onset_ms=onset_ms, duration_ms=duration_ms,
                        velocity=np.array([n.velocity for n in notes]), pitch=np.array([n.pitch for n in notes]),
                        pedal_pattern=pedal_patterns(onset_ms, ped_t, ped_down))


def _tick_seconds(midi, max_tick: int) -> np.ndarray:
    """Seconds at every tick 0..max_tick from the tempo map (piecewise constant tempo)."""
    tpb = midi.ticks_per_beat
    changes = sorted((t.time, t.tempo) for t in midi.tempo_changes) or [(0, 120.0)]
    if changes[0][0] > 0:
        changes.insert(0, (0, 120.0))
    at = np.array([c[0] for c in changes], dtype=np.float64)
    spt = np.array([60.0 / (c[1] * tpb) for c in changes])  # seconds per tick in each segment
    seg_start_s = np.concatenate([[0.0], np.cumsum(np.diff(at) * spt[:-1])])
    ticks = np.arange(max_tick + 1, dtype=np.float64)
    seg = np.searchsorted(at, ticks, side="right") - 1
    return seg_start_s[seg] + (ticks - at[seg]) * spt[seg]


def histogram(values: np.ndarray, feature: str) -> np.ndarray:
    bins, rng = BINS[feature]
    h, _ = np.histogram(values, bins=bins, range=rng)
    p = h.astype(np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(bins, 1.0 / bins)
    p = p + EPS
    return p / p.sum()


def pooled_histograms(feats: Iterable[NoteFeatures]) -> Dict[str, np.ndarray]:
    feats = list(feats)
    return {f: histogram(np.concatenate([x.values(f) for x in feats]), f) for f in FEATURES}


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2))


def compare(pred: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> Dict[str, float]:
    """JS distance and intersection per feature, and their means ("overall")."""
    out: Dict[str, float] = {}
    for f in FEATURES:
        out[f"{f}_js"] = js_distance(pred[f], ref[f])
        out[f"{f}_inter"] = float(np.minimum(pred[f], ref[f]).sum())
    out["overall_js"] = float(np.mean([out[f"{f}_js"] for f in FEATURES]))
    out["overall_inter"] = float(np.mean([out[f"{f}_inter"] for f in FEATURES]))
    return out


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r; NaN (shown as n/a) when either side has zero variance or fewer than 3 values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def fmt(x: Optional[float]) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


# ----------------------------------------------------------------------------------------- per note
PER_NOTE = ("velocity", "log_tempo", "timing", "articulation")


def per_note_features(score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Dict[str, np.ndarray]:
    """Per score note (token order): velocity, log beat period (s/quarter) of its onset group, timing
    deviation from the decoded grid (ms), articulation log2(played / notated-at-local-tempo).
    Deleted notes are NaN."""
    from .decode import decode_performance
    from .encode import nominal_q

    perf = decode_performance(score_tokens, perf_tokens)
    tl = perf.timeline
    period = perf.group_period_s[tl.note_group]
    nominal = np.array([nominal_q(d) for d in tl.note_dur_q])
    nan = np.where(perf.played, 1.0, np.nan)
    dur = np.maximum(perf.offset_s - perf.onset_s, 1e-3)
    return {
        "velocity": perf.velocity * nan,
        "log_tempo": np.log(period) * nan,
        "timing": (perf.onset_s - perf.group_grid_s[tl.note_group]) * 1000.0 * nan,
        "articulation": np.log2(dur / (nominal * period)) * nan,
        "score_q": tl.group_q[tl.note_group],
    }


def per_note_r(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Dict[str, float]:
    return {f"{k}_r": pearson(a[k], b[k]) for k in PER_NOTE}
