"""Roundtrip fidelity: encode a match performance, decode it, compare with the human notes.

Times are compared after the encoder's global shift (decoded = performed - shift); units in names.
Alignment outliers (played notes more than the ``Time`` range from their chord or out of the score's
order, :func:`encode.alignment_outliers`) are encoded as not played: they are counted (``outliers``),
not compared.

Pedal changes are compared in two sets: the audible ones, up to the moment the piano falls silent
(:func:`sound_end_s`), and the silent ones after it (a recording that runs on after the piece: in
(n)ASAP two files hold 1,614 and 266 sustain changes up to 17 minutes after the last note). Both are
reported; the acceptance bound is on the audible set.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .decode import decode_performance
from .encode import encode_match, pedal_changes
from .match import MatchFile

PEDAL_TOL_S = 0.020


def _pedal_nearest(true_t: np.ndarray, decoded_t: np.ndarray) -> np.ndarray:
    """Per true pedal change, the distance (s) to the nearest decoded change (inf when none)."""
    if len(true_t) == 0:
        return np.zeros(0)
    if len(decoded_t) == 0:
        return np.full(len(true_t), np.inf)
    d = np.sort(decoded_t)
    if len(d) == 1:
        return np.abs(true_t - d[0])
    i = np.clip(np.searchsorted(d, true_t), 1, len(d) - 1)
    return np.minimum(np.abs(d[i - 1] - true_t), np.abs(d[i] - true_t))


def _pedal_share(true_t: np.ndarray, decoded_t: np.ndarray) -> float:
    """Share of true pedal changes with a decoded change within 20 ms."""
    near = _pedal_nearest(true_t, decoded_t)
    return float(np.mean(near <= PEDAL_TOL_S + 1e-9)) if len(near) else 1.0


def _max_ms(true_t: np.ndarray, decoded_t: np.ndarray) -> float:
    near = _pedal_nearest(true_t, decoded_t)
    return float(np.max(near) * 1000.0) if len(near) else 0.0


def sound_end_s(mf: MatchFile, sustain_changes: Optional[Sequence[float]] = None) -> float:
    """Performed time (s) at which the piano falls silent: the last key release, or, when the sustain
    pedal is down then, its next release (inf when it is never released). ``sustain_changes``: the
    file's :func:`encode.pedal_changes` of ``mf.sustain``, when already at hand."""
    played = mf.played & ~np.isnan(mf.offset_s)
    if not played.any():
        return float("inf")
    last_release = float(np.max(mf.offset_s[played]))
    changes = np.array(pedal_changes(mf.sustain) if sustain_changes is None else sustain_changes)
    down_at_release = int(np.sum(changes <= last_release)) % 2 == 1  # toggles from 'up'
    if not down_at_release:
        return last_release
    later = changes[changes > last_release]
    return float(later[0]) if len(later) else float("inf")


def _pedal_figures(name: str, true_t: np.ndarray, decoded_t: np.ndarray, end_s: float) -> Dict[str, float]:
    """Share within 20 ms and worst error of the audible changes (at or before ``end_s``), and the
    same share of the silent ones after it."""
    audible, silent = true_t[true_t <= end_s + 1e-9], true_t[true_t > end_s + 1e-9]
    return {
        f"{name}_changes": float(len(audible)),
        f"{name}_within_20ms": _pedal_share(audible, decoded_t),
        f"{name}_max_err_ms": _max_ms(audible, decoded_t),
        f"{name}_silent_changes": float(len(silent)),
        f"{name}_silent_within_20ms": _pedal_share(silent, decoded_t),
    }


def roundtrip_errors(mf: MatchFile, qpm: Optional[Dict[str, float]] = None,
                     relative_tempo: bool = False, beat_grid: bool = False) -> Dict[str, float]:
    """Encode and decode one performance and compare with its notes and pedal (figures in ms, shares,
    ratios). ``qpm`` (notated tempo by XML note id), ``relative_tempo`` and ``beat_grid``: as
    :func:`encode.encode_match`."""
    enc = encode_match(mf, qpm=qpm, relative_tempo=relative_tempo, beat_grid=beat_grid)
    perf = decode_performance(enc.score, enc.perf)
    o = enc.order
    played = mf.played[o] & perf.played
    n_outliers = int((mf.played[o] & ~perf.played).sum())
    true_on = mf.onset_s[o][played] - enc.shift_s
    err = np.abs(perf.onset_s[played] - true_on) * 1000.0
    k = max(len(err) // 10, 1)
    dur_true = (mf.offset_s[o] - mf.onset_s[o])[played]
    dur_dec = (perf.offset_s - perf.onset_s)[played]
    ratio = np.abs(dur_dec / np.maximum(dur_true, 1e-3) - 1.0)
    sus_changes = pedal_changes(mf.sustain)
    sus_true = np.array(sus_changes) - enc.shift_s
    sus_dec = np.array([t for t, _ in perf.sustain])
    soft_true = np.array(pedal_changes(mf.soft)) - enc.shift_s
    soft_dec = np.array([t for t, _ in perf.soft])
    end_s = sound_end_s(mf, sus_changes) - enc.shift_s
    return {
        "notes": float(len(err)),
        "outliers": float(n_outliers),
        "onset_median_ms": float(np.median(err)),
        "onset_p99_ms": float(np.percentile(err, 99)),
        "onset_start_ms": float(np.mean(err[:k])),
        "onset_end_ms": float(np.mean(err[-k:])),
        "velocity_max": float(np.max(np.abs(perf.velocity[played] - mf.velocity[o][played]))),
        "duration_ratio_median": float(np.median(ratio)),
        **_pedal_figures("pedal", sus_true, sus_dec, end_s),
        **_pedal_figures("soft", soft_true, soft_dec, end_s),
    }
