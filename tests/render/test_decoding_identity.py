"""The decoding layer reproduces the renderings recorded before it was refactored, token for token
(tests/render/golden/make_golden.py wrote them with the code of b47a760): released model, fixed seeds,
several segments per piece so that the rules' state crosses segment joins, instruct-render's default
rules (key-down floor, unisons once, tempo band, fermata hold, dynamics band) and the expected value."""
import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden as G  # noqa: E402

EXPECTED = json.loads((GOLDEN / "golden.json").read_text())


@pytest.mark.parametrize("name,rel,bars,seed,tt", G.CASES, ids=[c[0] for c in G.CASES])
def test_rendering_is_token_identical(name, rel, bars, seed, tt):
    if rel.startswith("BENCH/") and not G.BENCH.is_dir():
        pytest.skip(f"{G.BENCH}: the benchmark is not there")
    tokens = G.render_case(rel, bars, seed, tt)
    assert len(tokens) == EXPECTED[name]["tokens"]
    assert G.digest(tokens) == EXPECTED[name]["sha256"]
