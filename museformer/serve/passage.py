"""Render a range of bars of a piece and keep every other bar token-identical: the human in the loop.

:func:`render_bars` is the renderer's segment loop (``Renderer.render_many``) started at any bar. The
``overlap_bars`` bars before the range are taken from the base performance and forced as the decoder's
first tokens, exactly as the renderer forces the previous segment's last bars between two segments; the
tempo and dynamics bands start from the state of every base bar before the range
(``Renderer.level_before``); a range longer than the model's context is rendered in overlapping
segments like a whole piece. The bars after the range are the base performance's tokens, unchanged.
Rendering bars ``[0, n)`` with no base gives the same tokens as ``Renderer.render_tokens`` with the same
sampling (tested).

The join after the range needs no decoding: performance time is relative (each onset group's ``Tempo``
token gives the beat period of the gap *before* it), so the first onset after the range follows the
passage's last onset by the base performance's own gap. Pedals are toggles: the decoder alternates up and
down through the sorted change times, so a passage with an odd number of extra sustain (or soft) pedal
changes would invert every pedal change after it. :func:`carry_pedal_state` restores the base state at the
join: it adds a change in the passage's last onset group, just before the next group, or, when that group
has no free slot, drops the group's latest change (one token, in the passage only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import Performance, decode_performance
from instruct_tokenizer.encode import SOFT_SLOTS, SUS_SLOTS, split_bars
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.score import score_timeline

PEDAL_LEAD_S = 0.03  # an added pedal change sits this long before the next onset group's grid time
PEDAL_ADD_MAX_S = 6.0  # ... and at most this long after its own group's (the first dictionaries' pedal bins)
Progress = Callable[[int, int, List[List[str]]], None]  # (segments done, in all, performance bars so far)


class PassageError(ValueError):
    """A bar range or base performance that does not fit the score; the message says which."""


@dataclass
class Join:
    """The onsets on either side of a join between a re-rendered passage and a kept bar.

    ``bar``: the first bar after the join (0-based). ``gap_ms``: the onset of the first onset group at or
    after the join minus that of the last group before it (ms; a group's onset: the median of its played
    notes; negative: the groups overlap), in the new performance; ``base_gap_ms``: the same in the base
    performance; ``grid_ms`` / ``base_grid_ms``: the same between the two groups' grid times (the beat
    grid, without the notes' timing deviations)."""

    bar: int
    gap_ms: float
    base_gap_ms: float
    grid_ms: float
    base_grid_ms: float


def _flat(bars: Sequence[Sequence[str]]) -> List[str]:
    return [t for b in bars for t in b]


def _plan(renderer, prefix: Sequence[str], bars: Sequence[Sequence[str]], first: int, end: int,
          overlap_bars: int) -> List[Tuple[int, int]]:
    """Segments [a, b) covering bars [first, end), planned as ``Renderer.plan`` plans a whole piece."""
    from instruct_tokenizer.encode import bar_ranges

    lengths = [max(len(b), len(target_slots(b))) for b in bars[first:end]]  # the longer of score and perf
    if len(prefix) + sum(lengths) + 1 <= renderer.max_positions:
        return [(first, end)]
    budget = renderer.max_positions - 2 - len(prefix)
    return [(first + a, first + b) for a, b in bar_ranges(lengths, budget, overlap_bars)]


def check_base(score_tokens: Sequence[str], base: Sequence[str]) -> None:
    """Raise PassageError unless ``base`` is a performance of ``score_tokens`` (the grammar's token types)."""
    if [token_type(t) for t in base] != target_slots(score_tokens):
        raise PassageError("the base performance does not fit the score (other bars or notes)")


