"""The performance grammar: the exact sequence of token types a score's performance must have.

Per bar ``Bar``; per onset group ``Tempo``, ``Sus`` x3, ``Soft``; per score note ``Vel``, ``Time``, ``Art``.
The relative tempo encoding (``relative=True``, corpora built with ``--relative-tempo``) has one
``TempoLevel`` slot first, before the first ``Bar`` (every segment starts with it), and ``TempoRel``
where the absolute one has ``Tempo``. It depends on the score tokens alone, so constrained decoding can
allow, at every step, only the tokens of the expected type, and end exactly after the last slot.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import vocab as V
from .encode import SOFT_SLOTS, SUS_SLOTS, nominal_q
from .score import score_timeline

score_vocabulary = V.score_vocabulary
perf_vocabulary = V.perf_vocabulary

GROUP_SLOTS = [V.TEMPO] + [V.SUS] * SUS_SLOTS + [V.SOFT] * SOFT_SLOTS
REL_GROUP_SLOTS = [V.TEMPO_REL] + GROUP_SLOTS[1:]  # the relative tempo encoding's onset group
NOTE_SLOTS = [V.VEL, V.TIME, V.ART]
DELETION = V.tok(V.VEL, V.DELETED)  # "this score note was not played": forbidden at render time by default
# types whose values lie on one scale (a mean exists); TempoRel / TempoLevel values are log2 steps
ORDINAL_TYPES = (V.TEMPO, V.VEL, V.TIME, V.ART, V.TEMPO_REL, V.TEMPO_LEVEL)

def token_type(token: str) -> str:
    """The type of a token: the part before the first ``_`` (specials like ``</s>`` are their own type)."""
    return token.partition("_")[0]


def token_value(token: str) -> Optional[float]:
    """The numeric value of an ordinal token on its type's scale (``Tempo``: bin, log-spaced beat
    period; ``Vel``: bin; ``Time``: ms; ``Art``: log2 ratio), None for any other token (``Vel_Del``)."""
    try:
        type_, value = V.parse(token)
        return float(value) if type_ in ORDINAL_TYPES else None
    except ValueError:  # a special (``</s>``) or a value that is no number (``Vel_Del``)
        return None


def beat_period_s(token: str) -> Optional[float]:
    """A ``Tempo`` token's beat period (s per quarter), None for any other token."""
    try:
        type_, value = V.parse(token)
        return V.tempo_value(int(value)) if type_ == V.TEMPO else None
    except ValueError:  # a special (``</s>``)
        return None


# ----------------------------------------------------------------------------------------- relative tempo
def relative_tempo(counts: Mapping[str, int]) -> bool:
    """Whether a model's dictionary (token -> count, as in ``dict.txt``) was trained on the relative tempo
    encoding: any ``TempoRel`` token was seen. Every dictionary lists those tokens (at its end), so the
    count, not the presence, tells (as for the score features ``instruct-render`` detects)."""
    return any(n > 0 and token_type(t) == V.TEMPO_REL for t, n in counts.items())


def tempo_level_factor(token: str) -> Optional[float]:
    """A ``TempoLevel`` token's factor on the notated beat period (``2 ** (k / 24)``: 1.0 plays the notated
    tempo, 2.0 half as fast), None for any other token."""
    try:
        type_, value = V.parse(token)
        return V.tempo_level_factor(int(value)) if type_ == V.TEMPO_LEVEL else None
    except ValueError:
        return None


def tempo_ratio(token: str) -> Optional[float]:
    """A ``TempoRel`` token's beat period over notated period x level (``2 ** (j / 24)``), None for any
    other token."""
    try:
        type_, value = V.parse(token)
        return V.tempo_rel_ratio(int(value)) if type_ == V.TEMPO_REL else None
    except ValueError:
        return None


