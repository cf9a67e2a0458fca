"""Attention backends. All compute softmax(q k^T / sqrt(D) + mask) v over the same FC pattern.

- ``dense``: scaled-dot-product attention with the explicit boolean mask (the readable reference).
- ``bar``: gathered per-bar blocks in plain PyTorch (see :func:`bar_attend`): for every query bar the keys
  of its fine bars are gathered into a small block, the coarse part is attention over the (few) summary
  keys, and both share one softmax. Memory and time grow with bars x (fine bars x bar length +
  number of summaries) instead of T^2. Autograd works everywhere.

Half precision: queries/keys are upcast so the softmax runs in float32 (no -inf arithmetic in fp16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def dense_attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float = 0.0) -> Tensor:
    """q (B, H, Lq, D), k/v (B, H, Lk, D), mask (B, Lq, Lk) bool -> (B, H, Lq, D)."""
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), dropout_p=dropout_p)
    return out.to(dtype)


@dataclass
class BarPlan:
    """Index tensors for the gathered per-bar attention of one layer type.

    For each query position: ``q_block`` (its bar block id); for each block a list of gathered key
    positions ``block_keys`` (n_blocks, K_fine) with validity ``block_keys_ok`` and a causal order; the
    coarse keys (summaries) are shared by all queries and masked by ``coarse_ok`` (B, Lq, n_sum).
    """

    q_index: Tensor  # (B, NBq, Pq) positions of queries in each query block (padded, -> 0)
    q_ok: Tensor  # (B, NBq, Pq)
    k_index: Tensor  # (B, NBq, Kf) positions of fine keys gathered for each block
    fine_ok: Tensor  # (B, NBq, Pq, Kf) fine mask inside the block
    sum_index: Tensor  # (B, NS) positions of summary keys
    coarse_ok: Tensor  # (B, NBq, Pq, NS) coarse mask
    out_len: int


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x (B, H, L, D), index (B, ...) -> (B, H, ..., D)."""
    b, h, _, d = x.shape
    flat = index.reshape(b, 1, -1, 1).expand(b, h, -1, d)
    return x.gather(2, flat).reshape(b, h, *index.shape[1:], d)  # (B, H, ..., D)


def bar_attend(q: Tensor, k: Tensor, v: Tensor, plan: BarPlan, dropout_p: float = 0.0) -> Tensor:
    """Gathered per-bar attention; equals dense_attend with the mask the plan was built from."""
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.5
    qb = _gather_rows(q, plan.q_index)  # (B, H, NB, Pq, D)
    kf = _gather_rows(k, plan.k_index)  # (B, H, NB, Kf, D)
    vf = _gather_rows(v, plan.k_index)  # (B, H, NB, Kf, D)
    ks = _gather_rows(k, plan.sum_index)  # (B, H, NS, D)
    vs = _gather_rows(v, plan.sum_index)  # (B, H, NS, D)
    s_fine = torch.einsum("bhnpd,bhnkd->bhnpk", qb, kf) * scale  # (B, H, NB, Pq, Kf)
    s_coarse = torch.einsum("bhnpd,bhsd->bhnps", qb, ks) * scale  # (B, H, NB, Pq, NS)
    neg = torch.finfo(s_fine.dtype).min
    s_fine = s_fine.masked_fill(~plan.fine_ok.unsqueeze(1), neg)
    s_coarse = s_coarse.masked_fill(~plan.coarse_ok.unsqueeze(1), neg)
    p = torch.softmax(torch.cat([s_fine, s_coarse], dim=-1), dim=-1)  # one softmax over both parts
    if dropout_p > 0:
        p = F.dropout(p, dropout_p, training=True)
    kf_n = s_fine.shape[-1]
    out = torch.einsum("bhnpk,bhnkd->bhnpd", p[..., :kf_n], vf) + torch.einsum(
        "bhnps,bhsd->bhnpd", p[..., kf_n:], vs)  # (B, H, NB, Pq, D)
    b, h, nb, pq, d = out.shape
    result = out.new_zeros(b, h, plan.out_len + 1, d)  # one spare row absorbs padded queries
    idx = torch.where(plan.q_ok, plan.q_index, torch.full_like(plan.q_index, plan.out_len))
    result.scatter_(2, idx.reshape(b, 1, -1, 1).expand(b, h, -1, d), out.reshape(b, h, nb * pq, d))
    return result[:, :, : plan.out_len].to(dtype)  # (B, H, L, D)


def get_backend(name: str):
    if name == "dense":
        return dense_attend
    if name == "bar":
        return bar_attend
    if name == "flex":
        from .flex_backend import flex_attend  # imported only when asked for

        return flex_attend
    raise ValueError(f"--attention-impl: unknown backend {name!r} (dense, bar, flex)")
