"""``score.as_score_midi``: the score a notation program's MIDI export gives (markings dropped, staccato
notes a half and staccatissimo notes a third of their notated length, a chord's notes sharing its marks),
which the plans' plain training scores now are (``scripts/fit_plan.py --plain-view``)."""
import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import score_file_to_tokens
from instruct_tokenizer.score import (PLAIN_VIEWS, as_score_midi, as_score_midi_with_dynamics, has_markings,
                                      plain_view, score_timeline, without_markings)

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
    assert plain_view(drawn, "score-midi-dynamics") == as_score_midi_with_dynamics(drawn)
    assert set(PLAIN_VIEWS) == {"markings-dropped", "score-midi", "score-midi-dynamics"}
    with pytest.raises(ValueError, match="unknown plain view 'deadpan'"):
        plain_view(drawn, "deadpan")


def test_the_dynamics_view_keeps_the_levels_an_export_plays_and_reads_back():
    """``score-midi-dynamics``: the export's lengths, and a ``Dyn`` after the ``Pos`` of each onset group where
    the played level changes: p, then f (an sf changes no level, a restated f states nothing); the first
    level held before any dynamic is mf (as MuseScore plays it). No other marking survives."""
    q = V.GRID
    bar = ["Bar_None", "TimeSig_4/4", "QPM_100"]
    notes = lambda pos, *marks: [f"Pos_{pos}", *marks, "Pitch_60", f"Dur_{q}", "Staff_1"]  # noqa: E731
    drawn = (bar + notes(0) + notes(q) + notes(2 * q, "Dyn_p", "Wedge_cresc") + notes(3 * q)
             + bar + notes(0, "Dyn_sf") + notes(q, "Dyn_f") + notes(2 * q, "Dyn_f", "Slur_start") + notes(3 * q))
    view = as_score_midi_with_dynamics(drawn)
    assert [t for t in view if has_markings([t])] == ["Dyn_mf", "Dyn_p", "Dyn_f"]
    assert view.index("Dyn_p") == view.index(f"Pos_{2 * q}") + 1 and view[view.index("Dyn_f") - 1] == f"Pos_{q}"
    assert [t for t in view if not has_markings([t])] == as_score_midi(drawn)
    # one level throughout (only p, or no dynamic at all): the velocities state nothing
    assert as_score_midi_with_dynamics(bar + notes(0, "Dyn_p") + notes(q)) == as_score_midi(bar + notes(0) + notes(q))


def test_a_score_midi_s_velocities_are_read_as_dynamics(tmp_path):
    """A MuseScore export's velocities (p 49, f 96): ``Dyn`` where the level changes and holds; a single
    louder chord (an accent) is no new level; a file at one velocity, or read without markings, has none."""
    import miditoolkit

    from instruct_tokenizer.scorefile import load_score_midi, midi_dynamics

    velocities = [49, 49, 112, 49, 96, 96, 96, 49, 49]  # p, an accented chord, p, f, p
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    inst = miditoolkit.Instrument(program=0)
    inst.notes = [miditoolkit.Note(velocity=v, pitch=60, start=480 * k, end=480 * (k + 1)) for k, v in enumerate(velocities)]
    midi.instruments = [inst]
    midi.dump(str(tmp_path / "s.mid"))
    tokens = score_file_to_tokens(str(tmp_path / "s.mid"), markings=True, instruct=False)
    assert [t for t in tokens if t.startswith("Dyn_")] == ["Dyn_p", "Dyn_f", "Dyn_p"]
    assert tokens[tokens.index("Dyn_f") - 1] == f"Pos_{0}" and tokens.index("Dyn_f") > tokens.index("Bar_None", 1)
    assert not has_markings(score_file_to_tokens(str(tmp_path / "s.mid"), markings=False, instruct=False))
    assert midi_dynamics(np.arange(4.0), np.array([80, 80, 96, 80])) is None  # one level with an accent
    # a recorded performance's velocities (dozens of values; the benchmark's human files: at most 58 % of
    # notes on their 12 commonest) state no dynamics, even where they swing from soft to loud
    played = np.concatenate([np.arange(30, 70), np.arange(70, 110)])  # 80 notes, 80 values
    assert midi_dynamics(np.arange(80.0), played) is None
    exported = np.repeat([49, 96], 40)  # the same swing as an export plays it
    assert [m[0] for m in midi_dynamics(np.arange(80.0), exported) if m[0]] == [("Dyn_p",), ("Dyn_f",)]
    assert load_score_midi(str(tmp_path / "s.mid")).marks is None
