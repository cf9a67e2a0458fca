"""The beat grid (``instruct-tokenize build --beat-grid``): one tempo per quarter-note beat, the onset groups
between two beats repeating the beat's tempo token and carrying their own timing in ``Time``; lossless within
today's roundtrip bounds on the files the relative encoding is checked on; off, the streams are unchanged."""
import numpy as np
import pytest

from instruct_tokenizer import vocab as V
from instruct_tokenizer.build import BuildConfig, build
from instruct_tokenizer.decode import decode_performance
from instruct_tokenizer.encode import beat_grid_targets, encode_match, on_beat
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.match import load_match
from instruct_tokenizer.roundtrip import roundtrip_errors
from instruct_tokenizer.score import score_timeline
from test_relative_tempo import FILES, NASAP_FILES, _assert_within_bounds, _qpm


def _tempo_values(perf):
    return [int(V.parse(t)[1]) for t in perf if token_type(t) in (V.TEMPO, V.TEMPO_REL)]


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_vienna_roundtrip_is_lossless(path, relative):
    mf, qpm = load_match(str(path)), _qpm(path)
    err = roundtrip_errors(mf, qpm, relative_tempo=relative, beat_grid=True)
    _assert_within_bounds(err)
    assert err["notes"] == roundtrip_errors(mf, qpm, relative_tempo=relative)["notes"]  # no extra outliers


@pytest.mark.parametrize("name", NASAP_FILES)
def test_nasap_roundtrip_is_lossless(nasap, name):
    path = nasap / name
    _assert_within_bounds(roundtrip_errors(load_match(str(path)), _qpm(path), relative_tempo=True, beat_grid=True))


def test_off_beat_groups_hold_the_beats_tempo():
    """Within a beat every off-beat group after the first takes one tempo token, the beat's; the tokens
    change far less from group to group than without the grid, and the stream keeps the grammar's slots."""
    path = FILES[0]  # Chopin op. 10/3: semiquaver accompaniment
    mf, qpm = load_match(str(path)), _qpm(path)
    grid = encode_match(mf, qpm=qpm, relative_tempo=True, beat_grid=True)
    plain = encode_match(mf, qpm=qpm, relative_tempo=True)
    assert grid.score == plain.score
    assert [token_type(t) for t in grid.perf] == target_slots(grid.score, relative=True)
    tl = score_timeline(grid.score)
    values = np.array(_tempo_values(grid.perf))
    _, held = beat_grid_targets(tl, np.asarray(decode_performance(grid.score, grid.perf).group_grid_s))
    hold = np.isfinite(held)
    assert hold.sum() >= 10
    both = hold[1:] & hold[:-1]  # two held groups in a row: one beat
    assert both.sum() >= 5 and np.all(values[1:][both] == values[:-1][both])
    assert not hold[on_beat(tl)].any()  # a group on a beat chooses its own tempo
    steps = lambda v: np.mean(np.abs(np.diff(v)))  # noqa: E731
    assert steps(values) < 0.7 * steps(np.array(_tempo_values(plain.perf)))


def test_targets_between_two_beats_lie_on_a_line():
    """Hand-made: groups at 0, 1/4, 1/2, 3/4 and 1 quarter with uneven performed times; the three off-beat
    targets move onto the line between the beats and the two after the first hold the beat's period; a gap
    of more than two quarters keeps its own targets."""
    from instruct_tokenizer.score import Timeline
    q = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 4.0])
    tl = Timeline(prefix=[], n_bars=2, note_group=np.arange(7), note_pitch=np.full(7, 60),
                  note_dur_q=np.full(7, 0.25), note_staff=np.zeros(7, int), group_q=q, group_bar=np.zeros(7, int))
    target = np.array([1.0, 1.2, 1.25, 1.4, 1.5, 1.9, 3.0])
    out, held = beat_grid_targets(tl, target)
    assert np.allclose(out[:5], [1.0, 1.125, 1.25, 1.375, 1.5])
    assert out[5] == 1.9  # between beats 1 and 4: three quarters apart, not on the grid
    assert np.isfinite(held).tolist() == [False, False, True, True, False, False, False]
    assert np.allclose(held[2:4], 0.5)  # the beat's period: 0.5 s for its quarter


def test_build_flag_writes_the_grid(tmp_path):
    """``build`` with ``beat_grid`` gives the same score streams and lines as without it."""
    outs = {}
    for flag in (False, True):
        cfg = BuildConfig(split=(1.0, 0.0, 0.0), progress=False, notated_tempo=True, relative_tempo=True,
                          beat_grid=flag)
        build([str(p) for p in FILES[:2]], str(tmp_path / f"out{flag}"), cfg)
        outs[flag] = {s: (tmp_path / f"out{flag}" / f"train.{s}").read_text().splitlines() for s in ("score", "perf")}
    assert outs[True]["score"] == outs[False]["score"]
    assert len(outs[True]["perf"]) == len(outs[False]["perf"]) and outs[True]["perf"] != outs[False]["perf"]
