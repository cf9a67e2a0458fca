"""Fixtures of the render tests: a tiny random model with the synthetic grammar's rules."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from helpers import make_model, random_pair  # noqa: E402

from museformer.decoding import DecodeConfig, DecodeRules  # noqa: E402

SYNTHETIC = "museformer.synthetic_grammar"


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model (align-source on), four score rows of 2 to 9 bars, the synthetic grammar's rules."""
    model, d = make_model("dense", seed=1, align_source=True, grammar=SYNTHETIC)
    torch.nn.init.normal_(model.decoder.align.weight, std=0.2)
    rng = np.random.default_rng(5)
    pairs = [random_pair(d, n_bars, rng) for n_bars in (9, 2, 5, 7)]
    rules = DecodeRules.build(DecodeConfig.defaults("task"), d, d, SYNTHETIC)
    return model, d, pairs, rules
