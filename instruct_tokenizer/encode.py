"""Aligned score/performance -> bar-synchronous score and performance token streams.

Performance features (units in the names):
- per onset group: ``Tempo`` = local beat period (s per quarter) that carries the *decoded* grid from the
  previous group to this group's mean performed onset (error feedback: each step is quantised against
  the already-decoded position, so quantisation error never accumulates);
  three ``Sus`` and one ``Soft`` slot: pedal changes (toggles of CC >= 64) in ms after the group's grid time;
- per score note: ``Vel`` (or ``Vel_Del`` for a deletion), ``Time`` = onset minus the decoded grid (ms),
  ``Art`` = log2(played key-down duration / (notated duration x decoded beat period)).
"""
from __future__ import annotations

import bisect
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import vocab as V
from .match import STRANDED_BARS, MatchFile, middle_per_bar, time_signature_at
from .score import (ScoreNotes, Timeline, bar_notated_period_s, score_timeline, score_tokens, sort_order,
                    split_long_bars, with_marking_state)

ORIGIN_S = 1.0  # decoded time of the first onset group's grid
GRACE_NOMINAL_Q = 0.125  # nominal notated duration of a grace note, for articulation
MIN_NOMINAL_Q = 1.0 / 24
SUS_SLOTS, SOFT_SLOTS = 3, 1  # pedal changes per onset group (3 sustain: up-down-up in one gap)


@dataclass
class Encoded:
    """One performance as token streams plus what the encoder learnt on the way."""

    score: List[str]
    perf: List[str]
    bar_of_note: np.ndarray  # per score note (token order): bar index
    shift_s: float  # performed times were shifted by -shift_s (decoded = actual - shift_s)
    stats: Dict[str, float] = field(default_factory=dict)
    order: Optional[np.ndarray] = None  # score note order (index into the MatchFile rows)


