"""The plan priors: ``--tempo-plan`` (each onset group's tempo distribution times a Gaussian around the
tempo plan's beat period for it) and ``--velocity-plan`` (each note's velocity distribution times a
Gaussian around the velocity plan's velocity for it)."""
import argparse
import math

import numpy as np
import pytest
import torch

from conftest import VIENNA, stderr_of
from instruct_tokenizer import vocab as V
from instruct_tokenizer.grammar import beat_period_s, target_slots, tempo_slot_gaps, token_type
from museformer.decoding.functions import TEMPO_BAND_MAX_PENALTY
from museformer.decoding.rules import TempoPlanPrior
from museformer.render import DEFAULT_CHECKPOINT, RenderError, Renderer, Sampling, main, split_bars
from museformer.tempo_plan import N_FEATURES, PlanNet, TempoPlan, TempoPlanEnsemble

CHOPIN = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


def _rule(sigma=4.0):
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), tempo_plan=sigma)
    return r, r.rules.get(TempoPlanPrior)


@needs_release
def test_prior_is_a_gaussian_around_the_centre_in_bins():
    """One row centred on a Tempo token's period, one with no plan: the first loses w x d^2 (d: bins from
    the centre, w = 1 / (2 sigma^2)) relative to the centre token, capped; the second is unchanged."""
    _, rule = _rule(4.0)
    ids, periods = rule.columns, rule.column_periods
    centre_k = len(ids) // 2
    logits = torch.zeros(2, 1, int(ids.max()) + 1)
    table = {"plan_period": torch.tensor([[float(periods[centre_k])], [float("nan")]])}

    class T(dict):
        def acts(self, name, step, kind="finite"):
            return bool(torch.isfinite(self[name][:, 0]).any())

    out = rule(logits, {}, T(table), 0)
    assert torch.equal(out[1], logits[1])
    for k in (centre_k - 9, centre_k - 3, centre_k, centre_k + 5, centre_k + 40):
        d = math.log(float(periods[k]) / float(periods[centre_k])) / rule.bin_log
        want = -min(d * d / (2 * 4.0 ** 2), TEMPO_BAND_MAX_PENALTY)
        assert float(out[0, 0, ids[k]]) == pytest.approx(want, abs=1e-4)


def _random_plan(tokens=None, seed=0, std=0.2):
    """An untrained plan whose curve over ``tokens`` has a standard deviation of ``std`` (log s per quarter)."""
    torch.manual_seed(seed)
    net = PlanNet(channels=8, levels=3, dropout=0.0).eval()
    plan = TempoPlan(net, np.zeros(N_FEATURES, np.float32), np.ones(N_FEATURES, np.float32))
    if tokens is not None:
        with torch.no_grad():
            net.out.weight.mul_(std / float(np.std(plan.predict(tokens))))
    return plan


