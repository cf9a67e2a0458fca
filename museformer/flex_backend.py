"""``--attention-impl flex``: PyTorch FlexAttention with a BlockMask built from the same pointwise rules
as the dense reference (:mod:`museformer.pattern`).

Imported only when the flex backend is asked for, so the CPU/dense/bar paths never touch it. On CPU,
torch runs FlexAttention forward only (no backward), so there it serves inference; on GPU it is the fast
path for training too. ``flex_attention`` is compiled once per process (``COMPILE = False`` runs the
eager reference implementation, which tests use to stay fast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import pattern

try:  # guarded: older torch builds have no FlexAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    AVAILABLE = True
except ImportError:  # pragma: no cover
    create_block_mask = flex_attention = None
    AVAILABLE = False

COMPILE = True
# torch.compile guards on the mask_mod's code (encoder, decoder and cross rules are three), on shapes (a static
# then a dynamic compile), grad mode (training and validation) and dtype: a training run needs more than
# dynamo's default 8 compiles of flex_attention and create_block_mask. Past the limit torch silently runs the
# unfused implementation: measured on an H100, 8,800 target tokens/s against 110,000 for `dense`.
RECOMPILE_LIMIT = 64
_compiled = None


@dataclass
class FlexPlan:
    block_mask: Any


def raise_recompile_limit() -> None:
    """Lift dynamo's per-function compile limit to :data:`RECOMPILE_LIMIT` (never lowers it)."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))


raise_recompile_limit()  # once: this module is imported only when --attention-impl flex is asked for


def _attention_fn():
    global _compiled
    if not COMPILE:
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention)  # shapes vary per batch: automatic dynamic shapes
    return _compiled


def build_flex_plan(layout, kind: str, args, enc_layout: Optional[object] = None) -> FlexPlan:
    """BlockMask for self-attention (kind "encoder"/"decoder", ``layout`` both sides) or cross-attention
    (kind "cross": decoder ``layout`` queries, ``enc_layout`` keys). Padding keys are masked; a self
    query always sees itself (so no row is empty), exactly like :func:`museformer.embeddings.self_mask`."""
    if not AVAILABLE:
        raise RuntimeError("--attention-impl flex needs torch.nn.attention.flex_attention (torch >= 2.5)")
    keys = enc_layout if kind == "cross" else layout
    qb, qs, qp = layout.bar, layout.is_sum, layout.pos  # (B, Lq)
    kb, ks, kp, kv = keys.bar, keys.is_sum, keys.pos, keys.valid  # (B, Lk)
    b, lq = qb.shape
    lk = kb.shape[1]
    fine = list(getattr(args, "fine_bars_list", [0]))
    enc_w, cross_w = int(args.encoder_fine_window), int(args.cross_window)

    if kind == "decoder":
        def mask_mod(bi, hi, qi, ki):
            rule = pattern.decoder_rule(qb[bi, qi], qs[bi, qi], qp[bi, qi], kb[bi, ki], ks[bi, ki], kp[bi, ki], fine)
            return (rule & kv[bi, ki]) | (qi == ki)
    elif kind == "encoder":
        def mask_mod(bi, hi, qi, ki):
            rule = pattern.encoder_rule(qb[bi, qi], qs[bi, qi], qp[bi, qi], kb[bi, ki], ks[bi, ki], kp[bi, ki], enc_w)
            return (rule & kv[bi, ki]) | (qi == ki)
    elif kind == "cross":
        def mask_mod(bi, hi, qi, ki):
            return pattern.cross_rule(qb[bi, qi], kb[bi, ki], ks[bi, ki], cross_w) & kv[bi, ki]
    else:
        raise ValueError(kind)
    bm = create_block_mask(mask_mod, b, None, lq, lk, device=qb.device, _compile=COMPILE)
    return FlexPlan(bm)


def flex_attend(q: Tensor, k: Tensor, v: Tensor, plan: FlexPlan, dropout_p: float = 0.0) -> Tensor:
    """q (B, H, Lq, D), k/v (B, H, Lk, D) -> (B, H, Lq, D). Computes in float32 on CPU (half precision
    FlexAttention is a GPU feature); on GPU the kernel keeps fp32 softmax statistics internally."""
    if dropout_p > 0:
        raise ValueError("--attention-impl flex has no attention dropout: set --attention-dropout 0")
    dtype = q.dtype
    if q.device.type == "cpu" and dtype != torch.float32:
        q, k, v = q.float(), k.float(), v.float()
    out = _attention_fn()(q, k, v, block_mask=plan.block_mask)  # (B, H, Lq, D)
    return out.to(dtype)
