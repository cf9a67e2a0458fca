"""The key-down floor (``--min-key-down-ms``): no rendered note is held shorter than the floor."""
import math

import numpy as np
import pytest
import torch

from conftest import VIENNA, stderr_of, NO_PLANS
from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance
from instruct_tokenizer.encode import nominal_q
from instruct_tokenizer.grammar import art_nominal_q, beat_period_s, target_slots, token_type
from museformer.decoding.config import MIN_KEY_DOWN_MS
from museformer.decoding.functions import FORCEABLE_LOGIT, key_down_floor
from museformer.render import DEFAULT_CHECKPOINT, RenderError, Renderer, Sampling, main, split_bars

CHOPIN = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


def _key_down_floor_reference(logits, value, nominal_q, period_s, floor_s):
    """Slow reference, row by row: allowed numbered tokens whose key-down 2 ** value x nominal x period
    is under the floor get FORCEABLE_LOGIT, unless every one is (then the longest keeps its logit)."""
    out = logits.clone()
    for b in range(logits.shape[0]):
        if math.isnan(nominal_q[b].item()):
            continue
        ids = [i for i in range(logits.shape[-1])
               if math.isfinite(logits[b, 0, i].item()) and math.isfinite(value[i].item())]
        held = {i: 2.0 ** value[i].item() * nominal_q[b].item() * period_s[b].item() for i in ids}
        longest = max(ids, key=lambda i: value[i].item())
        for i in ids:
            if held[i] < floor_s * (1 - 1e-6) and i != longest:
                out[b, 0, i] = FORCEABLE_LOGIT
    return out


def test_key_down_floor_matches_reference():
    g = torch.Generator().manual_seed(0)
    value = torch.tensor([float("nan"), -7.0, -4.0, -2.0, -1.0, 0.0, 1.0, 4.0, float("nan")])  # log2 ratios
    for _ in range(50):
        logits = torch.randn(5, 1, len(value), generator=g)  # (B, 1, V)
        logits = logits.masked_fill(torch.rand(5, 1, len(value), generator=g) < 0.3, float("-inf"))
        logits[..., 4] = 0.5  # every row keeps a numbered token
        nominal = torch.rand(5, generator=g) * 2 + 0.01  # quarters
        nominal[0] = float("nan")  # a row whose step is no articulation slot
        period = torch.rand(5, generator=g) * 0.8 + 0.05  # s per quarter
        got = key_down_floor(logits, value, nominal, period, 0.025)
        assert torch.equal(got, _key_down_floor_reference(logits, value, nominal, period, 0.025))
        assert torch.equal(torch.isfinite(got), torch.isfinite(logits))  # forcing any allowed token still works
        assert torch.equal(got[0], logits[0])


def test_key_down_floor_docstring_example():
    """An eighth note (0.5 quarter) at 0.2 s per quarter with a 25 ms floor keeps log2 ratios >= -2."""
    value = torch.tensor([-3.0, -2.04, -2.0, -1.0, 0.0])
    got = key_down_floor(torch.zeros(1, 1, 5), value, torch.tensor([0.5]), torch.tensor([0.2]), 0.025)
    assert got[0, 0].tolist() == [FORCEABLE_LOGIT, FORCEABLE_LOGIT, 0.0, 0.0, 0.0]
    # a grace note at 0.1 s per quarter cannot reach 25 ms with these values: the longest stays allowed
    got = key_down_floor(torch.zeros(1, 1, 5), value, torch.tensor([0.125]), torch.tensor([0.1]), 0.025)
    assert got[0, 0].tolist() == [FORCEABLE_LOGIT] * 4 + [0.0]


def test_art_nominal_q_lines_up_with_the_articulation_slots():
    from instruct_tokenizer.encode import score_file_to_tokens
    from instruct_tokenizer.score import score_timeline

    toks = score_file_to_tokens(str(CHOPIN))
    slots, q = target_slots(toks), art_nominal_q(toks)
    assert len(q) == len(slots)
    assert [s == V.ART for s in slots] == [not math.isnan(x) for x in q]
    expected = [nominal_q(d) for d in score_timeline(toks).note_dur_q]
    assert [x for x in q if not math.isnan(x)] == pytest.approx(expected)
    assert art_nominal_q(["Bar_None", "Pos_0", "Pitch_60", "Dur_0", "Staff_1"])[-1] == 0.125  # grace note
    assert beat_period_s("Tempo_0") == pytest.approx(V.tempo_value(0)) and beat_period_s("Vel_3") is None


def _shortest_held_ms(renderer, toks, seeds):
    """Per seed, the key-down times (ms) of the rendered notes, and whether each note's Art is the
    longest value (which the floor keeps when no value reaches it)."""
    out = []
    for seed in seeds:
        perf = renderer.render_tokens(toks, Sampling(seed=seed, temperature=2.0), progress=False)
        assert [token_type(t) for t in perf] == target_slots(toks)
        p = decode_performance(toks, perf)
        arts = np.array([float(V.parse(t)[1]) for t in perf if token_type(t) == V.ART])
        out.append(((p.offset_s - p.onset_s)[p.played] * 1000, arts[p.played] >= V.ART_MAX - 1e-9))
    return out


