"""What the decoder keeps between generation steps (:class:`DecoderState`): per-key metadata and the
layer caches in buffers preallocated for the whole generation, and the newest token's attention masks.

Every step appends the same number of keys to every row (the newest token, and the ``S`` summaries of
the bar just closed whenever some row closes one: a dummy, masked out, in the other rows), so one
``length`` holds for the batch and a key's buffer column is the same in every row.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from .embeddings import sinusoid

FIRST_SUMMARY_POS = 1 << 40  # order index of the first summary key: past every content position


class DecoderState:
    """The incremental decoding state of ``batch`` rows, with buffers for ``capacity`` keys (content
    positions and bar summaries; doubled when full, so a step never copies the keys so far)."""

    def __init__(self, batch: int, device, n_layers: int, dim: int, capacity: int = 64):
        cap = max(int(capacity), 1)
        self.bar = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) bar of the newest token
        self.in_bar = torch.zeros(batch, dtype=torch.long, device=device)  # the start token is 1 past "bar -1"
        self.length = 0  # keys so far, in every row
        self.next_sum_pos = FIRST_SUMMARY_POS  # order index of the next summary key (the same in every row)
        self.key_bar = torch.zeros(batch, cap, dtype=torch.long, device=device)  # (B, cap)
        self.key_pos = torch.zeros(batch, cap, dtype=torch.long, device=device)  # (B, cap)
        self.key_sum = torch.zeros(batch, cap, dtype=torch.bool, device=device)  # (B, cap) a summary key
        self.key_ok = torch.ones(batch, cap, dtype=torch.bool, device=device)  # (B, cap) False: a dummy summary
        # the newest token's masks, True = blocked: self-attention over the keys so far, cross-attention
        # over the encoder positions; both unchanged within a bar but for the token's own key
        self.self_blocked = torch.ones(batch, cap, dtype=torch.bool, device=device)  # (B, cap)
        self.cross_blocked: Optional[Tensor] = None  # (B, 1, 1, S_enc)
        self.caches: List[Dict] = [{"capacity": cap} for _ in range(n_layers)]  # per layer "k", "v", "ek", "ev"
        self.rules = None  # the decoding rules' DecodeState, where fairseq's generator drives the decoder
        self.dim, self.device = dim, device
        self._sinusoid = sinusoid(torch.arange(cap, device=device), dim)  # (cap, C) position embeddings

    @property
    def capacity(self) -> int:
        return self.key_bar.shape[1]

    def position(self, step: int) -> Tensor:
        """(C,) sinusoidal embedding of content position ``step`` (equal, bit for bit, to
        ``sinusoid`` of that position alone)."""
        if step >= self._sinusoid.shape[0]:
            self._sinusoid = sinusoid(torch.arange(2 * step + 1, device=self.device), self.dim)  # (n, C)
        return self._sinusoid[step]

    def reserve(self, need: int) -> None:
        """Room for ``need`` keys in the metadata buffers (the layer caches grow on their own)."""
        if need <= self.capacity:
            return
        cap, used = 2 * need, self.length
        for name, fill in (("key_bar", 0), ("key_pos", 0), ("key_sum", False), ("key_ok", True),
                           ("self_blocked", True)):
            old = getattr(self, name)
            new = torch.full((old.shape[0], cap), fill, dtype=old.dtype, device=old.device)  # (B, cap)
            new[:, :used] = old[:, :used]
            setattr(self, name, new)

    def keys(self):
        """(B, L) views of the keys so far: bar, is-summary, order index, validity."""
        n = self.length
        return self.key_bar[:, :n], self.key_sum[:, :n], self.key_pos[:, :n], self.key_ok[:, :n]

    def put_keys(self, bar: Tensor, is_sum: Tensor, pos: Tensor, ok: Tensor) -> None:
        """Append (B, n) keys' metadata."""
        start, n = self.length, bar.shape[1]
        self.reserve(start + n)
        self.key_bar[:, start:start + n] = bar
        self.key_sum[:, start:start + n] = is_sum
        self.key_pos[:, start:start + n] = pos
        self.key_ok[:, start:start + n] = ok
        self.length = start + n

    def put_content_key(self, bar: Tensor, step: int) -> None:
        """Append the newest token's key (B,) bar at position ``step``; it is a valid content key,
        which the buffers hold beyond ``length`` already."""
        start = self.length
        self.reserve(start + 1)
        self.key_bar[:, start] = bar
        self.key_pos[:, start] = step
        self.length = start + 1

    def reorder(self, order: Tensor) -> None:
        """Keep (and repeat) rows ``order`` (B',) in place: beam search's reordering, finished rows dropped."""
        for name in ("bar", "in_bar", "key_bar", "key_pos", "key_sum", "key_ok", "self_blocked", "cross_blocked"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, order))
        for cache in self.caches:
            for key, value in list(cache.items()):
                if torch.is_tensor(value):
                    cache[key] = value.index_select(0, order)
        if self.rules is not None:
            self.rules.reorder(order)
