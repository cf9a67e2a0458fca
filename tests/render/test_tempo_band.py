"""The tempo band (``--tempo-band``): the windowed tempo level of a rendering stays near its level so far."""
import math

import pytest
import torch

from conftest import VIENNA, stderr_of, NO_PLANS
from instruct_tokenizer import vocab as V
from instruct_tokenizer.grammar import beat_period_s, target_slots, tempo_slot_gaps, token_type
from museformer.decoding.functions import (
    TEMPO_BAND_GAIN,
    TEMPO_BAND_MAX_CURVE,
    TEMPO_BAND_MAX_PENALTY,
    TEMPO_BAND_WARMUP_Q,
    tempo_band_excess,
    tempo_band_penalty,
    tempo_level_update,
)
from museformer.render import DEFAULT_CHECKPOINT, RenderError, Renderer, Sampling, main, split_bars

CHOPIN = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
BIAS = 10.0
BIN_LOG = math.log(V.tempo_value(1) / V.tempo_value(0))
PERIODS = torch.tensor([float("nan")] + [V.tempo_value(b) for b in range(0, 160, 7)] + [float("nan")])


def _band_reference(logits, period, level, gap, scale, band, bin_log, ref=None):
    """Slow reference, row by row: the windowed level's excess beyond the band around the reference,
    a Gaussian prior of curvature TEMPO_BAND_GAIN x excess (at most TEMPO_BAND_MAX_CURVE) on each Tempo
    token's distance in bins from the reference, relative to the allowed token with the least, capped."""
    out = logits.clone()
    for b in range(logits.shape[0]):
        g = gap[b].item()
        if not math.isfinite(g) or g <= 0 or level[b, 3].item() < TEMPO_BAND_WARMUP_Q:
            continue
        window = level[b, 0].item() / level[b, 1].item()
        reference = level[b, 2].item() / level[b, 3].item() if ref is None else ref[b].item()
        if math.isnan(reference):
            continue
        excess = max(0.0, abs(math.log(window / reference) / bin_log) - band)
        curve = min(TEMPO_BAND_MAX_CURVE, TEMPO_BAND_GAIN * excess)
        pen = {i: curve * (math.log(period[i].item() * scale[b].item() / reference) / bin_log) ** 2
               for i in range(logits.shape[-1]) if not math.isnan(period[i].item())}
        least = min((x for i, x in pen.items() if math.isfinite(logits[b, 0, i].item())), default=0.0)
        for i, x in pen.items():
            out[b, 0, i] = logits[b, 0, i] - min(max(x - least, 0.0), TEMPO_BAND_MAX_PENALTY)
    return out


def test_band_penalty_matches_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        B, n = 6, len(PERIODS)
        logits = torch.randn(B, 1, n, generator=g).masked_fill(torch.rand(B, 1, n, generator=g) < 0.2, float("-inf"))
        total_q = torch.rand(B, generator=g) * 60  # some rows still in the warm-up
        level = torch.stack([torch.rand(B, generator=g) * 6, torch.rand(B, generator=g) * 8 + 0.5,
                             total_q * (torch.rand(B, generator=g) + 0.2), total_q], dim=1)  # (B, 4)
        gap = torch.rand(B, generator=g) * 2
        gap[0], gap[1] = float("nan"), 0.0  # no Tempo slot; the first group
        scale = torch.rand(B, generator=g) + 0.5
        got = tempo_band_penalty(logits, PERIODS, level, gap, scale, 6.0, BIN_LOG)
        want = _band_reference(logits, PERIODS, level, gap, scale, 6.0, BIN_LOG)
        assert torch.allclose(got, want, atol=1e-4, equal_nan=True)
        assert torch.equal(torch.isfinite(got), torch.isfinite(logits))  # forcing any allowed token still works
        assert torch.equal(got[:2], logits[:2])


def test_band_docstring_example():
    """Reference (so far) 0.5 s per quarter, window 0.8 s: 16.2 bins slower; a band of 12 leaves an
    excess of 4.2 and a prior of curvature 0.0085: 0.85 logits off 10 bins away, 3.4 off 20 bins away,
    on either side; inside a band of 20 nothing changes."""
    level = torch.tensor([[6.4, 8.0, 16.0, 32.0]])
    assert tempo_band_excess(level, 12.0, BIN_LOG).item() == pytest.approx(4.23, abs=0.01)
    ref_bin = math.log(0.5 / V.tempo_value(0)) / BIN_LOG  # the reference, in bins
    period = torch.tensor([V.tempo_value(0) * math.exp(BIN_LOG * (ref_bin + d)) for d in (0, 10, -10, 20)])
    got = tempo_band_penalty(torch.zeros(1, 1, 4), period, level, torch.tensor([1.0]), torch.tensor([1.0]),
                             12.0, BIN_LOG)[0, 0]
    assert got.tolist() == pytest.approx([0.0, -0.846, -0.846, -3.38], abs=0.01)
    same = tempo_band_penalty(torch.zeros(1, 1, 4), period, level, torch.tensor([1.0]), torch.tensor([1.0]),
                              20.0, BIN_LOG)
    assert torch.equal(same, torch.zeros(1, 1, 4))