def relative_beat_period_s(token: str, scale: float, level: float) -> Optional[float]:
    """The beat period (s per quarter) of a ``TempoRel`` token at a slot whose notated-tempo scale is
    ``scale`` (``QPM`` / 120, as :func:`tempo_slot_gaps` gives it) in a performance whose ``TempoLevel``
    factor is ``level`` (:func:`tempo_level_factor`): ratio x (60 / QPM) x level, the period
    ``decode`` gives that group. None for any other token. Example: ``TempoRel_24`` (ratio 2) under
    ``QPM_60`` (scale 0.5) at level 1.0 -> 2 x 1.0 x 1.0 = 2.0 s per quarter."""
    ratio = tempo_ratio(token)
    return None if ratio is None else ratio * ((60.0 / V.DEFAULT_QPM) / scale * level)


def art_nominal_q(score_tokens: Sequence[str], relative: bool = False) -> List[float]:
    """Per performance slot (``target_slots`` order): for an ``Art`` slot, the notated duration (quarters;
    a grace note counts as 1/8) that its log2 ratio scales, so that the key-down time is
    2 ** art x nominal x beat period; NaN for every other slot."""
    nominal = [float(nominal_q(d)) for d in score_timeline(score_tokens).note_dur_q]
    return note_values_at(score_tokens, V.ART, nominal, float("nan"), relative)


def unison_repeats(score_tokens: Sequence[str], relative: bool = False) -> List[bool]:
    """Per performance slot (``target_slots`` order): True at the ``Vel`` slot of a note whose pitch
    another note of the same onset group also has (two voices in unison), for all of them but the
    longest (the first of equally long ones). A piano strikes that key once and holds it for the longer
    value, so ``--unisons-once`` (instruct-render's default) gives these slots the ``DELETION`` token.
    In every 10th line of the (n)ASAP training build, the second note of such a pair is unplayed in
    52 % of the 12,407 pairs and the first in 16 %; a rendering that plays both gives one of them a
    near-zero length."""
    tl = score_timeline(score_tokens)
    keys = list(zip(tl.note_group.tolist(), tl.note_pitch.tolist()))  # (onset group, pitch) per note
    longest: Dict[Tuple[int, int], int] = {}  # key -> note index of its longest note
    for i, key in enumerate(keys):
        if key not in longest or tl.note_dur_q[i] > tl.note_dur_q[longest[key]]:
            longest[key] = i
    return note_values_at(score_tokens, V.VEL, [longest[key] != i for i, key in enumerate(keys)], False, relative)


def tempo_slot_gaps(score_tokens: Sequence[str], relative: bool = False) -> Tuple[List[float], List[float]]:
    """Per performance slot (``target_slots`` order), for the tempo band (``--tempo-band``): at each ``Tempo``
    slot (``TempoRel`` with ``relative``; the ``TempoLevel`` slot gets NaN), the notated gap from the
    previous onset group to this one (quarters, at least one grid step as ``decode`` takes it; 0 for the
    first group, which has none) and the notated tempo in force in its bar relative to 120 quarters per
    minute (``QPM`` / 120; 1 when the score tokens carry no ``QPM``), so that a beat period times that
    scale is the period relative to the notated tempo; NaN at every other slot."""
    tl = score_timeline(score_tokens)
    bar_scale, scale = [], 1.0
    for t in score_tokens:
        type_ = token_type(t)
        if type_ == V.BAR:
            bar_scale.append(scale)
        elif type_ == V.QPM and bar_scale:
            scale = bar_scale[-1] = float(V.parse(t)[1]) / V.DEFAULT_QPM
    gaps = np.maximum(np.diff(tl.group_q), 1.0 / V.GRID).tolist()  # quarters, as decode's grid clamps them
    gaps = [0.0] + gaps if len(tl.group_q) else []  # the first group has no gap
    scales = [bar_scale[b] for b in tl.group_bar.tolist()]
    slots = target_slots(score_tokens, relative)
    tempo = _tempo_slot(relative)
    gap_it, scale_it = iter(gaps), iter(scales)
    nan = float("nan")
    out_gap = [next(gap_it) if s == tempo else nan for s in slots]
    out_scale = [next(scale_it) if s == tempo else nan for s in slots]
    return out_gap, out_scale