@needs_release
def test_rendered_notes_are_held_at_least_the_floor():
    """Hot sampling (T 2) with a high 60 ms floor: every note is held >= 60 ms (or has the longest
    articulation); without the floor the same renderings hold some notes shorter, so the test can fail.
    Six bars in forced-overlap segments: the floor follows the forced tempo tokens too."""
    toks = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS).score_tokens(str(CHOPIN))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:6] for t in b]
    floored = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, min_key_down_ms=60.0)
    floored.max_positions = 160
    assert len(floored.plan(toks, 2)[2]) > 2
    for held, longest in _shortest_held_ms(floored, toks, range(2)):
        assert np.all((held >= 60.0 - 1e-3) | longest), np.sort(held)[:5]
    free = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, min_key_down_ms=0.0)
    free.max_positions = 160
    assert any((held < 60.0).any() for held, _ in _shortest_held_ms(free, toks, range(2)))


@needs_release
def test_default_floor_is_the_grammar_constant():
    from museformer.decoding.rules import KeyDownFloor, TempoState

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS)
    assert r.rules.get(KeyDownFloor).min_key_down_s == pytest.approx(MIN_KEY_DOWN_MS / 1000)
    off = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, min_key_down_ms=0, tempo_band=0,
                                   fermata_hold=0)  # the band and the fermata hold read periods too
    assert off.rules.get(KeyDownFloor) is None and off.rules.get(TempoState) is None


@needs_release
def test_negative_floor_is_one_error_line(tmp_path):
    with pytest.raises(RenderError, match="--min-key-down-ms"):
        Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, min_key_down_ms=-5)
    out = tmp_path / "out.mid"
    code, err = stderr_of(main, [CHOPIN, "-o", out, "--min-key-down-ms", "-5"])
    assert code == 1 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--min-key-down-ms" in lines[0], err


# ------------------------------------------------------------------ unisons: one key, struck once
UNISON = ("Bar_None Pos_0 Pitch_60 Dur_12 Staff_1 Pitch_60 Dur_24 Staff_2 Pitch_64 Dur_12 Staff_1 "
          "Pos_12 Pitch_62 Dur_0 Staff_1 Pitch_62 Dur_0 Staff_2 Bar_None Pos_0 Pitch_60 Dur_12 Staff_1").split()


def test_unison_repeats_marks_all_but_the_longest_note_of_a_pitch_in_one_onset():
    from instruct_tokenizer.grammar import unison_repeats

    slots, marked = target_slots(UNISON), unison_repeats(UNISON)
    assert len(marked) == len(slots)
    vel_slots = [i for i, s in enumerate(slots) if s == V.VEL]  # one per note, score order
    # notes: C4 8th (shorter: repeat), C4 quarter (kept), E4, D4 grace, D4 grace (tie: the second), C4 next bar
    assert [marked[i] for i in vel_slots] == [True, False, False, False, True, False]
    assert not any(m for i, m in enumerate(marked) if i not in vel_slots)


@needs_release
def test_a_unison_is_played_once_unless_kept():
    from instruct_tokenizer.grammar import DELETION, unison_repeats

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS)
    prefix, _ = split_bars(r.score_tokens(str(CHOPIN)))
    toks = prefix + UNISON
    vel = [t for t in r.render_tokens(toks, Sampling(seed=0, temperature=2.0), progress=False)
           if token_type(t) == V.VEL]
    assert [t == DELETION for t in vel] == [True, False, False, False, True, False]
    assert unison_repeats(toks).count(True) == 2
    every = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, unisons_once=False)  # --keep-unisons
    from museformer.decoding.rules import UnisonsOnce

    assert every.rules.get(UnisonsOnce) is None
    assert DELETION not in every.render_tokens(toks, Sampling(seed=0, temperature=2.0), progress=False)


@needs_release
def test_unison_rule_holds_with_the_velocity_mean():
    """Vel=mean would otherwise pick a velocity bin at the repeated pitch's slot."""
    from instruct_tokenizer.grammar import DELETION

    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, type_temperature="Vel=mean")
    prefix, _ = split_bars(r.score_tokens(str(CHOPIN)))
    vel = [t for t in r.render_tokens(prefix + UNISON, Sampling(seed=0), progress=False) if token_type(t) == V.VEL]
    assert [t == DELETION for t in vel] == [True, False, False, False, True, False]


@needs_release
def test_floor_follows_each_beam_hypothesis():
    """Beam search reorders the decoder state, the tempo that the floor follows included."""
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **NO_PLANS, min_key_down_ms=60.0)
    prefix, bars = split_bars(r.score_tokens(str(CHOPIN)))
    toks = prefix + [t for b in bars[:3] for t in b]
    perf = r.render_tokens(toks, Sampling(beam=3), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)
    p = decode_performance(toks, perf)
    assert ((p.offset_s - p.onset_s)[p.played] * 1000 >= 60.0 - 1e-3).all()