# ----------------------------------------------------------------------------------------- bars
def match_bars(mf: MatchFile) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]]]:
    """Bar index per score note (bars keyed by (measure, repeat pass), in performance order), actual
    bar lengths (quarters) and time signatures per bar.

    Keys whose bar starts at the same score time are one bar: a measure that ends one pass of a repeat
    and holds the upbeat of the next (Vienna 4x22's Schubert D783: ``8:1`` in pass 1, the upbeat ``8:3``
    in pass 2, both starting at beat 21). Until 2026-12-07 each was a bar of its own, the first given
    the nominal length where the starts left it none, which put a bar of silence into the score before
    every such upbeat (three in D783, none in (n)ASAP). A bar whose next bar starts more than
    ``match.STRANDED_BARS`` bar lengths later ends where its notes do, at its nominal length or later: the
    starts after a stranded note (:func:`match.stranded_rows`, dropped by the build) carry its writer's
    overflow."""
    uniq, inv, lo, hi = middle_per_bar(mf.measure, mf.repeat_pass, mf.onset_q - mf.pos_q)
    med = 0.5 * (lo + hi)  # (K,) the median bar start per key, quarters
    start_grid = np.round(med * V.GRID)  # (K,) the same on the grid
    ordered_idx = np.lexsort((uniq[:, 0], uniq[:, 1], start_grid))
    # one bar per distinct start: the first key (in that order) of each start, each key's bar
    _, first_key, rank_of_start = np.unique(start_grid[ordered_idx], return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[ordered_idx] = rank_of_start.reshape(-1)
    bar = rank[inv]
    begin = med[ordered_idx[first_key]]  # (B,) quarters: the start of each bar's first key
    ts = [time_signature_at(mf.time_sigs, int(m)) for m in uniq[ordered_idx[first_key], 0]]
    lengths = np.diff(begin, append=begin[-1] + ts[-1][0] * 4.0 / ts[-1][1]) if len(begin) else begin
    nominal = np.array([t[0] * 4.0 / t[1] for t in ts])
    extent = np.zeros(len(begin))
    np.maximum.at(extent, bar, mf.pos_q + mf.dur_q)  # (B,) quarters: where the bar's last note ends
    stranded = lengths > STRANDED_BARS * nominal  # the next bar's start carries a writer's overflow
    return bar, np.where(stranded, np.maximum(nominal, extent), lengths), ts


def _median(values: List[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def match_score_notes(mf: MatchFile, marks: Optional[Dict] = None,
                      qpm: Optional[Dict[str, float]] = None,
                      default_qpm: float = V.DEFAULT_QPM) -> Tuple[ScoreNotes, np.ndarray]:
    """ScoreNotes in token order and the order (indices into the match rows). ``marks``: MusicXML
    markings by XML note id (:func:`musicxml.load_xml_info`), looked up by snote anchor; ``qpm``:
    notated tempo (quarter notes per minute) by XML note id, giving each bar's ``QPM``
    (``default_qpm`` where it gives none)."""
    bar, lengths, ts = match_bars(mf)
    cut = split_long_bars(bar, np.clip(mf.pos_q, 0, None), lengths, ts)  # a cadenza written as one measure
    bar, pos_q, lengths, ts = cut.bar, cut.pos_q, cut.bar_len_q, cut.bar_ts
    order = sort_order(bar, pos_q, mf.pitch)
    note_marks = None
    if marks is not None:
        from .musicxml import marks_for_anchor

        note_marks = [marks_for_anchor(marks, mf.anchor[i]) for i in order]
    notes = ScoreNotes(bar=bar[order], pos_q=pos_q[order], dur_q=mf.dur_q[order], grace=mf.grace[order],
                       pitch=mf.pitch[order], staff=mf.staff[order], bar_len_q=lengths, bar_ts=ts,
                       marks=note_marks)
    if qpm is not None:
        notes.bar_qpm = _bar_qpm_of_notes(notes.bar, [mf.anchor[i] for i in order], qpm, len(lengths),
                                          default_qpm)
    return notes, order


def _bar_qpm_of_notes(note_bar: np.ndarray, anchors: List[str], qpm: Dict[str, float], n_bars: int,
                      default_qpm: float = V.DEFAULT_QPM) -> List[int]:
    """Each bar's notated tempo: that of its first note (token order) with a known XML id; a bar with
    none keeps the previous bar's (the first known one before it; ``default_qpm`` when none)."""
    from .musicxml import for_anchor

    found: Dict[int, float] = {}
    for b, anchor in zip(note_bar.tolist(), anchors):
        if b not in found:
            value = for_anchor(qpm, anchor)
            if value is not None:
                found[b] = value
    current = found[min(found)] if found else default_qpm
    out = []
    for b in range(n_bars):
        current = found.get(b, current)
        out.append(V.quantise_qpm(current))
    return out


# ----------------------------------------------------------------------------------------- pedal
PEDAL_CANCEL_S = 0.001  # a press and release closer than this (s) is a no-op and is left out


def pedal_changes(events: Sequence[Tuple[float, int]]) -> List[float]:
    """Times (s) at which the binarised pedal (CC >= 64) toggles, starting from 'up'. Two toggles less
    than ``PEDAL_CANCEL_S`` apart (a CC ramp through 64 within one tick) cancel each other."""
    if not len(events):
        return []
    t_all = np.fromiter((e[0] for e in events), np.float64, len(events))
    down_all = np.fromiter((e[1] >= 64 for e in events), bool, len(events))
    o = np.argsort(t_all, kind="stable")
    down = down_all[o]
    toggle = down != np.concatenate([[False], down[:-1]])  # the state after an event is that event's
    changes: List[float] = []
    for t in t_all[o][toggle].tolist():
        if changes and t - changes[-1] < PEDAL_CANCEL_S:
            changes.pop()
        else:
            changes.append(t)
    return changes


def assign_pedal(changes: List[float], grid_s: np.ndarray, slots: int) -> List[List[float]]:
    """Per onset group, the offsets (s) of the pedal changes it carries (at most ``slots``; negative:
    before the group's grid time).

    A change goes to the last group whose grid time is at or before it; when that group is full, to
    the nearest earlier group with a free slot whose offset still fits the largest pedal bin; when
    there is none (fast flutter, or a change before the first notes), to the nearest later group with
    a free slot within the most negative bin. The decoder sorts all change times, so a change may sit
    in any such group. A change that fits nowhere is dropped together with the next one, so the pedal
    state after them stays right."""
    per_group: List[List[float]] = [[] for _ in range(len(grid_s))]
    if not len(grid_s):
        return per_group
    eps = 0.0005  # half a ms: an offset that rounds onto the outermost bin still fits it
    max_s, min_s = V.PEDAL_MAX_MS / 1000.0 + eps, V.PEDAL_MIN_MS / 1000.0 - eps
    drop_next = False
    for t in sorted(changes):
        if drop_next:
            drop_next = False
            continue
        g = _pedal_group(t, grid_s, per_group, slots, max_s, min_s)
        if g is None:
            drop_next = True
        else:
            per_group[g].append(t - grid_s[g])
    return per_group


def _pedal_group(t: float, grid_s: np.ndarray, per_group: List[List[float]], slots: int, max_s: float,
                 min_s: float) -> Optional[int]:
    """The group that carries a pedal change at ``t`` (s), by :func:`assign_pedal`'s rule, or None."""
    last = int(np.searchsorted(grid_s, t, side="right")) - 1
    g = last
    while g >= 0 and t - grid_s[g] <= max_s:
        if len(per_group[g]) < slots:
            return g
        g -= 1
    g = last + 1
    while g < len(grid_s) and t - grid_s[g] >= min_s:
        if len(per_group[g]) < slots:
            return g
        g += 1
    return None


_PEDAL_NONE = {SUS_SLOTS: [V.tok(V.SUS, V.NONE)] * SUS_SLOTS, SOFT_SLOTS: [V.tok(V.SOFT, V.NONE)] * SOFT_SLOTS}


def pedal_slots(changes: List[float], grid_s: np.ndarray, slots: int) -> List[List[str]]:
    """Per onset group, ``slots`` pedal tokens: offsets (ms) of the changes after the group's grid time."""
    kind = V.SUS if slots == SUS_SLOTS else V.SOFT
    none = _PEDAL_NONE[slots] if slots in _PEDAL_NONE else [V.tok(kind, V.NONE)] * slots
    per_group = assign_pedal(changes, grid_s, slots)
    values = V.quantise_pedal_array(np.array([o for offsets in per_group for o in sorted(offsets)], np.float64))
    out = []
    k = 0
    for offsets in per_group:
        if not offsets:
            out.append(none)
            continue
        toks = [V.tok(kind, v) for v in values[k:k + len(offsets)]]
        k += len(offsets)
        out.append(toks + [V.tok(kind, V.NONE)] * (slots - len(toks)))
    return out


# ----------------------------------------------------------------------------------------- encode
REF_GATE_S = 1.0  # a group's reference onset averages the notes within this of the group's median
OUTLIER_S = 2.0  # farther than this (s) from the grid target: an alignment outlier (Time reaches 4 s from the grid)
EARLY_PEDAL_S = 1.9  # the first grid may start this much before the first notes, for an earlier pedal change


def _group_reference(tl: Timeline, onset_s: np.ndarray, played: np.ndarray, grace: np.ndarray) -> np.ndarray:
    """Per onset group: mean performed onset of its played non-grace notes (else of any played notes)
    within ``REF_GATE_S`` of their median, or nan. The gate keeps a note aligned seconds away from
    its chord (an alignment error) from pulling the whole group off."""
    g = tl.note_group
    n = tl.n_groups
    main = played & ~grace
    has_main = np.bincount(g[main], minlength=n) > 0
    idx = np.nonzero(played & (~grace | ~has_main[g]))[0]
    gi, on = g[idx], onset_s[idx]
    o = np.lexsort((on, gi))
    cnt = np.bincount(gi, minlength=n)
    first = np.cumsum(cnt) - cnt
    has = cnt > 0
    med = np.full(n, np.nan)
    on_sorted = on[o]
    med[has] = 0.5 * (on_sorted[first[has] + (cnt[has] - 1) // 2] + on_sorted[first[has] + cnt[has] // 2])
    keep = np.abs(on - med[gi]) <= REF_GATE_S
    total = np.bincount(gi[keep], weights=on[keep], minlength=n)
    count = np.bincount(gi[keep], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def alignment_outliers(tl: Timeline, target_s: np.ndarray, onset_s: np.ndarray, played: np.ndarray) -> np.ndarray:
    """Played notes more than ``OUTLIER_S`` (the ``Time`` range) from their group's grid target: notes
    the alignment put seconds away from their chord or out of the score's order. ``Time`` cannot
    represent them, so they are encoded as not played and counted (``stats['outliers']``)."""
    with np.errstate(invalid="ignore"):
        return played & (np.abs(np.nan_to_num(onset_s) - target_s[tl.note_group]) > OUTLIER_S)


def _longest_nondecreasing(x: np.ndarray) -> np.ndarray:
    """Indices of a longest non-decreasing subsequence of ``x`` (patience sorting, O(n log n))."""
    tails: List[float] = []  # smallest tail value of a run of each length
    tail_idx: List[int] = []
    prev = [-1] * len(x)
    for i, v in enumerate(x.tolist()):
        k = bisect.bisect_right(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_idx.append(i)
        else:
            tails[k] = v
            tail_idx[k] = i
        prev[i] = tail_idx[k - 1] if k else -1
    out = []
    i = tail_idx[-1] if tail_idx else -1
    while i >= 0:
        out.append(i)
        i = prev[i]
    return np.array(out[::-1], np.int64)


def grid_targets(tl: Timeline, ref_s: np.ndarray, period_range_s: Optional[Tuple[np.ndarray, np.ndarray]] = None
                 ) -> np.ndarray:
    """Per onset group, the time (s) the decoded grid should land on.

    A group's mean performed onset, where the groups' onsets keep the score order (a longest
    non-decreasing run): a group played out of order (alignment errors, a misplaced ornament) would
    drag the grid with it, and the grid can run back only as fast as the shortest beat period allows.
    Groups off that run or without played notes are interpolated in score time between their
    neighbours (before the first known group: extrapolated at the first known period; after the last:
    nan, the grid keeps its tempo). ``period_range_s``: per group, the shortest and longest beat period
    (s per quarter) its tempo token can give (default: the absolute ``Tempo`` range)."""
    n = tl.n_groups
    if period_range_s is None:
        period_range_s = (np.full(n, V.TEMPO_MIN_S), np.full(n, V.TEMPO_MAX_S))
    lo_s, hi_s = period_range_s
    out = np.full(n, np.nan)
    known = np.nonzero(~np.isnan(ref_s))[0]
    if not len(known):
        return out
    good = known[_longest_nondecreasing(ref_s[known])]
    qe = _effective_q(tl)
    lo, hi = int(good[0]), int(good[-1])
    out[lo:hi + 1] = np.interp(qe[lo:hi + 1], qe[good], ref_s[good])
    if lo > 0:
        p0 = 0.5
        if len(good) > 1:
            p0 = (ref_s[good[1]] - ref_s[good[0]]) / (qe[good[1]] - qe[good[0]])
        p0 = min(max(p0, float(lo_s[0])), float(hi_s[0]))
        out[:lo] = ref_s[lo] - (qe[lo] - qe[:lo]) * p0
    return _meet_tempo_range(out, np.diff(qe), lo_s[1:], hi_s[1:])


MAX_BEAT_SPAN_Q = 2.0  # --beat-grid: off-beat groups between beats farther apart keep their own tempo


def _effective_q(tl: Timeline) -> np.ndarray:
    """Per onset group, its score position (quarters) with every step at least one grid unit (groups on
    one position, a grace group before its note, stay in order)."""
    return np.concatenate([[0.0], np.cumsum(np.maximum(np.diff(tl.group_q), 1.0 / V.GRID))])


def on_beat(tl: Timeline) -> np.ndarray:
    """Per onset group, whether it starts on a quarter-note beat (an integer score position in quarters
    from the first bar's start)."""
    return np.abs(tl.group_q - np.round(tl.group_q)) < 1e-6


def beat_grid_targets(tl: Timeline, target_s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(targets, held period) for the beat grid (``instruct-tokenize build --beat-grid``), times in s.

    Between two quarter-note beats that have onset groups at most ``MAX_BEAT_SPAN_Q`` apart, the groups
    off the beat land on the straight line between the two beats' targets in score time: the beat's tempo
    carries them, and their own timing goes to the notes' ``Time`` (VirtuosoNet's beat tempo and onset
    deviation). Held period: per group, the beat period (s per quarter, the line's slope) its tempo token
    takes, for every off-beat group after the first of its beat (nan elsewhere), so that one beat has one
    tempo; the first off-beat group and the next beat's group choose theirs by error feedback, which
    keeps the grid on the targets. Groups before the first beat or after the last keep their own."""
    n = tl.n_groups
    held = np.full(n, np.nan)
    beat = on_beat(tl)
    anchors = np.nonzero(beat & np.isfinite(target_s))[0]
    if len(anchors) < 2:
        return target_s, held
    qe = _effective_q(tl)
    lo, hi = int(anchors[0]), int(anchors[-1])
    # per group, the beats before and after it (its own index on a beat), spanning at most MAX_BEAT_SPAN_Q
    nxt = anchors[np.minimum(np.searchsorted(anchors, np.arange(n)), len(anchors) - 1)]
    prv = anchors[np.maximum(np.searchsorted(anchors, np.arange(n), side="right") - 1, 0)]
    span = tl.group_q[nxt] - tl.group_q[prv]
    off = ~beat & (np.arange(n) > lo) & (np.arange(n) < hi) & (span <= MAX_BEAT_SPAN_Q + 1e-6)
    out = target_s.copy()
    out[off] = np.interp(qe[off], qe[anchors], target_s[anchors])
    hold = np.zeros(n, bool)  # off the beat, after another off-beat group of the same beat
    hold[1:] = off[1:] & off[:-1] & (prv[1:] == prv[:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        held[hold] = ((target_s[nxt] - target_s[prv]) / (qe[nxt] - qe[prv]))[hold]
    return out, held


def _meet_tempo_range(target: np.ndarray, dq: np.ndarray, lo_s: np.ndarray, hi_s: np.ndarray) -> np.ndarray:
    """Targets whose steps exceed the tempo range (a pause longer than 8 s per quarter of score gap, a
    skip faster than 0.08 s per quarter) would leave the whole error on the group after the step, as
    the grid falls behind (or runs ahead) there. Halve it: move each target halfway towards the
    nearest sequence that the range can follow exactly (built backwards from the later targets), so
    that the groups before the step share the error. Unchanged where every step is in range.
    ``lo_s`` / ``hi_s``: per step (into group g + 1), the beat period range (s per quarter)."""
    t = target.tolist()
    n = len(t)
    lo_step = (dq * lo_s).tolist()
    hi_step = (dq * hi_s).tolist()
    feasible = list(t)
    changed = False
    for g in range(n - 1, 0, -1):
        nxt = feasible[g]
        if nxt != nxt:  # nan: no constraint from later groups
            continue
        cur = t[g - 1]
        b = min(max(cur, nxt - hi_step[g - 1]), nxt - lo_step[g - 1])
        if b != cur:
            changed = True
        feasible[g - 1] = b
    if not changed:
        return target
    return 0.5 * (target + np.array(feasible))


class _TempoBins:
    """The values of a tempo slot's tokens in token order and a nearest-value quantiser in log space:
    the absolute ``Tempo`` bins (beat periods, s per quarter) or the ``TempoRel`` steps (ratios)."""

    def __init__(self, values: Sequence[float], tokens: Sequence[str]):
        self.values = [float(v) for v in values]
        self.tokens = list(tokens)
        self.log = [math.log(v) for v in self.values]
        self.lo, self.hi = self.values[0], self.values[-1]

    def quantise(self, value: float) -> int:
        """Index of the value nearest ``value`` in log space (clamped to the range; nan: the last)."""
        x = math.log(min(max(value, self.lo), self.hi))
        c = self.log
        if x != x:
            return len(c) - 1  # as numpy's searchsorted places nan
        i = bisect_left(c, x)
        if i <= 0:
            return 0
        if i >= len(c):
            return len(c) - 1
        return i - 1 if x - c[i - 1] <= c[i] - x else i


ABSOLUTE_BINS = _TempoBins([V.tempo_value(b) for b in range(V.TEMPO_BINS)],
                           [V.tok(V.TEMPO, b) for b in range(V.TEMPO_BINS)])
RELATIVE_BINS = _TempoBins([V.tempo_rel_ratio(j) for j in V.TEMPO_REL_STEPS],
                           [V.tok(V.TEMPO_REL, j) for j in V.TEMPO_REL_STEPS])
_TEMPO_VALUES = ABSOLUTE_BINS.values


def _quantise_tempo(period: float) -> int:
    """:func:`vocab.quantise_tempo` on Python floats (same bins, bisect instead of numpy)."""
    return ABSOLUTE_BINS.quantise(period)


_TIME_MS = V._TIME_CENTERS_MS.tolist()
FINE_TIME_S = 0.040  # Time has 1 ms bins within this; a group with a note farther out picks its tempo bin


def _time_error_ms(dev_ms: float) -> float:
    """Quantisation error (ms) of a Time deviation (ms), as :func:`vocab.time_tokens` rounds it."""
    c = _TIME_MS
    i = bisect_left(c, dev_ms)
    if i <= 0:
        return abs(c[0] - dev_ms)
    if i >= len(c):
        return abs(c[-1] - dev_ms)
    return min(dev_ms - c[i - 1], c[i] - dev_ms)


def _far_offsets(tl: Timeline, target_s: np.ndarray, onset_s: np.ndarray, played: np.ndarray) -> Dict[int, List[float]]:
    """Per onset group with a played note more than FINE_TIME_S from the group's target: the offsets (s)
    of all its played notes from the target."""
    g = tl.note_group[played]
    off = (onset_s[played] - target_s[g])
    far = np.unique(g[np.abs(off) > FINE_TIME_S])
    if not len(far):
        return {}
    sel = np.isin(g, far)
    out: Dict[int, List[float]] = {}
    for gi, o in zip(g[sel].tolist(), off[sel].tolist()):
        out.setdefault(gi, []).append(o)
    return out


def encode_grid(tl: Timeline, ref_s: np.ndarray, far: Optional[Dict[int, List[float]]] = None,
                scale_s: Optional[np.ndarray] = None, held_period_s: Optional[np.ndarray] = None
                ) -> Tuple[List[int], np.ndarray]:
    """Tempo bins and decoded grid times (s) per group, with error feedback: each bin is the one that
    lands the decoded grid nearest the group's target. For a group in ``far`` (offsets of its notes from
    the target, :func:`_far_offsets`: a note outside Time's 1 ms bins), the bin among the two nearest
    on either side that quantises its notes' Time best (the next group's error feedback absorbs it).

    ``scale_s``: None for the absolute ``Tempo`` bins (beat periods); else, per group, the beat period
    (s per quarter) of ratio 1 of the relative ``TempoRel`` steps (notated period x level), and the bins
    returned index ``RELATIVE_BINS``: group g's beat period is ``scale_s[g] x ratio``. ``held_period_s``: per
    group, the beat period (s per quarter) its bin quantises instead, nan where none (:func:`beat_grid_targets`)."""
    n = tl.n_groups
    bins_ = ABSOLUTE_BINS if scale_s is None else RELATIVE_BINS
    scale = [1.0] * n if scale_s is None else np.asarray(scale_s, dtype=np.float64).tolist()
    quantise = bins_.quantise
    bins: List[int] = []
    grid = [0.0] * n
    period = 0.5
    known = np.nonzero(~np.isnan(ref_s))[0]
    q = tl.group_q.tolist()
    ref = np.asarray(ref_s, dtype=np.float64).tolist()
    if len(known) >= 2:
        span_q = q[known[-1]] - q[known[0]]
        if span_q > 0:
            period = (ref[known[-1]] - ref[known[0]]) / span_q
    min_dq = 1.0 / V.GRID
    tv = bins_.values
    isnan = math.isnan
    held = [math.nan] * n if held_period_s is None else np.asarray(held_period_s, dtype=np.float64).tolist()
    for g in range(n):
        sc = scale[g]
        if held[g] == held[g]:  # a beat's tempo
            b = quantise(held[g] / sc)
            period = tv[b] * sc
            grid[g] = grid[g - 1] + max(q[g] - q[g - 1], min_dq) * period
        elif g == 0:
            grid[0] = ORIGIN_S
            nxt = known[known > 0]
            if len(nxt) and not isnan(ref[0]):
                dq = q[nxt[0]] - q[0]
                if dq > 0:
                    period = (ref[nxt[0]] - ref[0]) / dq
            b = quantise(period / sc)
        else:
            dq = max(q[g] - q[g - 1], min_dq)
            r = ref[g]
            if r == r:
                period = (r - grid[g - 1]) / dq
                b = quantise(period / sc)
                offsets = far.get(g) if far else None
                if offsets:
                    best = None
                    for c in range(max(b - 2, 0), min(b + 3, len(tv))):
                        shift_ms = (r - (grid[g - 1] + dq * (tv[c] * sc))) * 1000.0
                        cost = sum(_time_error_ms(o * 1000.0 + shift_ms) for o in offsets) + 1e-6 * abs(c - b)
                        if best is None or cost < best[0]:
                            best = (cost, c)
                    b = best[1]
                grid[g] = grid[g - 1] + dq * (tv[b] * sc)
            else:
                b = quantise(period / sc)
                grid[g] = grid[g - 1] + dq * (tv[b] * sc)
                period = tv[b] * sc
        bins.append(b)
    return bins, np.array(grid)


def nominal_q(dur_q: float) -> float:
    """The notated duration used for articulation (quarters): grace notes count as an eighth of a quarter."""
    return GRACE_NOMINAL_Q if dur_q <= 0 else max(dur_q, MIN_NOMINAL_Q)


_ART_TOKENS = [V.tok(V.ART, V.fmt_art(a)) for a in V._ART_CENTERS]


# ----------------------------------------------------------------------------------------- relative tempo
def tempo_level_log2(tl: Timeline, target_s: np.ndarray, notated_s: np.ndarray) -> float:
    """The performance's tempo level: log2 of its typical beat period over the notated one, i.e. the
    score-time-weighted median, over the steps between consecutive onset groups, of
    log2((target gap / notated gap) / notated beat period of the later group). Weighting by score time
    makes it the tempo of most of the music: a fermata, a grace note or a chord rolled onto two
    positions weighs what its notated gap weighs. ``notated_s``: per group, s per quarter (60 / QPM,
    whatever the ``QPM`` came from); 0.0 when there is no step."""
    if tl.n_groups < 2:
        return 0.0
    dq = np.maximum(np.diff(tl.group_q), 1.0 / V.GRID)
    with np.errstate(invalid="ignore"):
        period = np.diff(target_s) / dq
        ok = np.isfinite(period)
    if not ok.any():
        return 0.0
    x = np.log2(np.maximum(period[ok], 1e-3) / notated_s[1:][ok])
    w = dq[ok]
    o = np.argsort(x, kind="stable")
    cum = np.cumsum(w[o])
    return float(x[o][int(np.searchsorted(cum, 0.5 * cum[-1]))])


def _relative_scale(tl: Timeline, ref_s: np.ndarray, notated_s: np.ndarray) -> Tuple[int, np.ndarray]:
    """(``TempoLevel`` step, per group the beat period of ``TempoRel`` ratio 1: notated period x level)
    of a performance whose group references are ``ref_s`` (:func:`_group_reference`)."""
    step = V.quantise_tempo_level(tempo_level_log2(tl, grid_targets(tl, ref_s), notated_s))
    return step, notated_s * V.tempo_level_factor(step)


def tempo_targets(tl: Timeline, ref_s: np.ndarray, notated_s: Optional[np.ndarray] = None,
                  beat_grid: bool = False) -> Tuple[np.ndarray, Optional[int], Optional[np.ndarray], np.ndarray]:
    """(grid targets, ``TempoLevel`` step, per-group scale, per-group held period) for the absolute encoding
    (``notated_s`` None: step and scale None) or the relative one (``notated_s``: per group the notated
    beat period, s per quarter). The targets meet the range of the tempo tokens in use
    (:func:`grid_targets`). ``beat_grid``: off-beat groups on the beat grid (:func:`beat_grid_targets`);
    else the held period is all nan."""
    step = scale = None
    rng = None
    if notated_s is not None:
        step, scale = _relative_scale(tl, ref_s, notated_s)
        rng = (scale * RELATIVE_BINS.lo, scale * RELATIVE_BINS.hi)
    target = grid_targets(tl, ref_s, rng)
    held = np.full(tl.n_groups, np.nan)
    if beat_grid:
        target, held = beat_grid_targets(tl, target)
    return target, step, scale, held


def group_notated_period_s(score: Sequence[str], tl: Timeline) -> np.ndarray:
    """Per onset group, the notated beat period (s per quarter) of its bar (:func:`score.bar_notated_period_s`)."""
    per_bar = bar_notated_period_s(score)
    return per_bar[tl.group_bar] if tl.n_groups else np.zeros(0)


def perf_tokens(tl: Timeline, onset_s, offset_s, velocity, played, grace, sustain: List[float],
                soft: List[float], notated_s: Optional[np.ndarray] = None,
                beat_grid: bool = False) -> Tuple[List[str], Dict[str, float]]:
    """Performance tokens for a timeline and per-note performance arrays (token order, times shifted).
    ``notated_s`` (per group, s per quarter): the relative tempo encoding, a ``TempoLevel`` token first
    and ``TempoRel`` instead of ``Tempo`` (docs/tokens.md, Relative tempo); None: absolute ``Tempo``.
    ``beat_grid``: one tempo per quarter-note beat, the off-beat groups' timing in ``Time``
    (:func:`beat_grid_targets`)."""
    ref, level, scale, held = tempo_targets(tl, _group_reference(tl, onset_s, played, grace), notated_s,
                                            beat_grid)
    outliers = alignment_outliers(tl, ref, onset_s, played) if tl.n_groups else np.zeros(len(played), bool)
    played = played & ~outliers
    bins, grid = encode_grid(tl, ref, _far_offsets(tl, ref, onset_s, played), scale, held)
    sus = pedal_slots(sustain, grid, SUS_SLOTS)
    sft = pedal_slots(soft, grid, SOFT_SLOTS)
    tempo_bins = ABSOLUTE_BINS if scale is None else RELATIVE_BINS
    periods = np.array([tempo_bins.values[b] for b in bins])
    if scale is not None:
        periods = periods * scale
    g_of = tl.note_group
    nominal = np.where(tl.note_dur_q <= 0, GRACE_NOMINAL_Q, np.maximum(tl.note_dur_q, MIN_NOMINAL_Q))
    dur = np.maximum(np.nan_to_num(offset_s - onset_s, nan=1.0), 1e-3)
    with np.errstate(invalid="ignore"):
        art_idx = V.nearest_index(V._ART_CENTERS, np.clip(np.log2(dur / (nominal * periods[g_of])),
                                                          V.ART_MIN, V.ART_MAX))
    art = V._ART_CENTERS[art_idx]
    dev = np.where(played, np.nan_to_num(onset_s) - grid[g_of], 0.0)
    n = tl.n_notes
    flat: List[str] = [""] * (3 * n)
    flat[0::3] = V.vel_tokens(np.where(played, velocity, 0))
    flat[1::3] = V.time_tokens(dev)
    flat[2::3] = [_ART_TOKENS[i] for i in art_idx.tolist()]
    deleted = [V.tok(V.VEL, V.DELETED), V.tok(V.TIME, 0), V.tok(V.ART, V.fmt_art(0.0))]
    for i in np.nonzero(~np.asarray(played, bool))[0].tolist():
        flat[3 * i:3 * i + 3] = deleted
    g_start = np.searchsorted(g_of, np.arange(tl.n_groups + 1)) * 3 if n else np.zeros(tl.n_groups + 1, int)
    if n and np.any(np.diff(g_of) < 0):
        raise ValueError("notes out of onset-group order")
    g_start = g_start.tolist()
    tempo_t = [tempo_bins.tokens[b] for b in bins]
    group_bar = tl.group_bar.tolist()
    out: List[str] = [] if level is None else [V.tok(V.TEMPO_LEVEL, level)]
    bar = -1
    for g in range(tl.n_groups):
        while bar < group_bar[g]:
            out.append(V.BAR_TOKEN)
            bar += 1
        out.append(tempo_t[g])
        out += sus[g]
        out += sft[g]
        out += flat[g_start[g]:g_start[g + 1]]
    logp = list(np.log(periods))
    arts = art[played]
    while bar < tl.n_bars - 1:
        out.append(V.BAR_TOKEN)
        bar += 1
    vel = velocity[played]
    stats = {
        "mean_log_period": float(np.mean(logp)) if logp else 0.0,
        "rubato": float(np.std(np.diff(logp))) if len(logp) > 2 else 0.0,
        "mean_velocity": float(np.mean(vel)) if len(vel) else 0.0,
        "std_velocity": float(np.std(vel)) if len(vel) else 0.0,
        "mean_art": float(np.mean(arts)) if len(arts) else 0.0,
        "outliers": int(outliers.sum()),
    }
    if level is not None:
        stats["tempo_level"] = float(level)
    return out, stats


def _early_start(needed_s: float, first_dev_s: np.ndarray) -> float:
    """How far (s) before the first group's target its grid starts, so that a pedal change
    ``needed_s`` before it gets an offset >= 0, or, when that would push the first notes (deviations
    ``first_dev_s`` from the target) past the outlier bound, an offset >= the most negative pedal bin;
    0 when neither fits. Within the pedal bins' fine range, the start is chosen so that the first
    notes' Time quantises best (the first notes keep their precision)."""
    dev = first_dev_s[np.abs(first_dev_s) <= OUTLIER_S]
    room = min(EARLY_PEDAL_S, OUTLIER_S - 0.05 - max(float(dev.max()) if len(dev) else 0.0, 0.0))
    if needed_s > room:  # the rest of the way by a negative pedal offset (at most -PEDAL_MIN_MS)
        needed_s = max(needed_s + V.PEDAL_MIN_MS / 1000.0, 0.0)
        if needed_s > room:
            return 0.0
    cand = needed_s + np.arange(0.0, 0.4, 0.001)
    cand = cand[cand <= room]
    if not len(dev):
        return float(cand[0])
    ms = (dev[:, None] + cand[None, :]) * 1000.0
    q = V._TIME_CENTERS_MS[V.nearest_index(V._TIME_CENTERS_MS, ms)]
    cost = np.abs(q - ms).sum(axis=0) + 1e-6 * np.arange(len(cand))  # ties: the earliest
    return float(cand[int(np.argmin(cost))])


def encode_match(mf: MatchFile, prefix: Sequence[str] = (), marks: Optional[Dict] = None,
                 qpm: Optional[Dict[str, float]] = None, relative_tempo: bool = False,
                 default_qpm: float = V.DEFAULT_QPM, beat_grid: bool = False,
                 score_view: Optional[Callable[[List[str]], List[str]]] = None) -> Encoded:
    """Encode an aligned performance. Performed times are shifted so the first group's grid is ORIGIN_S.
    ``marks`` / ``qpm`` (optional): MusicXML markings / notated tempo by note id, added to the score
    stream (:func:`match_score_notes`). ``relative_tempo``: the relative tempo encoding (a
    ``TempoLevel`` token, then ``TempoRel`` per onset group), relative to the score tokens' ``QPM``
    (120 where they carry none); ``default_qpm``: the notated tempo where ``qpm`` gives none;
    ``beat_grid``: one tempo per quarter-note beat (:func:`beat_grid_targets`); ``score_view``: a
    function of the score tokens that keeps their notes, order and onsets (``score.as_score_midi``):
    the performance is encoded against the score it returns (each ``Art`` over the lengths it writes)."""
    notes, order = match_score_notes(mf, marks, qpm, default_qpm)
    score = score_tokens(notes, prefix)
    if score_view is not None:
        score = score_view(score)
    tl = score_timeline(score)
    onset = mf.onset_s[order]
    played = mf.played[order]
    grace = notes.grace
    notated = group_notated_period_s(score, tl) if relative_tempo else None
    target = tempo_targets(tl, _group_reference(tl, onset, played, grace), notated, beat_grid)[0]
    if not len(target) or np.isnan(target[0]):
        raise ValueError("no performed notes")
    sus = pedal_changes(mf.sustain)
    soft = pedal_changes(mf.soft)
    # shift so that the first group's grid is ORIGIN_S: at its target (extrapolated when it was not
    # played), or up to EARLY_PEDAL_S before it when a pedal change precedes the first notes (pedal
    # offsets are >= 0; the first notes then carry a positive Time)
    start = float(target[0])
    early = [t for t in sus[:1] + soft[:1] if t < start]
    if early:
        start -= _early_start(start - min(early), onset[played & (tl.note_group == 0)] - start)
    shift = start - ORIGIN_S
    onset = onset - shift
    offset = mf.offset_s[order] - shift
    sus = [t - shift for t in sus]
    soft = [t - shift for t in soft]
    perf, stats = perf_tokens(tl, onset, offset, mf.velocity[order], played, grace, sus, soft, notated, beat_grid)
    return Encoded(score=score, perf=perf, bar_of_note=notes.bar, shift_s=shift, stats=stats, order=order)


# ----------------------------------------------------------------------------------------- rendering
def style_prefix(style: Optional[Dict[str, str]] = None, composer: Optional[str] = None,
                 performer: Optional[str] = None) -> List[str]:
    """Instruct prefix for rendering: every level "mid" unless set, e.g. {"dynamics": "loud"}.
    Raises ValueError naming a bad key or level."""
    levels = {t: "mid" for t in V.INSTRUCT_TYPES}
    for key, value in (style or {}).items():
        type_ = V.STYLE_KEYS.get(key)
        if type_ is None:
            raise ValueError(f"unknown style key {key!r} (one of {', '.join(V.STYLE_KEYS)})")
        if value not in V.INSTRUCT_LEVELS[type_]:
            raise ValueError(f"style {key}={value!r}: one of {', '.join(V.INSTRUCT_LEVELS[type_])}")
        levels[type_] = value
    out = [V.tok(t, levels[t]) for t in V.INSTRUCT_TYPES]
    if composer:
        out.append(V.tok(V.COMPOSER, V.meta_value(composer)))
    if performer:
        out.append(V.tok(V.PERFORMER, V.meta_value(performer)))
    return out


def score_file_to_tokens(path: str, style: Optional[Dict[str, str]] = None, composer: Optional[str] = None,
                         performer: Optional[str] = None, unfold_repeats: bool = True,
                         markings: bool = False, instruct: bool = True,
                         notated_tempo: bool = False, marking_state: bool = False,
                         after_fermata: bool = True, midi_velocities: bool = True) -> List[str]:
    """A MusicXML or score MIDI file -> score tokens with the instruct prefix (raises ScoreReadError).
    ``markings``: add MusicXML markings (as for a corpus built with ``--xml-markings``; from a score MIDI,
    the dynamic levels its note velocities state, ``scorefile.midi_dynamics``, unless ``midi_velocities``
    is False); ``instruct=False``: no prefix (a corpus built with ``--no-instruct``); ``notated_tempo``:
    a ``QPM`` token in every bar header (``--notated-tempo`` corpora; from MIDI set-tempo events or
    MusicXML ``<sound tempo>``, 120 when the score states none); ``marking_state``: with ``markings``,
    the markings in force at each bar start in every bar header (``--marking-state`` corpora), with
    ``After_fermata`` unless ``after_fermata`` is False (models trained before that token existed)."""
    from .scorefile import ScoreReadError, load_score

    try:
        prefix = style_prefix(style, composer, performer) if instruct else []
    except ValueError as e:
        raise ScoreReadError(str(e)) from None
    notes = load_score(path, unfold_repeats, markings=markings, midi_velocities=midi_velocities)
    if not notated_tempo:
        notes.bar_qpm = None
    tokens = score_tokens(notes, prefix)
    return with_marking_state(tokens, after_fermata) if marking_state and markings else tokens


# ----------------------------------------------------------------------------------------- segments
@dataclass
class Segment:
    """Bars [bar_start, bar_end) of a piece: score tokens (with the prefix) and performance tokens."""

    bar_start: int
    bar_end: int
    score: List[str]
    perf: List[str]


def split_bars(tokens: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """(tokens before the first bar, bars each starting with the Bar token)."""
    bar = V.BAR_TOKEN
    starts = [i for i, t in enumerate(tokens) if t == bar]
    if not starts:
        return list(tokens), []
    ends = starts[1:] + [len(tokens)]
    return list(tokens[:starts[0]]), [list(tokens[a:b]) for a, b in zip(starts, ends)]


def bar_ranges(bar_costs: Sequence[int], budget: int, overlap: int) -> List[Tuple[int, int]]:
    """Half-open bar ranges [start, end) whose bars' costs (tokens) sum to at most ``budget`` (a single
    costlier bar forms its own range); consecutive ranges share ``overlap`` bars. The one segment
    planner: the corpus build cuts training segments with it, the renderer its generation segments."""
    n = len(bar_costs)
    out: List[Tuple[int, int]] = []
    start = 0
    while start < n:
        end, used = start, 0
        while end < n and (end == start or used + bar_costs[end] <= budget):
            used += bar_costs[end]
            end += 1
        out.append((start, end))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return out


def segment_ranges(score_bars: List[List[str]], perf_bars: List[List[str]], budget: int,
                   overlap: int) -> List[Tuple[int, int]]:
    """Half-open bar ranges whose score and performance parts each fit ``budget`` tokens (a single
    longer bar forms its own segment); consecutive segments share ``overlap`` bars."""
    return bar_ranges([max(len(s), len(p)) for s, p in zip(score_bars, perf_bars)], budget, overlap)


def segment(score: Sequence[str], perf: Sequence[str], max_tokens: int, overlap_bars: int = 2) -> List[Segment]:
    """Split aligned streams into bar-bounded segments of at most ``max_tokens`` tokens per stream
    (each stream's prefix, the tokens before its first bar, is repeated in front of every segment and
    counts: the score's instruct prefix, the relative encoding's ``TempoLevel``; one token is kept for
    EOS) with ``overlap_bars`` bars shared by consecutive segments. ``perf`` may be empty (rendering)."""
    prefix, score_bars = split_bars(score)
    perf_prefix, perf_bars = split_bars(perf)
    if perf and len(perf_bars) != len(score_bars):
        raise ValueError(f"score has {len(score_bars)} bars, performance {len(perf_bars)}")
    if not perf:
        perf_bars = [[] for _ in score_bars]
    out = []
    budget = max_tokens - max(len(prefix), len(perf_prefix)) - 1
    for a, b in segment_ranges(score_bars, perf_bars, budget, overlap_bars):
        out.append(Segment(a, b, list(prefix) + [t for bar in score_bars[a:b] for t in bar],
                           list(perf_prefix) + [t for bar in perf_bars[a:b] for t in bar]))
    return out


def rebase_tempo_level(perf: Sequence[str], level_token: str) -> List[str]:
    """The same relative performance stream expressed with another ``TempoLevel``: every ``TempoRel`` step
    j becomes j + k_old - k_new (clamped to the range), so every decoded beat period stays the same
    (notated x 2 ** ((k + j) / 24)) unless clamped. For segments generated without a shared level
    (``fairseq-generate`` draws each line's own), before :func:`stitch`. A stream that does not start with
    a ``TempoLevel`` (the absolute encoding) is returned unchanged."""
    if not perf or V.parse(perf[0])[0] != V.TEMPO_LEVEL:
        return list(perf)
    shift = int(V.parse(perf[0])[1]) - int(V.parse(level_token)[1])
    lo, hi = V.TEMPO_REL_STEPS[0], V.TEMPO_REL_STEPS[-1]
    out = [level_token]
    for t in perf[1:]:
        type_, value = V.parse(t)
        out.append(V.tok(V.TEMPO_REL, min(max(int(value) + shift, lo), hi)) if type_ == V.TEMPO_REL else t)
    return out


def stitch(segments: Sequence[Tuple[int, int, Sequence[str]]]) -> List[str]:
    """Bar ranges (bar_start, bar_end, perf tokens of those bars) -> one performance stream.

    Where two segments overlap, the earlier one's bars are kept up to the middle of the overlap and
    the later one's after it. The result starts with the segments' prefix (the relative encoding's
    ``TempoLevel``; nothing in the absolute one), then ``Bar_None``; raises ValueError on a gap or when
    the segments' prefixes differ (a level chosen once per piece: a renderer forces the first
    segment's on the later ones)."""
    chosen: Dict[int, List[str]] = {}
    prev_end = 0
    head: Optional[List[str]] = None
    for a, b, perf in sorted(segments, key=lambda s: s[0]):
        prefix, bars = split_bars(perf)
        if head is None:
            head = prefix
        elif prefix != head:
            raise ValueError(f"segment {a}-{b} starts with {' '.join(prefix) or 'no prefix'}, the first with "
                             f"{' '.join(head) or 'no prefix'}")
        if len(bars) != b - a:
            raise ValueError(f"segment {a}-{b} holds {len(bars)} bars")
        if a > prev_end:
            raise ValueError(f"no segment covers bars {prev_end}-{a}")
        keep_from = a + (prev_end - a + 1) // 2 if prev_end > a else a
        for k in range(keep_from, b):
            chosen[k] = bars[k - a]
        prev_end = max(prev_end, b)
    return list(head or []) + [t for k in range(prev_end) for t in chosen[k]]
