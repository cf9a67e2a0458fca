"""The decoding rules and the renderer on a model of the relative tempo encoding (a dictionary that counts
``TempoRel``): the grammar's TempoLevel slot first, TempoRel x notated x level as the beat period for the
key-down floor, the tempo band (anchored on notated x level) and the fermata hold, one level per piece
across segments."""
import argparse
import math
import sys
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary

from instruct_tokenizer import grammar as G
from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance
from instruct_tokenizer.encode import score_file_to_tokens, split_bars
from instruct_tokenizer.grammar import target_slots, token_type
from museformer.decoding import DecodeConfig, DecodeRules
from museformer.decoding.functions import FORCEABLE_LOGIT
from museformer.decoding.rules import grammar_for, uses_relative_tempo
from museformer.encoder import SlotAnchors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from helpers import FakeTask, make_args  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OFF = dict(min_key_down_ms=0.0, tempo_band=0.0, fermata_hold=0.0, dynamics_band=0.0, unisons_once=False,
           tempo_level="sample", tempo_plan=0.0, velocity_plan=0.0, articulation_plan=0.0, timing_plan=0.0)
GROUP = ["Sus_None"] * 3 + ["Soft_None"]


def dictionary(relative: bool) -> Dictionary:
    """Every token, trained counts as a build of that encoding writes them (the absolute one has none of
    the relative tokens)."""
    d = Dictionary()
    rel = set(V.relative_tempo_tokens())
    for t in V.dictionary_tokens():
        d.add_symbol(t, n=int(relative or t not in rel))
    return d


def quarters(n_bars: int, qpm: int, fermata_group: int = -1):
    """A score of 4/4 bars of quarter notes (C4) at ``qpm``; the note of onset group ``fermata_group``
    holds a fermata."""
    out, g = [], 0
    for _ in range(n_bars):
        out += ["Bar_None", f"QPM_{qpm}"]
        for pos in (0, 24, 48, 72):
            out += [f"Pos_{pos}", "Pitch_60", "Dur_24", "Staff_1"] + (["Mark_fermata"] if g == fermata_group else [])
            g += 1
    return out


def perf_of(score, tempo, level=None, art="Art_0.00"):
    """A performance of ``score``: ``tempo`` at every onset (a token), one velocity, timing 0, ``art``;
    relative when ``level`` (a TempoLevel token) is given."""
    fill = {"Bar": "Bar_None", "Tempo": tempo, "TempoRel": tempo, "TempoLevel": level, "Sus": "Sus_None",
            "Soft": "Soft_None", "Vel": "Vel_32", "Time": "Time_0", "Art": art}
    return [fill[s] for s in target_slots(score, relative=level is not None)]


def step_logits(rules, d, score, perf, slot, logits=None):
    """The rules' logits at ``slot`` after teacher-forcing ``perf[:slot]`` (decoder input: EOS, then the
    tokens), from ``logits`` (default all 0)."""
    src = torch.tensor([[d.index(t) for t in score] + [d.eos()]])
    table = rules.prepare(src, torch.ones_like(src, dtype=torch.bool), d)
    state = rules.init_state(table)
    inputs = [d.eos()] + [d.index(t) for t in perf]
    for step in range(slot + 1):
        rules.update(state, torch.tensor([inputs[step]]), step, table)
    base = torch.zeros(1, 1, len(d)) if logits is None else logits
    return rules(base, state, table, slot)[0, 0], state


def test_detection_and_grammar_binding():
    rel, ab = dictionary(True), dictionary(False)
    assert uses_relative_tempo(G, rel) and not uses_relative_tempo(G, ab)
    assert grammar_for(G, False) is G
    bound = grammar_for(G, True)
    score = quarters(1, 60)
    assert bound.target_slots(score) == target_slots(score, relative=True)
    assert bound.beat_period_s("TempoRel_24") == pytest.approx(1.0)  # ratio 2 x 0.5 s (notated 120, level 1)
    assert bound.beat_period_s("Tempo_80") is None


def test_first_slot_is_the_level_and_the_period_is_ratio_x_notated_x_level():
    d = dictionary(True)
    rules = DecodeRules.build(DecodeConfig.defaults("render").replace(**{**OFF, "min_key_down_ms": 25.0}), d, d)
    score = quarters(2, 60)
    perf = perf_of(score, "TempoRel_0", "TempoLevel_24")
    logits, _ = step_logits(rules, d, score, perf, 0)
    allowed = {d[i] for i in torch.nonzero(torch.isfinite(logits)).squeeze(1).tolist()}
    assert allowed == set(V.tok(V.TEMPO_LEVEL, k) for k in V.TEMPO_LEVEL_STEPS)
    _, state = step_logits(rules, d, score, perf, 3)  # after TempoLevel_24, Bar, TempoRel_0
    assert float(state["level_factor"]) == pytest.approx(2.0)
    assert float(state["period"]) == pytest.approx(2.0)  # 1 s per quarter at QPM 60, x2 level, ratio 1
    assert float(state["period"]) == pytest.approx(decode_performance(score, perf).group_period_s[0])


