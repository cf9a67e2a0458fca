"""The lean sampling loop (``museformer.sampler``) draws, with the same seed, exactly the tokens fairseq's
``SequenceGenerator`` with ``search.Sampling`` draws: on a tiny random model (rows of different lengths
that end at different steps, forced prefixes of different lengths, temperature, top-p, with and without
the grammar) and on the released model (several segments, instruct-render's rules, the expected value,
several pieces batched). And the generation step's per-bar key views agree with the dense reference
(every key), as the candidate-only output projection agrees with the whole one."""
import sys
from pathlib import Path

import pytest
import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from helpers import batch, tiny_with_rules  # noqa: E402

from museformer.render import DEFAULT_CHECKPOINT, Renderer, Sampling, split_bars  # noqa: E402
from museformer.sampler import multinomial_one, sample  # noqa: E402
from museformer.task import MAX_LEN_A, MAX_LEN_B  # noqa: E402

VIENNA = Path(__file__).resolve().parents[2] / "data" / "vienna4x22" / "musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model, four score rows of 2 to 9 bars, and the synthetic grammar's rules."""
    return tiny_with_rules()


def fairseq_sample(model, d, net_input, rules, prefix, temperature, topp):
    """fairseq's own sampling, as instruct-render's fairseq path runs it."""
    model.enable_decoding(rules)
    strategy = search.Sampling(d, sampling_topp=topp if 0 < topp < 1 else -1.0)
    generator = SequenceGenerator([model], d, beam_size=1, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B,
                                  temperature=temperature, search_strategy=strategy)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": net_input}, prefix_tokens=prefix)
    return [h[0]["tokens"].tolist() for h in hypos]


def both_paths(model, d, net_input, rules, prefix=None, temperature=1.0, topp=-1.0, seed=0):
    torch.manual_seed(seed)
    ours = [t.tolist() for t in sample(model, net_input, rules, prefix, temperature, topp)]
    torch.manual_seed(seed)
    theirs = fairseq_sample(model, d, net_input, rules, prefix, temperature, topp)
    return ours, theirs


def prefixes(d, pairs, lengths):
    """(B, P) forced first tokens: each row's target's first ``lengths[i]`` tokens, pad after."""
    prefix = torch.full((len(pairs), max(lengths)), d.pad())
    for i, ((_, tgt), n) in enumerate(zip(pairs, lengths)):
        prefix[i, :n] = torch.tensor([d.index(t) for t in tgt[:n]])
    return prefix


@pytest.mark.parametrize("constrained", [True, False], ids=["grammar", "free"])
@pytest.mark.parametrize("temperature,topp", [(1.0, -1.0), (1.4, -1.0), (1.0, 0.8)], ids=["plain", "hot", "topp"])
def test_tiny_model_same_tokens_as_fairseq(tiny, constrained, temperature, topp):
    model, d, pairs, rules = tiny
    src, lens, _ = batch(d, pairs)
    rules = rules if constrained else None
    for seed in range(2):
        ours, theirs = both_paths(model, d, {"src_tokens": src, "src_lengths": lens}, rules,
                                  temperature=temperature, topp=topp, seed=seed)
        assert ours == theirs
        if constrained:  # rows end at their own EOS: the batch shrank as they did
            assert len({len(t) for t in ours}) == len(pairs)


def test_tiny_model_same_tokens_with_forced_prefixes(tiny):
    model, d, pairs, rules = tiny
    src, lens, _ = batch(d, pairs)
    prefix = prefixes(d, pairs, [6, 0, 3, 9])  # row 1 forced nothing (all pad)
    ours, theirs = both_paths(model, d, {"src_tokens": src, "src_lengths": lens}, rules, prefix, seed=3)
    assert ours == theirs
    for row, n in ((0, 6), (2, 3), (3, 9)):
        assert ours[row][:n] == prefix[row, :n].tolist()


def incremental_logits(model, src, lens, prev, candidates_of=None):
    """(B, T, V) logits of the generation step along ``prev`` (the network alone, no rules)."""
    dec = model.decoder
    with torch.inference_mode():
        enc = model.encoder(src, lens)
        state = dec.start_state(src.shape[0], enc)
        steps = [dec.step(prev[:, t:t + 1], t, enc, state, candidates_of(enc, t) if candidates_of else None)
                 for t in range(prev.shape[1])]
    return torch.cat(steps, 1)


