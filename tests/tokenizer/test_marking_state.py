"""Marking state (``--marking-state``): the dynamic level, open wedge and open rit./accel. in force at
each bar start, in every bar header; a pure function of the score tokens that adds no score time and no
performance slots; detected from a model's dictionary at render time; and the warm start that grows a
checkpoint's dictionary for the new tokens."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.build import BuildConfig, build
from instruct_tokenizer.encode import score_file_to_tokens, split_bars
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.score import score_timeline, with_marking_state

XML = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
STATE_TYPES = set(V.MARKING_STATE_TYPES)

NOTE = ["Pitch_60", "Dur_24", "Staff_1"]
HAND_MADE = (["ITempo_mid", "Bar_None", "QPM_120", "Pos_0", "Dyn_p", "Wedge_cresc", "TempoWord_rit", *NOTE,
              "Bar_None", "TimeSig_3/4", "Pos_0", "Wedge_end", *NOTE, "Pos_24", "Dyn_fp", "TempoWord_atempo", *NOTE,
              "Bar_None", "Pos_0", "Dyn_sf", "Wedge_dim", *NOTE,
              "Bar_None"])


def _state_per_bar(tokens):
    _, bars = split_bars(tokens)
    return [[t for t in bar if token_type(t) in STATE_TYPES] for bar in bars]


def test_state_of_each_bar_start():
    out = with_marking_state(HAND_MADE)
    assert _state_per_bar(out) == [[], ["DynLevel_p", "WedgeOpen_cresc", "TempoMode_rit"],
                                   ["DynLevel_p"],  # fp leaves p; a tempo closes the rit.
                                   ["DynLevel_p", "WedgeOpen_dim"]]  # sf is no level
    bar2 = out.index("TimeSig_3/4")
    assert out[bar2 + 1:bar2 + 4] == ["DynLevel_p", "WedgeOpen_cresc", "TempoMode_rit"]  # after the header


def test_state_is_idempotent_and_adds_no_time_or_slots():
    out = with_marking_state(HAND_MADE)
    assert with_marking_state(out) == out
    assert [t for t in out if token_type(t) not in STATE_TYPES] == HAND_MADE
    assert target_slots(out) == target_slots(HAND_MADE)
    np.testing.assert_array_equal(score_timeline(out).group_q, score_timeline(HAND_MADE).group_q)


def test_musicxml_render_path_carries_the_state():
    marked = score_file_to_tokens(str(XML), markings=True)
    state = score_file_to_tokens(str(XML), markings=True, marking_state=True)
    assert [t for t in state if token_type(t) not in STATE_TYPES] == marked
    per_bar = _state_per_bar(state)
    first_dyn = next(b for b, bar in enumerate(split_bars(marked)[1]) if any(token_type(t) == V.DYN for t in bar))
    assert all(sum(token_type(t) == V.DYN_LEVEL for t in bar) == 1 for bar in per_bar[first_dyn + 1:])
    assert score_file_to_tokens(str(XML), marking_state=True) == score_file_to_tokens(str(XML))  # no markings


def test_dictionary_appends_later_tokens_after_every_older_token():
    """Each addition sits after everything older: markings, QPM, marking state, performance extensions,
    After_fermata, the fine Time and wide pedal values, the relative tempo tokens."""
    toks = V.dictionary_tokens()
    late = (V.marking_tokens() + V.qpm_tokens() + V.marking_state_tokens() + V.perf_extension_tokens()
            + V.after_fermata_tokens() + V.perf_fine_tokens() + V.relative_tempo_tokens())
    assert toks[-len(late):] == late
    assert len(set(toks)) == len(toks)
    assert set(V.marking_state_tokens()) <= set(V.score_vocabulary())
    assert set(V.perf_extension_tokens()) <= set(V.perf_vocabulary())
    assert set(V.perf_fine_tokens()) <= set(V.perf_vocabulary())


def test_build_writes_state_only_where_markings_are(tmp_path):
    cfg = BuildConfig(split=(0.7, 0.3, 0.0), seed=0, xml_markings=True, markings_dropout=1.0, marking_state=True,
                      progress=False, cache_dir=str(tmp_path / "cache"))
    build([str(VIENNA / "match")], str(tmp_path / "tok"), cfg)
    for split, has_state in (("train", False), ("valid", True)):  # dropout 1.0: train has no markings
        lines = (tmp_path / "tok" / f"{split}.score").read_text().splitlines()
        assert lines
        assert any(token_type(t) in STATE_TYPES for line in lines for t in line.split()) == has_state
    counts = dict(line.split() for line in (tmp_path / "tok" / "dict.txt").read_text().splitlines())
    assert int(counts["DynLevel_p"]) + int(counts["DynLevel_f"]) > 0


def test_renderer_detects_marking_state():
    from fairseq.data import Dictionary

    from museformer.render import Renderer

    def features(counts):
        d = Dictionary()
        for t in V.dictionary_tokens():
            d.add_symbol(t, n=counts.get(V.parse(t)[0], 0))
        return Renderer([], SimpleNamespace(source_dictionary=d, target_dictionary=d), SimpleNamespace()).score_features

    assert not features({"Dyn": 3})["marking_state"]
    assert features({"Dyn": 3, "DynLevel": 2})["marking_state"]
    assert not features({"Dyn": 3, "DynLevel": 2})["after_fermata"]  # trained before After_fermata
    assert features({"Dyn": 3, "DynLevel": 2, "After": 1})["after_fermata"]


FERMATA_BARS = ["Bar_None", "Pos_0", *NOTE, "Pos_24", "Pitch_62", "Dur_24", "Staff_1", "Mark_fermata",
                "Pitch_67", "Dur_24", "Staff_2",
                "Bar_None", "Pos_0", "Dyn_p", *NOTE, "Pos_24", *NOTE]


def test_after_fermata_marks_the_next_onset_group_even_across_a_bar():
    out = with_marking_state(FERMATA_BARS)
    assert out.count(V.AFTER_FERMATA) == 1
    assert out[out.index(V.AFTER_FERMATA) - 1] == "Pos_0"
    assert out.index(V.AFTER_FERMATA) > out.index("Bar_None", 1)  # the first onset of bar 2
    assert with_marking_state(out) == out
    assert target_slots(out) == target_slots(FERMATA_BARS)
    np.testing.assert_array_equal(score_timeline(out).group_q, score_timeline(FERMATA_BARS).group_q)
    assert V.AFTER_FERMATA not in with_marking_state(FERMATA_BARS, after_fermata=False)
    bar_1 = FERMATA_BARS[:FERMATA_BARS.index("Bar_None", 1)]
    assert V.AFTER_FERMATA not in with_marking_state(bar_1)  # the last onset's fermata: no next group


@pytest.mark.parametrize("old_rows", [5, 8])
def test_grow_rows_keeps_old_rows_and_zeros_new_ones(old_rows):
    from museformer.warmstart import grow_rows

    current = torch.randn(8, 4)
    old = torch.randn(old_rows, 4)
    state = grow_rows({"decoder.embed.tokens.weight": old.clone()}, "decoder", "embed.tokens.weight", current)
    grown = state["decoder.embed.tokens.weight"]
    assert grown.shape == (8, 4)
    torch.testing.assert_close(grown[:old_rows], old)
    assert torch.count_nonzero(grown[old_rows:]) == 0
