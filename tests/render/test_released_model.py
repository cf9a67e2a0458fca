"""The released model file loads through the safe loader and renders a valid performance."""
import pytest
import torch

from conftest import REPO, VIENNA, stderr_of
from instruct_tokenizer.grammar import target_slots, token_type
from museformer.render import DEFAULT_CHECKPOINT, Renderer, Sampling, split_bars


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_released_checkpoint_renders_valid_tokens():
    assert DEFAULT_CHECKPOINT.stat().st_size <= 30 * 1000 * 1000
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):  # the only allowlisted global
        state = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    toks = r.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"), style={"dynamics": "loud"})
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:3] for t in b]
    perf = r.render_tokens(toks, Sampling(seed=1), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_rendering_plays_every_score_note_unless_deletions_allowed():
    from instruct_tokenizer.grammar import DELETION, unison_repeats

    strict = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    toks = strict.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:4] for t in b]
    from museformer.decoding.rules import GrammarMask

    assert not strict.rules.get(GrammarMask).table[:, strict.tgt_dict.index(DELETION)].any()
    loose = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), no_deletions=False)  # --allow-deletions
    assert loose.rules.get(GrammarMask).table[:, loose.tgt_dict.index(DELETION)].any()
    repeats = [m for m, slot in zip(unison_repeats(toks), target_slots(toks)) if slot == "Vel"]
    for seed in range(3):
        perf = strict.render_tokens(toks, Sampling(seed=seed, temperature=2.0), progress=False)
        # every score note is played, except a unison's repeated pitch (tests/render/test_key_down_floor.py)
        assert [t == DELETION for t in perf if token_type(t) == "Vel"] == repeats


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_type_temperature_sharpens_only_its_type():
    """Tempo=0.25 divides only the Tempo slots' logits by 0.25: tempo tokens vary less across seeds,
    every other slot keeps its distribution's scale (checked on the logits multiplier)."""
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), type_temperature="Tempo=0.25")
    from museformer.decoding.rules import TypeTemperature

    rule, type_id = r.rules.get(TypeTemperature), r.rules.get(TypeTemperature).type_id
    assert rule.scale[type_id["Tempo"]] == pytest.approx(4.0)
    assert all(rule.scale[i] == 1.0 for n, i in type_id.items() if n != "Tempo")
    toks = r.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:3] for t in b]
    plain = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))

    def tempo_spread(renderer):
        runs = [[t for t in renderer.render_tokens(toks, Sampling(seed=s, temperature=1.5), progress=False)
                 if token_type(t) == "Tempo"] for s in range(4)]
        return sum(len(set(col)) for col in zip(*runs))

    assert tempo_spread(r) < tempo_spread(plain)


@pytest.mark.parametrize("bad", ["Foo=0.5", "Tempo=0", "Tempo", "Tempo=x"])
def test_bad_type_temperature_is_one_error_line(bad, tmp_path):
    from museformer.render import main

    out = tmp_path / "out.mid"
    code, err = stderr_of(main, [VIENNA / "musicxml" / "Chopin_op10_no3.musicxml", "-o", out,
                                 "--type-temperature", bad])
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--type-temperature" in lines[0], err


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_render_many_of_no_pieces_is_empty():
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    assert r.render_many([], Sampling(seed=0), progress=False) == []


def _expected_value_choice_reference(logits, value):
    """Slow reference: for each row, the numbered allowed token nearest sum(p * value), p the softmax
    over the allowed numbered tokens (ties: the lowest token id)."""
    import math

    from museformer.decoding.functions import FORCEABLE_LOGIT

    out = torch.where(torch.isfinite(logits), torch.full_like(logits, FORCEABLE_LOGIT), logits)
    for b in range(logits.shape[0]):
        ids = [i for i in range(logits.shape[-1])
               if math.isfinite(logits[b, 0, i].item()) and math.isfinite(value[i].item())]
        z = torch.tensor([logits[b, 0, i].item() for i in ids], dtype=torch.float64)
        p = torch.softmax(z, 0)
        mean = sum(pi.item() * value[i].item() for pi, i in zip(p, ids))
        best = min(ids, key=lambda i: (abs(value[i].item() - mean), i))
        out[b, 0, best] = 0.0
    return out


def test_expected_value_choice_matches_reference():
    from museformer.decoding.functions import expected_value_choice

    g = torch.Generator().manual_seed(0)
    value = torch.tensor([float("nan"), 0.0, 1.0, 2.0, 3.0, 10.0, -4.0, float("nan"), 7.5])
    for _ in range(50):
        logits = torch.randn(4, 1, len(value), generator=g) * 3  # (B, 1, V)
        mask = torch.rand(4, 1, len(value), generator=g) < 0.3
        mask[..., 2] = False  # every row keeps a numbered token
        logits = logits.masked_fill(mask, float("-inf"))
        got = expected_value_choice(logits, value)
        assert torch.equal(got, _expected_value_choice_reference(logits, value))
        assert (got == 0).sum(-1).eq(1).all()  # one token holds all the mass
        assert torch.equal(torch.isfinite(got), torch.isfinite(logits))  # forcing any allowed token still works


def test_expected_value_choice_takes_the_mean_not_the_mode():
    from museformer.decoding.functions import expected_value_choice

    value = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    p = torch.tensor([0.45, 0.0, 0.1, 0.0, 0.45])  # mode 0 or 4, mean 2
    got = expected_value_choice(p.log().view(1, 1, -1), value)
    assert (got[0, 0] == 0).nonzero().flatten().tolist() == [2]


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_mean_type_is_the_same_for_every_seed_and_stays_valid():
    """Tempo=mean,Vel=mean: with the same earlier tokens the tempo and velocity tokens would not depend
    on the seed; the rendering differs across seeds only through the sampled types (Time, Art, pedal),
    and stays grammatical."""
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), type_temperature="Tempo=mean,Vel=mean")
    from museformer.decoding.rules import ExpectedValue

    rule = r.rules.get(ExpectedValue)
    assert rule.mean[rule.tables.type_id["Tempo"]] and rule.mean[rule.tables.type_id["Vel"]]
    assert not rule.mean[rule.tables.type_id["Time"]]
    toks = r.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:2] for t in b]
    runs = [r.render_tokens(toks, Sampling(seed=s, temperature=3.0), progress=False) for s in range(2)]
    for perf in runs:
        assert [token_type(t) for t in perf] == target_slots(toks)
    # the first Tempo token depends on nothing sampled: it is the same for both seeds
    first_tempo = [next(t for t in perf if token_type(t) == "Tempo") for perf in runs]
    assert first_tempo[0] == first_tempo[1]
    assert runs[0] != runs[1]  # the other types are still sampled
    # segments: the overlap bars are forced even where the mean would have chosen another token
    toks = prefix + [t for b in bars[:6] for t in b]
    r.max_positions = 160
    assert len(r.plan(toks, 2)[2]) > 2
    perf = r.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
@pytest.mark.parametrize("bad", ["Sus=mean", "Bar=mean"])
def test_mean_on_a_type_without_numbers_is_rejected(bad):
    from museformer.render import RenderError

    with pytest.raises(RenderError, match="--type-temperature"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), type_temperature=bad)