def test_per_bar_views_agree_with_the_dense_reference(tiny):
    """Rows open bars at different steps (every row's views are rebuilt when any row opens one)."""
    model, d, pairs, _ = tiny
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    model.decoder.compact_steps = False
    dense = incremental_logits(model, src, lens, prev)
    model.decoder.compact_steps = True
    compact = incremental_logits(model, src, lens, prev)
    assert (compact - dense)[valid].abs().max() < 1e-5
    forced = model(src, lens, prev)[0]  # teacher forcing: the slow dense reference of the whole network
    assert (compact - forced)[valid].abs().max() < 1e-4


def test_one_draw_equals_torch_multinomial():
    """The sampler's draw takes the same token as torch.multinomial from the same random numbers and
    leaves torch's generator where multinomial leaves it; a row with no mass is refused as by it."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(300):
        rows, vocab = 1 + trial % 5, 50 + 11 * trial
        logits = torch.full((rows, vocab), float("-inf"))
        allowed = torch.randperm(vocab, generator=gen)[:1 + trial % 40]
        logits[:, allowed] = 3 * torch.randn(rows, len(allowed), generator=gen)
        if len(allowed) > 3:
            logits[0, allowed[:trial % 3]] = float("-inf")  # rows allowing different tokens
        probs = torch.log_softmax(logits, -1).exp_()
        torch.manual_seed(trial)
        expected = torch.multinomial(probs, 1, replacement=True).view(rows)
        after = torch.get_rng_state()
        torch.manual_seed(trial)
        assert torch.equal(multinomial_one(probs), expected)
        assert torch.equal(torch.get_rng_state(), after)
    with pytest.raises(RuntimeError):
        multinomial_one(torch.zeros(1, 10))


def test_candidate_logits_equal_the_whole_projection(tiny):
    model, d, pairs, rules = tiny
    src, lens, prev = batch(d, pairs)
    model.enable_decoding(rules)
    whole = incremental_logits(model, src, lens, prev)
    picked = incremental_logits(model, src, lens, prev, lambda enc, t: rules.candidates(enc["decode"], t))
    valid = prev.ne(d.pad())
    finite = torch.isfinite(picked)
    assert finite.any(-1)[valid].all()
    assert (picked[finite] - whole[finite]).abs().max() < 1e-5
    bar_type = [d.index("Bar_None")]
    assert not finite[..., bar_type][valid & prev.ne(d.index("Bar_None"))].all()  # others really -inf


# ------------------------------------------------------------------ the released model
def excerpt(renderer, name: str, bars: int):
    tokens = renderer.score_tokens(str(VIENNA / name))
    prefix, score_bars = split_bars(tokens)
    return list(prefix) + [t for b in score_bars[:bars] for t in b]


def render_both(renderer, pieces, seed, **sampling):
    out = {}
    for generator in ("lean", "fairseq"):
        out[generator] = renderer.render_many(pieces, Sampling(seed=seed, generator=generator, **sampling),
                                              batch_size=len(pieces), progress=False)
    return out["lean"], out["fairseq"]


@needs_release
@pytest.mark.parametrize("type_temperature,seed,sampling", [
    ("", 0, {}), ("Tempo=mean,Vel=mean", 1, {}), ("", 2, {"temperature": 1.2, "topp": 0.9})],
    ids=["default-rules", "expected-value", "hot-topp"])
def test_released_model_same_tokens_as_fairseq(type_temperature, seed, sampling):
    """Several segments (small ones: the overlap bars are forced prefixes), instruct-render's rules."""
    renderer = Renderer.load(type_temperature=type_temperature)
    renderer.max_positions = 260
    score = excerpt(renderer, "Mozart_K331_1st-mov.musicxml", 10)
    assert len(renderer.plan(score, 2)[2]) >= 3
    lean, theirs = render_both(renderer, [score], seed, **sampling)
    assert lean == theirs and len(lean[0]) > 500


@needs_release
def test_released_model_pieces_batched_same_tokens_as_fairseq():
    """Three pieces of different lengths rendered together: segments batched across pieces."""
    renderer = Renderer.load()
    renderer.max_positions = 300
    pieces = [excerpt(renderer, "Schubert_D783_no15.musicxml", 12), excerpt(renderer, "Chopin_op38.musicxml", 6),
              excerpt(renderer, "Mozart_K331_1st-mov.musicxml", 9)]
    lean, theirs = render_both(renderer, pieces, 4)
    assert lean == theirs
    alone = renderer.render_many(pieces[1:2], Sampling(seed=4), progress=False)
    assert alone[0] != lean[1]  # batched, a piece draws other numbers than alone: the batch was real
