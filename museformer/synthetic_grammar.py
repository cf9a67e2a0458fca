"""A small synthetic performance grammar with the same interface as ``instruct_tokenizer.grammar``
(``target_slots``, ``token_type``), for tests and demos that run without the tokenizer:
``--grammar museformer.synthetic_grammar``.

Score: optional prefix tokens, then per bar ``Bar_None`` and one ``P_*`` token per note (other tokens
are ignored). Performance: per bar ``Bar_None`` and one ``V_*`` token per score note.
"""
from typing import List, Sequence

from .constants import BAR_TOKEN


def token_type(token: str) -> str:
    """The part before the first ``_`` (``Bar_None`` -> ``Bar``)."""
    return token.partition("_")[0]


def target_slots(score_tokens: Sequence[str]) -> List[str]:
    """Expected token type at each performance position (EOS excluded)."""
    slots: List[str] = []
    for t in score_tokens:
        if t == BAR_TOKEN:
            slots.append(token_type(BAR_TOKEN))
        elif token_type(t) == "P":
            slots.append("V")
    return slots
