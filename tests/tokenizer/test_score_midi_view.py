"""``score.as_score_midi``: the score a notation program's MIDI export gives (markings dropped, staccato
notes a half and staccatissimo notes a third of their notated length, a chord's notes sharing its marks),
which the plans' plain training scores now are (``scripts/fit_plan.py --plain-view``)."""
import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import score_file_to_tokens
from instruct_tokenizer.score import (PLAIN_VIEWS, as_score_midi, has_markings, plain_view, score_timeline,
                                      without_markings)

Q = V.GRID  # grid steps per quarter


def _drawn():
    """One bar: a staccato quarter; a two-note chord (staff 1) with the staccatissimo on its top note only,
    beside a bass quarter (staff 2) with no mark; a grace note marked staccato; a slurred half note."""
    return ["Bar_None", "TimeSig_4/4", "QPM_100",
            "Pos_0", "Dyn_p", "Pitch_60", f"Dur_{Q}", "Staff_1", "Mark_staccato",
            f"Pos_{Q}", "Pitch_48", f"Dur_{Q}", "Staff_2", "Pitch_64", f"Dur_{Q}", "Staff_1",
            "Pitch_67", f"Dur_{Q}", "Staff_1", "Mark_staccatissimo",
            f"Pos_{2 * Q}", "Pitch_71", "Dur_0", "Staff_1", "Mark_staccato",
            "Pitch_72", f"Dur_{2 * Q}", "Staff_1", "Slur_start"]


def test_marked_notes_are_shortened_as_a_notation_program_plays_them():
    view = as_score_midi(_drawn())
    assert not has_markings(view) and "QPM_100" in view
    tl = score_timeline(view)
    # staccato quarter -> an eighth; the chord's two staff-1 notes -> a third; the bass, grace and half kept
    assert list(tl.note_dur_q) == [0.5, 1.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 2.0]
    assert list(tl.note_pitch) == list(score_timeline(_drawn()).note_pitch)


def test_on_a_real_musicxml_only_marked_notes_change_length():
    """Vienna's Mozart K331 (staccato notes in it): the view has the notes of ``without_markings`` in the
    same order, shorter exactly where a chord at that onset, staff and length carries a staccato."""
    marked = score_file_to_tokens(str(VIENNA / "musicxml" / "Mozart_K331_1st-mov.musicxml"), markings=True)
    plain, view = score_timeline(without_markings(marked)), score_timeline(as_score_midi(marked))
    assert np.array_equal(plain.note_pitch, view.note_pitch) and np.array_equal(plain.note_group, view.note_group)
    shorter = view.note_dur_q < plain.note_dur_q
    assert 0 < shorter.sum() < len(shorter) // 2 and not (view.note_dur_q > plain.note_dur_q).any()
    ratios = set(np.round(view.note_dur_q[shorter] / plain.note_dur_q[shorter], 2))
    assert ratios <= {0.5, 0.33, 0.34, 0.32}, ratios  # a half or a third, to the grid


def test_a_performance_encoded_against_the_score_midi_view_decodes_to_the_same_notes():
    """``encode_match(score_view=as_score_midi)`` (``instruct-tokenize build --dropout-view score-midi``):
    the score is the view of the marked score; the onsets decode identically and each key-down within
    one ``Art`` step (log2 0.04) of the notated-length encoding's, the shortened notes' ``Art`` larger."""
    from instruct_tokenizer.decode import decode_performance
    from instruct_tokenizer.encode import encode_match
    from instruct_tokenizer.match import load_match
    from instruct_tokenizer.musicxml import xml_info_of_match

    path = str(VIENNA / "match" / "Mozart_K331_1st-mov_p01.match")
    info, warning = xml_info_of_match(path)
    assert info is not None, warning
    mf = load_match(path)
    marked = encode_match(mf, marks=info.marks)
    view = encode_match(mf, marks=info.marks, score_view=as_score_midi)
    assert view.score == as_score_midi(marked.score)
    a, b = decode_performance(marked.score, marked.perf), decode_performance(view.score, view.perf)
    played = a.played & b.played
    assert played.sum() > 100 and np.array_equal(a.played, b.played)
    assert np.allclose(a.onset_s[played], b.onset_s[played])
    ratio = np.log2((b.offset_s - b.onset_s)[played] / (a.offset_s - a.onset_s)[played])
    assert np.abs(ratio).max() <= V.ART_STEP + 1e-6
    shorter = score_timeline(view.score).note_dur_q < score_timeline(marked.score).note_dur_q
    assert shorter.sum() == 8  # the excerpt's MusicXML holds 8 staccato marks, each on a single note


def test_build_refuses_a_dropout_view_without_dropout(tmp_path, capsys):
    from instruct_tokenizer.cli import main

    rc = main(["build", str(VIENNA), "--out", str(tmp_path / "tok"), "--dropout-view", "score-midi"])
    assert rc == 2 and "--dropout-view needs --markings-dropout" in capsys.readouterr().err


def test_plain_view_names_each_view():
    """``plain_view``: the one place a plain view's name is read (fit_plan.py, instruct-eval --plain-scores)."""
    drawn = _drawn()
    assert plain_view(drawn, "markings-dropped") == without_markings(drawn)
    assert plain_view(drawn, "score-midi") == as_score_midi(drawn) != without_markings(drawn)
    assert set(PLAIN_VIEWS) == {"markings-dropped", "score-midi"}
    with pytest.raises(ValueError, match="unknown plain view 'deadpan'"):
        plain_view(drawn, "deadpan")
