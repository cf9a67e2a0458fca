"""scripts/fermata_lift.py: which onsets follow a fermata, and their tempo lift over the segment median."""
import importlib.util

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("fermata_lift", REPO / "scripts" / "fermata_lift.py")
FL = importlib.util.module_from_spec(spec)
spec.loader.exec_module(FL)

SCORE = ("Bar_None Pos_0 Pitch_60 Dur_12 Staff_1 Pos_12 Pitch_62 Dur_12 Staff_1 Mark_fermata "
         "Pitch_65 Dur_12 Staff_1 Mark_fermata Bar_None Pos_0 Pitch_64 Dur_12 Staff_1 Pos_12 Pitch_65 Dur_12 "
         "Staff_1 Mark_fermata").split()


def test_groups_after_fermata_are_the_onsets_holding_the_gap():
    # group 1 holds the fermata (twice: counted once); group 3 does too but nothing follows it
    assert FL.groups_after_fermata(SCORE) == [2]


def test_lift_is_over_each_rows_own_median():
    lifts = FL.fermata_lifts(SCORE, human_bins=[50, 50, 80, 52], model_bins=[40, 41, 45, 40])
    assert lifts == [pytest.approx((80 - 51, 45 - 40.5))]


def _perf(score, tempo_bins):
    """Performance tokens for ``score``: the given Tempo bin per onset group, fillers in the other slots
    (only the Tempo slots are read)."""
    from instruct_tokenizer.grammar import target_slots

    bins = iter(tempo_bins)
    return [f"Tempo_{next(bins)}" if s == "Tempo" else "Sus_None" for s in target_slots(score)]


def test_window_lifts_against_the_holds_reference():
    """Six groups half a quarter apart, a fermata on group 3: its own lift is over the latest beat period
    (the window holds 0.97 decayed quarters, under FERMATA_MIN_WINDOW_Q), the next group's over the window
    of groups 1 to 3 (the first group has no gap)."""
    import math

    from instruct_tokenizer import vocab as V

    score = ("Bar_None " + " ".join(f"Pos_{12 * g} Pitch_60 Dur_12 Staff_1" + (" Mark_fermata" if g == 3 else "")
                                    for g in range(6))).split()
    bins = [50, 50, 50, 60, 75, 50]
    lifts = FL.window_lifts(score, _perf(score, bins))
    assert [kind for kind, _ in lifts] == ["own", "after"]
    assert lifts[0][1] == pytest.approx(10.0, abs=1e-6)
    decay = math.exp(-0.5 / 8.0)  # the window's weight on the older group
    window = (V.tempo_value(50) * (decay ** 2 + decay) + V.tempo_value(60)) / (decay ** 2 + decay + 1)  # s/quarter
    ref = math.log(window / V.tempo_value(0)) / math.log(V.tempo_value(1) / V.tempo_value(0))
    assert lifts[1][1] == pytest.approx(75 - ref, abs=1e-6)
    summary = FL.human_window_summary([" ".join(score)], [" ".join(_perf(score, bins))])
    assert "own: 1 fermatas" in summary and "after: 1 fermatas" in summary
