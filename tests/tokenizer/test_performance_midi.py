"""A MIDI file given as a score whose timing is a performance's (a recording, a transcription): its onsets
keep to no notated grid, so ``scorefile.performance_midi`` says so and gives its own tempo, which the
renderer plays it at. Scores are drawn from a real one (Vienna 4x22's K331 as the match file notates it) and
its pianist's timing from the same file, at the resolutions files come in."""
from pathlib import Path

import miditoolkit
import numpy as np
import pytest

from instruct_tokenizer.match import load_match
from instruct_tokenizer.scorefile import (MIN_JUDGED_ONSETS, PERFORMANCE_GRID_SHARE, grid_share,
                                          performance_midi)

MATCH = Path(__file__).resolve().parents[2] / "data" / "vienna4x22" / "match" / "Mozart_K331_1st-mov_p01.match"


@pytest.fixture(scope="module")
def k331():
    return load_match(str(MATCH))


def write(path: Path, onset_q: np.ndarray, pitch: np.ndarray, tpq: int, bpm: float = 120.0) -> Path:
    """One note per onset (quarters), an eighth long, at ``bpm``."""
    midi = miditoolkit.MidiFile(ticks_per_beat=tpq)
    midi.tempo_changes = [miditoolkit.TempoChange(bpm, 0)]
    piano = miditoolkit.Instrument(program=0)
    start = np.round(np.asarray(onset_q) * tpq).astype(int)
    piano.notes = [miditoolkit.Note(velocity=64, pitch=int(p), start=int(s), end=int(s) + tpq // 2)
                   for s, p in zip(start, pitch)]
    midi.instruments.append(piano)
    midi.dump(str(path))
    return path


def test_a_score_keeps_to_the_grid_even_shifted_and_a_pianist_does_not(k331):
    """The notated onsets read as a score at once, shifted by a few ticks (an export's odd pickup) and
    with the grid shifted part way (a tuplet group of odd length); the pianist's seconds (at 120 beats per
    minute: 2 beats a second) do not."""
    notated = k331.onset_q[k331.played]
    played = k331.onset_s[k331.played] * 2.0
    assert grid_share(notated) == 1.0
    assert grid_share(notated + 6 / 480) == 1.0
    half = len(notated) // 2
    assert grid_share(np.concatenate([notated[:half], notated[half:] + 1 / 5])) > 0.95
    assert grid_share(played) < PERFORMANCE_GRID_SHARE - 0.1


@pytest.mark.parametrize("tpq", [384, 480, 960])
def test_performance_midi_tells_the_pianist_s_file_from_the_score_s(k331, tmp_path, tpq):
    played = k331.played
    score = write(tmp_path / "score.mid", k331.onset_q[played], k331.pitch[played], tpq)
    performance = write(tmp_path / "played.mid", k331.onset_s[played] * 100 / 60, k331.perf_pitch[played], tpq,
                        bpm=100.0)
    assert performance_midi(str(score)) is None
    found = performance_midi(str(performance))
    assert found is not None and found.grid_share < PERFORMANCE_GRID_SHARE
    assert found.qpm == pytest.approx(100.0, abs=1e-6)  # its own tempo, the pace it was played at
    assert "reads as a performance" in found.warning("played.mid")


def test_too_few_notes_or_a_coarse_file_is_not_judged(k331, tmp_path):
    played = k331.onset_s[k331.played] * 2.0
    pitch = k331.perf_pitch[k331.played]
    assert performance_midi(str(write(tmp_path / "few.mid", played[:MIN_JUDGED_ONSETS - 1],
                                      pitch[:MIN_JUDGED_ONSETS - 1], 480))) is None
    assert performance_midi(str(write(tmp_path / "coarse.mid", played, pitch, 96))) is None
    assert performance_midi(str(tmp_path / "missing.mid")) is None  # the score reader names the reason