def test_tempo_level_mean_keeps_the_token_nearest_the_expected_level():
    """--tempo-level mean (instruct-render's default): the first slot keeps only the TempoLevel nearest the
    expected step under the model's distribution; sample keeps them all; an absolute model has no level."""
    d = dictionary(True)
    score = quarters(2, 60)
    logits = torch.full((1, 1, len(d)), -30.0)
    logits[0, 0, d.index("TempoLevel_-6")] = 0.0  # two equally likely levels, 12 steps apart
    logits[0, 0, d.index("TempoLevel_6")] = 0.0
    mean = DecodeRules.build(DecodeConfig.defaults("render").replace(**{**OFF, "tempo_level": "mean"}), d, d)
    got, _ = step_logits(mean, d, score, [], 0, logits.clone())
    assert d[int(got.argmax())] == "TempoLevel_0"
    assert (got.topk(2).values == torch.tensor([0.0, FORCEABLE_LOGIT])).all()  # the rest only forceable
    sample = DecodeRules.build(DecodeConfig.defaults("render").replace(**OFF), d, d)
    got, _ = step_logits(sample, d, score, [], 0, logits.clone())
    kept = torch.isfinite(got)  # the grammar's TempoLevel tokens, unchanged
    assert kept.sum() == len(V.TEMPO_LEVEL_STEPS) and torch.equal(got[kept], logits[0, 0][kept])
    ab = dictionary(False)
    rules = DecodeRules.build(DecodeConfig.defaults("render").replace(**{**OFF, "tempo_level": "mean"}), ab, ab)
    assert [type(r).__name__ for r in rules] == ["GrammarMask"]
    with pytest.raises(ValueError, match="--tempo-level"):
        DecodeConfig.defaults("render").replace(tempo_level="median").check()


@pytest.mark.parametrize("relative", [True, False])
def test_key_down_floor_reads_the_relative_period(relative):
    """A 500 ms floor on a quarter note at a 2 s beat period keeps log2 ratios >= -2 in both encodings."""
    d = dictionary(relative)
    rules = DecodeRules.build(DecodeConfig.defaults("render").replace(**{**OFF, "min_key_down_ms": 500.0}), d, d)
    score = quarters(1, 60)
    tempo = "TempoRel_0" if relative else V.tok(V.TEMPO, V.quantise_tempo(2.0))
    perf = perf_of(score, tempo, "TempoLevel_24" if relative else None)
    art_slot = target_slots(score, relative).index("Art")
    logits, state = step_logits(rules, d, score, perf, art_slot)
    floor = math.log2(0.5 / (1.0 * float(state["period"])))
    for a in (-2.2, -2.12, -1.88, -1.0):
        assert (float(logits[d.index(V.tok(V.ART, V.fmt_art(a)))]) == FORCEABLE_LOGIT) == (a < floor)


def test_tempo_band_centres_on_notated_x_level_even_without_a_stated_tempo():
    """24 quarters played twice as slow as the level (TempoRel_24) under QPM 120 (no stated tempo): the
    relative model's band pulls toward TempoRel_0 (notated x the level it chose); the absolute model's
    notated anchor has nothing to centre on there and leaves the logits alone."""
    config = DecodeConfig.defaults("render").replace(**{**OFF, "tempo_band": 12.0})
    score = quarters(8, 120)
    d = dictionary(True)
    rules = DecodeRules.build(config, d, d)
    perf = perf_of(score, "TempoRel_24", "TempoLevel_6")
    slot = [i for i, s in enumerate(target_slots(score, True)) if s == "TempoRel"][25]
    logits, _ = step_logits(rules, d, score, perf, slot)
    rel = {j: float(logits[d.index(V.tok(V.TEMPO_REL, j))]) for j in (-24, 0, 12, 24)}
    assert rel[0] == 0.0 and rel[24] < rel[12] < 0.0 and rel[-24] == pytest.approx(rel[24])
    # window 24 steps slow, band 12: excess 12, curve min(0.002 x 12, 1 / 32) = 0.024 per squared step
    assert rel[24] == pytest.approx(-0.024 * 24 ** 2, rel=1e-3)
    d_abs = dictionary(False)
    abs_rules = DecodeRules.build(config, d_abs, d_abs)
    perf_abs = perf_of(score, V.tok(V.TEMPO, V.quantise_tempo(2 ** 0.25)))  # the same seconds per quarter
    logits_abs, _ = step_logits(abs_rules, d_abs, score, perf_abs, slot - 1)
    assert torch.all(logits_abs[torch.isfinite(logits_abs)] == 0.0)


