"""Distribution metrics: unit behaviour on hand-made MIDI, the instruct-eval CLI, and reproduction of the
Pianist Transformer benchmark README's table (docs/evaluation.md)."""
import importlib.util
import json
from pathlib import Path

import miditoolkit
import numpy as np
import pytest

from instruct_tokenizer.metrics import (MidiReadError, TrainingStats, aligned_pearson, compare, deadpan_midi,
                                        distribution_metrics, fmt, midi_features, normalise_notes, pearson,
                                        pooled_histograms, training_mean_midi)

from conftest import BENCH, REPO


def _load(name, path):  # load a module from its file (museformer/__init__ imports torch and fairseq)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EVAL = _load("instruct_eval", REPO / "museformer" / "evaluate.py")
BQ = _load("bench_quality", REPO / "scripts" / "bench_quality.py")
README_ROWS = BQ.README_ROWS


def write_midi(path, notes, pedal=(), tpb=500, tempos=((120.0, 0),)):
    m = miditoolkit.MidiFile(ticks_per_beat=tpb)
    m.tempo_changes = [miditoolkit.TempoChange(b, t) for b, t in tempos]
    inst = miditoolkit.Instrument(0)
    inst.notes = [miditoolkit.Note(v, p, s, e) for v, p, s, e in notes]
    inst.control_changes = [miditoolkit.ControlChange(64, v, t) for t, v in pedal]
    m.instruments.append(inst)
    m.dump(str(path))
    return path


def test_identical_sets_score_zero(tmp_path):
    f = midi_features(write_midi(tmp_path / "a.mid", [(80, 60, 0, 400), (60, 64, 500, 700)]))
    r = compare(pooled_histograms([f]), pooled_histograms([f]))
    assert r["overall_js"] < 1e-6 and abs(r["overall_inter"] - 1) < 1e-6


def test_disjoint_sets_score_one(tmp_path):
    a = midi_features(write_midi(tmp_path / "a.mid", [(20, 60, 0, 10), (20, 62, 150, 160)]))
    b = midi_features(write_midi(tmp_path / "b.mid", [(120, 60, 0, 400), (120, 62, 20, 420)], pedal=[(0, 127)]))
    r = distribution_metrics([a], [b])
    for f in ("velocity", "duration", "ioi", "pedal"):
        assert r[f"{f}_js"] > 0.999 and r[f"{f}_inter"] < 1e-6


def test_features_in_ms_and_pedal_pattern(tmp_path):
    # 120 BPM at 500 ticks/beat: 1 tick = 1 ms. Pedal down from 600 ms: for the note at 0 with the next
    # onset at 1000 ms, samples at 0, 250, 500, 750 ms -> only the last is down -> 0b0001. The last
    # note's gap is 4990 ms: samples at 1000, 2247.5, 3495, 4742.5 ms, pedal up at 3000 -> 0b1100.
    f = midi_features(write_midi(tmp_path / "a.mid", [(80, 60, 0, 300), (70, 62, 1000, 1100)],
                                 pedal=[(600, 127), (3000, 0)]))
    assert list(f.onset_ms) == [0, 1000] and list(f.duration_ms) == [300, 100]
    assert list(f.pedal_pattern) == [0b0001, 0b1100]
    assert list(f.values("ioi")) == [1000]


def test_chord_gives_zero_ioi_and_pedal_at_onset_only(tmp_path):
    # two notes at the same onset: IOI 0; the first note's gap is 0, so all four samples are at its onset
    f = midi_features(write_midi(tmp_path / "a.mid", [(80, 60, 0, 300), (70, 64, 0, 300), (70, 67, 400, 500)],
                                 pedal=[(0, 100), (200, 0)]))
    assert list(f.values("ioi")) == [0, 400]
    assert list(f.pedal_pattern) == [0b1111, 0b1100, 0b0000]


def test_tempo_map_is_followed(tmp_path):
    # 480 ticks/beat; 60 BPM for the first beat (1 s), then 240 BPM: tick 960 = 1 s + 0.25 s
    f = midi_features(write_midi(tmp_path / "a.mid", [(80, 60, 0, 480), (80, 62, 960, 1200)], tpb=480,
                                 tempos=((60.0, 0), (240.0, 480))))
    assert list(f.onset_ms) == [0, 1250] and list(f.duration_ms) == [1000, 125]


def test_normalisation_cuts_same_pitch_overlaps():
    # same pitch: 0-500 overlaps 300-400 -> cut to 0-300; 300-400 and a duplicate at 300 -> the first dropped
    s, e, p, v = normalise_notes([0, 300, 300, 100], [500, 400, 450, 100], [60, 60, 60, 62], [1, 2, 3, 4])
    assert list(zip(s, e, p, v)) == [(0, 300, 60, 1), (100, 101, 62, 4), (300, 450, 60, 3)]


