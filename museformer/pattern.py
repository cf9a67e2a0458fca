"""The fine- and coarse-grained (FC) attention pattern: a pure function of bar indices.

Every attention layer sees a sequence of *content* positions (tokens) followed by *summary* positions
(``S`` per bar; learned embeddings, not vocabulary tokens). A position is described by its bar index,
whether it is a summary, and (for causality) its order. The rules, with ``d = bar(q) - bar(k)``:

Decoder self-attention (causal), fine bars F = {0, 1, 2, 4, 8, ...}:
    content -> content   k <= q (position) and d in F
    content -> summary   d > 0 and d not in F      (coarse: summaries of the other *earlier* bars)
    summary -> content   d == 0                    (a summary reads its own bar)
    summary -> summary   itself only
Encoder self-attention (bidirectional), window W:
    content -> content   |d| <= W;   content -> summary  |d| > W;   summary -> content  d == 0;
    summary -> summary   itself only
Cross-attention (decoder query, encoder key), window C:
    any -> encoder content  |d| <= C;   any -> encoder summary  always (coarse view of the whole score)

Example, decoder, F = {0, 1}, one summary per bar, bars of content ``aab c`` (bar 0: a a, bar 1: b,
bar 2: c) then summaries s0 s1 s2 (rows: queries, columns: keys, x = attends)::

            a a b c s0 s1 s2
        a   x . . . .  .  .
        a   x x . . .  .  .
        b   x x x . .  .  .
        c   . . x x x  .  .      <- bar 0 is 2 bars back: not fine, so its summary s0
        s0  x x . . x  .  .
        s1  . . x . .  x  .
        s2  . . . x .  .  x

A bar's summary becomes visible only to later bars (d > 0), i.e. once that bar is complete, so no
summary leaks into its own bar or an earlier one. Padding keys are masked by the caller.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _member(d: Tensor, values: Sequence[int]) -> Tensor:
    """Elementwise ``d in values`` (an OR of comparisons: works under vmap / FlexAttention mask_mods)."""
    out = d == int(values[0]) if len(values) else torch.zeros_like(d, dtype=torch.bool)
    for v in list(values)[1:]:
        out = out | (d == int(v))
    return out


# ---- pointwise rules: arguments broadcast against each other (tensors of any shape, even 0-d) ----

def decoder_rule(qb: Tensor, qs: Tensor, qp: Tensor, kb: Tensor, ks: Tensor, kp: Tensor,
                 fine_bars: Sequence[int]) -> Tensor:
    """True where a decoder query (bar qb, is-summary qs, order qp) may attend a key (kb, ks, kp)."""
    d = qb - kb
    is_fine = _member(d, fine_bars)
    con2con = ~qs & ~ks & (kp <= qp) & is_fine
    con2sum = ~qs & ks & (d > 0) & ~is_fine
    sum2con = qs & ~ks & (d == 0)
    sum2sum = qs & ks & (qp == kp)
    return con2con | con2sum | sum2con | sum2sum


def encoder_rule(qb: Tensor, qs: Tensor, qp: Tensor, kb: Tensor, ks: Tensor, kp: Tensor, window: int) -> Tensor:
    """True where an encoder query may attend a key (bidirectional, fine window of ``window`` bars)."""
    d = (qb - kb).abs()
    con2con = ~qs & ~ks & (d <= window)
    con2sum = ~qs & ks & (d > window)
    sum2con = qs & ~ks & (d == 0)
    sum2sum = qs & ks & (qp == kp)
    return con2con | con2sum | sum2con | sum2sum


def cross_rule(qb: Tensor, kb: Tensor, ks: Tensor, window: int) -> Tensor:
    """True where a decoder query of bar qb may attend an encoder key (bar kb, is-summary ks)."""
    return (~ks & ((qb - kb).abs() <= window)) | ks


# ---- masks: (..., Lq) queries x (..., Lk) keys -> (..., Lq, Lk) ----

def decoder_mask(q_bar: Tensor, q_sum: Tensor, q_pos: Tensor, k_bar: Tensor, k_sum: Tensor, k_pos: Tensor,
                 fine_bars: Sequence[int]) -> Tensor:
    """Boolean mask (..., Lq, Lk), True = attend. Inputs (..., L): bar index, is-summary, order index.

    ``pos`` orders content positions for causality; a summary query must carry a pos unique to it
    (e.g. its index in the sequence) so that ``q_pos == k_pos`` identifies itself.
    """
    q = [x.unsqueeze(-1) for x in (q_bar, q_sum, q_pos)]  # (..., Lq, 1)
    k = [x.unsqueeze(-2) for x in (k_bar, k_sum, k_pos)]  # (..., 1, Lk)
    return decoder_rule(*q, *k, fine_bars)


def encoder_mask(q_bar: Tensor, q_sum: Tensor, q_pos: Tensor, k_bar: Tensor, k_sum: Tensor, k_pos: Tensor,
                 window: int) -> Tensor:
    """Boolean mask (..., Lq, Lk) of bidirectional FC-attention with a fine window of ``window`` bars."""
    q = [x.unsqueeze(-1) for x in (q_bar, q_sum, q_pos)]  # (..., Lq, 1)
    k = [x.unsqueeze(-2) for x in (k_bar, k_sum, k_pos)]  # (..., 1, Lk)
    return encoder_rule(*q, *k, window)


def cross_mask(q_bar: Tensor, k_bar: Tensor, k_sum: Tensor, window: int) -> Tensor:
    """Boolean mask (..., Lq, Lk): decoder bar b reads encoder content of bars b-C..b+C, and every
    encoder summary."""
    return cross_rule(q_bar.unsqueeze(-1), k_bar.unsqueeze(-2), k_sum.unsqueeze(-2), window)
