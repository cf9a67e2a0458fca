"""The performance grammar: the exact sequence of token types a score's performance must have.

Per bar ``Bar``; per onset group ``Tempo``, ``Sus`` x3, ``Soft``; per score note ``Vel``, ``Time``, ``Art``.
It depends on the score tokens alone, so constrained decoding can allow, at every step, only the tokens
of the expected type, and end exactly after the last slot.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from . import vocab as V
from .encode import SOFT_SLOTS, SUS_SLOTS

score_vocabulary = V.score_vocabulary
perf_vocabulary = V.perf_vocabulary

GROUP_SLOTS = [V.TEMPO] + [V.SUS] * SUS_SLOTS + [V.SOFT] * SOFT_SLOTS
NOTE_SLOTS = [V.VEL, V.TIME, V.ART]
DELETION = V.tok(V.VEL, V.DELETED)  # "this score note was not played": forbidden at render time by default
ORDINAL_TYPES = (V.TEMPO, V.VEL, V.TIME, V.ART)  # types whose values lie on one scale (a mean exists)


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


def target_slots(score_tokens: Sequence[str]) -> List[str]:
    """Token type expected at each position of the performance stream (EOS excluded)."""
    slots: List[str] = []
    for t in score_tokens:
        type_ = token_type(t)
        if type_ == V.BAR:
            slots.append(V.BAR)
        elif type_ == V.POS:
            slots += GROUP_SLOTS
        elif type_ == V.PITCH:
            slots += NOTE_SLOTS
    return slots
