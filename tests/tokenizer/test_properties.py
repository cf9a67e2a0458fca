"""Property tests: random aligned note sets roundtrip within bounds; emitted tokens parse back."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruct_tokenizer import vocab as V
from instruct_tokenizer.match import MatchFile
from instruct_tokenizer.roundtrip import roundtrip_errors


@st.composite
def aligned(draw):
    n = draw(st.integers(3, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    onset_q = np.sort(rng.integers(0, 24 * 4 * 8, n)) / 24.0  # up to 8 bars of 4/4 on the grid
    period = draw(st.floats(0.3, 1.2))
    wobble = rng.normal(0, 0.01, n)
    onset_s = 1.0 + onset_q * period + wobble
    dur_q = rng.integers(1, 48, n) / 24.0
    offset_s = onset_s + dur_q * period * rng.uniform(0.3, 1.5, n)
    played = rng.uniform(size=n) > 0.05
    played[0] = True
    pitch = rng.integers(30, 90, n)
    return MatchFile(
        path="<hypothesis>", version="1.0.0", info={}, time_sigs=[(1, 4, 4)], anchor=[f"n{i}" for i in range(n)],
        measure=(onset_q // 4).astype(np.int64) + 1, repeat_pass=np.ones(n, np.int64), pos_q=onset_q % 4,
        onset_q=onset_q, dur_q=dur_q, grace=np.zeros(n, bool), pitch=pitch, staff=np.where(pitch >= 60, 1, 2),
        played=played, onset_s=np.where(played, onset_s, np.nan), offset_s=np.where(played, offset_s, np.nan),
        velocity=np.where(played, rng.integers(1, 128, n), 0), perf_pitch=np.where(played, pitch, -1),
        sustain=[(float(t), int(v)) for t, v in zip(np.sort(rng.uniform(1, 1 + 32 * period, 6)), [100, 0] * 3)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aligned())
def test_random_performances_roundtrip(mf):
    err = roundtrip_errors(mf)
    assert err["onset_median_ms"] <= 3.0
    assert err["onset_p99_ms"] <= 20.0
    assert err["velocity_max"] <= V.VEL_STEP / 2
    assert err["duration_ratio_median"] <= 0.05


@settings(max_examples=30, deadline=None)
@given(aligned())
def test_emitted_tokens_parse_back(mf):
    from instruct_tokenizer.encode import encode_match

    enc = encode_match(mf)
    vocab = set(V.score_vocabulary()) | set(V.perf_vocabulary())
    for t in enc.score + enc.perf:
        type_, value = V.parse(t)
        assert V.tok(type_, value) == t and t in vocab
