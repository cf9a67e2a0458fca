"""tokenize -> decode reproduces the human performance within the acceptance bounds (files in data/)."""
import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance, tokens_to_midi
from instruct_tokenizer.encode import encode_match, pedal_changes
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.match import load_match
from instruct_tokenizer.roundtrip import roundtrip_errors

FILES = sorted((VIENNA / "match").glob("*.match"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_roundtrip_bounds(path, tmp_path):
    err = roundtrip_errors(load_match(str(path)))
    try:
        assert err["onset_median_ms"] <= 3.0
        assert err["onset_p99_ms"] <= 20.0
        assert err["onset_end_ms"] <= err["onset_start_ms"] + 1.0  # no drift: only bin-width noise (<= 1 ms)
        assert err["velocity_max"] <= V.VEL_STEP / 2
        assert err["duration_ratio_median"] <= 0.05
        assert err["pedal_within_20ms"] == 1.0 and err["soft_within_20ms"] == 1.0  # every audible change
    except AssertionError:
        enc = encode_match(load_match(str(path)))
        (tmp_path / "score.txt").write_text(" ".join(enc.score))
        (tmp_path / "perf.txt").write_text(" ".join(enc.perf))
        print(f"failing tokens dumped to {tmp_path}: {err}")
        raise


@pytest.mark.parametrize("path", FILES[:4], ids=lambda p: p.name)
def test_perf_tokens_follow_grammar_and_parse(path, tmp_path):
    enc = encode_match(load_match(str(path)))
    slots = target_slots(enc.score)
    assert [token_type(t) for t in enc.perf] == slots
    for t in enc.score + enc.perf:
        type_, value = V.parse(t)
        assert V.tok(type_, value) == t
    assert enc.score.count(V.BAR_TOKEN) == enc.perf.count(V.BAR_TOKEN)
    midi = tokens_to_midi(enc.score, enc.perf, str(tmp_path / "x.mid"))
    assert (tmp_path / "x.mid").exists() and not (tmp_path / "x.mid.part").exists()
    assert any(c.number == 64 for c in midi.instruments[0].control_changes)