def _store(plan, path, entry="tempo_plan"):
    """Store ``plan`` in the release file ``path`` as scripts/fit_plan.py --into does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from scripts.fit_plan import store

    store(plan, str(path), entry)


def _with_plan(tmp_path, plan, entry="tempo_plan"):
    """A copy of the released model with ``plan`` stored in it as its ``entry`` (its tempo plan by default)."""
    import shutil

    path = tmp_path / f"with-{entry}.pt"
    shutil.copy(DEFAULT_CHECKPOINT, path)
    _store(plan, path, entry)
    return path


def _centre_distances(renderer, toks, perf):
    """Per onset group: bins between the rendered beat period and the plan's centre for it (the notated
    period x e^factor, the plan's curve over the gap that ends at the group: ``gap_factors`` of
    ``factors_over_notated``)."""
    from museformer.tempo_plan import factors_over_notated, gap_factors

    factors = gap_factors(factors_over_notated(renderer.tempo_planner, toks), toks)
    gaps, scales = tempo_slot_gaps(toks)
    out = []
    groups = [k for k, gap in enumerate(gaps) if gap == gap]
    bin_log = math.log(V.tempo_value(1) / V.tempo_value(0))
    for g, k in enumerate(groups):
        period = beat_period_s(perf[k])
        centre = 0.5 * math.exp(factors[g]) / scales[k]
        out.append(math.log(period / centre) / bin_log)
    return np.array(out)


def _planned_and_free(tmp_path, make_plan, entry, on, off, n_bars=10):
    """The first ``n_bars`` bars of the Chopin score, a plan made for them stored in a copy of the release as its
    ``entry``, and two renderers of that copy (``on`` / ``off``: their keyword arguments) that cut the
    bars into several segments: (tokens, plan, planned, free)."""
    prefix, bars = split_bars(Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT)).score_tokens(str(CHOPIN)))
    toks = prefix + [t for b in bars[:n_bars] for t in b]
    plan = make_plan(toks)
    path = _with_plan(tmp_path, plan, entry)
    planned, free = Renderer.from_checkpoint(str(path), **on), Renderer.from_checkpoint(str(path), **off)
    planned.max_positions = free.max_positions = 400
    assert len(planned.plan(toks, 2)[2]) > 2
    return toks, plan, planned, free


@needs_release
def test_rendering_follows_the_plan_across_segments(tmp_path):
    """With a plan stored in the checkpoint and sigma 2 bins, every segment's Tempo tokens lie near the
    plan's centres (its segments get their own groups' part of the whole score's plan); at --tempo-plan 0
    the same model does not follow it."""
    toks, _, planned, free = _planned_and_free(tmp_path, _random_plan, "tempo_plan",
                                               {"tempo_plan": 2.0, "tempo_band": 0.0, "fermata_hold": 0.0},
                                               {"tempo_plan": 0.0, "tempo_band": 0.0, "fermata_hold": 0.0}, n_bars=12)
    assert planned.tempo_planner is not None
    perf = planned.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    near = np.abs(_centre_distances(planned, toks, perf))
    far = np.abs(_centre_distances(planned, toks, free.render_tokens(toks, Sampling(seed=0), progress=False)))
    assert np.median(near) < 2.5 and np.percentile(near, 90) < 5.0, near
    assert np.median(far) > 2 * np.median(near), (np.median(far), np.median(near))


@needs_release
def test_a_checkpoint_without_a_plan_renders_as_without_the_rule(tmp_path):
    toks = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT)).score_tokens(str(CHOPIN))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:6] for t in b]
    on = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), tempo_plan=3.0)
    off = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), tempo_plan=0.0)
    if on.tempo_planner is not None:
        on.tempo_planner = None  # the released file may hold one: this test is about a file without
    assert on.render_tokens(toks, Sampling(seed=1), progress=False) == off.render_tokens(toks, Sampling(seed=1),
                                                                                         progress=False)


@needs_release
def test_negative_plan_width_is_one_error_line(tmp_path):
    with pytest.raises(RenderError, match="--tempo-plan"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), tempo_plan=-1)
    out = tmp_path / "out.mid"
    code, err = stderr_of(main, [CHOPIN, "-o", out, "--tempo-plan", "-1"])
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--tempo-plan" in lines[0], err


@needs_release
@pytest.mark.parametrize("members", [1, 2])
def test_a_broken_plan_in_the_checkpoint_is_a_render_error(tmp_path, members):
    plan = _random_plan() if members == 1 else TempoPlanEnsemble([_random_plan(), _random_plan()])
    path = _with_plan(tmp_path, plan)
    assert type(Renderer.from_checkpoint(str(path)).tempo_planner) is type(plan)
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(path, weights_only=True)
    entry = state["tempo_plan"] if members == 1 else state["tempo_plan"]["members"][-1]
    entry["feature_names"] = ["something else"]
    torch.save(state, path)
    with pytest.raises(RenderError, match="tempo plan"):
        Renderer.from_checkpoint(str(path))


def _random_note_plan(kind, tokens, spread, bias, seed=0):
    """An untrained per-note plan of class ``kind`` whose values over ``tokens`` spread about ``spread``,
    its output layer's bias set to ``bias`` (network units)."""
    from museformer.velocity_plan import N_NOTE_FEATURES, VelocityNet

    torch.manual_seed(seed)
    net = VelocityNet(channels=8, levels=2, dropout=0.0).eval()
    plan = kind(net, np.zeros(N_FEATURES), np.ones(N_FEATURES), np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES))
    with torch.no_grad():
        values = plan.predict(tokens)
        net.head[-1].weight.mul_(spread / max(float(np.std(values)), 1e-3))
        net.head[-1].bias.fill_(bias)
    return plan


