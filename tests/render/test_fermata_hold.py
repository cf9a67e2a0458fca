"""The fermata hold (``--fermata-hold``): a fermata's onset and the onset after it are played slower."""
import math

import pytest
import torch

from conftest import VIENNA, stderr_of, NO_PLANS
from instruct_tokenizer import vocab as V
from instruct_tokenizer.grammar import fermata_slots, target_slots, tempo_slot_gaps, token_type
from museformer.decoding.rules import FermataHold
from museformer.decoding.config import FERMATA_HOLD_BINS
from museformer.decoding.functions import FORCEABLE_LOGIT, FERMATA_MIN_WINDOW_Q, fermata_hold, fermata_reference_bin
from museformer.render import DEFAULT_CHECKPOINT, RenderError, Renderer, Sampling, main, split_bars

CHOPIN = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
BIN_LOG = math.log(V.tempo_value(1) / V.tempo_value(0))


def _hold_reference(logits, tempo_ids, ref_bin, lift, active):
    """Slow reference, row by row and bin by bin: the expected bin under the row's Tempo distribution, the
    least whole shift k that lifts it to ref_bin + lift, bin b taking bin b - k's logit, the top bin the
    log-sum-exp of all bins shifted onto or past it, the bins below k forceable."""
    out = logits.clone()
    ids = tempo_ids.tolist()
    n = len(ids)
    for b in range(logits.shape[0]):
        old = [logits[b, 0, i].item() for i in ids]
        finite = [x for x in old if math.isfinite(x)]
        if not active[b].item() or not finite or not math.isfinite(ref_bin[b].item()):
            continue
        top = max(finite)
        z = sum(math.exp(x - top) for x in finite)
        expected = sum(j * math.exp(x - top) / z for j, x in enumerate(old) if math.isfinite(x))
        k = math.ceil(ref_bin[b].item() + lift - expected - 1e-6)
        if k <= 0:
            continue
        k = min(k, n - 1)
        for j in range(n):
            if j < k:
                new = FORCEABLE_LOGIT if math.isfinite(old[j]) else float("-inf")
            elif j < n - 1:
                new = old[j - k]
            else:
                tail = [x for x in old[j - k:] if math.isfinite(x)]
                new = max(tail) + math.log(sum(math.exp(x - max(tail)) for x in tail)) if tail else float("-inf")
            out[b, 0, ids[j]] = new
    return out


def test_hold_matches_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        B, V_, n = 6, 40, 30
        tempo_ids = torch.randperm(V_, generator=g)[:n]  # Tempo tokens in bin order, scattered in the dictionary
        logits = (torch.randn(B, 1, V_, generator=g) * 2).masked_fill(torch.rand(B, 1, V_, generator=g) < 0.2,
                                                                      float("-inf"))
        ref = torch.rand(B, generator=g) * n
        ref[0] = float("nan")  # no reference yet
        active = torch.rand(B, generator=g) < 0.8
        lift = float(torch.rand(1, generator=g) * 20)
        got = fermata_hold(logits, tempo_ids, ref, lift, active)
        want = _hold_reference(logits, tempo_ids, ref, lift, active)
        assert torch.allclose(got, want, atol=1e-4, equal_nan=True)


def test_hold_docstring_example():
    """All mass on bin 60 (expected 60.0), reference 58, lift 15: shifted 13 bins, to bin 73."""
    tempo_ids = torch.arange(V.TEMPO_BINS)
    logits = torch.full((1, 1, V.TEMPO_BINS), -30.0)
    logits[0, 0, 60] = 0.0
    out = fermata_hold(logits, tempo_ids, torch.tensor([58.0]), 15.0, torch.tensor([True]))
    assert out[0, 0].argmax().item() == 73
    assert out[0, 0, :13].eq(FORCEABLE_LOGIT).all()  # below the shift: forceable, never picked
    untouched = fermata_hold(logits, tempo_ids, torch.tensor([40.0]), 15.0, torch.tensor([True]))
    assert torch.equal(untouched, logits)  # already slow enough


