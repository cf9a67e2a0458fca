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
