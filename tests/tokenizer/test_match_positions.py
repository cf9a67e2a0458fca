"""A note's position in its bar agrees with its OnsetInBeats in both conventions of the Beat field: beats
of the time signature's denominator (the "5.0" files) and quarter notes ((n)ASAP's and Vienna 4x22's
1.0.0 files in 6/8, 9/8, 2/2, ...)."""
import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer.match import load_match, parse_lines

HEADER_V1 = ["info(matchFileVersion,1.0.0).", "info(midiClockUnits,480).", "info(midiClockRate,500000).",
             "scoreprop(timeSignature,9/8,1:1,0,0.0000)."]
HEADER_V5 = ["info(matchFileVersion,5.0).", "info(midiClockUnits,480).", "info(midiClockRate,500000).",
             "meta(timeSignature,6/8,1,0.0)."]


def _v1_note(k: int, bar: int, beat: int, offset: str, onset_eighths: float) -> str:
    tick = 480 + int(onset_eighths * 240)
    return (f"snote(n{k}-1,[C,n],4,{bar}:{beat},{offset},1/8,{onset_eighths:.4f},{onset_eighths + 1:.4f},"
            f"[v1,staff1])-note(n{k},60,{tick},{tick + 200},64,0,0).")


def _v5_note(k: int, bar: int, beat: int, offset: str, onset_eighths: float) -> str:
    tick = 480 + int(onset_eighths * 240)
    return (f"snote(n{k}-1,[C,n],4,{bar}:{beat},{offset},1/8,{onset_eighths},{onset_eighths + 1},[])"
            f"-note(n{k},[C,n],4,{tick},{tick + 200},{tick + 200},64).")


def test_quarter_beats_in_9_8():
    """BWV 864's opening as (n)ASAP's 1.0.0 file writes it: beat 3 + 1/8 is the sixth eighth."""
    # (bar, beat, offset, OnsetInBeats in eighths) -> position in quarters
    notes = [(1, 1, "0", 0.0), (1, 3, "0", 4.0), (1, 3, "1/8", 5.0), (1, 4, "0", 6.0), (1, 4, "1/8", 7.0),
             (1, 5, "0", 8.0), (2, 1, "0", 9.0), (2, 2, "1/8", 12.0), (2, 5, "0", 17.0)]
    mf = parse_lines(HEADER_V1 + [_v1_note(k, *n) for k, n in enumerate(notes)])
    np.testing.assert_allclose(mf.pos_q, [0, 2, 2.5, 3, 3.5, 4, 0, 1.5, 4])
    np.testing.assert_allclose(mf.onset_q - mf.pos_q, [0] * 6 + [4.5] * 3)


def test_denominator_beats_in_6_8():
    """A "5.0" file counts eighths in 6/8: beat 4 is the bar's second half."""
    notes = [(1, 1, "0", 0.0), (1, 2, "0", 1.0), (1, 4, "0", 3.0), (1, 6, "1/16", 5.5), (2, 1, "0", 6.0),
             (2, 3, "0", 8.0)]
    mf = parse_lines(HEADER_V5 + [_v5_note(k, *n) for k, n in enumerate(notes)])
    np.testing.assert_allclose(mf.pos_q, [0, 0.5, 1.5, 2.75, 0, 1])
    np.testing.assert_allclose(mf.onset_q - mf.pos_q, [0] * 4 + [3] * 2)


@pytest.mark.parametrize("path", sorted((VIENNA / "match").glob("*.match")), ids=lambda p: p.name)
def test_vienna_positions_agree_with_onsets(path):
    """Every note of a measure (and repeat pass) gives the same bar start, onset minus position, and
    lies inside its bar: K331 and op. 38 are in 6/8, written in quarter-note beats."""
    mf = load_match(str(path))
    start_q = mf.onset_q - mf.pos_q
    for key in set(zip(mf.measure.tolist(), mf.repeat_pass.tolist())):
        k = (mf.measure == key[0]) & (mf.repeat_pass == key[1])
        assert np.ptp(start_q[k]) < 1e-6, (path.name, key)
    bar_q = {m: n * 4.0 / d for m, n, d in mf.time_sigs}
    assert mf.pos_q.min() >= 0 and mf.pos_q.max() < max(bar_q.values()) + 1e-6