def render_bars(renderer, score_tokens: Sequence[str], sampling, base: Optional[Sequence[str]] = None,
                start: int = 0, end: Optional[int] = None, overlap_bars: int = 2,
                progress: Optional[Progress] = None) -> List[str]:
    """Whole-piece performance tokens in which bars ``[start, end)`` (0-based, half-open) are rendered
    anew for ``score_tokens`` (whose prefix carries the style of the new bars) and every other bar is
    ``base``'s, token-identical. ``base`` may be None only when ``start`` is 0 and ``end`` the last bar.
    ``sampling``: a ``museformer.render.Sampling`` (its seed is set once, as ``render_many`` does);
    ``progress(done, total, bars)`` is called after each segment with the performance bars rendered so far
    from bar 0 (final: a later segment forces them as its prefix, so they can be heard while the rest
    renders). Raises PassageError on a bad range or base,
    ``museformer.render.RenderError`` when the model breaks the bar structure."""
    from museformer.render import RenderError, segment_plans

    prefix, bars = split_bars(score_tokens)
    n = len(bars)
    end = n if end is None else end
    if not 0 <= start < end <= n:
        raise PassageError(f"bars {start + 1}-{end}: the score has bars 1-{n}")
    if base is None:
        if (start, end) != (0, n):
            raise PassageError("a passage needs the performance it is part of")
        base_bars: List[List[str]] = []
    else:
        check_base(score_tokens, base)
        base_bars = split_bars(base)[1]
    first = max(start - overlap_bars, 0)
    segments = _plan(renderer, prefix, bars, first, end, overlap_bars)
    done = [list(b) for b in base_bars[:start]]
    plans = renderer.plans_of(score_tokens)  # the whole score's tempo and velocity plans, as render_many
    torch.manual_seed(sampling.seed)
    for k, (a, b) in enumerate(segments):
        score = list(prefix) + _flat(bars[a:b])
        forced = _flat(done[a:])
        prior = {**renderer.level_before(prefix, bars[:a], done[:a]), **segment_plans(plans, a, b)}
        out = renderer.generate_batch([score], [forced], sampling, [prior])[0]
        out_bars = split_bars(out)[1]
        if len(out_bars) != b - a:
            raise RenderError(f"segment bars {a + 1}-{b}: model produced {len(out_bars)} bars")
        if out_bars[:len(done) - a] != done[a:]:
            raise RenderError(f"segment bars {a + 1}-{b}: the forced bars came out changed")
        done = done[:a] + out_bars
        if progress is not None:
            progress(k + 1, len(segments), done)
    if end == n:
        return _flat(done)
    new_bars = done + [list(b) for b in base_bars[end:]]
    return carry_pedal_state(score_tokens, _flat(new_bars), base, start, end)


# --------------------------------------------------------------------------------------- pedal at the join
def _group_starts(perf_tokens: Sequence[str]) -> List[int]:
    """Position of every onset group's ``Tempo`` token."""
    return [i for i, t in enumerate(perf_tokens) if token_type(t) == V.TEMPO]


def _changes(perf_tokens: Sequence[str], positions: Sequence[int], kind: str) -> int:
    """How many pedal changes of ``kind`` the onset groups at ``positions`` carry."""
    slots = SUS_SLOTS if kind == V.SUS else SOFT_SLOTS
    first = 1 if kind == V.SUS else 1 + SUS_SLOTS
    return sum(V.parse(perf_tokens[p + first + k])[1] != V.NONE for p in positions for k in range(slots))


