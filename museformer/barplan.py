"""Index plans for the ``bar`` backend: which positions each bar block gathers.

A query block is one bar: its content positions and its summary positions. Its *fine* keys are the
content positions of the bars the pattern reads finely (decoder: bars b - f, f in --fine-bars; encoder:
b-W..b+W; cross: encoder bars b-C..b+C) plus, for self-attention, the bar's own summaries (a summary
attends to itself). Its *coarse* keys are all summary positions. Inside the gathered blocks the exact
mask comes from the same pure functions in :mod:`museformer.pattern`, so the result equals the dense
reference; tests assert it.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import pattern
from .backends import BarPlan


def _content_by_bar(layout, nb: int):
    """Per row: content positions sorted by bar, and per bar its (start, count) in that order."""
    bar = layout.bar[:, : layout.t]  # (B, T)
    valid = layout.valid[:, : layout.t]
    big = torch.full_like(bar, nb + 1)
    order = torch.sort(torch.where(valid, bar, big), dim=1, stable=True).indices  # (B, T)
    counts = torch.zeros(bar.shape[0], nb + 2, dtype=torch.long, device=bar.device)
    counts.scatter_add_(1, torch.where(valid, bar, big), torch.ones_like(bar))
    counts = counts[:, :nb]  # (B, NB)
    starts = counts.cumsum(1) - counts
    return order, starts, counts


def _gather_meta(layout, index: Tensor):
    """Bar, is-summary, pos, valid of positions ``index`` (B, ...)."""
    flat = index.reshape(index.shape[0], -1)
    out = [getattr(layout, n).gather(1, flat).reshape(index.shape) for n in ("bar", "is_sum", "pos", "valid")]
    return out


def _ranges(order, starts, counts, bars: Tensor, width: int):
    """Content positions of ``bars`` (B, NB, F) -> index (B, NB, F, width) and validity."""
    b, nbq, nf = bars.shape
    nbk = starts.shape[1]
    inside = (bars >= 0) & (bars < nbk)
    safe = bars.clamp(0, max(nbk - 1, 0))
    st = starts.gather(1, safe.reshape(b, -1)).reshape(b, nbq, nf)
    ct = counts.gather(1, safe.reshape(b, -1)).reshape(b, nbq, nf)
    ar = torch.arange(width, device=bars.device)
    sorted_idx = st.unsqueeze(-1) + ar  # (B, NB, F, W)
    ok = inside.unsqueeze(-1) & (ar < ct.unsqueeze(-1))
    sorted_idx = torch.where(ok, sorted_idx, torch.zeros_like(sorted_idx))
    pos = order.gather(1, sorted_idx.reshape(b, -1)).reshape(sorted_idx.shape)
    return pos, ok


def _offsets(kind: str, args) -> List[int]:
    if kind == "decoder":
        return [-f for f in args.fine_bars_list]  # key bar = query bar - f
    window = args.encoder_fine_window if kind == "encoder" else args.cross_window
    return list(range(-window, window + 1))


def build_bar_plan(layout, kind: str, args, enc_layout: Optional[object] = None) -> BarPlan:
    """Plan for self-attention (kind "encoder"/"decoder") or cross-attention (kind "cross")."""
    keys = enc_layout if kind == "cross" else layout
    nbq, nbk, s = layout.nb, keys.nb, layout.s
    b = layout.bar.shape[0]
    dev = layout.bar.device
    q_order, q_starts, q_counts = _content_by_bar(layout, nbq)
    k_order, k_starts, k_counts = _content_by_bar(keys, nbk)
    q_width = max(int(q_counts.max().item()) if q_counts.numel() else 1, 1)
    k_width = max(int(k_counts.max().item()) if k_counts.numel() else 1, 1)
    qbar = torch.arange(nbq, device=dev).expand(b, -1)  # (B, NB)

    # queries: the bar's content, then its summaries
    q_pos, q_ok = _ranges(q_order, q_starts, q_counts, qbar.unsqueeze(-1), q_width)
    q_pos, q_ok = q_pos.squeeze(2), q_ok.squeeze(2)  # (B, NB, Wq)
    sum_pos = layout.t + qbar.unsqueeze(-1) * s + torch.arange(s, device=dev)  # (B, NB, S)
    sum_ok = layout.valid.gather(1, sum_pos.reshape(b, -1)).reshape(sum_pos.shape)
    q_index = torch.cat([q_pos, sum_pos], dim=-1)  # (B, NB, Pq)
    q_valid = torch.cat([q_ok, sum_ok], dim=-1)

    # fine keys: content of the fine bars (+ own summaries for self-attention)
    offs = torch.tensor(_offsets(kind, args), device=dev)
    key_bars = qbar.unsqueeze(-1) + offs  # (B, NB, F)
    k_pos, k_ok = _ranges(k_order, k_starts, k_counts, key_bars, k_width)
    k_index = k_pos.reshape(b, nbq, -1)  # (B, NB, F * Wk)
    k_valid = k_ok.reshape(b, nbq, -1)
    if kind != "cross":
        k_index = torch.cat([k_index, sum_pos], dim=-1)  # (B, NB, Kf)
        k_valid = torch.cat([k_valid, sum_ok], dim=-1)

    qb, qs, qp, _ = _gather_meta(layout, q_index)  # (B, NB, Pq)
    kb, ks, kp, kv = _gather_meta(keys, k_index)  # (B, NB, Kf)
    if kind == "decoder":
        fine = pattern.decoder_mask(qb, qs, qp, kb, ks, kp, args.fine_bars_list)
    elif kind == "encoder":
        fine = pattern.encoder_mask(qb, qs, qp, kb, ks, kp, args.encoder_fine_window)
    else:
        fine = pattern.cross_mask(qb, kb, ks, args.cross_window)
    fine_kind = ~ks.unsqueeze(-2) | (qs.unsqueeze(-1) & (qp.unsqueeze(-1) == kp.unsqueeze(-2)))
    fine_ok = fine & fine_kind & (k_valid & kv).unsqueeze(-2) & q_valid.unsqueeze(-1)  # (B, NB, Pq, Kf)

    # coarse keys: every summary position of the key stream
    all_sum = keys.t + torch.arange(keys.nb * keys.s, device=dev).expand(b, -1)  # (B, NS)
    sb, ss, sp, sv = _gather_meta(keys, all_sum)
    flat = lambda x: x.reshape(b, -1)  # noqa: E731  (B, NB * Pq)
    if kind == "decoder":
        coarse = pattern.decoder_mask(flat(qb), flat(qs), flat(qp), sb, ss, sp, args.fine_bars_list)
    elif kind == "encoder":
        coarse = pattern.encoder_mask(flat(qb), flat(qs), flat(qp), sb, ss, sp, args.encoder_fine_window)
    else:
        coarse = pattern.cross_mask(flat(qb), sb, ss, args.cross_window)
    if kind != "cross":
        coarse = coarse & ~flat(qs).unsqueeze(-1)  # a summary's only summary key (itself) is fine
    coarse_ok = (coarse & sv.unsqueeze(1)).reshape(b, nbq, q_index.shape[-1], -1) & q_valid.unsqueeze(-1)
    return BarPlan(q_index=q_index, q_ok=q_valid, k_index=k_index, fine_ok=fine_ok, sum_index=all_sum,
                   coarse_ok=coarse_ok, out_len=layout.bar.shape[1])