def _random_velocity_plan(tokens, seed=0):
    """An untrained velocity plan whose velocities over ``tokens`` spread about 15 around 64."""
    from museformer.velocity_plan import VelocityPlan

    return _random_note_plan(VelocityPlan, tokens, 15.0, 0.0, seed)


@needs_release
def test_rendering_follows_the_velocity_plan(tmp_path):
    """With a velocity plan stored in the checkpoint and sigma 1 bin, the rendered velocities lie within a
    few MIDI steps of the plan, across segments; at --velocity-plan 0 they do not."""
    from instruct_tokenizer.decode import decode_performance

    toks, plan, planned, free = _planned_and_free(tmp_path, _random_velocity_plan, "velocity_plan",
                                                  {"velocity_plan": 1.0, "dynamics_band": 0.0},
                                                  {"velocity_plan": 0.0, "dynamics_band": 0.0})
    assert planned.velocity_planner is not None
    want = plan.predict(toks)
    perf = planned.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    near = np.abs(decode_performance(toks, perf).velocity - want)
    far = np.abs(decode_performance(toks, free.render_tokens(toks, Sampling(seed=0), progress=False)).velocity - want)
    assert np.median(near) <= 3.0 and np.median(far) > 2 * np.median(near), (np.median(near), np.median(far))


def _random_articulation_plan(tokens, seed=0):
    """An untrained articulation plan whose log2 ratios over ``tokens`` spread about 0.6 around -1."""
    from museformer.velocity_plan import ArticulationPlan

    return _random_note_plan(ArticulationPlan, tokens, 0.6, -1.0 - ArticulationPlan.CENTRE, seed)


@needs_release
def test_articulation_prior_is_a_gaussian_in_art_bins():
    """At an Art slot, a token d Art bins (0.04 in log2 each) from the plan's value loses d^2 / (2 sigma^2)
    against the one at the centre; a Vel token is untouched."""
    from museformer.decoding.rules import ArticulationPlanPrior

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), articulation_plan=5.0)
    rule = r.rules.get(ArticulationPlanPrior)
    d = r.tgt_dict
    centre, other = d.index(V.tok(V.ART, V.fmt_art(-1.0))), d.index(V.tok(V.ART, V.fmt_art(-0.6)))
    vel = d.index(V.tok(V.VEL, 30))
    assert centre != d.unk() and other != d.unk() and vel != d.unk()
    logits = torch.zeros(1, 1, len(d))

    class T(dict):
        def acts(self, name, step, kind="finite"):
            return True

    out = rule(logits, {}, T({"articulation_plan": torch.tensor([[-1.0]])}), 0)
    bins = 0.4 / V.ART_STEP
    assert float(out[0, 0, centre] - out[0, 0, other]) == pytest.approx(bins ** 2 / (2 * 5.0 ** 2), rel=1e-3)
    assert float(out[0, 0, vel]) == 0.0


@needs_release
def test_rendering_follows_the_articulation_plan(tmp_path):
    """With an articulation plan stored in the checkpoint and sigma 2 bins, the rendered Art values lie
    near the plan's, across segments; at --articulation-plan 0 they do not."""
    toks, plan, planned, free = _planned_and_free(tmp_path, _random_articulation_plan, "articulation_plan",
                                                  {"articulation_plan": 2.0, "min_key_down_ms": 0.0},
                                                  {"articulation_plan": 0.0, "min_key_down_ms": 0.0})
    assert planned.articulation_planner is not None
    want = plan.predict(toks)
    played = [i for i, t in enumerate(target_slots(toks)) if t == V.ART]

    def arts(perf):
        return np.array([float(V.parse(perf[i])[1]) for i in played])

    perf = planned.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks) and len(played) == len(want)
    near = np.abs(arts(perf) - want)
    far = np.abs(arts(free.render_tokens(toks, Sampling(seed=0), progress=False)) - want)
    assert np.median(near) <= 0.1 and np.median(far) > 2 * np.median(near), (np.median(near), np.median(far))


