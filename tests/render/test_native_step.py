"""The C++ hot path of the lean sampling loop (``museformer.native``, ``museformer/csrc/step.cpp``) is the
Python code it names, bit for bit: one layer's step, the draw (and torch's generator after it), and whole
generations with the grammar, temperature, top-p, forced prefixes and rows ending apart. Where it cannot
be built, the Python step runs after one line on stderr. (``test_sampler.py`` compares the lean loop, which
uses it, with fairseq's generator, which runs the Python step, on the released model too.)"""
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from helpers import batch, tiny_with_rules  # noqa: E402

from museformer import incremental, native  # noqa: E402
from museformer.sampler import Draw, sample  # noqa: E402

HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model, four score rows of 2 to 9 bars, and the synthetic grammar's rules."""
    return tiny_with_rules()


@pytest.fixture(scope="module")
def module():
    built = native.load()
    if built is None:
        if HAS_COMPILER and native.enabled():
            pytest.fail("a C++ compiler is here but museformer.native did not build (see stderr)")
        pytest.skip("no C++ compiler (or INSTRUCT_NATIVE=0): the Python step runs")
    return built


def test_layer_step_bit_for_bit(module, tiny):
    """A decoder layer's step on random views of 40 to 80 keys: the same rows and the same caches."""
    model = tiny[0]
    layer = model.decoder.layers[0]
    weights = incremental.LayerWeights(layer)
    c, h = layer.ln1.normalized_shape[0], weights.heads
    d = c // h
    gen = torch.Generator().manual_seed(0)
    for b, length, cross in ((1, 40, 30), (3, 80, 17)):
        caches = {"vk_t": torch.randn(b, h, d, length + 8, generator=gen), "vv": torch.randn(b, h, length + 8, d, generator=gen),
                  "xk_t": torch.randn(b, h, d, cross, generator=gen), "xv": torch.randn(b, h, cross, d, generator=gen),
                  "ek_t": torch.zeros(1)}
        twin = {k: v.clone() for k, v in caches.items()}
        blocked = torch.rand(b, length + 8, generator=gen) < 0.3
        cross_blocked = torch.rand(b, 1, 1, cross, generator=gen) < 0.3
        cross_blocked[..., 0] = False
        x = torch.randn(b, c, generator=gen)
        with torch.inference_mode():
            for col in range(length - 5, length):
                view = incremental.StepView(blocked[:, :col + 1].view(b, 1, 1, col + 1), cross_blocked, col)
                ours = module.layer_step(x, weights.flat(), [twin[k] for k in ("vk_t", "vv", "xk_t", "xv")], col,
                                         view.self_blocked, cross_blocked, h, layer.ln1.eps)
                theirs = incremental.layer_step(x, None, caches, view, weights)
                assert torch.equal(ours, theirs)
        assert torch.equal(twin["vk_t"], caches["vk_t"]) and torch.equal(twin["vv"], caches["vv"])


def test_draw_bit_for_bit(module):
    """The C++ draw takes the Python draw's token and leaves torch's generator where it leaves it, on 300
    random distributions (rows allowing different columns, temperatures 1 and 1.3)."""
    d = type("D", (), {"eos": lambda s: 2, "pad": lambda s: 1, "unk": lambda s: 3})()
    gen = torch.Generator().manual_seed(1)
    for trial in range(300):
        rows, vocab = 1 + trial % 4, 40 + 7 * trial
        columns = torch.randperm(vocab - 4, generator=gen)[:1 + trial % 30].add_(4).sort().values
        logits = torch.full((rows, 1, vocab), float("-inf"))
        logits[:, 0, columns] = 3 * torch.randn(rows, len(columns), generator=gen)
        if len(columns) > 2:
            logits[0, 0, columns[:trial % 2]] = float("-inf")
        temperature = 1.0 if trial % 3 else 1.3
        draws = []
        for impl in (None, module):
            torch.manual_seed(trial)
            draws.append((Draw(d, temperature, -1.0, 10 ** 6, None, native=impl)(logits, 5, columns), torch.get_rng_state()))
        assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])


def generations(model, d, pairs, rules, native_steps: bool, prefix=None, temperature=1.0, topp=-1.0, seed=0):
    src, lens, _ = batch(d, pairs)
    model.decoder.native_steps = native_steps
    try:
        torch.manual_seed(seed)
        return [t.tolist() for t in sample(model, {"src_tokens": src, "src_lengths": lens}, rules, prefix,
                                           temperature, topp)]
    finally:
        model.decoder.native_steps = True


