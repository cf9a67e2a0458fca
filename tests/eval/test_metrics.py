"""Distribution metrics: unit behaviour, and reproduction of the Pianist Transformer benchmark README."""
import re

import miditoolkit
import numpy as np
import pytest

from conftest import SHARED
from instruct_tokenizer.metrics import compare, midi_features, pearson, pooled_histograms

BENCH = SHARED / "benchmarks" / "pianist_transformer_testset"
# the README's table: method -> (velocity, duration, IOI, pedal, overall) JS distance
README_ROWS = {"pianist_transformer": (0.128, 0.200, 0.154, 0.142, 0.156),
               "deadpan": (0.765, 0.682, 0.780, 0.465, 0.673),
               "human even/odd": (0.029, 0.033, 0.022, 0.036, 0.030)}


def write_midi(path, notes, pedal=()):
    m = miditoolkit.MidiFile(ticks_per_beat=500)
    m.tempo_changes = [miditoolkit.TempoChange(120.0, 0)]
    inst = miditoolkit.Instrument(0)
    inst.notes = [miditoolkit.Note(v, p, s, e) for v, p, s, e in notes]
    inst.control_changes = [miditoolkit.ControlChange(64, v, t) for t, v in pedal]
    m.instruments.append(inst)
    m.dump(str(path))
    return path


def test_identical_sets_score_zero(tmp_path):
    f = midi_features(str(write_midi(tmp_path / "a.mid", [(80, 60, 0, 400), (60, 64, 500, 700)])))
    r = compare(pooled_histograms([f]), pooled_histograms([f]))
    assert r["overall_js"] < 1e-6 and abs(r["overall_inter"] - 1) < 1e-6


def test_features_in_ms_and_pedal_pattern(tmp_path):
    # 120 BPM at 500 ticks/beat: 1 tick = 1 ms. Pedal down from 600 ms: for the note at 0 with the next
    # onset at 1000 ms, samples at 0, 250, 500, 750 ms -> only the last is down -> pattern 0b0001.
    f = midi_features(str(write_midi(tmp_path / "a.mid", [(80, 60, 0, 300), (70, 62, 1000, 1100)],
                                     pedal=[(600, 127)])))
    assert list(f.onset_ms) == [0, 1000] and list(f.duration_ms) == [300, 100]
    assert list(f.pedal_pattern) == [0b0001, 0b1111]
    assert list(f.values("ioi")) == [1000]


def test_pearson_is_nan_without_variance():
    assert np.isnan(pearson([1, 1, 1, 1], [1, 2, 3, 4]))
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def bench():
    if not BENCH.exists():
        pytest.skip("shared benchmark not present")
    human = {p.name: midi_features(str(p)) for p in sorted((BENCH / "human").glob("*.mid"))}
    return {
        "human": human,
        "pianist_transformer": [midi_features(str(p)) for p in sorted((BENCH / "pianist_transformer").glob("*.mid"))],
        "deadpan": [midi_features(str(p)) for p in sorted((BENCH / "score").glob("*.mid"))],
    }


def _row(r):
    return tuple(r[k] for k in ("velocity_js", "duration_js", "ioi_js", "pedal_js", "overall_js"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pianist_transformer", "deadpan"])
def test_reproduces_readme_rows(bench, method):
    ref = pooled_histograms(bench["human"].values())
    ours = _row(compare(pooled_histograms(bench[method]), ref))
    assert np.allclose(ours, README_ROWS[method], atol=0.01), (ours, README_ROWS[method])


@pytest.mark.slow
def test_human_even_odd_row(bench):
    """Even k against odd k pools to 0.018 here against the README's 0.030: the README's exact pairing
    is not stated; we hold the ceiling to be below 0.04 and far below every method."""
    k = lambda n: int(re.match(r"\d+-(\d+)", n).group(1))  # noqa: E731
    even = [f for n, f in bench["human"].items() if k(n) % 2 == 0]
    odd = [f for n, f in bench["human"].items() if k(n) % 2 == 1]
    ours = _row(compare(pooled_histograms(even), pooled_histograms(odd)))
    assert ours[-1] < 0.04
