"""Our fast match parser agrees with partitura's load_match on the aligned notes."""
import warnings

import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer.match import load_match

FILES = sorted((VIENNA / "match").glob("*.match"))[::5]
NASAP_FILES = ["Schumann/Kreisleriana/3/ParkJH06.match", "Haydn/Keyboard_Sonatas/6-1/ChenC01.match"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_agrees_with_partitura(path):
    _agrees_with_partitura(path)


@pytest.mark.parametrize("name", NASAP_FILES)
def test_agrees_with_partitura_on_nasap(nasap, name):
    _agrees_with_partitura(nasap / name)


def _agrees_with_partitura(path):
    import partitura as pt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        perf, alignment = pt.load_match(str(path))
    pna = perf.note_array()
    ours = load_match(str(path))
    by_id = {str(n["id"]): n for n in pna}
    matched = [a for a in alignment if a["label"] == "match"]
    # partitura drops grace notes with negative durations (5.0 files); we keep them
    assert ours.n_played >= len(matched)
    ours_onsets = {}
    for i, anchor in enumerate(ours.anchor):
        if ours.played[i]:
            ours_onsets[anchor] = (ours.onset_s[i], ours.velocity[i], ours.perf_pitch[i])
    checked = 0
    for a in matched:
        note = by_id[str(a["performance_id"])]
        onset, vel, pitch = ours_onsets[str(a["score_id"])]
        assert abs(onset - note["onset_sec"]) < 1e-4  # partitura stores float32 seconds
        assert vel == note["velocity"] and pitch == note["pitch"]
        checked += 1
    assert checked == len(matched) > 0
    deleted = [a for a in alignment if a["label"] == "deletion"]
    assert ours.n_notes - ours.n_played >= len(deleted)


BAD = VIENNA.parents[1] / "tests" / "bad_inputs"


@pytest.mark.parametrize("name, reason, fixed", [
    ("velocity_out_of_range", "velocity 200 outside the MIDI range 1-127", ("4720,200,", "4720,70,")),
    ("pitch_out_of_range", "score pitch 134 outside the MIDI range 0-127", ("[D,n],10,", "[D,n],4,")),
    ("performed_pitch_out_of_range", "performed pitch 130 outside the MIDI range 0-127", ("(n9,130,", "(n9,62,")),
])
def test_note_outside_the_midi_range_is_a_bad_file(name, reason, fixed):
    """A pitch or velocity that MIDI cannot carry makes the file bad, with the line and the value (it
    used to be clipped into a training note); the same file with that one value in range reads."""
    from instruct_tokenizer.match import MatchParseError, parse_text

    path = BAD / f"{name}.match"
    with pytest.raises(MatchParseError, match=f"line 14: {reason}"):
        load_match(str(path))
    text = path.read_text()
    assert text.count(fixed[0]) == 1
    mf = parse_text(text.replace(*fixed))
    assert mf.n_played == 16 and mf.velocity.max() <= 127 and mf.pitch.max() <= 127