def carry_pedal_state(score_tokens: Sequence[str], perf: Sequence[str], base: Sequence[str], start: int,
                      end: int) -> List[str]:
    """``perf`` (bars ``[start, end)`` new, the others ``base``'s) with the sustain and soft pedal state at
    bar ``end`` made ``base``'s: where the passage holds a number of changes of the other parity, its last
    onset group gets one change more, ``PEDAL_LEAD_S`` before the next group's grid time (or just after its
    own latest change, if that is later; at most ``PEDAL_ADD_MAX_S`` after the group), or, when its slots
    are full, one change less (its latest)."""
    perf = list(perf)
    tl = score_timeline(score_tokens)
    groups = _group_starts(perf)
    base_groups = _group_starts(base)
    inside = [g for g in range(tl.n_groups) if start <= tl.group_bar[g] < end]
    after = [g for g in range(tl.n_groups) if tl.group_bar[g] >= end]
    if not inside or not after:
        return perf  # no onset in the passage (then its pedal tokens are none) or none after it
    last, nxt = inside[-1], after[0]
    period_next = V.tempo_value(int(V.parse(perf[groups[nxt]])[1]))
    ioi_s = max(tl.group_q[nxt] - tl.group_q[last], 1.0 / V.GRID) * period_next
    for kind, slots, first in ((V.SUS, SUS_SLOTS, 1), (V.SOFT, SOFT_SLOTS, 1 + SUS_SLOTS)):
        new = _changes(perf, [groups[g] for g in inside], kind)
        old = _changes(base, [base_groups[g] for g in inside], kind)
        if (new - old) % 2 == 0:
            continue
        pos = groups[last] + first
        offsets_ms = [int(v) for v in (V.parse(t)[1] for t in perf[pos:pos + slots]) if v != V.NONE]
        latest_s = max(offsets_ms) / 1000.0 if offsets_ms else -1.0
        if len(offsets_ms) < slots and latest_s < PEDAL_ADD_MAX_S - 0.01:
            at_s = min(max(ioi_s - PEDAL_LEAD_S, latest_s + 0.01, 0.0), PEDAL_ADD_MAX_S)
            offsets_ms = sorted(offsets_ms + [V.quantise_pedal(at_s)])
        else:
            offsets_ms = sorted(offsets_ms)[:-1]
        perf[pos:pos + slots] = ([V.tok(kind, v) for v in offsets_ms]
                                 + [V.tok(kind, V.NONE)] * (slots - len(offsets_ms)))
    return perf


# --------------------------------------------------------------------------------------- joins
def _group_onsets(perf: Performance) -> np.ndarray:
    """(groups,) the median onset (s) of each onset group's played notes (NaN: none played)."""
    tl = perf.timeline
    out = np.full(tl.n_groups, np.nan)
    for g in np.unique(tl.note_group[perf.played]):
        out[g] = np.median(perf.onset_s[(tl.note_group == g) & perf.played])
    return out


def _join_gaps(score_tokens: Sequence[str], perf: Sequence[str], bar: int) -> Tuple[float, float]:
    """(onset gap, grid gap) in ms across the start of ``bar``: between the last onset group before it and
    the first at or after it that hold a played note; a group's onset is its notes' median. NaN where a
    side has none."""
    p = decode_performance(score_tokens, perf)
    tl = p.timeline
    onsets = _group_onsets(p)
    heard = np.isfinite(onsets)
    before = np.nonzero(heard & (tl.group_bar < bar))[0]
    after = np.nonzero(heard & (tl.group_bar >= bar))[0]
    if not len(before) or not len(after):
        return float("nan"), float("nan")
    g0, g1 = before[-1], after[0]
    return (float((onsets[g1] - onsets[g0]) * 1000.0),
            float((p.group_grid_s[g1] - p.group_grid_s[g0]) * 1000.0))


def joins(score_tokens: Sequence[str], perf: Sequence[str], base: Sequence[str], start: int,
          end: int) -> List[Join]:
    """The joins of a passage ``[start, end)`` with the kept bars (the start when ``start`` > 0, the end
    when bars follow), each measured in ``perf`` and in ``base``."""
    n = score_timeline(score_tokens).n_bars
    out = []
    for bar in [b for b in (start, end) if 0 < b < n]:
        gap, grid = _join_gaps(score_tokens, perf, bar)
        base_gap, base_grid = _join_gaps(score_tokens, base, bar)
        out.append(Join(bar=bar, gap_ms=gap, base_gap_ms=base_gap, grid_ms=grid, base_grid_ms=base_grid))
    return out


def bar_grid_times(perf: Performance) -> List[Optional[float]]:
    """Per bar, the grid time (s) of its first onset group in a decoded performance (None for a bar
    without notes): where a player seeks to hear that bar."""
    tl = perf.timeline
    out: List[Optional[float]] = [None] * tl.n_bars
    for g in range(tl.n_groups - 1, -1, -1):
        out[int(tl.group_bar[g])] = float(perf.group_grid_s[g])
    return out


def played_per_note(score_tokens: Sequence[str], perf: Sequence[str]) -> np.ndarray:
    """(notes,) bool: which score notes the performance plays (one event per score note)."""
    return decode_performance(score_tokens, perf).played