@pytest.mark.parametrize("temperature,topp", [(1.0, -1.0), (1.3, -1.0), (1.0, 0.8)], ids=["plain", "hot", "topp"])
def test_generations_same_tokens_as_the_python_step(module, tiny, temperature, topp):
    """Four rows ending at their own EOS (the batch shrinks, the caches reorder), with the grammar."""
    model, d, pairs, rules = tiny
    for seed in range(2):
        ours = generations(model, d, pairs, rules, True, temperature=temperature, topp=topp, seed=seed)
        theirs = generations(model, d, pairs, rules, False, temperature=temperature, topp=topp, seed=seed)
        assert ours == theirs
        assert len({len(t) for t in ours}) == len(pairs)


def test_generations_with_forced_prefixes(module, tiny):
    model, d, pairs, rules = tiny
    prefix = torch.full((len(pairs), 9), d.pad())
    for i, ((_, tgt), n) in enumerate(zip(pairs, (6, 0, 3, 9))):
        prefix[i, :n] = torch.tensor([d.index(t) for t in tgt[:n]])
    assert generations(model, d, pairs, rules, True, prefix, seed=3) == \
        generations(model, d, pairs, rules, False, prefix, seed=3)


def test_the_lean_loop_uses_it(module, tiny):
    """The lean loop's state runs the C++ step (fairseq's generator, the reference, does not)."""
    model, d, pairs, _ = tiny
    src, lens, _ = batch(d, pairs)
    with torch.inference_mode():
        enc = model.encoder(src, lens)
        assert model.decoder.start_state(len(pairs), enc, native_steps=True).native_step is not None
        assert model.decoder.start_state(len(pairs), enc).native_step is None


def test_unbuildable_falls_back_with_one_line(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "step.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("INSTRUCT_NATIVE_DIR", str(tmp_path / "build"))
    assert native.load() is None
    err = [line for line in capsys.readouterr().err.splitlines() if "native decoding step is unavailable" in line]
    assert len(err) == 1 and "using the Python step" in err[0]
    assert native.load() is None and "unavailable" not in capsys.readouterr().err  # said once


def test_turned_off(monkeypatch):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("INSTRUCT_NATIVE", "0")
    assert native.load() is None


# ------------------------------------------------------------------ the decoding rules' arithmetic
def _rows(gen, b, nan_share=0.2, low=0.0, high=1.0):
    x = low + (high - low) * torch.rand(b, generator=gen)
    x[torch.rand(b, generator=gen) < nan_share] = float("nan")
    return x


def test_rules_arithmetic_bit_for_bit(module):
    """key_down_floor, tempo_level_update and tempo_band_penalty in C++ against their Python references on
    500 random cases (NaN rows, -inf logits, levels inside and outside the band, with and without a
    reference tempo)."""
    from museformer.decoding import functions as fn

    gen = torch.Generator().manual_seed(2)
    banded = 0
    for trial in range(500):
        b, v = 1 + trial % 4, 5 + trial % 40
        logits = torch.randn(b, 1, v, generator=gen)
        logits[torch.rand(b, 1, v, generator=gen) < 0.3] = float("-inf")
        value = torch.randn(v, generator=gen) * 2
        value[torch.rand(v, generator=gen) < 0.2] = float("nan")
        nominal, period = _rows(gen, b, 0.2, 0.1, 4.0), _rows(gen, b, 0.1, 0.05, 1.5)
        floor_ms = 0.005 + 0.05 * float(torch.rand(1, generator=gen))
        assert torch.equal(fn.key_down_floor(logits, value, nominal, period, floor_ms),
                           fn.key_down_floor_reference(logits, value, nominal, period, floor_ms))
        level = torch.rand(b, 4, generator=gen) * torch.tensor([40.0, 40.0, 400.0, 400.0])
        gap, scale = _rows(gen, b, 0.2, 0.0, 2.0), _rows(gen, b, 0.0, 0.5, 2.0)
        gap[0] = 0.0 if trial % 5 == 0 else gap[0]
        assert torch.equal(fn.tempo_level_update(level, period, gap, scale),
                           fn.tempo_level_update_reference(level, period, gap, scale))
        periods = value.abs() + 0.1
        ref = None if trial % 2 else _rows(gen, b, 0.3, 0.2, 1.0)
        args = (logits, periods, level, gap, scale, 3.0 + trial % 9, 0.0345)
        got = fn.tempo_band_penalty(*args, ref=ref)
        assert torch.equal(got, fn.tempo_band_penalty_reference(*args, ref=ref))
        banded += not torch.equal(got, logits)
    assert banded > 50  # the band acted on many cases, not only the early return
