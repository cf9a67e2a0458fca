"""FC-attention: masks against hand-written expectations, backends agree, causality, batching,
incremental decoding, half precision, gradients everywhere."""
import numpy as np
import pytest
import torch

from helpers import batch, incremental_logits, make_dict, make_model, random_pair
from museformer import pattern
from museformer.embeddings import Layout, self_mask

X, _ = 1, 0


def meta(bars, sums):
    bar = torch.tensor(bars)
    is_sum = torch.tensor(sums, dtype=torch.bool)
    return bar, is_sum, torch.arange(len(bars))


def test_decoder_mask_matches_docstring_drawing():
    # content a a b c (bars 0 0 1 2), then summaries s0 s1 s2
    bar, is_sum, pos = meta([0, 0, 1, 2, 0, 1, 2], [0, 0, 0, 0, 1, 1, 1])
    m = pattern.decoder_mask(bar, is_sum, pos, bar, is_sum, pos, [0, 1]).int().tolist()
    assert m == [
        [X, _, _, _, _, _, _],
        [X, X, _, _, _, _, _],
        [X, X, X, _, _, _, _],
        [_, _, X, X, X, _, _],
        [X, X, _, _, X, _, _],
        [_, _, X, _, _, X, _],
        [_, _, _, X, _, _, X],
    ]


def test_encoder_mask_window_one():
    # content bars 0 1 2 3, summaries s0..s3; window 1: bar 0 reads bars 0-1 finely, s2 s3 coarsely
    bar, is_sum, pos = meta([0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 0, 0, 1, 1, 1, 1])
    m = pattern.encoder_mask(bar, is_sum, pos, bar, is_sum, pos, 1).int().tolist()
    assert m[0] == [X, X, _, _, _, _, X, X]
    assert m[2] == [_, X, X, X, X, _, _, _]
    assert m[4] == [X, _, _, _, X, _, _, _]  # s0 reads its own bar and itself


def test_cross_mask_window():
    q_bar = torch.tensor([0, 2])
    k_bar, k_sum = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    m = pattern.cross_mask(q_bar, k_bar, k_sum, 0).int().tolist()
    assert m == [[X, _, _, _, X, X, X, X], [_, _, X, _, X, X, X, X]]


def test_padding_keys_are_masked():
    bar = torch.tensor([[1, 1, 2, 0]])
    valid = torch.tensor([[True, True, True, False]])
    lay = Layout(bar, valid, 1)
    args = type("A", (), {"fine_bars_list": [0, 1], "encoder_fine_window": 1})()
    m = self_mask(lay, "decoder", args)
    assert not m[0, :3, 3].any(), "no real position attends a pad"
    assert not m[0, :3, lay.t + 3:].any() if lay.nb > 3 else True


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    d = make_dict()
    return [random_pair(d, 7, rng), random_pair(d, 11, rng), random_pair(d, 3, rng)]


def _models(impl_a, impl_b):
    a, d = make_model(impl_a)
    b, _ = make_model(impl_b)
    b.load_state_dict(a.state_dict())
    return a, b, d


def test_dense_and_bar_agree_forward_and_backward(pairs):
    a, b, d = _models("dense", "bar")
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    oa, ob = a(src, lens, prev)[0], b(src, lens, prev)[0]
    assert (oa - ob)[valid].abs().max() < 1e-4
    oa[valid].sum().backward()
    ob[valid].sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert pa.grad is not None and pb.grad is not None, n
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4), n


def test_every_parameter_gets_a_gradient(pairs):
    model, d = make_model("bar")
    model.train()
    src, lens, prev = batch(d, pairs)
    model(src, lens, prev)[0].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_causality_future_targets_do_not_change_the_past(pairs):
    model, d = make_model("dense")
    src, lens, prev = batch(d, pairs[:1])
    out = model(src, lens, prev)[0]
    t = prev.shape[1] // 2
    changed = prev.clone()
    changed[0, t:] = d.index("V_3")
    out2 = model(src, lens, changed)[0]
    assert torch.allclose(out[0, :t], out2[0, :t], atol=1e-5)
    assert not torch.allclose(out[0, t:], out2[0, t:], atol=1e-5)


def test_batch_equals_each_alone(pairs):
    model, d = make_model("bar")
    src, lens, prev = batch(d, pairs)
    out = model(src, lens, prev)[0]
    for i, p in enumerate(pairs):
        s1, l1, p1 = batch(d, [p])
        alone = model(s1, l1, p1)[0][0]
        assert torch.allclose(out[i, : alone.shape[0]], alone, atol=1e-4)


