"""The per-note plans: small networks that read a whole score and predict each note's velocity (the
velocity plan), its key-down time (the articulation plan, :class:`ArticulationPlan`: the same network and
calibration, with log2(key-down / notated length at the local tempo) as its target, what an ``Art`` token
states; the decoder is steered to it by ``--articulation-plan``) or its onset against its onset group's grid
(the timing plan, :class:`TimingPlan`: ms, what a ``Time`` token states; ``--timing-plan``).

The tempo plan's companion (``museformer.tempo_plan``; the same non-causal trunk over the score's onset
groups, about 500 groups of context either way), with a head per note: the group's context joined with
the note's own place (top or bottom of its chord, pitch, staff, duration, its articulation marks) and
the dynamics in force (the last dynamic, an open crescendo or diminuendo, a sforzando). Trained on the
(n)ASAP training performances to predict each played note's MIDI velocity. The decoder is steered to it
by ``--velocity-plan``: each note's velocity distribution times a Gaussian around the plan's velocity.
A squared-error fit shrinks its deviations towards the mean, so they are stretched back to the pianists'
spread (:func:`fit_spread`, on the training pieces), and its level over a piece is calibrated on pieces it
has not seen (:func:`fit_level`, on the validation pieces); a score without markings takes its own, wider
spread (``tempo_plan.spread_for``). The articulation plan is also calibrated per notated-length class
(:func:`fit_length_offsets`: the validation pieces, and the training pieces each read by a plan fitted
without it, ``scripts/fit_plan.py --cross-fit``) and asks for no key-down longer than the pianists' 99.9th
percentile (:func:`fit_max_key_down`, training pieces). A pure function of the score tokens, like the
tempo plan. Units: MIDI velocity (articulation: log2 ratio).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from instruct_tokenizer import vocab as V
from instruct_tokenizer.score import Timeline, bar_notated_period_s, score_timeline

from .tempo_plan import (N_FEATURES, PlanNet, TempoPlanError, group_features, pearson, read_timeline, spread_for,
                         stored_spread_plain, train_epochs)

_NOTE_MARKS = {V.tok(V.MARK, m): i for i, m in enumerate(("accent", "staccato", "staccatissimo", "tenuto",
                                                            "marcato", "fermata"))}
_SLURS = {V.tok(V.SLUR, "start"): 0, V.tok(V.SLUR, "end"): 1}
_WEDGES = {V.tok(V.WEDGE, "cresc"): 0, V.tok(V.WEDGE, "dim"): 1}
_ACCENT_DYNS = {V.tok(V.DYN, "sf"): 0, V.tok(V.DYN, "fp"): 1}

NOTE_FEATURE_NAMES = (
    "pitch", "top", "bottom", "rank", "chord_size", "staff", "log_dur", "grace",
    "accent", "staccato", "staccatissimo", "tenuto", "marcato", "fermata", "slur_start", "slur_end",
    "cresc_open", "dim_open", "sf", "fp",
)
N_NOTE_FEATURES = len(NOTE_FEATURE_NAMES)
# what the notated tempo makes of a note (the articulation plan's, fit_plan.py --tempo-note-features): the
# note's notated length in seconds at the score's notated tempo (log2; a grace note: a 24th of a quarter)
# and the notated tempo at its bar (log2 seconds per quarter). The base features state lengths in quarters
# only and the group features the notated tempo centred on the piece's, so a plan without these cannot
# tell an Adagio from a Presto (docs/experiments.md section 27)
TEMPO_NOTE_FEATURE_NAMES = ("log_notated_s", "log_period_s")
NOTE_FEATURE_SETS = (NOTE_FEATURE_NAMES, NOTE_FEATURE_NAMES + TEMPO_NOTE_FEATURE_NAMES)
VELOCITY_CENTRE, VELOCITY_SCALE = 64.0, 20.0  # the network's output unit: (velocity - 64) / 20
# the notated-length classes of the articulation plan's calibration (fit_length_offsets), upper edges in
# quarters: up to a sixteenth (and grace notes), an eighth, a quarter, a half, a whole note, longer
LENGTH_EDGES_Q = (0.3, 0.6, 1.1, 2.1, 4.1)
TIMING_CLIP_MS = 400.0  # the timing plan's targets and predictions lie within +- this (ms)


def note_features(tokens: Sequence[str], names: Sequence[str] = NOTE_FEATURE_NAMES) -> np.ndarray:
    """(N, len(names)) float32 features of the score's notes, in token order: ``names`` one of
    :data:`NOTE_FEATURE_SETS` (NOTE_FEATURE_NAMES, or those and TEMPO_NOTE_FEATURE_NAMES). Raises
    TempoPlanError for a score with no notes or an unknown feature set."""
    if tuple(names) not in NOTE_FEATURE_SETS:
        raise TempoPlanError(f"unknown note features {list(names)[N_NOTE_FEATURES:] or list(names)}")
    tl = read_timeline(tokens)
    n = tl.n_notes
    g, pitch = tl.note_group, tl.note_pitch.astype(float)
    hi = np.full(tl.n_groups, -1.0)
    lo = np.full(tl.n_groups, 200.0)
    np.maximum.at(hi, g, pitch)
    np.minimum.at(lo, g, pitch)
    size = np.bincount(g, minlength=tl.n_groups).astype(float)
    span = np.maximum(hi - lo, 1.0)
    marks = np.zeros((n, len(_NOTE_MARKS) + len(_SLURS)))
    state = np.zeros((tl.n_groups, len(_WEDGES) + len(_ACCENT_DYNS)))
    note, group, wedge = -1, -1, None
    for t in tokens:
        if t.startswith(V.PITCH + "_"):
            note += 1
        elif t.startswith(V.POS + "_"):
            group += 1
            if wedge is not None:
                state[group, wedge] = 1.0
        elif t in _NOTE_MARKS and note >= 0:
            marks[note, _NOTE_MARKS[t]] = 1.0
        elif t in _SLURS and note >= 0:
            marks[note, len(_NOTE_MARKS) + _SLURS[t]] = 1.0
        elif group < 0:
            continue
        elif t in _WEDGES:
            wedge = _WEDGES[t]
            state[group, wedge] = 1.0
        elif t == V.tok(V.WEDGE, "end") or (t.startswith(V.DYN + "_") and t not in _ACCENT_DYNS):
            wedge = None
        if t in _ACCENT_DYNS and group >= 0:
            state[group, len(_WEDGES) + _ACCENT_DYNS[t]] = 1.0
    cols = [(pitch - 64.0) / 24.0, (pitch == hi[g]).astype(float), (pitch == lo[g]).astype(float),
            (pitch - lo[g]) / span[g], np.log2(size[g]), (tl.note_staff == 2).astype(float),
            np.log2(np.clip(tl.note_dur_q, 1 / 24, 16)), (tl.note_dur_q == 0).astype(float)]
    parts = [np.stack(cols, axis=1), marks, state[g]]
    if len(names) > N_NOTE_FEATURES:
        parts.append(tempo_note_features(tokens, tl))
    out = np.concatenate(parts, axis=1).astype(np.float32)  # (N, Fn)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def tempo_note_features(tokens: Sequence[str], tl: Timeline) -> np.ndarray:
    """(N, len(TEMPO_NOTE_FEATURE_NAMES)): each note's notated length in log2 seconds at the score's notated
    tempo (a grace note, notated 0, as a 24th of a quarter) and that tempo at its bar in log2 seconds per
    quarter (``score.bar_notated_period_s``; ``tl``: the tokens' ``score_timeline``)."""
    bar_period_s = bar_notated_period_s(tokens)  # (n_bars,) s per quarter
    period_s = bar_period_s[np.minimum(tl.group_bar[tl.note_group], len(bar_period_s) - 1)]  # (N,)
    notated_s = np.maximum(tl.note_dur_q, 1.0 / 24) * period_s  # (N,)
    return np.stack([np.log2(notated_s), np.log2(period_s)], axis=1)


class VelocityNet(nn.Module):
    """The tempo plan's trunk over the onset groups, then per note its group's context joined with the
    note's features: (B, F, G) group features, (B, Fn, N) note features, (B, N) each note's group ->
    (B, N) velocity in (v - 64) / 20 units."""

    def __init__(self, n_features: int = N_FEATURES, n_note_features: int = N_NOTE_FEATURES, channels: int = 48,
                 levels: int = 8, dropout: float = 0.1):
        super().__init__()
        self.config = {"n_features": n_features, "n_note_features": n_note_features, "channels": channels,
                       "levels": levels, "dropout": dropout}
        self.trunk = PlanNet(n_features, channels, levels, dropout)
        self.head = nn.Sequential(nn.Conv1d(channels + n_note_features, channels, 1), nn.GELU(),
                                  nn.Conv1d(channels, 1, 1))

    def forward(self, features: Tensor, mask: Tensor, notes: Tensor, note_group: Tensor) -> Tensor:
        h = self.trunk.context(features, mask)  # (B, C, G)
        index = note_group.unsqueeze(1).expand(-1, h.shape[1], -1)  # (B, C, N)
        x = torch.cat([h.gather(2, index), notes], dim=1)  # (B, C + Fn, N)
        return self.head(x).squeeze(1)  # (B, N)


@dataclass
class VelocityPlan:
    """A fitted velocity plan with its feature scaling: ``predict(tokens)`` gives (N,) MIDI velocities,
    per score note in token order. The per-note plans share it: a subclass sets what is predicted
    (:class:`ArticulationPlan`)."""

    TARGET: ClassVar[str] = "velocity"  # the per-note target a fit reads from each piece (MIDI velocity)
    CENTRE: ClassVar[float] = VELOCITY_CENTRE  # the network's output unit: (target - CENTRE) / SCALE
    SCALE: ClassVar[float] = VELOCITY_SCALE
    LOW: ClassVar[float] = 1.0  # the target's range
    HIGH: ClassVar[float] = 127.0
    STORED_FLOATS: ClassVar[Tuple[str, ...]] = ()  # a subclass's own calibration fields the release file stores (0.0 if absent)

    net: VelocityNet
    group_mean: np.ndarray
    group_std: np.ndarray
    note_mean: np.ndarray
    note_std: np.ndarray
    spread: float = 1.0  # deviations from the piece's mean are scaled by this (see fit_spread)
    spread_plain: Optional[float] = None  # ... from a score without markings (tempo_plan.spread_for); None: spread
    level: Tuple[float, float] = (0.0, 1.0)  # the piece's level: a + b x the network's mean (see fit_level)
    # added per notated-length class (LENGTH_EDGES_Q), the target's unit; () none (see fit_length_offsets)
    length_offsets: Tuple[float, ...] = ()
    # ... for a score without markings (a score MIDI's), fitted on the validation pieces as such a file gives
    # them (fit_plan.py --plain-offsets); () the marked scores' length_offsets
    length_offsets_plain: Tuple[float, ...] = ()
    # the note features the network reads (one of NOTE_FEATURE_SETS)
    note_feature_names: Tuple[str, ...] = NOTE_FEATURE_NAMES

    def predict(self, tokens: Sequence[str]) -> np.ndarray:
        """(N,) the target per score note (MIDI velocity; articulation: log2 ratio)."""
        spread = spread_for(self, tokens)
        return self.predict_features(group_features(tokens), note_features(tokens, self.note_feature_names),
                                     score_timeline(tokens).note_group, spread=spread,
                                     length_offsets=self.offsets_for(tokens))

    def offsets_for(self, tokens: Sequence[str]) -> Optional[Tuple[float, ...]]:
        """The offsets per notated-length class for these score tokens: ``length_offsets_plain`` for a score
        without any marking where the plan has them, else None (its ``length_offsets``)."""
        from instruct_tokenizer.score import has_markings

        return self.length_offsets_plain if self.length_offsets_plain and not has_markings(tokens) else None

    def predict_features(self, groups: np.ndarray, notes: np.ndarray, note_group: np.ndarray,
                         spread: Optional[float] = None, level: Optional[Tuple[float, float]] = None,
                         length_offsets: Optional[Sequence[float]] = None) -> np.ndarray:
        """(N,) the target per note (MIDI velocity): the network's prediction, its deviations from the piece's mean
        scaled by ``spread`` (default: the plan's own, see :func:`fit_spread`), around the level ``a + b x``
        its mean (``level`` (a, b); default: the plan's own, see :func:`fit_level`), plus the offset of each
        note's notated-length class (``length_offsets``; default: the plan's own, see
        :func:`fit_length_offsets`; () none)."""
        x, m, xn, ng = _tensors([(groups, notes, note_group)], self)
        with torch.no_grad():
            self.net.eval()
            y = self.net(x, m, xn, ng)[0].numpy().astype(np.float64) * self.SCALE + self.CENTRE  # (N,)
        k = self.spread if spread is None else spread
        a, b = self.level if level is None else level
        offsets = self.length_offsets if length_offsets is None else length_offsets
        value = a + b * y.mean() + k * (y - y.mean())
        if len(offsets):
            value = value + np.asarray(offsets, np.float64)[length_class(notes)]
        return value.clip(self.LOW, self.HIGH)

    def calibrate(self, train: List[dict], valid: List[dict], spread: Optional[float] = None) -> None:
        """Set the calibration in order: the spread (:func:`fit_spread` on ``train``, or ``spread``), then the
        level (:func:`fit_level` on ``valid``, pieces the network was not fitted on)."""
        self.spread = fit_spread(self, train) if spread is None else float(spread)
        self.level = fit_level(self, valid)

    def state(self) -> dict:
        """What the release file stores: plain tensors, lists and numbers only (weights_only loadable)."""
        f32 = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
        from .tempo_plan import FEATURE_NAMES

        return {"config": dict(self.net.config), "feature_names": list(FEATURE_NAMES),
                "note_feature_names": list(self.note_feature_names), "group_mean": f32(self.group_mean),
                "group_std": f32(self.group_std), "note_mean": f32(self.note_mean), "note_std": f32(self.note_std),
                "spread": float(self.spread), "spread_plain": float(self.spread_plain or 0.0),
                "level": [float(x) for x in self.level],
                "length_offsets": [float(x) for x in self.length_offsets],
                "length_offsets_plain": [float(x) for x in self.length_offsets_plain],
                "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                **{name: float(getattr(self, name)) for name in self.STORED_FLOATS}}

    @classmethod
    def from_state(cls, state: dict) -> "VelocityPlan":
        from .tempo_plan import FEATURE_NAMES

        note_names = tuple(state.get("note_feature_names", ()))
        if list(state.get("feature_names", [])) != list(FEATURE_NAMES) or note_names not in NOTE_FEATURE_SETS:
            raise TempoPlanError(f"the {cls.TARGET} plan was fitted on other features than this version computes")
        if int(state["config"].get("n_note_features", N_NOTE_FEATURES)) != len(note_names):
            raise TempoPlanError(f"the {cls.TARGET} plan's network reads {state['config'].get('n_note_features')} "
                                 f"note features, its file names {len(note_names)}")
        net = VelocityNet(**state["config"])
        net.load_state_dict({k: v.float() for k, v in state["weights"].items()})
        net.eval()
        return cls(net, *(state[k].float().numpy() for k in ("group_mean", "group_std", "note_mean", "note_std")),
                   spread=float(state.get("spread", 1.0)), spread_plain=stored_spread_plain(state),
                   level=tuple(float(x) for x in state.get("level", (0.0, 1.0))),
                   length_offsets=tuple(float(x) for x in state.get("length_offsets", ())),
                   length_offsets_plain=tuple(float(x) for x in state.get("length_offsets_plain", ())),
                   note_feature_names=note_names,
                   **{name: float(state.get(name, 0.0)) for name in cls.STORED_FLOATS})


@dataclass
class ArticulationPlan(VelocityPlan):
    """The articulation plan: the same network and calibration, predicting each note's key-down time as
    the ``Art`` token states it, log2(played / notated at the local tempo) (``instruct_tokenizer.vocab``).
    From a score (:meth:`predict`) no note is planned longer than ``max_key_down_s`` at the notated tempo
    (times the tempo plan's curve where the renderer has one)."""

    TARGET: ClassVar[str] = "articulation"
    CENTRE: ClassVar[float] = -0.8  # about the training performances' mean log2 ratio
    SCALE: ClassVar[float] = 1.0
    LOW: ClassVar[float] = V.ART_MIN
    HIGH: ClassVar[float] = V.ART_MAX
    STORED_FLOATS: ClassVar[Tuple[str, ...]] = ("max_key_down_s",)

    # the longest key-down (seconds) the plan asks for, at the local tempo (bounded); 0: no bound (fit_max_key_down)
    max_key_down_s: float = 0.0

    def predict(self, tokens: Sequence[str], group_log_factor: Optional[np.ndarray] = None) -> np.ndarray:
        """(N,) log2 ratio per score note, no note's key-down over ``max_key_down_s`` at the notated tempo
        times e^``group_log_factor`` (G,) per onset group (the tempo plan's curve; None: the notated tempo)."""
        return self.bounded(super().predict(tokens), tokens, group_log_factor)

    def bounded(self, values: np.ndarray, tokens: Sequence[str],
                group_log_factor: Optional[np.ndarray] = None) -> np.ndarray:
        """``values`` (N,) log2 ratios, each at most log2(max_key_down_s / the note's notated length in
        seconds at the score's notated tempo, times e^``group_log_factor`` of its onset group where given)
        (never under LOW; grace notes, notated 0, unbounded)."""
        if not self.max_key_down_s > 0:
            return values
        tl = score_timeline(tokens)
        period_s = bar_notated_period_s(tokens)[tl.group_bar]  # (G,) s per quarter
        if group_log_factor is not None:
            period_s = period_s * np.exp(np.asarray(group_log_factor, np.float64))
        notated_s = tl.note_dur_q * period_s[tl.note_group]  # (N,)
        with np.errstate(divide="ignore"):
            ceiling = np.log2(self.max_key_down_s / notated_s)  # +inf for a grace note
        return np.minimum(values, np.maximum(ceiling, self.LOW))

    def calibrate(self, train: List[dict], valid: List[dict], spread: Optional[float] = None) -> None:
        """The velocity plan's calibration, then the offsets per notated-length class
        (:func:`fit_length_offsets`, ``valid``) and the key-down bound (:func:`fit_max_key_down`, ``train``)."""
        super().calibrate(train, valid, spread)
        self.length_offsets = fit_length_offsets(self, valid)
        self.max_key_down_s = fit_max_key_down(train)


@dataclass
class TimingPlan(VelocityPlan):
    """The timing plan: the same network, predicting each note's onset against its onset group's grid in
    milliseconds, as the ``Time`` token states it (``instruct_tokenizer.encode``: the grid runs through the
    mean onset of the group's non-grace notes). What pianists agree on there: grace notes before the beat,
    a chord's top note a little ahead, wide chords rolled from the bass; on the (n)ASAP test split one
    pianist's timing follows another's with r 0.50 (the released network's sampled ``Time`` tokens: 0.01).
    Trained on targets clipped to :data:`TIMING_CLIP_MS` (a fermata's or an alignment outlier's seconds
    would dominate a squared error); not stretched (``spread`` 1: the decoder's own sampling adds the
    spread). From a score (:meth:`predict`) it plans only the notes it puts at least ``min_ms`` off the grid
    (grace notes, rolled chords): planning every note sets a chord's notes together, closer than pianists play
    them (docs/experiments.md section 44)."""

    TARGET: ClassVar[str] = "timing"
    CENTRE: ClassVar[float] = 0.0
    SCALE: ClassVar[float] = 50.0  # ms: the network's output unit
    LOW: ClassVar[float] = -TIMING_CLIP_MS
    HIGH: ClassVar[float] = TIMING_CLIP_MS
    STORED_FLOATS: ClassVar[Tuple[str, ...]] = ("min_ms",)

    # planned only where the plan's onset is at least this far from the grid (ms; 0: every note); elsewhere NaN
    min_ms: float = 0.0

    def predict(self, tokens: Sequence[str]) -> np.ndarray:
        """(N,) ms against the onset group's grid per score note; NaN (no plan) where under ``min_ms``."""
        values = super().predict(tokens)
        return np.where(np.abs(values) >= self.min_ms, values, np.nan)

    def calibrate(self, train: List[dict], valid: List[dict], spread: Optional[float] = None) -> None:
        """Spread 1 unless ``spread`` is given (see the class docstring), then the level (:func:`fit_level`)."""
        super().calibrate(train, valid, 1.0 if spread is None else spread)


def length_class(notes: np.ndarray) -> np.ndarray:
    """(N,) int: each note's notated-length class (0 .. len(LENGTH_EDGES_Q)), from the ``log_dur`` column of
    :func:`note_features` (log2 quarters; a grace note falls in the shortest class)."""
    log_dur = notes[:, NOTE_FEATURE_NAMES.index("log_dur")]
    return np.searchsorted(np.log2(LENGTH_EDGES_Q), log_dur, side="left")


def fit_length_offsets(plan: VelocityPlan, pieces: List[dict], min_notes: int = 100,
                       out_of_fold: Sequence[Tuple[VelocityPlan, List[dict]]] = (),
                       spread: Optional[float] = None) -> Tuple[float, ...]:
    """Per notated-length class (:data:`LENGTH_EDGES_Q`), the mean of (pianist - plan) over the notes of
    ``pieces`` the network was not fitted on (the validation performances), with the plan's spread and
    level and no offsets; 0 for a class with under ``min_notes`` notes. ``out_of_fold``: more
    (plan, pieces) pairs pooled in, each plan fitted without its pieces (``scripts/fit_plan.py
    --cross-fit``: the training pieces, fold by fold). The stretch (:func:`fit_spread`)
    scales the plan's dependence on the notated length with the rest, and the network already leans
    short on long notes on unseen pieces: on the validation pieces the stretched articulation plan held
    notes of a quarter to a whole note 0.3-0.4 log2 shorter than the pianists, those of a sixteenth
    0.1 longer (docs/experiments.md section 21). The per-note r hardly moves. ``spread``: the plans'
    spread for these pieces (default: each plan's own; a score without markings: its ``spread_plain``)."""
    total = np.zeros(len(LENGTH_EDGES_Q) + 1)
    count = np.zeros(len(LENGTH_EDGES_Q) + 1)
    for source, source_pieces in [(plan, pieces), *out_of_fold]:
        for p in source_pieces:
            pred = source.predict_features(p["features"], p["notes"], p["note_group"], spread=spread,
                                           length_offsets=())
            ok = np.isfinite(p[plan.TARGET])
            cls = length_class(p["notes"])[ok]
            np.add.at(total, cls, (p[plan.TARGET] - pred)[ok])
            np.add.at(count, cls, 1.0)
    return tuple(float(t / c) if c >= min_notes else 0.0 for t, c in zip(total, count))


def fit_max_key_down(pieces: List[dict], quantile: float = 0.999) -> float:
    """The ``quantile`` of the pianists' key-down times (seconds) over the notes of ``pieces`` (each's
    ``key_down_s``: (N,), NaN for a note not played); 0 (no bound) when there are none. The stretched plan's
    tail, in log2 of the notated length, means minutes on a long note at a slow tempo (a 9-quarter note
    planned 150 s on a validation piece, docs/experiments.md section 21); no pianist's 0.1 % reaches that."""
    held = np.concatenate([p["key_down_s"][np.isfinite(p["key_down_s"])] for p in pieces if "key_down_s" in p]
                          or [np.zeros(0)])
    return float(np.quantile(held, quantile)) if len(held) else 0.0


def fit_spread(plan: VelocityPlan, pieces: List[dict]) -> float:
    """The median over ``pieces`` of the human velocities' standard deviation over the plan's (spread 1).
    A squared-error fit shrinks the deviations it cannot tell apart towards the mean (its predictions
    vary about 0.6 as much as the pianists'); a Gaussian prior centred on them would narrow the rendered
    velocities as much, so the plan is stretched back to the human spread (its r is unchanged)."""
    ratios = []
    for p in pieces:
        pred = plan.predict_features(p["features"], p["notes"], p["note_group"], spread=1.0, length_offsets=())
        human = p[plan.TARGET][np.isfinite(p[plan.TARGET])]
        if len(human) > 1 and np.std(pred) > 0:
            ratios.append(float(np.std(human) / np.std(pred)))
    return float(np.median(ratios)) if ratios else 1.0


def fit_level(plan: VelocityPlan, pieces: List[dict]) -> Tuple[float, float]:
    """(a, b): the least-squares line from the network's mean velocity over a piece to the pianist's
    mean velocity (MIDI), over ``pieces`` the network was not fitted on (the validation performances), its
    slope kept in [0, 1]. On
    pieces it has not seen, the network's level tells the pianist's less than its shape tells theirs
    (it learns the training pieces' levels): the line shrinks it towards what it does tell (b < 1) and
    removes its bias (docs/experiments.md section 19). The per-note r does not change."""
    xs, ys = [], []
    for p in pieces:
        pred = plan.predict_features(p["features"], p["notes"], p["note_group"], spread=1.0, level=(0.0, 1.0),
                                     length_offsets=())
        ok = np.isfinite(p[plan.TARGET])
        if ok.sum() > 1:
            xs.append(float(pred.mean()))
            ys.append(float(p[plan.TARGET][ok].mean()))
    if len(xs) < 3:
        return (0.0, 1.0)
    x, y = np.asarray(xs), np.asarray(ys)
    b = float(np.clip(np.cov(x, y, bias=True)[0, 1] / max(float(x.var()), 1e-9), 0.0, 1.0))  # never amplified
    return (float(y.mean() - b * x.mean()), b)


def _tensors(items, scale):
    """[(group features (G, F), note features (N, Fn), note_group (N,))] -> padded (B, F, G), (B, G) mask,
    (B, Fn, N), (B, N) group index (0 on padding)."""
    g = max(len(a) for a, _, _ in items)
    n = max(len(b) for _, b, _ in items)
    x = torch.zeros(len(items), items[0][0].shape[1], g)  # (B, F, G)
    m = torch.zeros(len(items), g, dtype=torch.bool)
    xn = torch.zeros(len(items), items[0][1].shape[1], n)  # (B, Fn, N)
    ng = torch.zeros(len(items), n, dtype=torch.long)
    for i, (a, b, c) in enumerate(items):
        x[i, :, : len(a)] = torch.from_numpy(((a - scale.group_mean) / scale.group_std).T.astype(np.float32))
        m[i, : len(a)] = True
        xn[i, :, : len(b)] = torch.from_numpy(((b - scale.note_mean) / scale.note_std).T.astype(np.float32))
        ng[i, : len(c)] = torch.from_numpy(np.asarray(c, np.int64))
    return x, m, xn, ng


def fit_velocity(pieces: List[dict], valid: List[dict], **kw) -> VelocityPlan:
    """:func:`fit_note_plan` of a :class:`VelocityPlan` (each piece's ``velocity``: (N,) MIDI, NaN for a
    note not played)."""
    return fit_note_plan(VelocityPlan, pieces, valid, **kw)


def fit_articulation(pieces: List[dict], valid: List[dict], **kw) -> ArticulationPlan:
    """:func:`fit_note_plan` of an :class:`ArticulationPlan` (each piece's ``articulation``: (N,) log2
    ratio, NaN for a note not played)."""
    return fit_note_plan(ArticulationPlan, pieces, valid, **kw)


def fit_timing(pieces: List[dict], valid: List[dict], **kw) -> TimingPlan:
    """:func:`fit_note_plan` of a :class:`TimingPlan` (each piece's ``timing``: (N,) ms against the group's
    grid, within +- TIMING_CLIP_MS, NaN for a note not played)."""
    return fit_note_plan(TimingPlan, pieces, valid, **kw)


def fit_note_plan(kind: type, pieces: List[dict], valid: List[dict], epochs: int = 12, lr: float = 2e-3,
                  seed: int = 0, batch: int = 16, progress=None,
                  note_feature_names: Sequence[str] = NOTE_FEATURE_NAMES, **net_kw) -> VelocityPlan:
    """Fit a per-note plan of class ``kind`` on ``pieces`` (each {"features": (G, F), "notes": (N, Fn),
    "note_group": (N,), kind.TARGET: (N,), NaN for a note not played}); AdamW with a cosine decay, batches
    of similar length, squared error; keep the epoch with the best mean per-piece correlation on
    ``valid``; then its calibration (:meth:`VelocityPlan.calibrate`). ``note_feature_names``: what the
    pieces' ``notes`` columns are (one of :data:`NOTE_FEATURE_SETS`)."""
    if tuple(note_feature_names) not in NOTE_FEATURE_SETS:
        raise TempoPlanError(f"unknown note features {list(note_feature_names)}")
    torch.manual_seed(seed)
    gx = np.concatenate([p["features"] for p in pieces])
    nx = np.concatenate([p["notes"] for p in pieces])
    if nx.shape[1] != len(note_feature_names):
        raise TempoPlanError(f"the pieces have {nx.shape[1]} note features, {len(note_feature_names)} named")
    net = VelocityNet(n_note_features=len(note_feature_names), **net_kw)
    plan = kind(net, gx.mean(0), gx.std(0) + 1e-3, nx.mean(0), nx.std(0) + 1e-3,
                note_feature_names=tuple(note_feature_names))
    key = kind.TARGET

    def batch_loss(chunk: List[dict]) -> Tensor:
        x, m, xn, ng = _tensors([(p["features"], p["notes"], p["note_group"]) for p in chunk], plan)
        y = torch.full(ng.shape, float("nan"))  # (B, N)
        for i, p in enumerate(chunk):
            y[i, : len(p[key])] = torch.from_numpy((p[key] - kind.CENTRE) / kind.SCALE)
        ok = torch.isfinite(y)
        return ((net(x, m, xn, ng) - y.nan_to_num(0.0)) ** 2 * ok).sum() / ok.sum().clamp(min=1)

    def validate() -> float:
        rs = [pearson(plan.predict_features(p["features"], p["notes"], p["note_group"], spread=1.0), p[key])
              for p in valid]
        return float(np.nanmean(rs))

    train_epochs(net, pieces, [len(p[key]) for p in pieces], batch_loss, validate, epochs, lr, seed, batch,
                 progress)
    plan.calibrate(pieces, valid)
    return plan
