"""Positions, bars and embeddings of a bar-structured stream, and its attention layout.

Bar index of a token = number of ``Bar_None`` tokens up to and including it (prefix tokens and the
decoder's start token are bar 0). Embeddings: token (scaled) + sinusoidal position + bar + position in bar.
Every layer sees the content tokens followed by ``S`` summary positions per bar (learned embeddings).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import pattern
from .barplan import build_bar_plan

MAX_IN_BAR = 512


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer positions (...,) -> (..., dim)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32)
                     * (-math.log(10000.0) / max(half - 1, 1)))
    ang = positions.float().unsqueeze(-1) * freq  # (..., half)
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def bar_indices(tokens: Tensor, bar_idx: int) -> Tensor:
    """(B, T) token ids -> (B, T) bar index: count of bar tokens up to and including each position."""
    return tokens.eq(bar_idx).long().cumsum(dim=1)


def in_bar_index(tokens: Tensor, bar_idx: int, valid: Tensor) -> Tensor:
    """(B, T) -> offset of each token from the start of its bar (the bar token is 0)."""
    t = tokens.shape[1]
    ar = torch.arange(t, device=tokens.device).expand_as(tokens)
    start = torch.where(tokens.eq(bar_idx) | ~valid, ar, torch.full_like(ar, -1)).cummax(dim=1).values
    return (ar - start).clamp(0, MAX_IN_BAR - 1)


class Layout:
    """Per-position metadata of one stream laid out as [content (T); summaries (NB * S)]."""

    def __init__(self, bar: Tensor, valid: Tensor, n_summary: int):
        b, t = bar.shape
        nb = int(bar.max().item()) + 1 if bar.numel() else 1
        self.t, self.nb, self.s = t, nb, n_summary
        sum_bar = torch.arange(nb, device=bar.device).repeat_interleave(n_summary).expand(b, -1)
        last_bar = torch.where(valid, bar, torch.zeros_like(bar)).max(dim=1).values  # (B,)
        sum_valid = sum_bar <= last_bar.unsqueeze(1)
        self.bar = torch.cat([bar, sum_bar], dim=1)  # (B, L)
        self.is_sum = torch.cat([torch.zeros_like(valid), torch.ones_like(sum_valid)], dim=1)
        self.valid = torch.cat([valid, sum_valid], dim=1)
        self.pos = torch.arange(t + nb * n_summary, device=bar.device).expand(b, -1)
        self.sum_bar = sum_bar

    def select(self, order: Tensor) -> "Layout":
        new = Layout.__new__(Layout)
        new.t, new.nb, new.s = self.t, self.nb, self.s
        for name in ("bar", "is_sum", "valid", "pos", "sum_bar"):
            setattr(new, name, getattr(self, name).index_select(0, order))
        return new


def self_mask(layout: Layout, kind: str, args) -> Tensor:
    """Dense boolean mask (B, L, L) of a stream's self-attention, padding applied."""
    lb, ls, lp = layout.bar, layout.is_sum, layout.pos
    if kind == "decoder":
        m = pattern.decoder_mask(lb, ls, lp, lb, ls, lp, args.fine_bars_list)
    else:
        m = pattern.encoder_mask(lb, ls, lp, lb, ls, lp, args.encoder_fine_window)
    eye = lp.unsqueeze(-1) == lp.unsqueeze(-2)
    return (m & layout.valid.unsqueeze(1)) | eye


def cross_mask(q: Layout, k: Layout, args) -> Tensor:
    m = pattern.cross_mask(q.bar, k.bar, k.is_sum, args.cross_window)
    return m & k.valid.unsqueeze(1)


def make_plan(layout: Layout, kind: str, args, enc_layout: Optional[Layout] = None):
    """What the chosen backend needs for one attention kind ("encoder", "decoder", "cross"): a dense
    boolean mask, a gathered-block plan, or a FlexAttention BlockMask; all encode the same pattern."""
    impl = args.attention_impl
    if impl == "dense":
        return cross_mask(layout, enc_layout, args) if kind == "cross" else self_mask(layout, kind, args)
    if impl == "bar":
        return build_bar_plan(layout, kind, args, enc_layout)
    if impl == "flex":
        from .flex_backend import build_flex_plan  # only when asked for

        return build_flex_plan(layout, kind, args, enc_layout)
    raise ValueError(f"--attention-impl: unknown backend {impl!r} (dense, bar, flex)")


