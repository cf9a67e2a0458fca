"""``--style`` levels as plan offsets (``instruct_tokenizer.style_levels``): read from the instruct prefix,
each plan moved by its level's offset, ``mid`` leaving every plan as it is (the same array), the shipped
offsets pointing the asked way, and a broken offsets file one clear error."""
import json

import numpy as np
import pytest

from instruct_tokenizer import style_levels as S
from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import style_prefix

OFFSETS = {"tempo": {"slow": 0.05, "mid": 0.0, "fast": -0.05}, "rubato": {"low": -0.1, "mid": 0.0, "high": 0.2},
           "dynamics": {"soft": -3.0, "mid": 0.0, "loud": 3.0}, "range": {"narrow": -0.1, "mid": 0.0, "wide": 0.1},
           "articulation": {"staccato": -0.15, "mid": 0.0, "legato": 0.15}}


def test_levels_read_from_the_prefix_only():
    score = style_prefix({"tempo": "fast", "articulation": "legato"}) + ["Bar_None", "ITempo_slow"]
    levels = S.levels_of(score)
    assert levels == {"tempo": "fast", "dynamics": "mid", "range": "mid", "rubato": "mid", "articulation": "legato"}
    assert S.asked(levels) == {"tempo": "fast", "articulation": "legato"}
    assert S.levels_of(["Bar_None"]) == {k: "mid" for k in V.STYLE_KEYS}


def test_mid_leaves_every_plan_as_it_is():
    mid = S.levels_of(style_prefix({}))
    curve, velocity, art = np.array([0.1, -0.2, 0.3]), np.array([40.0, 90.0]), np.array([-1.0, 0.5])
    assert S.styled_tempo(curve, mid, offsets=OFFSETS) is curve
    assert S.styled_velocity(velocity, mid, offsets=OFFSETS) is velocity
    assert S.styled_articulation(art, mid, offsets=OFFSETS) is art


def test_tempo_shifts_the_level_and_rubato_scales_the_curve_at_the_same_length():
    curve = np.array([0.0, 0.2, -0.1, 0.5])
    quarters = np.array([1.0, 1.0, 2.0, 4.0])

    def length(c):  # seconds over notated seconds
        return np.sum(quarters * np.exp(c))

    fast = S.styled_tempo(curve, {"tempo": "fast"}, offsets=OFFSETS)
    assert fast == pytest.approx(curve - 0.05)  # a shorter beat period everywhere: faster
    high = S.styled_tempo(curve, {"rubato": "high"}, quarters=quarters, offsets=OFFSETS)
    assert np.diff(high) == pytest.approx(np.exp(0.2) * np.diff(curve))  # deviations scaled
    assert length(high) == pytest.approx(length(curve))  # the same length
    both = S.styled_tempo(curve, {"tempo": "slow", "rubato": "low"}, quarters=quarters, offsets=OFFSETS)
    assert np.diff(both) == pytest.approx(np.exp(-0.1) * np.diff(curve))
    assert length(both) == pytest.approx(np.exp(0.05) * length(curve))  # 5 % longer: slower


def test_dynamics_shift_range_scales_and_velocities_stay_midi():
    velocity = np.array([20.0, 60.0, 100.0, 126.0])
    loud = S.styled_velocity(velocity, {"dynamics": "loud"}, offsets=OFFSETS)
    assert loud == pytest.approx([23.0, 63.0, 103.0, 127.0])  # clipped at 127
    inner = velocity[:3]
    wide = S.styled_velocity(inner, {"range": "wide"}, offsets=OFFSETS)
    assert np.std(wide) == pytest.approx(np.exp(0.1) * np.std(inner)) and np.mean(wide) == pytest.approx(60.0)
    soft_narrow = S.styled_velocity(np.array([2.0, 40.0]), {"dynamics": "soft", "range": "narrow"}, offsets=OFFSETS)
    assert soft_narrow.min() >= 1.0