def test_reference_is_the_window_or_the_latest_period():
    first = V.tempo_value(0)
    level = torch.tensor([[4.0, 8.0, 4.0, 8.0], [0.0, 0.0, 0.0, 0.0]])  # window 0.5 s per quarter; empty
    period = torch.tensor([0.9, V.tempo_value(50)])
    ref = fermata_reference_bin(level, period, torch.tensor([1.0, 1.0]), first, BIN_LOG)
    assert ref[0].item() == pytest.approx(math.log(0.5 / first) / BIN_LOG, abs=1e-3)
    assert ref[1].item() == pytest.approx(50.0, abs=1e-3)  # under FERMATA_MIN_WINDOW_Q: the latest period
    assert FERMATA_MIN_WINDOW_Q > 0
    halved = fermata_reference_bin(level[:1], period[:1], torch.tensor([2.0]), first, BIN_LOG)  # QPM 240
    assert halved.item() == pytest.approx(ref[0].item() - math.log(2.0) / BIN_LOG, abs=1e-3)


def test_fermata_slots_mark_the_fermata_group_and_the_next():
    toks = ("Bar_None Pos_0 Pitch_60 Dur_24 Staff_1 Pitch_64 Dur_24 Staff_1 Mark_fermata "
            "Pos_24 Pitch_62 Dur_24 Staff_1 Bar_None Pos_0 Pitch_64 Dur_24 Staff_1").split()
    slots, marked = target_slots(toks), fermata_slots(toks)
    assert len(marked) == len(slots)
    tempo_marks = [m for s, m in zip(slots, marked) if s == V.TEMPO]
    assert tempo_marks == [True, True, False]
    assert not any(m for s, m in zip(slots, marked) if s != V.TEMPO)
    plain = [t for t in toks if t != V.FERMATA_MARK]  # a score MIDI: no markings, no held slot
    assert not any(fermata_slots(plain))


def _with_fermata(toks, group):
    """Score tokens with ``Mark_fermata`` on every note of onset group ``group`` (0-based)."""
    out, g = [], -1
    for t in toks:
        if t == V.FERMATA_MARK:
            continue
        out.append(t)
        if token_type(t) == V.POS:
            g += 1
        elif token_type(t) == V.STAFF and g == group:
            out.append(V.FERMATA_MARK)
    return out


def _lifts(renderer, toks, perf):
    """Per held slot: its Tempo bin minus the hold's reference bin (the decoder's level arithmetic)."""
    held = fermata_slots(toks)
    gaps, scales = tempo_slot_gaps(toks)
    hold = renderer.rules.get(FermataHold)
    out = []
    for k, tok in enumerate(perf):
        if not held[k]:
            continue
        level = renderer.rules.state_after(toks, perf[:k])["tempo_prior"][None]  # (1, 4)
        latest = [t for t in perf[:k] if token_type(t) == V.TEMPO]
        period = torch.tensor([V.tempo_value(int(V.parse(latest[-1])[1]))])
        ref = fermata_reference_bin(level, period, torch.tensor([scales[k]]), hold.first_period, hold.bin_log)
        out.append(int(V.parse(tok)[1]) - ref.item())
    return out


@needs_release
def test_rendering_holds_a_fermata():
    """A fermata put on the 20th onset group of a Chopin excerpt: decoded at the expected value, both held
    slots lie at least the hold (less one bin of rounding) slower than the reference; without the hold
    the same model lifts them less."""
    base = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS)
    prefix, bars = split_bars(base.score_tokens(str(CHOPIN)))
    toks = _with_fermata(prefix + [t for b in bars[:8] for t in b], 20)
    assert sum(fermata_slots(toks)) == 2
    mean = "Tempo=mean,Vel=mean"
    held = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, type_temperature=mean)
    free = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, type_temperature=mean, fermata_hold=0.0)
    perf = held.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    lifts = _lifts(held, toks, perf)
    assert min(lifts) >= FERMATA_HOLD_BINS - 1.0, lifts
    free_lifts = _lifts(held, toks, free.render_tokens(toks, Sampling(seed=0), progress=False))
    assert sum(free_lifts) < sum(lifts), (free_lifts, lifts)


@needs_release
def test_negative_hold_is_one_error_line(tmp_path):
    with pytest.raises(RenderError, match="--fermata-hold"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, fermata_hold=-1)
    out = tmp_path / "out.mid"
    code, err = stderr_of(main, [CHOPIN, "-o", out, "--fermata-hold", "-1"])
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--fermata-hold" in lines[0], err


@needs_release
def test_render_default_holds_fermatas():
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS)
    assert r.decode.fermata_hold == FERMATA_HOLD_BINS == 15.0 and r.decode.tracks_level
    assert r.rules.get(FermataHold).lift_bins == 15.0
    off = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, fermata_hold=0, tempo_band=0)
    assert off.rules.get(FermataHold) is None and not off.decode.tracks_level
