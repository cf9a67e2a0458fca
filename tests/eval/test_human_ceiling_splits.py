"""scripts/human_ceiling_splits.py: the splits of the human files behind the benchmark's ceiling row."""
import importlib.util

import numpy as np
import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("human_ceiling_splits", REPO / "scripts" / "human_ceiling_splits.py")
HS = importlib.util.module_from_spec(spec)
spec.loader.exec_module(HS)

IDS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]  # piece 2 has one performance


def test_piece_and_take():
    assert HS.piece_and_take("12-3.mid") == (12, 3)
    with pytest.raises(ValueError, match="x.mid"):
        HS.piece_and_take("x.mid")


def _capture(monkeypatch):
    sides = []
    monkeypatch.setattr(HS, "js_row", lambda a, b: sides.append((list(a), list(b))) or [0.0] * 5)
    return sides


def test_even_odd_is_the_parity_of_k(monkeypatch):
    sides = _capture(monkeypatch)
    HS.even_odd(list(range(6)), IDS)
    odd, even = sides[0]
    assert odd == [1, 4] and even == [0, 2, 3, 5]


def test_stratified_halves_put_every_piece_on_both_sides(monkeypatch):
    sides = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    for _ in range(20):
        HS.stratified_halves(list(range(6)), IDS, rng)
    for a, b in sides:
        assert sorted(a + b) == list(range(6))
        for piece in (0, 1):  # two or more performances: one on each side at least
            files = {j for j, (i, _) in enumerate(IDS) if i == piece}
            assert files & set(a) and files & set(b)


def test_unstratified_halves_can_leave_a_piece_on_one_side(monkeypatch):
    sides = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    for _ in range(50):
        HS.unstratified_halves(list(range(6)), rng)
    assert all(len(a) == 3 and sorted(a + b) == list(range(6)) for a, b in sides)
    assert any({3, 4} <= set(a) or {3, 4} <= set(b) for a, b in sides)  # piece 1 wholly on one side
