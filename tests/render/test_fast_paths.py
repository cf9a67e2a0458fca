"""The lean loop's column-restricted fast paths against their dense references: the draw over the
rules' columns (``sampler.multinomial_columns``) against torch.multinomial over every token, the rules'
draw columns, and the key-down floor and the tempo band computed on their token columns only
(``rules.on_columns``) against the same functions over all V, bit for bit."""
import math

import pytest
import torch

from museformer.decoding import DecodeConfig, DecodeRules
from museformer.decoding.functions import FORCEABLE_LOGIT, key_down_floor, tempo_band_penalty
from museformer.decoding.rules import on_columns
from museformer.render import DEFAULT_CHECKPOINT, Renderer
from museformer.sampler import multinomial_columns

needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


def random_masked_logits(gen: torch.Generator, rows: int, vocab: int, n_allowed: int):
    """(rows, vocab) logits, -inf but for ``n_allowed`` random columns (some -inf in row 0), and those
    columns ascending with a few -inf columns added (columns that cannot win)."""
    logits = torch.full((rows, vocab), float("-inf"))
    allowed = torch.randperm(vocab, generator=gen)[:n_allowed]
    logits[:, allowed] = 3 * torch.randn(rows, n_allowed, generator=gen)
    if n_allowed > 3:
        logits[0, allowed[:2]] = float("-inf")
    extra = torch.randperm(vocab, generator=gen)[:5]
    return logits, torch.unique(torch.cat([allowed, extra]))


def test_draw_over_columns_equals_torch_multinomial():
    """Zero-probability columns among the given ones change nothing: the same token as torch.multinomial
    over the whole distribution, the generator left where multinomial leaves it."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(200):
        rows, vocab = 1 + trial % 4, 40 + 13 * trial
        logits, cols = random_masked_logits(gen, rows, vocab, 1 + trial % 30)
        probs = torch.log_softmax(logits, -1).exp_()  # (B, V)
        torch.manual_seed(trial)
        expected = torch.multinomial(probs, 1, replacement=True).view(rows)
        after = torch.get_rng_state()
        torch.manual_seed(trial)
        assert torch.equal(multinomial_columns(probs.index_select(1, cols), cols, vocab), expected)
        assert torch.equal(torch.get_rng_state(), after)
    with pytest.raises(RuntimeError):
        multinomial_columns(torch.zeros(1, 3), torch.tensor([1, 4, 7]), 10)


@pytest.fixture(scope="module")
def released_rules():
    renderer = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    return renderer.task.generation_rules()


@needs_release
def test_draw_columns_hold_the_candidates_and_the_deletion_token(released_rules):
    rules = released_rules
    unison = [r for r in rules if type(r).__name__ == "UnisonsOnce"]
    assert unison, "instruct-render's defaults strike unisons once"
    candidates = rules.rules[0].table[:3].any(0).nonzero().squeeze(1)  # (K,) three slot types' tokens
    cols = rules.draw_columns(candidates)
    assert torch.equal(cols, torch.unique(torch.cat([candidates, torch.tensor([unison[0].token_id])])))
    assert bool((cols[1:] > cols[:-1]).all())
    assert rules.draw_columns(candidates) is cols  # cached per candidates tensor


def test_key_down_floor_on_its_columns_equals_all_tokens():
    gen = torch.Generator().manual_seed(2)
    vocab = 300
    value = torch.full((vocab,), float("nan"))
    arts = torch.randperm(vocab, generator=gen)[:60].sort().values
    value[arts] = torch.linspace(-4, 2, 60)
    for trial in range(50):
        rows = 1 + trial % 3
        logits = torch.full((rows, 1, vocab), float("-inf"))
        some = arts[torch.randperm(60, generator=gen)[:10 + trial % 40]]
        logits[:, 0, some] = torch.randn(rows, len(some), generator=gen)
        nominal = torch.rand(rows, generator=gen) * 2
        nominal[0] = float("nan") if trial % 5 == 0 else nominal[0]
        period = 0.1 + torch.rand(rows, generator=gen)
        dense = key_down_floor(logits, value, nominal, period, 0.2)
        fast = on_columns(logits, arts, lambda sub: key_down_floor(sub, value[arts], nominal, period, 0.2))
        assert torch.equal(dense, fast)
    # a case where the floor must act: every articulation but the longest is too short
    logits = torch.zeros(1, 1, vocab).masked_fill(torch.isnan(value).view(1, 1, -1), float("-inf"))
    fast = on_columns(logits, arts, lambda sub: key_down_floor(sub, value[arts], torch.tensor([1.0]),
                                                               torch.tensor([0.05]), 0.5))
    assert torch.equal(fast, key_down_floor(logits, value, torch.tensor([1.0]), torch.tensor([0.05]), 0.5))
    assert int(fast.eq(FORCEABLE_LOGIT).sum()) == len(arts) - 1  # all but the longest barred
    assert float(fast[0, 0, arts[-1]]) == 0.0  # the longest (value 2) stays


def test_tempo_band_on_its_columns_equals_all_tokens():
    gen = torch.Generator().manual_seed(3)
    vocab = 400
    period = torch.full((vocab,), float("nan"))
    tempos = torch.randperm(vocab, generator=gen)[:80].sort().values
    period[tempos] = 0.2 * 2 ** (torch.arange(80) / 24)
    acted = 0
    for trial in range(60):
        rows = 1 + trial % 3
        logits = torch.full((rows, 1, vocab), float("-inf"))
        logits[:, 0, tempos] = torch.randn(rows, 80, generator=gen)
        level = torch.stack([torch.rand(rows, generator=gen) * 8, 4 + torch.rand(rows, generator=gen) * 4,
                             torch.rand(rows, generator=gen) * 20, 20 + torch.rand(rows, generator=gen) * 10], 1)
        gap, scale = torch.rand(rows, generator=gen) + 0.1, 0.5 + torch.rand(rows, generator=gen)
        dense = tempo_band_penalty(logits, period, level, gap, scale, 3.0, math.log(2) / 24)
        fast = on_columns(logits, tempos, lambda sub: tempo_band_penalty(sub, period[tempos], level, gap, scale,
                                                                         3.0, math.log(2) / 24))
        assert torch.equal(dense, fast)
        acted += int(not torch.equal(dense, logits))
    assert acted > 10  # the band moved the logits in many trials: the comparison is not vacuous
