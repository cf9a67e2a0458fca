"""``instruct-render`` with several scores or a folder: one NAME.mid per score, the segments of the pieces
batched together; a score that cannot be read is one error line and the others are still written."""
import miditoolkit
import pytest

from conftest import stderr_of
from museformer.render import DEFAULT_CHECKPOINT, main

needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


def score_midi(path, bars: int, pitch: int, velocities=(64,)) -> None:
    """A small score MIDI: 4/4, a C-major arpeggio of quarter notes per bar, 480 ticks per quarter; the bars'
    velocities cycle through ``velocities`` (a notation program's export plays each dynamic level so)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.time_signature_changes.append(miditoolkit.TimeSignature(4, 4, 0))
    piano = miditoolkit.Instrument(program=0)
    for k in range(4 * bars):
        piano.notes.append(miditoolkit.Note(velocity=velocities[k // 4 % len(velocities)],
                                            pitch=pitch + (0, 4, 7, 12)[k % 4], start=480 * k, end=480 * k + 400))
    midi.instruments.append(piano)
    midi.dump(str(path))


@pytest.fixture
def folder(tmp_path):
    scores = tmp_path / "scores"
    scores.mkdir()
    score_midi(scores / "a.mid", 3, 60)
    score_midi(scores / "b.mid", 5, 55, velocities=(49, 96))  # p, f, p, f, p
    (scores / "notes.txt").write_text("not a score: left out of the folder's scores")
    return scores


@needs_release
def test_a_folder_renders_one_midi_per_score(folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = stderr_of(main, [folder, "-o", out, "--batch", "2"])
    assert code == 0, err
    log = capsys.readouterr().out  # b's velocities are two dynamic levels, read as such and said so; a's one
    assert f"{folder / 'b.mid'}: dynamics: 5 marks read from the note velocities (p, f;" in log
    assert f"{folder / 'a.mid'}: dynamics" not in log
    assert sorted(p.name for p in out.iterdir()) == ["a.mid", "b.mid"]
    for name, notes in (("a.mid", 12), ("b.mid", 20)):
        assert len(miditoolkit.MidiFile(str(out / name)).instruments[0].notes) == notes  # every score note


@needs_release
def test_a_bad_score_is_one_line_and_the_others_are_written(folder, tmp_path):
    (folder / "junk.mid").write_bytes(b"not midi at all")
    out = tmp_path / "out"
    code, err = stderr_of(main, [folder / "a.mid", folder / "junk.mid", folder / "b.mid", "-o", out])
    assert code == 1
    lines = [line for line in err.splitlines() if "error" in line]  # the rest: the progress bar
    assert len(lines) == 1 and "junk.mid" in lines[0] and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["a.mid", "b.mid"]


@pytest.mark.parametrize("case", ["midi-name", "missing", "collision", "empty-folder"])
def test_bad_score_lists_are_one_line_and_write_nothing(case, folder, tmp_path):
    argv = {"midi-name": [folder, "-o", tmp_path / "out.mid"],
            "missing": [folder / "a.mid", tmp_path / "none.mid", "-o", tmp_path / "out"],
            "collision": [folder / "a.mid", folder / "a.mid", "-o", tmp_path / "out"],
            "empty-folder": [tmp_path / "empty", "-o", tmp_path / "out"]}[case]
    (tmp_path / "empty").mkdir()
    code, err = stderr_of(main, argv)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.mid").exists()



def _musicxml_without_ids_or_unfoldable_repeats() -> str:
    """Two 4/4 bars of quarters and no note ids (as notation programs write MusicXML): "Adagio", p, a grace
    note; the second bar ends a first ending that has no start and no number (Finale's Dolet exports)."""
    def notes(steps, octave):
        return "".join(f"<note><pitch><step>{s}</step><octave>{octave}</octave></pitch><duration>1</duration>"
                       f"<voice>1</voice><type>quarter</type></note>" for s in steps)

    grace = "<note><grace/><pitch><step>B</step><octave>3</octave></pitch><voice>1</voice><type>eighth</type></note>"
    bar1 = ('<measure number="1"><attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type>'
            "</time></attributes><direction><direction-type><words>Adagio</words></direction-type></direction>"
            "<direction><direction-type><dynamics><p/></dynamics></direction-type></direction>"
            + grace + notes("CDEF", 4) + "</measure>")
    bar2 = ('<measure number="2">' + notes("GABG", 4) + '<barline location="right"><ending number="" type="stop"/>'
            '<repeat direction="backward"/></barline></measure>')
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            f'<part-name>Piano</part-name></score-part></part-list><part id="P1">{bar1}{bar2}</part></score-partwise>')


@needs_release
def test_a_musicxml_as_notation_programs_write_it_is_rendered(tmp_path, capsys, caplog):
    score = tmp_path / "export.musicxml"
    score.write_text(_musicxml_without_ids_or_unfoldable_repeats())
    out = tmp_path / "export.mid"
    code, err = stderr_of(main, [score, "-o", out])
    assert code == 0 and "Traceback" not in err, err
    log = capsys.readouterr().out
    assert "estimated from the tempo word" in log  # its Adagio read (no note ids)
    assert "markings: 1 dynamic, 1 tempo text\n" in log  # its p and Adagio, said
    assert any(str(score) in r.getMessage() and "could not be unfolded" in r.getMessage() for r in caplog.records)
    assert len(miditoolkit.MidiFile(str(out)).instruments[0].notes) == 9  # each bar once, the grace note too


def test_the_markings_line_counts_what_a_score_gives_the_model():
    from museformer.render import markings_line

    tokens = ("Bar_None Pos_0 Dyn_p TempoWord_slow Wedge_cresc Pitch_60 Mark_staccato Slur_start Pos_4 Wedge_end "
              "Pitch_62 Mark_accent Slur_end Bar_None DynLevel_p Pos_0 Dyn_f Pitch_64 Mark_fermata").split()
    assert markings_line(tokens) == "markings: 2 dynamics, 1 hairpin, 1 tempo text, 1 slur, 2 articulations, 1 fermata"
    assert markings_line("Bar_None Pos_0 Pitch_60".split()).startswith("markings: none read")


@needs_release
def test_the_log_says_what_an_asked_style_does(folder, tmp_path, capsys):
    """A style other than mid is one log line naming each asked level and what it does to its plan (a default
    render prints none)."""
    code, err = stderr_of(main, [folder / "a.mid", "-o", tmp_path / "a.mid", "--style", "tempo=fast,dynamics=loud"])
    assert code == 0, err
    style = [line for line in capsys.readouterr().out.splitlines() if line.startswith("style:")]
    assert len(style) == 1
    assert "tempo=fast (beat periods x0.95)" in style[0] and "dynamics=loud (velocity +2.7)" in style[0]
    code, err = stderr_of(main, [folder / "a.mid", "-o", tmp_path / "b.mid"])
    assert code == 0 and "style:" not in capsys.readouterr().out
