"""Score MIDI bars: a time-signature change starts a bar where it falls, and a measure longer than a bar's
16 quarters of positions (a free-meter passage written as 65/4, as the (n)ASAP score MIDI files write
cadenzas) is read as 4-quarter bars, so that every onset keeps its own position (before, the notes after
the 16th quarter of such a measure all took one position and were struck once as unisons)."""
import miditoolkit
import numpy as np

from instruct_tokenizer import vocab as V
from instruct_tokenizer.scorefile import _bars_from_time_sigs, load_score_midi

TPQ = 480


def write_midi(path, time_sigs, n_quarters: int) -> None:
    """One note per eighth for ``n_quarters`` quarters (pitches cycling), the given (numerator,
    denominator, quarters) time signatures."""
    midi = miditoolkit.MidiFile(ticks_per_beat=TPQ)
    inst = miditoolkit.Instrument(program=0)
    half = TPQ // 2
    inst.notes = [miditoolkit.Note(velocity=64, pitch=48 + k % 24, start=half * k, end=half * (k + 1))
                  for k in range(2 * n_quarters)]
    midi.instruments = [inst]
    midi.time_signature_changes = [miditoolkit.TimeSignature(a, b, int(q * TPQ)) for a, b, q in time_sigs]
    midi.dump(str(path))


def onsets_kept(notes) -> int:
    """Distinct (bar, position) pairs among the notes."""
    return len({(int(b), V.quantise_pos(p)) for b, p in zip(notes.bar, notes.pos_q)})


def test_a_long_free_meter_measure_keeps_every_onset(tmp_path):
    path = tmp_path / "cadenza.mid"
    # 4 bars of 4/4, a 65/4 measure that the file ends after 30 quarters with a 4/4 change, 4/4 again
    write_midi(path, [(4, 4, 0), (65, 4, 16), (4, 4, 46)], n_quarters=54)
    notes = load_score_midi(str(path))
    assert onsets_kept(notes) == len(notes) == 108  # one onset per eighth, none collapsed
    lengths = np.asarray(notes.bar_len_q)
    assert lengths.max() <= (V.MAX_POS + 1) / V.GRID
    starts = np.concatenate([[0.0], np.cumsum(lengths)])
    assert 46.0 in starts  # the change to 4/4 at quarter 46 starts a bar
    assert np.allclose(lengths[4:12], [4, 4, 4, 4, 4, 4, 4, 2])  # 30 quarters: seven 4/4 bars and 2 left
    assert notes.bar_ts[4] == (4, 4)


def test_plain_time_signatures_give_the_same_bars_as_before():
    starts, ts = _bars_from_time_sigs([(0.0, (3, 4)), (6.0, (6, 8))], end_q=20.0)
    assert starts[:4] == [0.0, 3.0, 6.0, 9.0] and ts[:3] == [(3, 4), (3, 4), (6, 8)]


def test_a_change_inside_a_measure_ends_it_and_a_sliver_joins_the_bar():
    starts, ts = _bars_from_time_sigs([(0.0, (4, 4)), (6.0, (2, 4))], end_q=12.0)
    assert starts[:4] == [0.0, 4.0, 6.0, 8.0]  # the measure from 4 ends at the change at 6
    starts, _ = _bars_from_time_sigs([(0.0, (65, 4)), (4.0625, (4, 4))], end_q=10.0)
    assert starts[:3] == [0.0, 4.0625, 8.0625]  # the 0.0625-quarter rest of the measure joins the first bar
