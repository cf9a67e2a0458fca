"""Roundtrip fidelity: encode a match performance, decode it, compare with the human notes.

Times are compared after the encoder's global shift (decoded = performed - shift); units in names.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from .decode import decode_performance
from .encode import encode_match, pedal_changes
from .match import MatchFile

PEDAL_TOL_S = 0.020


def _pedal_share(true_t: np.ndarray, decoded_t: np.ndarray) -> float:
    """Share of true pedal changes with a decoded change within 20 ms."""
    if len(true_t) == 0:
        return 1.0
    if len(decoded_t) == 0:
        return 0.0
    d = np.sort(decoded_t)
    i = np.clip(np.searchsorted(d, true_t), 1, len(d) - 1)
    nearest = np.minimum(np.abs(d[i - 1] - true_t), np.abs(d[i] - true_t))
    return float(np.mean(nearest <= PEDAL_TOL_S + 1e-9))


def roundtrip_errors(mf: MatchFile) -> Dict[str, float]:
    enc = encode_match(mf)
    perf = decode_performance(enc.score, enc.perf)
    o = enc.order
    played = mf.played[o]
    true_on = mf.onset_s[o][played] - enc.shift_s
    err = np.abs(perf.onset_s[played] - true_on) * 1000.0
    k = max(len(err) // 10, 1)
    dur_true = (mf.offset_s[o] - mf.onset_s[o])[played]
    dur_dec = (perf.offset_s - perf.onset_s)[played]
    ratio = np.abs(dur_dec / np.maximum(dur_true, 1e-3) - 1.0)
    sus_true = np.array(pedal_changes(mf.sustain)) - enc.shift_s
    sus_dec = np.array([t for t, _ in perf.sustain])
    return {
        "notes": float(len(err)),
        "onset_median_ms": float(np.median(err)),
        "onset_p99_ms": float(np.percentile(err, 99)),
        "onset_start_ms": float(np.mean(err[:k])),
        "onset_end_ms": float(np.mean(err[-k:])),
        "velocity_max": float(np.max(np.abs(perf.velocity[played] - mf.velocity[o][played]))),
        "duration_ratio_median": float(np.median(ratio)),
        "pedal_changes": float(len(sus_true)),
        "pedal_within_20ms": _pedal_share(sus_true, sus_dec),
    }
