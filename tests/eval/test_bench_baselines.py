"""scripts/bench_quality.py baselines: training mean and markings MIDI for a benchmark piece."""
import csv

import numpy as np
import pytest

from instruct_tokenizer import vocab as V
from instruct_tokenizer.metrics import midi_features
from test_metrics import BENCH, BQ


@pytest.fixture
def bench_nasap(nasap, monkeypatch):
    """bench_quality reads (n)ASAP and the benchmark from its module constants: point them at the
    unpacked copy and at the tests' shared folder."""
    if not (BENCH / "pieces.csv").is_file():
        pytest.skip(f"shared benchmark not present at {BENCH}")
    monkeypatch.setattr(BQ, "NASAP", nasap)
    monkeypatch.setattr(BQ, "BENCH", BENCH)
    return nasap


def test_baseline_rows_one_piece(bench_nasap, tmp_path):
    pieces = [p for p in csv.DictReader(open(BENCH / "pieces.csv")) if p["asap_folder"] == "Mozart/Piano_Sonatas/12-2"]
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "train.perf").write_text(" ".join([V.BAR_TOKEN, "Tempo_50", "Vel_30", "Art_-0.40", "Tempo_70",
                                              "Vel_34", "Art_-0.60"]) + "\n")
    rows = BQ.baseline_rows(pieces, tmp_path / "out", tok, report=lambda m: None)
    assert set(rows) == {"training mean", "markings"}
    tm = midi_features(rows["training mean"][0])
    assert set(tm.velocity // 2) == {32}  # mean of 61 and 69 = 65: bin 32, decoded 64 or 65
    mk = midi_features(rows["markings"][0])
    score = midi_features(BENCH / "score" / f"{pieces[0]['index']}.mid")
    assert abs(len(mk.velocity) - len(score.velocity)) <= 0.02 * len(score.velocity)
    assert len(np.unique(mk.velocity // 2)) >= 3  # p, mf/f, sf marked in the score


def test_bad_xml_is_named(tmp_path, capsys):
    pieces = [{"index": "0", "asap_folder": "no/such/folder"}]
    rows = BQ.baseline_rows(pieces, tmp_path / "out", tmp_path / "no_tok")
    assert rows == {}
    out = capsys.readouterr().out
    assert "xml_score.musicxml: file not found" in out and "train.perf not found" in out


class OracleRenderer:
    """Plays back the human performance of the score it is given: per-note r must come out as 1."""
    score_features = {"instruct": True, "markings": True, "notated_tempo": True}

    def __init__(self, inputs):
        self.inputs = inputs

    def render_many(self, scores, sampling, batch_size=1):
        n = len(V.INSTRUCT_TYPES)
        assert [s[n:] for s in scores] == [score for _, _, score, _ in self.inputs]  # in order, after ...
        assert all(t.endswith("_mid") for s in scores for t in s[:n])  # ... the instruct prefix, all "mid"
        return [perf for _, _, _, perf in self.inputs]


def test_per_note_table_ours_and_markings_on_the_same_bars(bench_nasap):
    pieces = [p for p in csv.DictReader(open(BENCH / "pieces.csv")) if p["asap_folder"] == "Mozart/Piano_Sonatas/12-2"]
    inputs = BQ.per_note_inputs(pieces, OracleRenderer.score_features, max_bars=8, report=lambda m: None)
    assert inputs and all(sum(t == V.BAR_TOKEN for t in score) == 8 for _, _, score, _ in inputs)
    assert any(V.parse(t)[0] == V.QPM for t in inputs[0][2])  # the score the model was trained on
    table = BQ.per_note_table(inputs, 8, OracleRenderer(inputs), sampling=None, report=lambda m: None)
    assert table["ours"]["performances"] == table["markings"]["performances"] == len(inputs)
    assert table["ours"]["velocity_r"] == pytest.approx(1.0)
    assert table["ours"]["beat_tempo_r"] == pytest.approx(1.0) and table["ours"]["log_tempo_r"] == pytest.approx(1.0)
    assert -1.0 < table["markings"]["velocity_r"] < 0.99
    paired = table["ours, where markings has r"]
    assert paired["velocity_r"] == pytest.approx(1.0)
    assert paired["velocity_r_n"] == table["markings"]["velocity_r_n"]


def _midi(path, notes_s, tempo_qpm=120.0):
    """A one-track MIDI file of (onset s, release s) notes at a constant tempo."""
    import miditoolkit

    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.tempo_changes = [miditoolkit.TempoChange(tempo_qpm, 0)]
    ticks_per_s = 480 * tempo_qpm / 60.0
    inst = miditoolkit.Instrument(program=0)
    inst.notes = [miditoolkit.Note(64, 60, round(on * ticks_per_s), round(off * ticks_per_s)) for on, off in notes_s]
    midi.instruments = [inst]
    midi.dump(str(path))
    return path


def test_timing_summary_length_ratio_and_key_down(tmp_path):
    human = [_midi(tmp_path / "0-0.mid", [(0, 0.1), (9.9, 10.0)]),  # 10 s long
             _midi(tmp_path / "0-1.mid", [(1, 1.1), (12.9, 13.0)])]  # 12 s long: median 11 s
    ours = _midi(tmp_path / "0.mid", [(0, 0.01), (0.5, 0.515), (21.8, 22.0)])  # 22 s: ratio 2
    other = _midi(tmp_path / "1.mid", [(0, 1)])  # no human performance of piece 1: left out
    t = BQ.timing_summary({"ours": [ours, other]}, human)
    assert t["ours"]["length_ratio_median"] == pytest.approx(2.0, abs=1e-3)
    assert t["ours"]["key_down_median_ms"] == pytest.approx(15, abs=1)
    assert t["ours"]["under_20ms_share"] == pytest.approx(2 / 3)
    assert t["human"]["length_ratio_min"] == pytest.approx(10 / 11, abs=1e-3)
    assert t["human"]["key_down_median_ms"] == pytest.approx(100, abs=1)


def test_structurally_valid_follows_the_grammar():
    score = "Bar_None Pos_0 Pitch_60 Dur_12 Staff_1".split()
    perf = "Bar_None Tempo_60 Sus_None Sus_None Sus_None Soft_None Vel_30 Time_0 Art_0.00".split()
    assert BQ.structurally_valid(score, perf)
    assert not BQ.structurally_valid(score, perf[:-1])  # a note without its articulation
    assert not BQ.structurally_valid(score, perf[:1] + perf[2:] + perf[1:2])  # slots out of order