def test_level_update_counts_notated_time_relative_to_the_notated_tempo():
    level = torch.zeros(2, 4)
    # the same performed period at QPM 120 and at QPM 60 (scale 0.5): the slower notated tempo halves it
    level = tempo_level_update(level, torch.tensor([0.5, 0.5]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.5]))
    assert level[:, 2].tolist() == pytest.approx([1.0, 0.5]) and level[:, 3].tolist() == [2.0, 2.0]
    unchanged = tempo_level_update(level, torch.tensor([0.5, float("nan")]), torch.tensor([0.0, 1.0]),
                                   torch.tensor([1.0, 1.0]))
    assert torch.equal(unchanged, level)  # the first group (gap 0) and a row with no Tempo token


def test_tempo_slot_gaps_line_up_with_the_tempo_slots():
    toks = ("Bar_None QPM_120 Pos_0 Pitch_60 Dur_12 Staff_1 Pos_12 Pitch_62 Dur_12 Staff_1 "
            "Bar_None QPM_60 Pos_0 Pitch_64 Dur_24 Staff_1").split()
    gaps, scales = tempo_slot_gaps(toks)
    slots = target_slots(toks)
    assert len(gaps) == len(scales) == len(slots)
    assert [s == V.TEMPO for s in slots] == [not math.isnan(x) for x in gaps]
    step = 12 / V.GRID  # quarters of Pos_12
    assert [x for x in gaps if not math.isnan(x)] == pytest.approx([0.0, step, 4.0 - step])
    assert [x for x in scales if not math.isnan(x)] == pytest.approx([1.0, 1.0, 0.5])
    no_qpm = [t for t in toks if not t.startswith("QPM")]
    assert [x for x in tempo_slot_gaps(no_qpm)[1] if not math.isnan(x)] == [1.0, 1.0, 1.0]


def _windowed_devs(toks, perf):
    """Bins between the windowed level and the level so far after each Tempo token past the warm-up."""
    gaps, scales = tempo_slot_gaps(toks)
    level, out = torch.zeros(1, 4), []
    for tok, gap, scale in zip(perf, gaps, scales):
        if token_type(tok) != V.TEMPO:
            continue
        warm = level[0, 3].item() >= TEMPO_BAND_WARMUP_Q
        level = tempo_level_update(level, torch.tensor([beat_period_s(tok)]), torch.tensor([gap]), torch.tensor([scale]))
        if warm and gap > 0:
            out.append(abs(math.log((level[0, 0] / level[0, 1]) / (level[0, 2] / level[0, 3]))) / BIN_LOG)
    return out


@needs_release
def test_decoder_level_state_equals_level_after():
    """The decoder's running level, fed a human performance step by step, equals DecodeRules.state_after:
    the renderer's prior for the next segment continues exactly what the decoder computed."""
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=6.0, tempo_anchor="self")
    toks = r.score_tokens(str(CHOPIN))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:12] for t in b]  # 2/4: 24 quarters
    perf = r.render_tokens(toks, Sampling(seed=1), progress=False)
    model = r.models[0]
    src = torch.tensor([[r.src_dict.index(t) for t in toks] + [r.src_dict.eos()]])
    enc = model.encoder(src, torch.tensor([src.shape[1]]))
    prev = torch.tensor([[r.tgt_dict.eos()] + [r.tgt_dict.index(t) for t in perf]])
    state: dict = {}
    with torch.no_grad():
        for k in range(1, prev.shape[1] + 1):
            model.decoder.forward_incremental(prev[:, :k], enc, state)
    level = model.decoder.get_incremental_state(state, "fc").rules["level"][0]  # DecoderState.rules
    assert torch.allclose(level, r.rules.state_after(toks, perf)["tempo_prior"], rtol=1e-5)
    assert level[3].item() > TEMPO_BAND_WARMUP_Q  # the band was active for part of the excerpt


def _drifting(renderer, bias: float, after_steps: int):
    """From decoding step ``after_steps`` on, add ``bias`` to the logits of the fastest tempo bins: a
    model that plays its opening at one tempo, then rushes."""
    fast = [renderer.tgt_dict.index(V.tok(V.TEMPO, b)) for b in range(0, 30)]
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1
        if calls[0] <= after_steps:
            return output
        output = output.clone()
        output[..., fast] += bias
        return output

    renderer.models[0].decoder.out.register_forward_hook(hook)
    return renderer