def test_pearson_is_nan_without_variance():
    assert np.isnan(pearson([1, 1, 1, 1], [1, 2, 3, 4]))
    assert fmt(pearson([64] * 5, [1, 2, 3, 4, 5])) == "n/a"
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert aligned_pearson({0: 1.0, 1: 2.0, 2: 3.0, 7: 9.0}, {0: 3.0, 1: 2.0, 2: 1.0}) == pytest.approx(-1.0)


def test_baselines(tmp_path):
    score = write_midi(tmp_path / "s.mid", [(50, 60, 0, 500), (90, 62, 500, 1000)], pedal=[(0, 127)])
    d = midi_features(deadpan_midi(score, tmp_path / "d.mid", velocity=64))
    assert list(d.velocity) == [64, 64] and list(d.pedal_pattern) == [0, 0] and list(d.onset_ms) == [0, 500]
    t = midi_features(training_mean_midi(score, tmp_path / "t.mid", TrainingStats(70.4, 1.2, 0.5, False)))
    assert list(t.velocity) == [70, 70] and list(t.onset_ms) == [0, 600] and list(t.duration_ms) == [300, 300]


def _miditoolkit_reader(path):
    """The reference for metrics.read_midi: miditoolkit's own parse, in read_midi's return shape."""
    midi = miditoolkit.MidiFile(str(path))
    insts = [i for i in midi.instruments if not i.is_drum]
    notes = np.array([(n.start, n.end, n.pitch, n.velocity) for i in insts for n in i.notes], np.int64).reshape(-1, 4)
    pedal = np.array([(c.time, c.value) for i in insts for c in i.control_changes if c.number == 64],
                     np.int64).reshape(-1, 2)
    return midi.ticks_per_beat, midi.tempo_changes, notes, pedal


def _edge_case_midis(d):
    """MIDI files written with mido (running status on) that exercise the reader: overlapping notes of
    one pitch, a note-on of velocity 0 as note-off, a note never released, pedal before the first note,
    tempo changes (two at tick 0), a drum channel and a program change, pedal on a track without notes."""
    import mido

    M, T = mido.Message, mido.MetaMessage
    files = {
        "overlap": [[T("set_tempo", tempo=600000), M("note_on", note=60, velocity=50),
                     M("note_on", note=60, velocity=70, time=100), M("note_off", note=60, time=100),
                     M("note_off", note=60, time=300), M("note_on", note=62, velocity=40, time=10),
                     M("note_on", note=62, velocity=0, time=200), M("note_on", note=64, velocity=30, time=5)]],
        "tempo_pedal": [[T("set_tempo", tempo=400000), T("set_tempo", tempo=500000),
                         M("control_change", control=64, value=100), M("note_on", note=60, velocity=50, time=10),
                         T("set_tempo", tempo=300000, time=100), M("note_off", note=60, time=300),
                         M("note_on", note=61, velocity=55, time=10), M("control_change", control=64, time=50),
                         M("note_off", note=61, time=20)]],
        "tracks": [[T("set_tempo", tempo=500000)],
                   [M("program_change", program=5), M("note_on", note=60, velocity=50),
                    M("note_on", note=36, velocity=90, channel=9, time=10), M("note_off", note=36, channel=9, time=50),
                    M("note_off", note=60, time=400), M("control_change", control=64, value=127, time=1),
                    M("note_on", note=65, velocity=50, time=10), M("note_off", note=65, time=100)],
                   [M("control_change", control=64, value=127, time=5), M("control_change", control=64, time=700)]],
    }
    paths = []
    for name, tracks in files.items():
        midi = mido.MidiFile(type=1, ticks_per_beat=480)
        midi.tracks.extend(mido.MidiTrack(t) for t in tracks)
        midi.save(str(d / f"{name}.mid"))
        paths.append(d / f"{name}.mid")
    return paths


def test_reader_agrees_with_miditoolkit(tmp_path, monkeypatch):
    """metrics.read_midi (symusic) gives the features miditoolkit's parse gives (Pianist Transformer's
    reader), note for note, on edge cases and on three human benchmark files where present."""
    import instruct_tokenizer.metrics as M

    paths = _edge_case_midis(tmp_path)
    paths += sorted((BENCH / "human").glob("*.mid"))[::60] if (BENCH / "human").is_dir() else []
    ours = [midi_features(p) for p in paths]
    monkeypatch.setattr(M, "read_midi", _miditoolkit_reader)
    for path, f in zip(paths, ours):
        ref = M.midi_features(path)
        for k in ("onset_ms", "duration_ms", "velocity", "pitch", "pedal_pattern"):
            assert np.array_equal(getattr(f, k), getattr(ref, k)), (path.name, k)
    overlap = ours[0]  # FIFO pairing (the second 60 lasts to the last note-off), the unreleased 64 dropped
    assert list(overlap.onset_ms) == [0, 125, 638] and list(overlap.duration_ms) == [125, 500, 250]


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a midi file")
    with pytest.raises(MidiReadError, match="not a readable MIDI file"):
        midi_features(bad)
    with pytest.raises(MidiReadError, match="no such file"):
        midi_features(tmp_path / "missing.mid")