def test_incremental_decoding_equals_teacher_forcing(pairs):
    model, d = make_model("dense")
    src, lens, prev = batch(d, pairs)
    forced = model(src, lens, prev)[0]
    inc = incremental_logits(model, src, lens, prev)
    valid = prev.ne(d.pad())
    assert (inc - forced)[valid].abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_forward_backward(pairs, dtype):
    model, d = make_model("bar")
    src, lens, prev = batch(d, pairs)
    ref = model(src, lens, prev)[0].float()
    half = model.to(dtype)
    out = half(src, lens, prev)[0]
    loss = torch.nn.functional.cross_entropy(out.float().view(-1, out.shape[-1]), prev.view(-1))
    loss.backward()
    assert torch.isfinite(loss)
    valid = prev.ne(d.pad())
    tol = 0.05 if dtype == torch.float16 else 0.2
    assert (out.float() - ref)[valid].abs().max() < tol * max(1.0, ref.abs().max().item())


def test_bad_flag_combinations_name_the_flag():
    with pytest.raises(ValueError, match="--fine-bars"):
        make_model("dense", fine_bars="1,2")


def test_flex_forward_agrees_with_dense(pairs):
    pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no FlexAttention")
    from museformer import flex_backend

    flex_backend.COMPILE = False  # eager reference kernel: same function, no minute-long compile in tests
    try:
        a, b, d = _models("dense", "flex")
        src, lens, prev = batch(d, pairs)
        valid = prev.ne(d.pad())
        with torch.no_grad():
            oa, ob = a(src, lens, prev)[0], b(src, lens, prev)[0]
        assert (oa - ob)[valid].abs().max() < 1e-4
    finally:
        flex_backend.COMPILE = True


def test_flex_lifts_the_recompile_limit():
    """Three mask rules x shapes x grad mode x dtype need more than dynamo's default 8 compiles; past the
    limit torch would fall back to the unfused kernel (measured 12x slower than dense on an H100)."""
    pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no FlexAttention")
    import torch._dynamo.config as dynamo_config

    from museformer import flex_backend

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)
    try:
        setattr(dynamo_config, name, 8)
        flex_backend.raise_recompile_limit()
        assert getattr(dynamo_config, name) == flex_backend.RECOMPILE_LIMIT
        setattr(dynamo_config, name, 1000)
        flex_backend.raise_recompile_limit()
        assert getattr(dynamo_config, name) == 1000, "never lowers a user's higher limit"
    finally:
        setattr(dynamo_config, name, before)


def test_no_summary_leaks_into_its_own_or_earlier_bars():
    rng = np.random.default_rng(1)
    content = np.sort(rng.integers(0, 12, size=60))
    nb = int(content.max()) + 1
    bars = list(content) + list(range(nb))
    sums = [0] * len(content) + [1] * nb
    bar, is_sum, pos = meta(bars, sums)
    m = pattern.decoder_mask(bar, is_sum, pos, bar, is_sum, pos, [0, 1, 2, 4, 8])
    seen = m[: len(content), len(content):]  # content queries x summary keys
    q_bar = torch.tensor(content).unsqueeze(1)
    k_bar = torch.arange(nb).unsqueeze(0)
    assert not (seen & (k_bar >= q_bar)).any(), "a summary is visible to its own bar or an earlier one"
    assert (seen == ((k_bar < q_bar) & ~pattern._member(q_bar - k_bar, [0, 1, 2, 4, 8]))).all()


@pytest.mark.slow
def test_compiled_flex_forward_agrees_with_dense(pairs):
    """The shipped path: torch.compile'd flex_attention and compiled BlockMask construction (a minute
    or two of compilation on CPU)."""
    pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no FlexAttention")
    a, b, d = _models("dense", "flex")
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    with torch.no_grad():
        oa, ob = a(src, lens, prev)[0], b(src, lens, prev)[0]
    assert (oa - ob)[valid].abs().max() < 1e-4


def test_incremental_state_reorders_like_beam_search(pairs):
    """reorder_incremental_state mid-sequence (as beam search does) == teacher forcing of the reordered batch."""
    model, d = make_model("bar")
    src, lens, prev = batch(d, pairs)
    order = torch.tensor([2, 0, 0, 1])  # duplicate a row and permute, like beams
    forced = model(src[order], lens[order], prev[order])[0]
    enc = model.encoder(src, lens)
    state, steps, split = {}, [], 5
    for t in range(1, prev.shape[1] + 1):
        if t == split:
            model.decoder.reorder_incremental_state(state, order)
            enc = model.encoder.reorder_encoder_out(enc, order)
        p = prev if t < split else prev[order]
        out = model.decoder(p[:, :t], enc, incremental_state=state)[0][:, -1]
        if t >= split:
            steps.append(out)
    inc = torch.stack(steps, 1)
    valid = prev[order].ne(d.pad())[:, split - 1:]
    assert (inc - forced[:, split - 1:])[valid].abs().max() < 1e-4
