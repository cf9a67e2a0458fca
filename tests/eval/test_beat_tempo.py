"""Beat-level log tempo (metrics.beat_log_tempo): docstring example, a slow reference, ornament spikes."""
import numpy as np
import pytest

from instruct_tokenizer.metrics import beat_log_tempo


def slow_beat_period(group_q, group_t, beat):
    """Score-time-weighted mean of the segment periods (slope of time over score time) inside the beat's
    part of the groups' span; None when the span misses the beat."""
    q, t = np.asarray(group_q, float), np.asarray(group_t, float)
    total_q, total_s = 0.0, 0.0
    for k in range(len(q) - 1):
        lo, hi = max(q[k], beat), min(q[k + 1], beat + 1.0)
        if hi > lo:
            slope = (t[k + 1] - t[k]) / (q[k + 1] - q[k])
            total_q += hi - lo
            total_s += slope * (hi - lo)
    return total_s / total_q if total_q > 1e-12 else None


def test_docstring_example():
    got = np.exp(beat_log_tempo([0, 1, 1.5, 2, 3], [0.0, 0.5, 0.75, 1.5, 2.0], [0, 0.5, 1, 1.5, 2, 3]))
    assert got == pytest.approx([0.5, 0.5, 1.0, 1.0, 0.5, 0.5])


@pytest.mark.parametrize("seed", range(25))
def test_agrees_with_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    q = np.sort(rng.choice(np.arange(0, 96) / 6.0 + rng.uniform(0, 3), n, replace=False))
    t = np.cumsum(rng.uniform(0.01, 1.5, n))
    notes_q = np.concatenate([q, rng.choice(q, 10)])
    got = np.exp(beat_log_tempo(q, t, notes_q))
    spanned = {}
    for b in range(int(np.floor(q[0])), int(np.floor(q[-1])) + 1):
        p = slow_beat_period(q, t, b)
        if p is not None:
            spanned[b] = p
    for nq, g in zip(notes_q, got):
        b = int(np.floor(nq))
        earlier = [k for k in spanned if k <= b]
        want = spanned[max(earlier)] if earlier else spanned[min(spanned)]
        assert g == pytest.approx(want, rel=1e-9)


def test_ornament_spike_leaves_beat_tempo_alone():
    """A turn squeezed into beat 2 at a steady 0.5 s per quarter: the onset-group periods swing, the
    beat periods do not."""
    q = np.array([0, 1, 2, 2.04, 2.08, 2.12, 3, 4], float)
    t = np.array([0, 0.5, 1.0, 1.005, 1.01, 1.015, 1.5, 2.0])
    onset_period = np.diff(t) / np.diff(q)
    assert onset_period.max() / onset_period.min() > 3
    got = np.exp(beat_log_tempo(q, t, q))
    assert got == pytest.approx(np.full(len(q), 0.5))


def test_undefined_without_two_groups_and_for_nan_notes():
    assert np.isnan(beat_log_tempo([1.0], [0.5], [1.0])).all()
    got = beat_log_tempo([0, 1, 2], [0, 1, 2], [0.5, np.nan])
    assert np.isfinite(got[0]) and np.isnan(got[1])
