"""--style-embed: the source prefix (tokens before the first bar) conditions every position."""
import numpy as np
import pytest
import torch

from helpers import batch, dense_bar_gap, incremental_gap, make_dict, make_model, random_pair


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(1)
    d = make_dict()
    out = []
    for n_bars, style in ((9, ["S_0", "S_1"]), (12, ["S_2"]), (4, [])):
        src, tgt = random_pair(d, n_bars, rng)
        out.append((style + src, tgt))
    return out


def _styled(impl="dense", seed=0):
    model, d = make_model(impl, seed=seed, style_embed=True)
    torch.nn.init.normal_(model.encoder.style.weight, std=0.2)  # as after training: not the zero start
    return model, d


def _bars(tokens):
    return [t for t in tokens if not t.startswith("S_")]


def test_style_vector_is_a_function_of_the_prefix_only(pairs):
    """Same prefix, other bars: the same vector; another prefix: another vector; none: zero."""
    model, d = _styled()
    (src_a, tgt_a), (src_b, tgt_b) = pairs[0], pairs[1]
    src, lens, _ = batch(d, [(["S_0", "S_1"] + _bars(src_b), tgt_b),
                             (["S_0", "S_1"] + _bars(src_a), tgt_a),
                             (["S_2"] + _bars(src_a), tgt_a),
                             (_bars(src_a), tgt_a)])
    style = model.encoder(src, lens)["style"][:, 0]  # (B, C)
    assert torch.allclose(style[0], style[1], atol=1e-6)
    assert (style[1] - style[2]).abs().max() > 1e-3
    assert torch.count_nonzero(style[3]) == 0


def test_zero_start_and_warm_start_from_a_model_without_it(pairs):
    """A checkpoint trained without --style-embed loads into a model with it (the projection starts
    at zero) and computes exactly what it computed before."""
    plain, d = make_model("dense", seed=3)
    styled, _ = make_model("dense", seed=4, style_embed=True)
    assert torch.count_nonzero(styled.encoder.style.weight) == 0
    styled.load_state_dict(plain.state_dict())
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    diff = (plain(src, lens, prev)[0] - styled(src, lens, prev)[0])[valid]
    assert diff.abs().max() < 1e-5


def test_incremental_decoding_equals_teacher_forcing(pairs):
    model, d = _styled()
    assert incremental_gap(model, d, pairs) < 1e-4


def test_dense_and_bar_agree_and_the_projection_learns(pairs):
    a, d = _styled("dense")
    b, _ = make_model("bar", style_embed=True)
    a.train(), b.train()
    for m in (a, b):
        m.encoder.embed.dropout = m.decoder.embed.dropout = 0.0
    assert dense_bar_gap(a, b, d, pairs) < 1e-4
    assert a.encoder.style.weight.grad.abs().sum() > 0


def test_reorder_encoder_out_moves_the_style(pairs):
    model, d = _styled()
    src, lens, _ = batch(d, pairs)
    enc = model.encoder(src, lens)
    order = torch.tensor([2, 0, 1])
    moved = model.encoder.reorder_encoder_out(enc, order)
    assert torch.equal(moved["style"], enc["style"][order])
