"""Our fast match parser agrees with partitura's load_match on the aligned notes."""
import warnings

import numpy as np
import pytest

from conftest import SHARED, VIENNA
from instruct_tokenizer.match import load_match

FILES = sorted((VIENNA / "match").glob("*.match"))[::5]
NASAP = SHARED / "datasets" / "nasap"
NASAP_FILES = [NASAP / "Schumann/Kreisleriana/3/ParkJH06.match", NASAP / "Haydn/Keyboard_Sonatas/6-1/ChenC01.match"]


@pytest.mark.parametrize("path", FILES + [p for p in NASAP_FILES if p.exists()], ids=lambda p: p.name)
def test_agrees_with_partitura(path):
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
