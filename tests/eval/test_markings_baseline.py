"""The markings baseline: notated dynamics -> velocity, tempo words -> beat period, valid grammar."""
from pathlib import Path

import numpy as np
import pytest

from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance
from instruct_tokenizer.markings_baseline import (DEFAULT_PERIOD_S, DYN_VELOCITY, MarkingsError, markings_perf,
                                                 xml_markings_perf)

REPO = Path(__file__).resolve().parents[2]
VIENNA = REPO / "data" / "vienna4x22"


def _bar(*groups, ts=None):
    out = [V.BAR_TOKEN] + ([V.tok(V.TIME_SIG, ts)] if ts else [])
    for pos, marks, notes in groups:
        out += [V.tok(V.POS, pos)] + list(marks)
        for pitch, note_marks in notes:
            out += [V.tok(V.PITCH, pitch), V.tok(V.DUR, 24), V.tok(V.STAFF, 1)] + list(note_marks)
    return out


def test_rules_on_tokens():
    score = (_bar((0, ["Dyn_p", "TempoWord_fast"], [(60, ["Mark_staccato"])]),
                  (24, ["Wedge_cresc"], [(62, [])]), (48, [], [(64, ["Mark_accent"])]), (72, [], [(65, [])]), ts="4/4")
             + _bar((0, ["Dyn_f"], [(67, [])]), (24, ["TempoWord_rit"], [(69, [])]), (48, [], [(71, [])]),
                    (72, [], [(72, [])])))
    perf = markings_perf(score)
    d = decode_performance(score, perf)
    assert d.played.all() and len(d.velocity) == 8
    vel = d.velocity
    assert abs(vel[0] - DYN_VELOCITY["p"]) <= 1 and abs(vel[4] - DYN_VELOCITY["f"]) <= 1
    assert vel[1] < vel[3] < vel[4]  # the crescendo ramps from p toward f
    assert vel[2] > vel[1] + 8  # accent
    assert all(t.startswith("Time_0") for t in perf if t.startswith("Time_"))
    assert not [t for t in perf if t.startswith(("Sus_", "Soft_")) and not t.endswith("None")]
    assert d.group_period_s[0] == pytest.approx(0.43, rel=0.03)  # Allegro class, quarter beat
    assert d.group_period_s[7] > d.group_period_s[5] * 1.1  # rit
    arts = [float(t[4:]) for t in perf if t.startswith("Art_")]
    assert arts[0] == pytest.approx(-1.0) and arts[1] == 0.0  # staccato halves the notated length


def test_unmarked_score_is_120_bpm_constant():
    score = _bar((0, [], [(60, [])]), (24, [], [(64, [])]))
    d = decode_performance(score, markings_perf(score))
    assert np.allclose(d.group_period_s, DEFAULT_PERIOD_S, rtol=0.03)
    assert len(set(d.velocity // 2)) == 1


def test_compound_meter_beat():
    score = _bar((0, ["TempoWord_fast"], [(60, [])]), (36, [], [(64, [])]), ts="6/8")
    d = decode_performance(score, markings_perf(score))
    assert d.group_period_s[0] == pytest.approx(0.43 / 1.5, rel=0.03)


def test_vienna_musicxml_with_match():
    xml = VIENNA / "musicxml" / "Schubert_D783_no15.musicxml"
    score, perf = xml_markings_perf(str(xml), str(VIENNA / "match" / "Schubert_D783_no15_p01.match"))
    d = decode_performance(score, perf)
    assert d.played.all()
    assert {DYN_VELOCITY[k] // 2 for k in ("p", "f", "pp")} <= set(d.velocity // 2)
    from instruct_tokenizer.encode import encode_match
    from instruct_tokenizer.match import load_match
    from instruct_tokenizer.metrics import per_note_features, pearson

    human = encode_match(load_match(str(VIENNA / "match" / "Schubert_D783_no15_p01.match")))
    mine = per_note_features(human.score, perf)  # same notes, same grammar without the marking tokens
    ref = per_note_features(human.score, human.perf)
    assert pearson(mine["velocity"], ref["velocity"]) > 0.2


def test_bad_xml_names_the_file(tmp_path):
    with pytest.raises(MarkingsError, match="nope.musicxml: file not found"):
        xml_markings_perf(str(tmp_path / "nope.musicxml"))
    bad = tmp_path / "bad.musicxml"
    bad.write_text("<score-partwise><part id='P1'><measure")
    with pytest.raises(MarkingsError, match="bad.musicxml"):
        xml_markings_perf(str(bad))
