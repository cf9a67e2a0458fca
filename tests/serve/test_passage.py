"""Passage re-rendering (museformer/serve/passage.py) with the released model on a few bars."""
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance
from instruct_tokenizer.encode import split_bars, style_prefix
from instruct_tokenizer.grammar import target_slots, token_type, unison_repeats
from instruct_tokenizer.markings_baseline import markings_perf
from museformer.render import Sampling
from museformer.serve import passage as P
from serve_helpers import released_renderer

CHOPIN = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"


@pytest.fixture(scope="module")
def renderer():
    return released_renderer()


@pytest.fixture(scope="module")
def score(renderer):
    prefix, bars = split_bars(renderer.score_tokens(str(CHOPIN)))
    return prefix + [t for b in bars[:8] for t in b]


@pytest.fixture(scope="module")
def base(renderer, score):
    return renderer.render_tokens(score, Sampling(seed=1), progress=False)


def _bars(tokens):
    return split_bars(tokens)[1]


def test_whole_piece_equals_render_tokens_across_segments(renderer, score):
    """Bars [0, n) with no base are the renderer's own whole-piece rendering, segment stitching included."""
    prefix, bars = split_bars(score)
    short = prefix + [t for b in bars[:4] for t in b]
    old = renderer.max_positions
    renderer.max_positions = 300  # 3 segments of the 4 bars
    try:
        calls = []
        mine = P.render_bars(renderer, short, Sampling(seed=3),
                             progress=lambda d, t, bars: calls.append((d, t, [list(b) for b in bars])))
        theirs = renderer.render_tokens(short, Sampling(seed=3), progress=False)
    finally:
        renderer.max_positions = old
    assert mine == theirs
    assert len(calls) >= 2 and calls[-1][0] == calls[-1][1] == len(calls)
    final = _bars(mine)
    for _, _, bars in calls:  # the bars reported after each segment are final: they can be played early
        assert 0 < len(bars) <= len(final) and bars == final[:len(bars)]


@pytest.mark.parametrize("start,end", [(3, 6), (0, 2), (6, 8)])
def test_passage_keeps_every_other_bar_and_plays_every_note(renderer, score, base, start, end):
    new_score = style_prefix({"tempo": "fast", "dynamics": "loud"}) + [t for b in _bars(score) for t in b]
    perf = P.render_bars(renderer, new_score, Sampling(seed=7), base=base, start=start, end=end)
    old_bars, new_bars = _bars(base), _bars(perf)
    assert len(new_bars) == len(old_bars) == 8
    for k in range(8):
        if k < start:
            assert new_bars[k] == old_bars[k], f"bar {k + 1} before the passage changed"
        elif k >= end:  # after it: the same tokens but for the pedal slots of the passage's last group
            assert new_bars[k] == old_bars[k], f"bar {k + 1} after the passage changed"
    assert any(new_bars[k] != old_bars[k] for k in range(start, end)), "the passage was not re-rendered"
    assert [token_type(t) for t in perf] == target_slots(new_score)  # one event per score note, same bars
    repeats = [r for r, slot in zip(unison_repeats(score), target_slots(score)) if slot == V.VEL]
    assert [t == "Vel_Del" for t in perf if token_type(t) == V.VEL] == repeats  # every note played once
    sustain_parity = [sum(1 for b in bars[start:end] for t in b if token_type(t) == V.SUS and t != "Sus_None") % 2
                      for bars in (old_bars, new_bars)]
    if end < 8:
        assert sustain_parity[0] == sustain_parity[1], "the pedal state after the passage changed"


def test_end_join_keeps_the_base_gap_on_the_grid(renderer, score, base):
    perf = P.render_bars(renderer, score, Sampling(seed=11), base=base, start=2, end=5)
    joins = P.joins(score, perf, base, 2, 5)
    assert [j.bar for j in joins] == [2, 5]
    end = joins[1]
    assert end.grid_ms == pytest.approx(end.base_grid_ms, abs=1e-6)  # relative timing: nothing to stitch
    assert all(j.gap_ms == j.gap_ms for j in joins)  # measured (not NaN): both sides have notes


