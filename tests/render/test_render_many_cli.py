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