def test_articulation_shifts_every_note():
    art = np.array([-1.0, 0.0, 0.5])
    assert S.styled_articulation(art, {"articulation": "staccato"}, offsets=OFFSETS) == pytest.approx(art - 0.15)


def test_the_shipped_offsets_point_the_asked_way():
    """scripts/fit_style.py's fit on the training pianists: each low level below mid, each high above, in
    the plans' units (slow: a longer beat period)."""
    o = S.load_offsets()
    assert o["tempo"]["slow"] > 0 > o["tempo"]["fast"]
    for key in ("dynamics", "range", "rubato", "articulation"):
        low, mid, high = V.INSTRUCT_LEVELS[V.STYLE_KEYS[key]]
        assert o[key][low] < o[key][mid] == 0.0 < o[key][high], key


@pytest.mark.parametrize("change, reason", [(lambda o: o["dynamics"].pop("loud"), "dynamics=loud"),
                                            (lambda o: o["tempo"].update(mid=0.1), "mid level must be 0"),
                                            (lambda o: o.clear(), "no finite offset for tempo=slow")])
def test_a_broken_offsets_file_names_the_file_and_the_fault(tmp_path, change, reason):
    offsets = json.loads(json.dumps(OFFSETS))
    change(offsets)
    path = tmp_path / "style_levels.json"
    path.write_text(json.dumps({"offsets": offsets}))
    with pytest.raises(S.StyleLevelsError, match=reason) as e:
        S.load_offsets(path)
    assert str(path) in str(e.value)


def test_fit_reads_each_piece_s_thirds_against_its_median(monkeypatch):
    """scripts/fit_style.py: per piece of three performances or more, its lowest and highest thirds against
    its median (a spread as a log ratio); slow is the third with the longest beat periods; a piece of two
    performances is left out."""
    import math
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import fit_style

    def fake(score, perf):  # the measures are carried in the "score" argument
        return score

    monkeypatch.setattr(fit_style, "measures", fake)
    items, k = {}, 0
    for piece, tempi, sds in (("a", [1.0, 1.1, 1.2], [0.1, 0.2, 0.4]), ("b", [2.0, 2.3, 2.6], [0.2, 0.4, 0.8]),
                              ("c", [0.0, 5.0], [1.0, 9.0])):
        for t, sd in zip(tempi, sds):
            m = {"tempo": t, "rubato": sd, "dynamics": 60.0 + t, "range": sd, "articulation": -t}
            items[k] = ((piece, piece), m, [])
            k += 1
    fitted = fit_style.fit(items)
    assert fitted["pieces"] == 2
    o = fitted["offsets"]
    assert (o["tempo"]["slow"], o["tempo"]["fast"]) == (pytest.approx(0.2, abs=1e-4), pytest.approx(-0.2, abs=1e-4))
    ln2 = math.log(2.0)
    assert (o["rubato"]["low"], o["rubato"]["high"]) == (pytest.approx(-ln2, abs=1e-4), pytest.approx(ln2, abs=1e-4))
    assert o["articulation"]["staccato"] == pytest.approx(-0.2, abs=1e-4) and o["dynamics"]["mid"] == 0.0


def test_describe_names_each_asked_level_and_its_effect():
    assert S.describe(S.levels_of(style_prefix({}))) is None
    line = S.describe({"tempo": "slow", "articulation": "staccato", "dynamics": "mid"}, offsets=OFFSETS)
    assert line.startswith("style: tempo=slow (beat periods x1.05), articulation=staccato (key-downs x0.90)")
    assert "dynamics" not in line


def test_a_file_that_is_not_a_style_levels_file_is_one_error(tmp_path):
    path = tmp_path / "style_levels.json"
    for text in ("{not json", json.dumps({"levels": {}})):
        path.write_text(text)
        S.load_offsets.cache_clear()
        with pytest.raises(S.StyleLevelsError, match="not a style levels file"):
            S.load_offsets(path)