def fermata_slots(score_tokens: Sequence[str], relative: bool = False) -> List[bool]:
    """Per performance slot (``target_slots`` order): True at the ``Tempo`` slot of every onset group that
    holds a ``Mark_fermata`` note and of the group right after it, False elsewhere. The ``Tempo`` token of
    group g encodes the performed gap from group g - 1 to g (docs/tokens.md, No drift), so a held fermata
    lengthens the gap after it (the next group's token), and performers also slow into it (its own).
    A score without markings (score MIDI) has no such slot. Example::

        Pos_0 Pitch_60 Dur_24 Staff_1 Mark_fermata  Pos_24 Pitch_62 ...  Pos_48 Pitch_64 ...
     -> Tempo slots of the three groups: True, True, False
    """
    held: List[bool] = []  # per onset group: it holds a fermata
    for t in score_tokens:
        if token_type(t) == V.POS:
            held.append(False)
        elif t == V.FERMATA_MARK and held:
            held[-1] = True
    marked = [h or (g > 0 and held[g - 1]) for g, h in enumerate(held)]
    groups = iter(marked)
    tempo = _tempo_slot(relative)
    return [next(groups) if slot == tempo else False for slot in target_slots(score_tokens, relative)]


def states_tempo(score_tokens: Sequence[str]) -> bool:
    """Whether the score tokens carry a notated tempo other than the 120 quarters per minute that a
    score without one gets (``QPM``, docs/tokens.md): the tempo band's ``notated`` anchor uses it."""
    default = V.tok(V.QPM, int(V.DEFAULT_QPM))
    return any(t != default and token_type(t) == V.QPM for t in score_tokens)


def note_values_at(score_tokens: Sequence[str], slot_type: str, per_note: Sequence, fill,
                   relative: bool = False) -> list:
    """Per performance slot: at each ``slot_type`` slot its note's value (the n-th such slot belongs to
    the n-th score note), ``fill`` at every other slot."""
    notes = iter(per_note)
    return [next(notes) if slot == slot_type else fill for slot in target_slots(score_tokens, relative)]


def _tempo_slot(relative: bool) -> str:
    """The type of an onset group's tempo slot: ``TempoRel`` in the relative encoding, else ``Tempo``."""
    return V.TEMPO_REL if relative else V.TEMPO


def target_slots(score_tokens: Sequence[str], relative: bool = False) -> List[str]:
    """Token type expected at each position of the performance stream (EOS excluded). ``relative``: the
    relative tempo encoding (a model whose dictionary counts ``TempoRel``, :func:`relative_tempo`): one
    ``TempoLevel`` slot first, then ``TempoRel`` where the absolute encoding has ``Tempo``. Example::

        Bar_None QPM_120 Pos_0 Pitch_60 Dur_24 Staff_1
     -> Bar Tempo Sus Sus Sus Soft Vel Time Art                      (absolute)
     -> TempoLevel Bar TempoRel Sus Sus Sus Soft Vel Time Art        (relative)

    Every score token but the first expands on its own (``Bar`` 1 slot, ``Pos`` 5, ``Pitch`` 3); the
    ``TempoLevel`` slot belongs to the segment, not to a token, so a per-token slot count (the model's
    ``--align-source`` anchors) takes the absolute counts plus that one slot at the start."""
    slots: List[str] = [V.TEMPO_LEVEL] if relative else []
    group = REL_GROUP_SLOTS if relative else GROUP_SLOTS
    for t in score_tokens:
        type_ = token_type(t)
        if type_ == V.BAR:
            slots.append(V.BAR)
        elif type_ == V.POS:
            slots += group
        elif type_ == V.PITCH:
            slots += NOTE_SLOTS
    return slots