@needs_release
def test_the_articulation_plan_is_bounded_at_the_tempo_plan_s_local_tempo():
    """The renderer hands the articulation plan the tempo plan's curve over the notated tempo
    (``factors_over_notated``): with a bound of 0.5 s, every planned note lasts at most 1 s at the notated
    tempo times that factor; without the tempo plan, at the notated tempo."""
    from instruct_tokenizer.score import bar_notated_period_s, score_timeline
    from museformer.tempo_plan import factors_over_notated

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    prefix, bars = split_bars(r.score_tokens(str(CHOPIN)))
    toks = prefix + [t for b in bars[:12] for t in b]
    r.articulation_planner.max_key_down_s = 0.5
    tl = score_timeline(toks)
    notated_s = tl.note_dur_q * bar_notated_period_s(toks)[tl.group_bar[tl.note_group]]
    for tempo_plan, curve in ((3.0, factors_over_notated(r.tempo_planner, toks)), (0.0, np.zeros(tl.n_groups))):
        r.decode.tempo_plan = tempo_plan
        planned = r.plans_of(toks)["articulation_plan"][0]
        seconds = notated_s * np.exp(curve[tl.note_group]) * 2.0 ** planned
        assert seconds.max() <= 0.5 + 1e-9 and (seconds > 0.49).any()  # bounded, and the bound acts here
        assert np.array_equal(planned, r.articulation_planner.predict(toks, curve if tempo_plan else None))


@needs_release
def test_articulation_network_weight_scales_only_planned_art_logits():
    """--articulation-network W: at an Art slot of a note with a plan value the network's Art logits are
    multiplied by W before the Gaussian; a row without a plan value, and every other token, are untouched;
    W = 1 is the rule as before."""
    from museformer.decoding.rules import ArticulationPlanPrior

    d = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT)).tgt_dict
    arts = [d.index(V.tok(V.ART, V.fmt_art(a))) for a in (-1.0, -0.6, 0.0)]
    vel = d.index(V.tok(V.VEL, 30))
    torch.manual_seed(0)
    logits = torch.randn(2, 1, len(d))

    class T(dict):
        def acts(self, name, step, kind="finite"):
            return True

    table = T({"articulation_plan": torch.tensor([[-1.0], [float("nan")]])})
    plain, weighted = (Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), articulation_plan=5.0,
                                                articulation_network=w).rules.get(ArticulationPlanPrior)
                       for w in (1.0, 0.25))
    before, after = plain(logits, {}, table, 0), weighted(logits, {}, table, 0)
    penalty = logits[0, 0, arts] - before[0, 0, arts]  # the Gaussian's loss per Art token
    assert torch.allclose(after[0, 0, arts], 0.25 * logits[0, 0, arts] - penalty, atol=1e-5)
    assert torch.equal(after[1], before[1]) and torch.equal(before[1], logits[1])  # no plan value: untouched
    assert after[0, 0, vel] == logits[0, 0, vel]
    with pytest.raises(RenderError, match="--articulation-network"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), articulation_network=-0.5)