def test_instruct_eval_cli(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    write_midi(pred / "0.mid", [(80, 60, 0, 400), (60, 64, 500, 700)])
    write_midi(ref / "0-0.mid", [(80, 60, 0, 400), (60, 64, 500, 700)])
    write_midi(ref / "0-1.mid", [(70, 60, 0, 300), (60, 64, 450, 700)], pedal=[(0, 127)])
    out = tmp_path / "out"
    for pairing in ("pooled", "per-reference"):
        assert EVAL.main([str(pred), str(ref), "--out", str(out), "--pairing", pairing]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["rows"]["model"]["files"] == (1 if pairing == "pooled" else 2)
        assert (out / "histograms.png").stat().st_size > 0 and "| model" in (out / "results.md").read_text()
    (ref / "junk.mid").write_bytes(b"MThd junk")
    assert EVAL.main([str(pred), str(ref), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.mid" in err[0] and "Traceback" not in err[0]
    assert EVAL.main([str(pred), str(tmp_path / "nowhere"), "--out", str(out)]) == 1


@pytest.fixture(scope="module")
def bench_results():
    if not (BENCH / "human").is_dir():
        pytest.skip(f"shared benchmark not present at {BENCH}")
    return BQ.benchmark(BENCH)


@pytest.mark.parametrize("row", ["Pianist Transformer", "deadpan (score/ as is)", "human, even k vs odd k"])
def test_reproduces_readme_rows(bench_results, row):
    m = bench_results[row]["metrics"]
    ours = [m[k] for k in ("velocity_js", "duration_js", "ioi_js", "pedal_js", "overall_js", "overall_inter")]
    assert np.allclose(ours, README_ROWS[row], atol=0.01), (ours, README_ROWS[row])


def test_human_ceiling_is_far_below_methods(bench_results):
    m = bench_results["human, even k vs odd k"]["metrics"]
    assert m["overall_js"] < 0.04 and m["overall_inter"] > 0.96
    assert m["overall_js"] < bench_results["Pianist Transformer"]["metrics"]["overall_js"] / 4



def test_tempo_spread_reads_how_wide_a_beat_tempo_curve_is_where_r_cannot():
    from instruct_tokenizer.metrics import pearson, tempo_spread

    rng = np.random.default_rng(0)
    human = {"beat_tempo": rng.normal(-0.7, 0.1, size=50)}
    human["beat_tempo"][[3, 9]] = np.nan
    wide = {"beat_tempo": -0.7 + 2.0 * (human["beat_tempo"] + 0.7)}
    wide["beat_tempo"][20] = np.nan  # a note only one side has is left out
    assert tempo_spread(wide, human) == pytest.approx(2.0)
    assert pearson(wide["beat_tempo"], human["beat_tempo"]) == pytest.approx(1.0)  # r cannot tell them apart
    assert tempo_spread(human, wide) == pytest.approx(0.5)
    flat = {"beat_tempo": np.full(50, -0.7)}
    assert tempo_spread(flat, human) == pytest.approx(0.0, abs=1e-9) and np.isnan(tempo_spread(human, flat))


def test_key_down_and_length_summaries():
    """Key-downs pooled over files (ms): the shares under 20 ms and over 500 ms, the median; lengths from the
    first onset to the last release, and renderings beyond 1.5 times their reference either way."""
    from instruct_tokenizer.metrics import NoteFeatures, key_down_summary, length_s, length_summary

    def notes(onsets, durations):
        n = len(onsets)
        return NoteFeatures(np.array(onsets, float), np.array(durations, float), np.full(n, 64), np.full(n, 60),
                            np.zeros(n, int))

    a, b = notes([0, 100, 200], [10, 600, 90]), notes([1000, 3000], [501, 500])
    s = key_down_summary([a, b])
    assert s["under_20ms_share"] == pytest.approx(1 / 5) and s["held_over_500ms_share"] == pytest.approx(2 / 5)
    assert s["key_down_median_ms"] == pytest.approx(500)  # 10, 90, 500, 501, 600: exactly 500 is not "over"
    assert length_s(a) == pytest.approx(0.7) and length_s(b) == pytest.approx(2.5)
    t = length_summary([1.0, 1.49, 0.5, 2.0, 1 / 1.5])
    assert t["beyond_1_5x"] == 2 and t["length_ratio_median"] == pytest.approx(1.0)
    assert t["length_ratio_min"] == pytest.approx(0.5) and t["length_ratio_max"] == pytest.approx(2.0)