class Embedder(nn.Module):
    """Token (x sqrt(C)) + sinusoidal position + bar + in-bar position; summary embeddings per slot."""

    def __init__(self, tokens: nn.Embedding, dim: int, max_bars: int, n_summary: int, dropout: float):
        super().__init__()
        self.tokens = tokens
        self.bar = nn.Embedding(max_bars, dim)
        self.in_bar = nn.Embedding(MAX_IN_BAR, dim)
        self.summary = nn.Embedding(n_summary, dim)
        self.scale, self.dim, self.max_bars, self.dropout = math.sqrt(dim), dim, max_bars, dropout
        nn.init.normal_(self.bar.weight, std=dim ** -0.5)
        nn.init.normal_(self.in_bar.weight, std=dim ** -0.5)
        nn.init.normal_(self.summary.weight, std=dim ** -0.5)

    def content(self, tokens: Tensor, positions: Tensor, bar: Tensor, in_bar: Tensor) -> Tensor:
        x = self.scale * self.tokens(tokens) + sinusoid(positions, self.dim).to(self.bar.weight.dtype)
        x = x + self.bar(bar.clamp(max=self.max_bars - 1)) + self.in_bar(in_bar)
        return F.dropout(x, self.dropout, self.training)

    def step_tables(self) -> "StepTables":
        """The tables as plain tensors for generation (:class:`StepTables`)."""
        return StepTables(self)

    def summaries(self, sum_bar: Tensor) -> Tensor:
        """(B, NS) bar of each summary position -> (B, NS, C)."""
        n_summary = self.summary.num_embeddings
        slot = torch.arange(sum_bar.shape[1], device=sum_bar.device) % n_summary
        return self.summary(slot).unsqueeze(0) + self.bar(sum_bar.clamp(max=self.max_bars - 1))



class StepTables:
    """An :class:`Embedder`'s tables as plain tensors (detached: the same storage), taken once per
    generation, the token table scaled already (the same products as scaling each lookup): an op given an
    ``nn.Parameter`` pays a ``__torch_function__`` check."""

    def __init__(self, embedder: Embedder):
        self.tokens = embedder.scale * embedder.tokens.weight.detach()  # (V, C)
        self.bar, self.in_bar = embedder.bar.weight.detach(), embedder.in_bar.weight.detach()  # (NB, C), (NI, C)
        self.max_bars = embedder.max_bars
        self._bar_of: Optional[Tensor] = None  # the (B,) bars tensor whose rows ``_bar_rows`` holds
        self._bar_rows: Optional[Tensor] = None  # (B, 1, C)

    def bar_rows(self, bar: Tensor) -> Tensor:
        """(B,) bars -> (B, 1, C) their bar embeddings, looked up again only when ``bar`` is another tensor
        (the decoder replaces its bars tensor when a row opens a bar: within a bar every step reads it)."""
        if self._bar_of is not bar:
            self._bar_of, self._bar_rows = bar, F.embedding(bar.clamp(max=self.max_bars - 1).unsqueeze(1), self.bar)
        return self._bar_rows

    def content(self, tokens: Tensor, position: Tensor, bar: Tensor, in_bar: Tensor) -> Tensor:
        """(B, 1) tokens, (C,) position embedding, (B,) bars and in-bar offsets -> (B, 1, C), as
        :meth:`Embedder.content` in eval mode at one position (the same sums in the same order)."""
        x = F.embedding(tokens, self.tokens) + position.to(self.bar.dtype)
        x = x + self.bar_rows(bar)
        return x + F.embedding(in_bar.clamp(max=MAX_IN_BAR - 1).unsqueeze(1), self.in_bar)