@needs_release
def test_style_levels_move_the_plans_by_their_offsets():
    """``--style`` reaches the plans (``Renderer.plans_of``), not only the network's prefix: tempo=fast moves
    every Tempo token's planned period by the fast offset (a shorter beat), dynamics=loud every planned
    velocity by the loud offset, articulation=legato every planned key-down ratio by the legato offset; the
    default prefix (every level mid) plans exactly as before."""
    from instruct_tokenizer.encode import style_prefix
    from instruct_tokenizer.style_levels import load_offsets

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    prefix, bars = split_bars(r.score_tokens(str(CHOPIN)))
    body = [t for b in bars[:8] for t in b]
    n_style = len(style_prefix({}))
    assert prefix[:n_style] == style_prefix({})
    rest = prefix[n_style:]
    mid = r.plans_of(style_prefix({}) + rest + body)
    asked = r.plans_of(style_prefix({"tempo": "fast", "dynamics": "loud", "articulation": "legato"}) + rest + body)
    o = load_offsets()
    assert asked["tempo_plan"][0] - mid["tempo_plan"][0] == pytest.approx(o["tempo"]["fast"]) and o["tempo"]["fast"] < 0
    inside = mid["velocity_plan"][0] < 127 - o["dynamics"]["loud"]
    assert (asked["velocity_plan"][0] - mid["velocity_plan"][0])[inside] == pytest.approx(o["dynamics"]["loud"])
    assert asked["articulation_plan"][0] - mid["articulation_plan"][0] == pytest.approx(o["articulation"]["legato"])
    plain = r.plans_of(prefix + body)
    assert all(np.array_equal(plain[k][0], mid[k][0], equal_nan=True) for k in mid)


def _random_timing_plan(tokens, seed=0):
    """An untrained timing plan whose onsets over ``tokens`` spread about 60 ms around -20 ms."""
    from museformer.velocity_plan import TimingPlan

    return _random_note_plan(TimingPlan, tokens, 60.0, -20.0 / TimingPlan.SCALE, seed)


@needs_release
def test_timing_prior_is_a_gaussian_in_ms():
    """At a Time slot, a token d ms from the plan's onset loses d^2 / (2 sigma^2) against the one at the
    centre (whatever the bins' widths there); a Vel token is untouched."""
    from museformer.decoding.rules import TimingPlanPrior

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), timing_plan=10.0)
    rule = r.rules.get(TimingPlanPrior)
    d = r.tgt_dict
    centre, near, far = (d.index(V.tok(V.TIME, ms)) for ms in (-30, -20, 40))
    vel = d.index(V.tok(V.VEL, 30))
    assert d.unk() not in (centre, near, far, vel)
    logits = torch.zeros(1, 1, len(d))

    class T(dict):
        def acts(self, name, step, kind="finite"):
            return True

    out = rule(logits, {}, T({"timing_plan": torch.tensor([[-30.0]])}), 0)
    assert float(out[0, 0, centre] - out[0, 0, near]) == pytest.approx(10.0 ** 2 / (2 * 10.0 ** 2), rel=1e-3)
    assert float(out[0, 0, centre] - out[0, 0, far]) == pytest.approx(70.0 ** 2 / (2 * 10.0 ** 2), rel=1e-3)
    assert float(out[0, 0, vel]) == 0.0


@needs_release
def test_rendering_follows_the_timing_plan(tmp_path):
    """With a timing plan stored in the checkpoint and sigma 5 ms, the rendered onsets lie within a few ms
    of the plan's against their groups' grid, across segments; at --timing-plan 0 they do not."""
    from instruct_tokenizer.decode import decode_performance

    toks, plan, planned, free = _planned_and_free(tmp_path, _random_timing_plan, "timing_plan",
                                                  {"timing_plan": 5.0}, {"timing_plan": 0.0})
    assert planned.timing_planner is not None and free.timing_planner is not None
    want = plan.predict(toks)

    def timing_ms(perf):
        p = decode_performance(toks, perf)
        return (p.onset_s - p.group_grid_s[p.timeline.note_group]) * 1000.0

    perf = planned.render_tokens(toks, Sampling(seed=0), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    near = np.abs(timing_ms(perf) - want)
    far = np.abs(timing_ms(free.render_tokens(toks, Sampling(seed=0), progress=False)) - want)
    assert np.median(near) <= 6.0 and np.median(far) > 2 * np.median(near), (np.median(near), np.median(far))
