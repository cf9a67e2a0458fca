"""Transformer layers with FC-attention: the attention module, an encoder layer and a decoder layer.

The attention module projects queries/keys/values and hands (q, k, v, mask) to a backend chosen by
``--attention-impl`` (see :mod:`museformer.backends`). Masks are boolean (True = attend); softmax runs
in float32 inside the backends, so half precision never does -inf arithmetic.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FCAttention(nn.Module):
    """Multi-head attention whose pattern comes from a boolean mask (B, Lq, Lk) or a backend plan."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed dim must be divisible by the number of heads"
        self.h, self.d = num_heads, embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = dropout

    def heads(self, x: Tensor, proj: nn.Linear) -> Tensor:
        b, n, _ = x.shape
        return proj(x).view(b, n, self.h, self.d).transpose(1, 2)  # (B, H, L, D)

    def merge(self, out: Tensor) -> Tensor:
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.h * self.d))  # (B, L, C)

    def forward(self, q_in: Tensor, kv_in: Tensor, attend: Callable[..., Tensor], plan) -> Tensor:
        q = self.heads(q_in, self.q_proj)  # (B, H, Lq, D)
        k = self.heads(kv_in, self.k_proj)  # (B, H, Lk, D)
        v = self.heads(kv_in, self.v_proj)  # (B, H, Lk, D)
        p = self.dropout if self.training else 0.0
        return self.merge(attend(q, k, v, plan, p))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout, self.act_dropout = dropout, activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.act_dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)


class EncoderLayer(nn.Module):
    """Pre-norm: x + SelfAttn(LN(x)); x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float):
        super().__init__()
        self.self_attn = FCAttention(dim, heads, attention_dropout)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn, dropout, activation_dropout)
        self.dropout = dropout

    def forward(self, x: Tensor, attend, plan) -> Tensor:
        h = self.ln1(x)
        x = x + F.dropout(self.self_attn(h, h, attend, plan), self.dropout, self.training)
        return x + self.ffn(self.ln2(x))


class DecoderLayer(nn.Module):
    """Pre-norm: self FC-attention (causal), bar-aligned cross FC-attention, FFN. Its generation step
    (eval mode, keys and values cached) is ``museformer.incremental.layer_step``."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float):
        super().__init__()
        self.self_attn = FCAttention(dim, heads, attention_dropout)
        self.cross_attn = FCAttention(dim, heads, attention_dropout)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn, dropout, activation_dropout)
        self.dropout = dropout

    def forward(self, x: Tensor, enc: Tensor, attend, self_plan, cross_plan) -> Tensor:
        h = self.ln1(x)
        x = x + F.dropout(self.self_attn(h, h, attend, self_plan), self.dropout, self.training)
        x = x + F.dropout(self.cross_attn(self.ln2(x), enc, attend, cross_plan), self.dropout, self.training)
        return x + self.ffn(self.ln3(x))