def _with_sustain(tokens, group_positions, values):
    """``tokens`` with the sustain slots of the onset groups at ``group_positions`` set to ``values``."""
    out = list(tokens)
    for p, vals in zip(group_positions, values):
        out[p + 1:p + 4] = [V.tok(V.SUS, v) for v in vals] + [V.tok(V.SUS, V.NONE)] * (3 - len(vals))
    return out


def _down_at(perf, t):
    state = False
    for time_s, down in perf.sustain:
        if time_s <= t:
            state = down
    return state


@pytest.mark.parametrize("first_group,last_group", [([0], []), ([], [100, 200, 300])])
def test_pedal_state_after_the_passage_is_the_base_state(score, first_group, last_group):
    """A passage with an odd number of extra sustain changes would invert every later pedal change: the
    join restores the base state, adding a change (a free slot in the passage's last group) or dropping
    that group's latest (its slots full)."""
    base = markings_perf(score)  # no pedal at all
    groups = [i for i, t in enumerate(base) if token_type(t) == V.TEMPO]
    tl = decode_performance(score, base).timeline
    start, end = 2, 5
    inside = [groups[g] for g in range(tl.n_groups) if start <= tl.group_bar[g] < end]
    after = [g for g in range(tl.n_groups) if tl.group_bar[g] >= end]
    new = _with_sustain(base, [inside[0], inside[-1]], [first_group, last_group])
    assert sum(t != "Sus_None" for t in new if token_type(t) == V.SUS) % 2 == 1
    assert _down_at(decode_performance(score, new), float("inf")), "uncorrected, the pedal stays down"
    fixed = P.carry_pedal_state(score, new, base, start, end)
    assert _bars(fixed)[:start] == _bars(base)[:start] and _bars(fixed)[end:] == _bars(base)[end:]
    assert sum(t != "Sus_None" for t in fixed if token_type(t) == V.SUS) % 2 == 0
    perf = decode_performance(score, fixed)
    assert not _down_at(perf, float("inf")), "the pedal is up after the passage, as in the base"
    if not last_group:  # the added change lands before the next group
        assert not _down_at(perf, perf.group_grid_s[after[0]])
    changed = [i for i, (a, b) in enumerate(zip(new, fixed)) if a != b]
    assert changed and all(inside[-1] < i <= inside[-1] + 3 for i in changed), "only the last group's slots"


def test_bad_ranges_and_bases_are_one_line(renderer, score, base):
    with pytest.raises(P.PassageError, match="bars 5-4"):
        P.render_bars(renderer, score, Sampling(), base=base, start=4, end=4)
    with pytest.raises(P.PassageError, match="score has bars 1-8"):
        P.render_bars(renderer, score, Sampling(), base=base, start=2, end=9)
    with pytest.raises(P.PassageError, match="needs the performance"):
        P.render_bars(renderer, score, Sampling(), start=2, end=4)
    with pytest.raises(P.PassageError, match="does not fit"):
        P.render_bars(renderer, score, Sampling(), base=base[:-3], start=2, end=4)


def test_a_passage_re_rendered_slower_is_slower(renderer, score, base):
    """The page's "steer a passage" with a style: bars 3-6 re-rendered with tempo=slow take longer than the
    same bars re-rendered at mid with the same seed (the style moves the tempo plan by about 5 %; when only
    the network read it, the plans' priors outweighed it)."""
    prefix, bars = split_bars(score)
    n_style = len(style_prefix({}))

    def passage_s(style):
        restyled = style_prefix(style) + prefix[n_style:] + [t for b in bars for t in b]
        tokens = P.render_bars(renderer, restyled, Sampling(seed=4), base=base, start=2, end=6)
        perf = decode_performance(restyled, tokens)
        tl = perf.timeline
        first = [int((tl.group_bar == b).argmax()) for b in (2, 6)]  # the first onset group of bars 3 and 7
        return perf.group_grid_s[first[1]] - perf.group_grid_s[first[0]]

    assert passage_s({"tempo": "slow"}) / passage_s({}) > 1.02  # 1.054 when written
