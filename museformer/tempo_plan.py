"""The tempo plan: a small network that reads a whole score and predicts the shape of its tempo curve.

What a listener hears first is the tempo, and the tempo curve of a piece is a plan over the whole
piece: slower at the ends of sections, around fermatas and written ritardandos, at the notated tempo
changes, faster in running passages. The renderer's decoder writes one local tempo per onset group,
with a context of a few bars, sampled token by token: its beat tempo follows the pianists' less than
the notated tempo alone does on many pieces (docs/experiments.md). The plan model is the hierarchy's
top level (VirtuosoNet's measure level, ScorePerformer's bar level): one non-causal pass over the score's
onset groups (a dilated residual 1-D convolution, about 500 groups of context either way), trained on
the (n)ASAP training performances to predict each onset group's beat tempo, in log seconds per quarter,
relative to the piece's mean (the level is the notated tempo's business: ``tempo_infer``). The decoder
is steered to it by ``TempoPlanPrior`` (``--tempo-plan``, ``museformer.decoding.rules``); the release holds
the mean of several fits (:class:`TempoPlanEnsemble`), its curve stretched back to the pianists' spread
(:func:`fit_spread`).

Everything here is a pure function of the score tokens (:func:`group_features`), so the training build,
the evaluation and the renderer cannot disagree. Units: score time in quarters, tempo as log seconds
per quarter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from instruct_tokenizer import vocab as V
from instruct_tokenizer.score import Timeline, bar_notated_period_s, score_timeline

# the score tokens a feature reads (markings appear only where the score has them: MusicXML)
_FERMATA = V.tok(V.MARK, "fermata")
_TEMPO_WORDS = {V.tok(V.TEMPO_WORD, w): i for i, w in enumerate(("slow", "moderate", "fast", "rit", "accel", "atempo"))}
_TEMPO_MODES = {V.tok(V.TEMPO_MODE, "rit"): 0, V.tok(V.TEMPO_MODE, "accel"): 1}
_DYN_LEVEL = {V.tok(V.DYN, d): (i - 4.5) / 4.5 for i, d in enumerate(V.DYN_VALUES)}

FEATURE_NAMES = (
    "notated_log_period",  # log s per quarter of the notated tempo at the group's bar, minus the piece mean
    "position", "log_q_to_end", "log_q_from_start",  # where in the piece (fraction; log2(1 + quarters))
    "log_ioi_next", "log_ioi_prev",  # log2 quarters to the next / from the previous onset group
    "notes", "longest_dur", "mean_pitch", "pitch_span", "grace",  # the group's own notes
    "beat_phase", "bar_phase", "bar_start",  # where in the beat / bar
    "log_density",  # log2 onset groups per quarter over 8 quarters around, over the piece's
    "log_q_to_qpm_change",  # log2(1 + quarters to the next change of the notated tempo), 0 at a change
    "fermata", "after_fermata", "has_markings",
    "word_slow", "word_moderate", "word_fast", "word_rit", "word_accel", "word_atempo",
    "mode_rit", "mode_accel", "dynamic",
)
N_FEATURES = len(FEATURE_NAMES)
# the phrase features (``group_features(tokens, TEMPO_FEATURE_NAMES)``), read by tempo plans that store these names:
# pianists slow into the end of a phrase, which the score marks with a slur's end (MusicXML) and a rest
PHRASE_FEATURE_NAMES = (
    "log_rest_after",  # log2(1 + quarters of silence after the group: no note sounds until the next onset)
    "slur_start", "slur_end",  # a note of the group starts / ends a slur
    "log_q_to_phrase_end", "log_q_from_phrase_end",  # log2(1 + quarters) to the next / since the last phrase end:
    # a slur's end or a rest of at least PHRASE_REST_Q
    "bass_pitch",  # the group's lowest pitch, (MIDI - 64) / 24
    "wedge_cresc", "wedge_dim",  # an open crescendo / diminuendo hairpin
)
TEMPO_FEATURE_NAMES = FEATURE_NAMES + PHRASE_FEATURE_NAMES
FEATURE_SETS = (FEATURE_NAMES, TEMPO_FEATURE_NAMES)  # what group_features computes; a plan stores which it reads
PHRASE_REST_Q = 0.25  # quarters of silence that end a phrase (a sixteenth rest or more)
NORMALISED_FLOOR = 0.002  # normalised_mse: added to each performance's tempo variance, (log s per quarter)^2
_SLUR_START, _SLUR_END = V.tok(V.SLUR, "start"), V.tok(V.SLUR, "end")
_WEDGES = {V.tok(V.WEDGE, "cresc"): 0, V.tok(V.WEDGE, "dim"): 1, V.tok(V.WEDGE, "end"): None}


_IOI_NEXT = FEATURE_NAMES.index("log_ioi_next")
NOTATED = FEATURE_NAMES.index("notated_log_period")


class TempoPlanError(Exception):
    """A score the plan cannot read, or a plan file that cannot be loaded (the message names it)."""


def spread_for(plan, tokens: Sequence[str]) -> Optional[float]:
    """The spread a plan's ``predict`` uses for these score tokens: its ``spread_plain`` for a score without
    any marking (a score MIDI's) where it has one, else None (its own ``spread``). A plan reads less from
    a plain score and shrinks its deviations further: on the training pieces the pianists' spread over
    the plan's is 1.04-1.14 times as large from the plain scores (docs/experiments.md section 21)."""
    from instruct_tokenizer.score import has_markings

    plain = getattr(plan, "spread_plain", None)
    return plain if plain and not has_markings(tokens) else None


def stored_spread_plain(state: dict) -> Optional[float]:
    """A release file's ``spread_plain`` (0 or absent: none)."""
    value = float(state.get("spread_plain", 0.0))
    return value if value > 0 else None


def factors_over_notated(plan, tokens: Sequence[str]) -> np.ndarray:
    """(G,) a tempo plan's curve for the score tokens as log factors over each onset group's notated tempo:
    what ``TempoPlanPrior`` and the articulation plan's key-down bound multiply the group's notated period
    (60 / ``QPM`` of its bar) by. A plan is fitted to the pianists' log beat period relative to the
    piece's mean (:func:`centred_mse`) and reads the notated period's own offset from that mean
    (``notated_log_period``), so its curve already holds the score's tempo changes; over each bar's notated
    period they counted twice (until 2026-12-06 Beethoven op. 110's Adagio and fugue played its marked slow
    opening at about a quarter of its mark and its last section at twice it; docs/experiments.md section
    31). Less that offset, the level is the notated tempo's mean over the groups and the curve's shape the
    plan's. A score at one notated tempo is unchanged."""
    features = group_features(tokens, plan.feature_names)
    curve = plan.predict_features(features, spread_for(plan, tokens))  # (G,) relative to the piece's mean
    return curve - features[:, NOTATED].astype(np.float64)


def gap_factors(factors: np.ndarray, tokens: Sequence[str]) -> np.ndarray:
    """(G,) log factors over each onset group's notated tempo for the **gap that ends at the group**: what
    its ``Tempo`` token plays, since decoding times the gap from the previous group to this one by the
    token's beat period (``tempo_slot_gaps``). A plan predicts each group's *beat* tempo
    (``metrics.beat_log_tempo``: the beat its onset lies in, so mostly the time from the group on), so a
    token centred on its own group's factor played each beat's tempo one onset group early. Here each
    beat takes the mean period of the plan's groups in it (a beat without one: the beat before's), and
    group g's token the mean of those periods over the score time from group g-1 to g; the first group,
    which ends no gap, keeps its own. Decoded, these tokens give back the plan's beat tempo (tested).

    Example (one group a beat, the third beat twice as slow)::

        group q (quarters)         0     1     2     3
        factors (beat tempo)       0     0     ln 2  0
        gap_factors (its token)    0     0     0     ln 2   <- the gap [2, 3) ends at the group at q = 3

    Until 2026-12-07 the rule read ``factors`` directly: Schubert's D783/15 (a waltz, about one group a
    beat) followed its 22 pianists with beat tempo r 0.34 where the plan alone reads 0.52
    (docs/experiments.md section 41)."""
    tl = score_timeline(tokens)
    q = tl.group_q.astype(np.float64)  # (G,) quarters, ascending
    factors = np.asarray(factors, np.float64)
    if len(q) < 2:
        return factors.copy()
    notated = bar_notated_period_s(tokens)[tl.group_bar]  # (G,) s per quarter
    period = notated * np.exp(factors)  # (G,) the plan's beat period at each group, s per quarter
    first = int(np.floor(q[0]))
    beat = np.floor(q).astype(np.int64) - first  # (G,) each group's beat, from 0
    n_beats = int(beat[-1]) + 1
    counts = np.bincount(beat, minlength=n_beats)
    beat_period = np.bincount(beat, weights=period, minlength=n_beats) / np.maximum(counts, 1)  # (n_beats,)
    seen = np.maximum.accumulate(np.where(counts > 0, np.arange(n_beats), 0))  # beat 0 always holds group 0
    beat_period = beat_period[seen]  # a beat without a group: the beat before's
    start_s = np.concatenate([[0.0], np.cumsum(beat_period)])  # (n_beats + 1,) time at each beat's start
    time_s = start_s[beat] + (q - first - beat) * beat_period[beat]  # (G,) the plan's time at each group
    gap_q = np.diff(q)  # (G - 1,)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap_period = np.where(gap_q > 0, np.diff(time_s) / np.where(gap_q > 0, gap_q, 1.0), period[:-1])
    return np.concatenate([factors[:1], np.log(gap_period) - np.log(notated[1:])])


def stretch(curve: np.ndarray, features: np.ndarray, spread: float) -> np.ndarray:
    """(G,) a plan's curve (log s per quarter relative to the piece's mean) scaled by ``spread`` and shifted
    so that the piece keeps the length the unscaled curve gives it: sum over groups of quarters to the next group x
    e^factor unchanged. The curves are skewed (slowing at ends and fermatas is larger than any
    hurrying), so a plain scaling would lengthen every piece; unscaled, the curve's length matches the
    pianists' (docs/experiments.md section 20). ``features``: the (G, F) :func:`group_features`."""
    if spread == 1.0 or len(curve) == 0:
        return curve
    quarters = 2.0 ** features[:, _IOI_NEXT]  # (G,) quarters to the next group, clipped to [1/24, 16]

    def log_length(c: np.ndarray) -> float:
        top = float(c.max())
        return top + math.log(float(np.sum(quarters * np.exp(c - top))))

    scaled = spread * curve
    return scaled - (log_length(scaled) - log_length(curve))


def _log2p(x: np.ndarray) -> np.ndarray:
    return np.log2(1.0 + np.maximum(x, 0.0))


def group_markings(tokens: Sequence[str], n_groups: int) -> Dict[str, np.ndarray]:
    """Per onset group, from the marking tokens after its ``Pos`` (group markings) and its notes (note
    markings), and from the bar header (marking state): fermata, tempo-word class, tempo mode (a rit. or
    accel. in force), the last dynamic level (-1 pppp .. +1 ffff, 0 before any)."""
    fermata = np.zeros(n_groups)
    words = np.zeros((n_groups, len(_TEMPO_WORDS)))
    modes = np.zeros((n_groups, len(_TEMPO_MODES)))
    dynamic = np.zeros(n_groups)
    g, mode, level, any_mark = -1, None, 0.0, False
    for t in tokens:
        if t.startswith(V.POS + "_"):
            g += 1
            dynamic[g] = level
            if mode is not None:
                modes[g, mode] = 1.0
        elif t == V.BAR_TOKEN:
            mode = None
        elif t in _TEMPO_MODES:
            mode = _TEMPO_MODES[t]
        elif g < 0:
            continue
        elif t == _FERMATA:
            fermata[g], any_mark = 1.0, True
        elif t in _TEMPO_WORDS:
            words[g, _TEMPO_WORDS[t]], any_mark = 1.0, True
            if t in (V.tok(V.TEMPO_WORD, "rit"), V.tok(V.TEMPO_WORD, "accel")):
                mode = _TEMPO_MODES[V.tok(V.TEMPO_MODE, t.split("_", 1)[1])]
                modes[g, mode] = 1.0
            elif t == V.tok(V.TEMPO_WORD, "atempo"):
                mode = None
        elif t in _DYN_LEVEL:
            level = dynamic[g] = _DYN_LEVEL[t]
            any_mark = True
    return {"fermata": fermata, "words": words, "modes": modes, "dynamic": dynamic,
            "has_markings": np.full(n_groups, 1.0 if any_mark else 0.0)}


def read_timeline(tokens: Sequence[str]) -> Timeline:
    """``score_timeline`` of the tokens; TempoPlanError for unreadable tokens or a score with no notes."""
    try:
        tl = score_timeline(tokens)
    except ValueError as e:
        raise TempoPlanError(f"unreadable score tokens: {e}") from None
    if tl.n_notes == 0:
        raise TempoPlanError("the score has no notes")
    return tl


def group_features(tokens: Sequence[str], names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """(G, len(names)) float32 features of the score's onset groups, in token order: ``names`` one of
    :data:`FEATURE_SETS` (FEATURE_NAMES: the velocity and articulation plans' and the first tempo plans';
    TEMPO_FEATURE_NAMES: those and the phrase features). Raises TempoPlanError for a score with no onset
    group or an unknown feature set."""
    if tuple(names) not in FEATURE_SETS:
        raise TempoPlanError(f"unknown plan features {list(names)[len(FEATURE_NAMES):] or list(names)}")
    tl = read_timeline(tokens)
    base = _base_features(tokens, tl)
    if tuple(names) == FEATURE_NAMES:
        return base
    return np.concatenate([base, phrase_features(tokens, tl)], axis=1)  # (G, F + phrase)


def phrase_features(tokens: Sequence[str], tl: Timeline) -> np.ndarray:
    """(G, len(PHRASE_FEATURE_NAMES)) float32: where the score's phrases end (slurs, rests), the bass and the
    hairpins, per onset group (``tl``: the tokens' ``score_timeline``). Units in PHRASE_FEATURE_NAMES."""
    n = tl.n_groups
    q = tl.group_q.astype(float)
    note_end = q[tl.note_group] + tl.note_dur_q  # (N,) quarters
    sounding_until = np.full(n, -np.inf)
    np.maximum.at(sounding_until, tl.note_group, note_end)
    sounding_until = np.maximum.accumulate(sounding_until)  # (G,) the latest release of the notes so far
    next_q = np.append(q[1:], sounding_until[-1])
    rest_after = np.maximum(next_q - sounding_until, 0.0)  # (G,) quarters of silence before the next onset
    lo = np.full(n, 127.0)
    np.minimum.at(lo, tl.note_group, tl.note_pitch)
    slur_start, slur_end, wedges = np.zeros(n), np.zeros(n), np.zeros((n, 2))
    g, wedge = -1, None
    for t in tokens:
        if t.startswith(V.POS + "_"):
            g += 1
            if wedge is not None:
                wedges[g, wedge] = 1.0
        elif g < 0:
            continue
        elif t == _SLUR_START:
            slur_start[g] = 1.0
        elif t == _SLUR_END:
            slur_end[g] = 1.0
        elif t in _WEDGES:
            wedge = _WEDGES[t]
            if wedge is not None:
                wedges[g, wedge] = 1.0
    ends = (slur_end > 0) | (rest_after >= PHRASE_REST_Q)  # (G,) groups that end a phrase
    index = np.arange(n)
    last = np.insert(np.maximum.accumulate(np.where(ends, index, -1))[:-1], 0, -1)  # (G,) the last end before
    following = np.minimum.accumulate(np.where(ends, index, n)[::-1])[::-1]  # (G,) the next end, this group's own
    from_end = np.where(last >= 0, q - q[np.maximum(last, 0)], np.inf)  # quarters; inf: none
    to_end = np.where(following < n, q[np.minimum(following, n - 1)] - q, np.inf)
    cols = [_log2p(rest_after), slur_start, slur_end, _log2p(np.minimum(to_end, 1e4)) / 4.0,
            _log2p(np.minimum(from_end, 1e4)) / 4.0, (lo - 64.0) / 24.0, *wedges.T]
    out = np.stack(cols, axis=1).astype(np.float32)  # (G, phrase)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _base_features(tokens: Sequence[str], tl: Timeline) -> np.ndarray:
    """(G, N_FEATURES) float32: the FEATURE_NAMES columns of :func:`group_features`."""
    n = tl.n_groups
    q = tl.group_q.astype(float)
    end_q = float(q.max() + 1.0)
    bar_period = np.log(bar_notated_period_s(tokens))  # (n_bars,) log s per quarter
    notated = bar_period[np.minimum(tl.group_bar, len(bar_period) - 1)]
    ioi_next = np.append(np.diff(q), 1.0)
    ioi_prev = np.insert(np.diff(q), 0, 1.0)
    notes = np.bincount(tl.note_group, minlength=n).astype(float)
    longest = np.zeros(n)
    np.maximum.at(longest, tl.note_group, tl.note_dur_q)
    pitch_sum = np.bincount(tl.note_group, weights=tl.note_pitch, minlength=n)
    lo = np.full(n, 127.0)
    hi = np.zeros(n)
    np.minimum.at(lo, tl.note_group, tl.note_pitch)
    np.maximum.at(hi, tl.note_group, tl.note_pitch)
    grace = np.zeros(n)
    np.maximum.at(grace, tl.note_group, (tl.note_dur_q == 0).astype(float))
    bar_first_q = np.full(tl.n_bars, np.inf)
    np.minimum.at(bar_first_q, tl.group_bar, q)
    bar_start = (q == bar_first_q[tl.group_bar]).astype(float)
    # the bar's length read off its groups: from the bar's first group to the next bar's first group
    starts = np.where(np.isfinite(bar_first_q), bar_first_q, np.nan)
    next_start = np.append(starts[1:], end_q)
    bar_len = np.maximum(np.nan_to_num(next_start - starts, nan=4.0), 1.0)[tl.group_bar]
    bar_phase = (q - starts[tl.group_bar]) / bar_len
    # onset groups per quarter within 4 quarters either way, over the piece's mean rate
    left = np.searchsorted(q, q - 4.0, side="left")
    right = np.searchsorted(q, q + 4.0, side="right")
    span = np.minimum(q + 4.0, end_q) - np.maximum(q - 4.0, q.min())
    density = (right - left) / np.maximum(span, 1.0)
    mean_rate = n / max(end_q - q.min(), 1.0)
    changes = np.flatnonzero(np.diff(notated) != 0) + 1  # groups where the notated tempo changes
    to_change = np.full(n, 1e4)
    for c in changes[::-1]:
        to_change[: c + 1] = np.minimum(to_change[: c + 1], q[c] - q[: c + 1])
    m = group_markings(tokens, n)
    after = np.insert(m["fermata"][:-1], 0, 0.0)
    cols = [notated - notated.mean(), (q - q.min()) / max(end_q - q.min(), 1.0), _log2p(end_q - q),
            _log2p(q - q.min()), np.log2(np.clip(ioi_next, 1 / 24, 16)), np.log2(np.clip(ioi_prev, 1 / 24, 16)),
            np.log2(notes), np.log2(np.clip(longest, 1 / 24, 16)), (pitch_sum / notes - 64.0) / 24.0,
            (hi - lo) / 24.0, grace, q - np.floor(q), bar_phase, bar_start, np.log2(density / mean_rate),
            _log2p(to_change) / 10.0, m["fermata"], after, m["has_markings"], *m["words"].T, *m["modes"].T,
            m["dynamic"]]
    out = np.stack(cols, axis=1).astype(np.float32)  # (G, F)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class PlanNet(nn.Module):
    """Non-causal dilated residual 1-D convolutions over the onset groups: (B, F, G) features -> (B, G)
    log beat period relative to the piece's mean. Kernel 3 with dilations 1, 2, 4, ..., 2^(L-1) twice:
    each output sees about 2 x 2^L groups either way."""

    def __init__(self, n_features: int = N_FEATURES, channels: int = 48, levels: int = 8, dropout: float = 0.1):
        super().__init__()
        self.config = {"n_features": n_features, "channels": channels, "levels": levels, "dropout": dropout}
        self.inp = nn.Conv1d(n_features, channels, 1)
        self.blocks = nn.ModuleList()
        for d in [2 ** i for i in range(levels)] * 2:
            self.blocks.append(nn.Sequential(nn.GELU(), nn.Dropout(dropout),
                                             nn.Conv1d(channels, channels, 3, padding=d, dilation=d)))
        self.out = nn.Conv1d(channels, 1, 1)

    def context(self, features: Tensor, mask: Tensor) -> Tensor:
        """features (B, F, G), mask (B, G) True on real groups -> (B, C, G) each group's context (0 on padding)."""
        keep = mask.unsqueeze(1).to(features.dtype)  # (B, 1, G)
        h = self.inp(features) * keep  # (B, C, G)
        for block in self.blocks:
            h = (h + block(h)) * keep  # (B, C, G); padding stays 0 so it adds nothing across a piece's end
        return h

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        """features (B, F, G), mask (B, G) True on real groups -> (B, G) centred prediction (0 on padding)."""
        y = self.out(self.context(features, mask)).squeeze(1) * mask  # (B, G)
        mean = y.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
        return (y - mean) * mask


@dataclass
class TempoPlan:
    """A fitted plan model with its feature scaling: ``predict(tokens)`` gives (G,) log seconds per
    quarter relative to the piece's mean, per onset group in token order."""

    net: PlanNet
    feature_mean: np.ndarray
    feature_std: np.ndarray
    spread: float = 1.0  # the curve is scaled by this (see fit_spread)
    spread_plain: Optional[float] = None  # ... from a score without markings (spread_for); None: spread
    feature_names: Tuple[str, ...] = FEATURE_NAMES  # which of FEATURE_SETS it reads (group_features)

    def predict(self, tokens: Sequence[str]) -> np.ndarray:
        """(G,) log s per quarter relative to the piece's mean, per onset group of the score tokens."""
        return self.predict_features(group_features(tokens, self.feature_names), spread_for(self, tokens))

    def predict_features(self, features: np.ndarray, spread: Optional[float] = None) -> np.ndarray:
        """(G, F) :func:`group_features` -> (G,) log s per quarter relative to the piece's mean: the network's
        curve scaled by ``spread`` (default: the plan's own, see :func:`fit_spread`) at the same length
        (:func:`stretch`)."""
        x = (features - self.feature_mean) / self.feature_std  # (G, F)
        with torch.no_grad():
            self.net.eval()
            t = torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float32)).unsqueeze(0)  # (1, F, G)
            y = self.net(t, torch.ones(1, x.shape[0], dtype=torch.bool))  # (1, G)
        return stretch(y[0].numpy().astype(np.float64), features, self.spread if spread is None else spread)

    def state(self) -> dict:
        """What the release file stores: plain tensors, lists and numbers only (weights_only loadable)."""
        return {"config": dict(self.net.config), "feature_names": list(self.feature_names),
                "feature_mean": torch.from_numpy(self.feature_mean.astype(np.float32)),
                "feature_std": torch.from_numpy(self.feature_std.astype(np.float32)), "spread": float(self.spread),
                "spread_plain": float(self.spread_plain or 0.0),
                "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict) -> "TempoPlan":
        names = tuple(state.get("feature_names", []))
        if names not in FEATURE_SETS:
            raise TempoPlanError("the plan was fitted on other features than this version computes")
        net = PlanNet(**state["config"])
        net.load_state_dict({k: v.float() for k, v in state["weights"].items()})
        net.eval()
        return cls(net, state["feature_mean"].float().numpy(), state["feature_std"].float().numpy(),
                   spread=float(state.get("spread", 1.0)), spread_plain=stored_spread_plain(state),
                   feature_names=names)


class TempoPlanEnsemble:
    """Tempo plans of the same features fitted with different seeds: ``predict`` gives the mean of their
    predictions, (G,) log s per quarter relative to the piece's mean. Each member's error is partly its own
    (initialisation, batch order), so the mean follows the pianists better than any one member
    (docs/experiments.md section 19)."""

    def __init__(self, members: Sequence[TempoPlan], spread: float = 1.0, spread_plain: Optional[float] = None):
        if not members:
            raise TempoPlanError("a tempo plan ensemble needs at least one member")
        if len({m.feature_names for m in members}) > 1:
            raise TempoPlanError("a tempo plan ensemble's members read different features")
        self.members = list(members)
        self.feature_names = members[0].feature_names
        self.spread = spread  # the mean curve is scaled by this (see fit_spread)
        self.spread_plain = spread_plain  # ... from a score without markings (spread_for); None: spread

    def predict(self, tokens: Sequence[str]) -> np.ndarray:
        """(G,) log s per quarter relative to the piece's mean, per onset group of the score tokens."""
        return self.predict_features(group_features(tokens, self.feature_names), spread_for(self, tokens))

    def predict_features(self, features: np.ndarray, spread: Optional[float] = None) -> np.ndarray:
        """(G, F) :func:`group_features` -> (G,) the members' mean prediction scaled by ``spread`` (default:
        the ensemble's own, see :func:`fit_spread`) at the same length (:func:`stretch`)."""
        mean = np.mean([m.predict_features(features) for m in self.members], axis=0)  # (M, G) -> (G,)
        return stretch(mean, features, self.spread if spread is None else spread)

    def state(self) -> dict:
        """What the release file stores: each member's :meth:`TempoPlan.state` and the ensemble's spread
        (weights_only loadable)."""
        return {"members": [m.state() for m in self.members], "spread": float(self.spread),
                "spread_plain": float(self.spread_plain or 0.0)}

    @classmethod
    def from_state(cls, state: dict) -> "TempoPlanEnsemble":
        return cls([TempoPlan.from_state(s) for s in state["members"]], spread=float(state.get("spread", 1.0)),
                   spread_plain=stored_spread_plain(state))


def tempo_plan_from_state(state: dict):
    """A release file's ``tempo_plan`` entry: one plan (:class:`TempoPlan`) or several
    (:class:`TempoPlanEnsemble`, a ``members`` list). Raises TempoPlanError for features this version does
    not compute."""
    return TempoPlanEnsemble.from_state(state) if "members" in state else TempoPlan.from_state(state)


def fit(pieces: List[dict], valid: List[dict], epochs: int = 40, lr: float = 2e-3, seed: int = 0,
        batch: int = 16, progress=None, feature_names: Sequence[str] = FEATURE_NAMES, loss: str = "mse",
        **net_kw) -> TempoPlan:
    """Fit on ``pieces`` (each {"features": (G, F) the ``feature_names`` columns of :func:`group_features`,
    "target": (G,) log s per quarter, NaN where no performance says}): AdamW with a cosine learning-rate
    decay over ``epochs``, batches of pieces of similar length (little padding), the loss named ``loss``
    (:data:`LOSSES`: ``mse``, :func:`centred_mse`, or ``normalised``, :func:`normalised_mse`); keep the
    epoch with the best mean per-piece correlation on ``valid``."""
    if loss not in LOSSES:
        raise TempoPlanError(f"unknown tempo plan loss {loss!r} (one of {', '.join(LOSSES)})")
    torch.manual_seed(seed)
    allx = np.concatenate([p["features"] for p in pieces])
    if allx.shape[1] != len(feature_names):
        raise TempoPlanError(f"{allx.shape[1]} feature columns for {len(feature_names)} feature names")
    mean, std = allx.mean(0), allx.std(0) + 1e-3
    net = PlanNet(n_features=len(feature_names), **net_kw)
    plan = TempoPlan(net, mean, std, feature_names=tuple(feature_names))

    def batch_loss(chunk: List[dict]) -> Tensor:
        x, y, m = _batch(chunk, mean, std)
        return LOSSES[loss](net(x, m), y, m)

    def validate() -> float:
        return float(np.nanmean([pearson(plan.predict_features(p["features"]), p["target"]) for p in valid]))

    train_epochs(net, pieces, [len(p["target"]) for p in pieces], batch_loss, validate, epochs, lr, seed, batch,
                 progress)
    return plan


def fit_spread(plan, pieces: List[dict]) -> float:
    """The median over ``pieces`` (each {"features", "target"}, the training performances) of the human
    curve's standard deviation over the plan's (spread 1), on the groups where the pianist has a tempo. A
    squared-error fit shrinks what it cannot tell apart towards the piece's mean (the plans' curves vary
    about 0.65 as much as the pianists'), and a decoder steered to that curve plays a flatter piece than
    any pianist, so the curve is stretched back (its r is unchanged; docs/experiments.md section 20)."""
    ratios = []
    for p in pieces:
        ok = np.isfinite(p["target"])
        pred = plan.predict_features(p["features"], spread=1.0)[ok]
        if ok.sum() > 2 and np.std(pred) > 0:
            ratios.append(float(np.std(p["target"][ok]) / np.std(pred)))
    return float(np.median(ratios)) if ratios else 1.0


def train_epochs(net: nn.Module, pieces: List[dict], lengths: List[int], batch_loss, validate, epochs: int,
                 lr: float, seed: int, batch: int, progress=None) -> None:
    """The plans' training loop: AdamW with a cosine decay over ``epochs``, batches of ``batch`` pieces of
    similar ``lengths`` (little padding) in a seeded order, ``batch_loss(pieces)`` minimised; after each
    epoch ``validate()`` (higher is better), and the net left with the best epoch's weights, in eval mode."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(batches)))
    best, best_state = -math.inf, None
    for epoch in range(epochs):
        net.train()
        for k in rng.permutation(len(batches)):
            loss = batch_loss([pieces[j] for j in batches[k]])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            schedule.step()
        net.eval()
        score = validate()
        if progress:
            progress(epoch, score)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()


def _batch(pieces: List[dict], mean: np.ndarray, std: np.ndarray):
    g = max(len(p["target"]) for p in pieces)
    x = torch.zeros(len(pieces), len(mean), g)  # (B, F, G)
    y = torch.full((len(pieces), g), float("nan"))  # (B, G)
    m = torch.zeros(len(pieces), g, dtype=torch.bool)
    for i, p in enumerate(pieces):
        n = len(p["target"])
        x[i, :, :n] = torch.from_numpy(((p["features"] - mean) / std).T.astype(np.float32))
        y[i, :n] = torch.from_numpy(p["target"].astype(np.float32))
        m[i, :n] = True
    return x, y, m


def _centred(pred: Tensor, target: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The prediction and the target, each row centred on its groups where the target is finite (zero
    elsewhere), and those groups: (p (B, G), t (B, G), ok (B, G) bool)."""
    ok = mask & torch.isfinite(target)
    n = ok.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
    t = torch.where(ok, target, torch.zeros_like(target))
    t = (t - t.sum(1, keepdim=True) / n) * ok  # (B, G)
    p = pred * ok
    p = (p - p.sum(1, keepdim=True) / n) * ok  # (B, G)
    return p, t, ok


def centred_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error between the prediction and the target, each centred on the groups where the
    target is finite (the level is not the plan's business)."""
    p, t, ok = _centred(pred, target, mask)
    return ((p - t) ** 2).sum() / ok.sum().clamp(min=1)


def normalised_mse(pred: Tensor, target: Tensor, mask: Tensor, floor: float = NORMALISED_FLOOR) -> Tensor:
    """Each row's (performance's) centred squared error (:func:`centred_mse`'s, its mean over the row's finite
    groups) over the variance of its centred target plus ``floor``, averaged over the rows with 3 or more finite
    groups: every performance weighs the same, a steady one as much as one with wide rubato, as in the
    per-performance beat tempo r; unlike one minus r it keeps the curve at the pianists' scale (a row's
    minimum is the prediction that equals its target). ``floor``: (log s per quarter)^2, a curve with a
    standard deviation under about 0.045 is not weighed up beyond that (docs/experiments.md section 46)."""
    p, t, ok = _centred(pred, target, mask)
    n = ok.sum(1).clamp(min=1)  # (B,)
    row = ((p - t) ** 2).sum(1) / n / ((t * t).sum(1) / n + floor)  # (B,)
    rows = ok.sum(1) >= 3
    return row[rows].mean() if bool(rows.any()) else pred.sum() * 0.0


LOSSES = {"mse": centred_mse, "normalised": normalised_mse}  # fit's loss names


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])
