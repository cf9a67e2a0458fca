"""Measures longer than a bar's 16 quarters of positions (a cadenza written as one measure) in MusicXML
and match files are read as 4-quarter bars, as the score MIDI reader reads them
(tests/tokenizer/test_score_midi_bars.py): before, every onset after the 16th quarter took the bar's last
position, and the unison rule then struck all but one note of each pitch there once."""
import numpy as np

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import encode_match, match_score_notes
from instruct_tokenizer.match import load_match
from instruct_tokenizer.score import LONG_BAR_SPLIT_Q, split_long_bars
from instruct_tokenizer.scorefile import load_musicxml

STEPS = "CDEFGAB"
ATTRS = ("<attributes><divisions>2</divisions><key><fifths>0</fifths></key><time><beats>4</beats>"
         "<beat-type>4</beat-type></time><staves>1</staves><clef number=\"1\"><sign>G</sign><line>2</line>"
         "</clef></attributes>")


def _note(step: str, octave: int, divisions: int, kind: str) -> str:
    return (f"<note><pitch><step>{step}</step><octave>{octave}</octave></pitch><duration>{divisions}</duration>"
            f"<voice>1</voice><type>{kind}</type><staff>1</staff></note>")


def write_cadenza_xml(path, eighths: int = 40) -> None:
    """A 4/4 bar of quarters, one measure of ``eighths`` eighth notes (40: 20 quarters, an overfull
    measure as a cadenza is written), a 4/4 bar of quarters."""
    first = f'<measure number="1">{ATTRS}{_note("C", 4, 2, "quarter") * 4}</measure>'
    cadenza = "".join(_note(STEPS[k % 7], 4 + k // 7 % 2, 1, "eighth") for k in range(eighths))
    last = f'<measure number="3">{_note("G", 4, 2, "quarter") * 4}</measure>'
    path.write_text('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list>'
                    '<score-part id="P1"><part-name>Piano</part-name></score-part></part-list>'
                    f'<part id="P1">{first}<measure number="2">{cadenza}</measure>{last}</part></score-partwise>')


def onsets_kept(bar, pos_q) -> int:
    """Distinct (bar, position) pairs."""
    return len({(int(b), V.quantise_pos(p)) for b, p in zip(bar, pos_q)})


def test_a_musicxml_cadenza_measure_keeps_every_onset(tmp_path):
    path = tmp_path / "cadenza.musicxml"
    write_cadenza_xml(path)
    notes = load_musicxml(str(path))
    assert len(notes) == 48 and onsets_kept(notes.bar, notes.pos_q) == 48  # none collapsed (before: 41)
    np.testing.assert_allclose(notes.bar_len_q, [4] * 7)  # 4/4, the 20 quarters as five 4/4 bars, 4/4
    assert notes.bar_ts == [(4, 4)] * 7
    assert len(notes.bar_qpm) == 7


def test_split_cuts_only_long_bars_and_joins_an_empty_stretch():
    # bar 0: 4 quarters; bar 1: 30 quarters with notes at 0, 5 and 29 (nothing from 8 to 28); bar 2: 3/4
    bar = np.array([0, 1, 1, 1, 2])
    pos = np.array([1.0, 0.0, 5.0, 29.0, 0.5])
    cut = split_long_bars(bar, pos, np.array([4.0, 30.0, 3.0]), [(4, 4), (30, 4), (3, 4)])
    assert cut.bar.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(cut.pos_q, [1.0, 0.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(cut.bar_len_q, [4.0, 4.0, 24.0, 2.0, 3.0])  # 4-8 runs to the next notes at 28
    assert cut.bar_ts == [(4, 4), (4, 4), (4, 4), (4, 4), (3, 4)]
    assert cut.source.tolist() == [0, 1, 1, 1, 2]
    np.testing.assert_allclose(cut.offset_q, [0, 0, LONG_BAR_SPLIT_Q, 7 * LONG_BAR_SPLIT_Q, 0])


def test_bars_within_16_quarters_are_left_as_they_are():
    bar, pos = np.array([0, 0, 1]), np.array([0.0, 15.9, 2.0])
    cut = split_long_bars(bar, pos, np.array([16.0, 6.0]), [(16, 4), (6, 4)])
    assert cut.bar.tolist() == [0, 0, 1] and cut.bar_ts == [(16, 4), (6, 4)]
    np.testing.assert_allclose(cut.bar_len_q, [16.0, 6.0])


def test_a_match_file_cadenza_measure_keeps_every_onset():
    """Ten 2/4 measures of a real match file made one measure (as a cadenza is written): its notes keep
    their onset groups, and the performance still encodes note for note."""
    mf = load_match(str(VIENNA / "match" / "Chopin_op10_no3_p01.match"))
    plain, _ = match_score_notes(mf)
    first = int(np.min(mf.measure)) + 2
    inside = (mf.measure >= first) & (mf.measure < first + 10) & (mf.repeat_pass == mf.repeat_pass.min())
    start_q = float(np.min((mf.onset_q - mf.pos_q)[mf.measure == first]))
    mf.pos_q = np.where(inside, mf.onset_q - start_q, mf.pos_q)
    mf.measure = np.where(inside, first, mf.measure)
    assert mf.pos_q[inside].max() > 16  # the merged measure runs past a bar's positions
    notes, _ = match_score_notes(mf)
    assert onsets_kept(notes.bar, notes.pos_q) == onsets_kept(plain.bar, plain.pos_q)
    assert notes.pos_q.max() < (V.MAX_POS + 1) / V.GRID
    enc = encode_match(mf)
    assert sum(t.startswith(V.VEL + "_") for t in enc.perf) == mf.n_notes