def test_fermata_hold_lifts_the_relative_tempo():
    """At a fermata's TempoRel slot, a distribution peaked at the level moves 15 steps slower."""
    config = DecodeConfig.defaults("render").replace(**{**OFF, "fermata_hold": 15.0})
    d = dictionary(True)
    rules = DecodeRules.build(config, d, d)
    score = quarters(4, 90, fermata_group=9)
    perf = perf_of(score, "TempoRel_0", "TempoLevel_-4")
    slot = [i for i, s in enumerate(target_slots(score, True)) if s == "TempoRel"][9]
    peaked = torch.zeros(1, 1, len(d))
    peaked[0, 0, d.index("TempoRel_0")] = 10.0
    logits, _ = step_logits(rules, d, score, perf, slot, peaked)
    assert d[int(logits.argmax())] == "TempoRel_15"
    before = [i for i, s in enumerate(target_slots(score, True)) if s == "TempoRel"][8]
    unchanged, _ = step_logits(rules, d, score, perf, before, peaked)
    assert d[int(unchanged.argmax())] == "TempoRel_0"  # no fermata there


def test_slot_anchors_put_the_level_slot_on_the_first_source_position():
    d = dictionary(True)
    score = ["ITempo_mid", "Bar_None", "QPM_60", "Pos_0", "Pitch_60", "Dur_24", "Staff_1"]
    src = torch.tensor([[d.index(t) for t in score] + [d.eos()]])
    valid = torch.ones_like(src, dtype=torch.bool)
    absolute = SlotAnchors(d, G.target_slots)(src, valid)[0].tolist()
    lead = SlotAnchors(d, G.target_slots, lead_slots=1)(src, valid)[0].tolist()
    assert absolute == [1, 3, 3, 3, 3, 3, 4, 4, 4, 7]  # Bar, the group's 5 slots, the note's 3, EOS
    assert lead == [0] + absolute
    assert len(lead) == len(target_slots(score, relative=True)) + 1


def test_renderer_chooses_the_level_once_and_forces_it_on_every_segment():
    """An untrained tiny model of the relative encoding renders a score in several segments: the first
    samples a TempoLevel, every later one is forced to start with it, and the stitched stream (one
    TempoLevel, then the bars) fits the relative grammar and decodes."""
    from museformer.model import MuseformerS2PModel
    from museformer.render import Renderer, Sampling
    from museformer.task import MuseformerS2PTask

    d = dictionary(True)
    args = make_args(align_source=True, grammar="instruct_tokenizer.grammar")
    torch.manual_seed(0)
    model = MuseformerS2PModel.build_model(args, FakeTask(d))
    model.eval()
    task_args = argparse.Namespace(**vars(args), data=".", source_lang="score", target_lang="perf",
                                   left_pad_source=True, left_pad_target=False)
    task = MuseformerS2PTask(task_args, d, d)
    rules = DecodeRules.build(DecodeConfig.defaults("render"), d, d)
    task.use_rules(rules)
    renderer = Renderer([model], task, task_args)
    renderer.rules = rules
    assert renderer.relative_tempo
    tokens = score_file_to_tokens(str(REPO / "data" / "vienna4x22" / "musicxml" / "Mozart_K331_1st-mov.musicxml"),
                                  notated_tempo=True, markings=True, marking_state=True)
    prefix, bars = split_bars(tokens)
    score = prefix + [t for b in bars[:4] for t in b]
    renderer.max_positions = 150
    assert len(renderer.plan(score, 1)[2]) >= 3
    forced = []
    generate = renderer.generate_batch

    def spy(scores, forced_perf, sampling, priors=None):
        forced.append([list(f) for f in forced_perf])
        return generate(scores, forced_perf, sampling, priors)

    renderer.generate_batch = spy
    out = renderer.render_tokens(score, Sampling(seed=0), overlap_bars=1, progress=False)
    assert token_type(out[0]) == V.TEMPO_LEVEL and sum(token_type(t) == V.TEMPO_LEVEL for t in out) == 1
    assert forced[0] == [[]] and all(f[0][0] == out[0] for f in forced[1:])
    assert [token_type(t) for t in out] == target_slots(score, relative=True)
    assert decode_performance(score, out).played.any()