@needs_release
def test_band_holds_the_level_of_a_drifting_model():
    """When the fastest tempo bins gain BIAS logits halfway through, the free rendering's windowed level runs
    far from its level so far; with a band of 6 bins it stays within 3 bins of the band,
    across segments too (the level carries over)."""
    toks = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS).score_tokens(str(CHOPIN))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:20] for t in b]  # 2/4: 40 quarters
    half = len(target_slots(toks)) // 2
    free = _drifting(Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=0.0), BIAS, half)
    banded = _drifting(Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=6.0, tempo_anchor="self"),
                       BIAS, half)
    banded.max_positions = free.max_positions = 400
    assert len(banded.plan(toks, 2)[2]) > 2
    free_dev = max(_windowed_devs(toks, free.render_tokens(toks, Sampling(seed=0), progress=False)))
    perf = banded.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    band_dev = max(_windowed_devs(toks, perf))
    assert free_dev > 20.0, free_dev
    assert band_dev < 6.0 + 3.0, band_dev


@needs_release
def test_negative_band_is_one_error_line(tmp_path):
    with pytest.raises(RenderError, match="--tempo-band"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=-1)
    out = tmp_path / "out.mid"
    code, err = stderr_of(main, [CHOPIN, "-o", out, "--tempo-band", "-1"])
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--tempo-band" in lines[0], err


def test_notated_anchor_centres_the_band_on_the_notated_tempo():
    """With a reference (the notated tempo, 0.5 s per quarter in the level's units) the band ignores the
    level so far; a NaN reference (no tempo stated) leaves the row unchanged."""
    level = torch.tensor([[6.4, 8.0, 25.6, 32.0], [6.4, 8.0, 25.6, 32.0]])  # window 0.8, so far 0.8
    ref = torch.tensor([0.5, float("nan")])
    assert tempo_band_excess(level, 12.0, BIN_LOG).tolist() == [0.0, 0.0]
    excess = tempo_band_excess(level, 12.0, BIN_LOG, ref)
    assert excess[0].item() == pytest.approx(4.23, abs=0.01) and math.isnan(excess[1].item())
    period = torch.tensor([0.5, 0.5 * math.exp(10 * BIN_LOG)])  # the notated tempo; 10 bins slower
    got = tempo_band_penalty(torch.zeros(2, 1, 2), period, level, torch.tensor([1.0, 1.0]), torch.ones(2), 12.0,
                             BIN_LOG, ref=ref)
    assert got[0, 0].tolist() == pytest.approx([0.0, -0.846], abs=0.01) and got[1].tolist() == [[0.0, 0.0]]
    want = _band_reference(torch.zeros(2, 1, 2), period, level, torch.ones(2), torch.ones(2), 12.0, BIN_LOG, ref)
    assert torch.allclose(got, want, atol=1e-4)


def test_states_tempo_ignores_the_default_120():
    from instruct_tokenizer.grammar import states_tempo

    assert states_tempo("Bar_None QPM_101 Pos_0 Pitch_60 Dur_12 Staff_1".split())
    assert not states_tempo("Bar_None QPM_120 Pos_0 Pitch_60 Dur_12 Staff_1".split())
    assert not states_tempo("Bar_None Pos_0 Pitch_60 Dur_12 Staff_1".split())


@needs_release
def test_unknown_anchor_is_an_error():
    with pytest.raises(RenderError, match="--tempo-anchor"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=6.0, tempo_anchor="median")


@needs_release
def test_render_defaults_band_on_the_notated_tempo():
    """instruct-render's defaults: the band of decoding.config.TEMPO_BAND_BINS around the notated tempo (where no
    tempo plan steers: test_band_leaves_the_rows_a_tempo_plan_steers); 0 turns it off."""
    from museformer.decoding.config import TEMPO_ANCHOR, TEMPO_BAND_BINS

    from museformer.decoding.rules import TempoBand

    band = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS).rules.get(TempoBand)
    assert (band.band_bins, band.anchor) == (TEMPO_BAND_BINS, TEMPO_ANCHOR) == (12.0, "notated")
    assert Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, tempo_band=0).rules.get(TempoBand) is None


@needs_release
def test_band_leaves_the_rows_a_tempo_plan_steers():
    """The band is the fallback for a rendering no tempo plan steers: with the release's tempo plan on, a
    band narrow enough to act everywhere (0.5 bins around the level so far) renders exactly the tokens of
    no band; with the plan off, the same band changes them."""
    toks = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS).score_tokens(str(CHOPIN))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:20] for t in b]  # 2/4: 40 quarters

    def render(tempo_plan: float, tempo_band: float) -> list:
        r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **{**NO_PLANS, "tempo_plan": tempo_plan},
                                     tempo_band=tempo_band, tempo_anchor="self")
        return r.render_tokens(toks, Sampling(seed=0), progress=False)

    planned = render(3.0, 0.0)
    assert max(_windowed_devs(toks, planned)) > 2.0  # the level moves: a 0.5-bin band would act on it
    assert render(3.0, 0.5) == planned
    assert render(0.0, 0.5) != render(0.0, 0.0)
