"""What the decoder keeps between generation steps (:class:`DecoderState`) and what one step's attention
reads (:class:`StepView`).

Every step appends the same number of keys to every row (the newest token, and the ``S`` summaries of
the bar just closed whenever some row closes one: a dummy, masked out, in the other rows), so one
``length`` holds for the batch and a key's buffer column is the same in every row.

The attention of a step reads a *view* of the keys, not all of them: per row, the keys that the queries
of its current bar may attend (the fine bars' content, the other earlier bars' summaries; the closed
bar's content for its summary queries), gathered when a row opens a bar, with the keys of the bar
appended as they come. The FC pattern leaves every other key masked out, so the view changes nothing
but the order of the softmax's sums (the outputs agree with attention over every key to float
rounding; ``compact=False`` gathers every key: the dense reference, bit for bit the masked attention
over the whole cache). On the cross side likewise: the encoder positions of the bars within
``--cross-window`` and the summaries. For a content query at bar ``b`` with fine bars {0, 1, 2, 4}, the
view of the self keys is (``x`` gathered, ``.`` left out)::

    bars       b-5  b-4  b-3  b-2  b-1  b (so far)   summaries of b-5, b-3 (not fine)
    content     .    x    .    x    x    x           x x
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import pattern
from .embeddings import sinusoid

FIRST_SUMMARY_POS = 1 << 40  # order index of the first summary key: past every content position


@dataclass
class StepView:
    """What the layers of one step attend: ``self_blocked`` (B, 1, n, Lv) and ``cross_blocked``
    (B, 1, n, Sv) inverted masks over the views (True = blocked); ``column``: the view column of the
    step's first new key; ``gather`` (B, M) / ``cross_gather`` (B, Mx): the cache / encoder positions
    that make up the rebuilt views' first columns (None: the views stay as they are)."""

    self_blocked: Tensor
    cross_blocked: Tensor
    column: int
    gather: Optional[Tensor] = None
    cross_gather: Optional[Tensor] = None


def pick_columns(need: Tensor):
    """(B, L) bool -> ((B, M) positions of each row's True entries in order, padded with 0; (B, M) True
    at the padding), M the largest count."""
    counts = need.sum(1)  # (B,)
    width = int(counts.max()) if need.shape[0] else 0
    order = torch.sort(need.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]  # (B, M)
    pad = torch.arange(width, device=need.device).unsqueeze(0) >= counts.unsqueeze(1)  # (B, M)
    return order.masked_fill(pad, 0), pad


class DecoderState:
    """The incremental decoding state of ``batch`` rows, with key buffers for ``capacity`` keys (content
    positions and bar summaries; doubled when full, so a step never copies the keys so far). ``compact``:
    attend views of the keys (see the module docstring); False: every key (the dense reference)."""

    def __init__(self, batch: int, device, n_layers: int, dim: int, capacity: int = 64, compact: bool = True):
        cap = max(int(capacity), 1)
        self.compact = compact
        self.bar = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) bar of the newest token
        self.in_bar = torch.zeros(batch, dtype=torch.long, device=device)  # the start token is 1 past "bar -1"
        self.length = 0  # keys so far, in every row
        self.pending: Optional[Tuple[int, int]] = None  # (first key, its step) of content keys not yet written
        self.next_sum_pos = FIRST_SUMMARY_POS  # order index of the next summary key (the same in every row)
        self.key_bar = torch.zeros(batch, cap, dtype=torch.long, device=device)  # (B, cap)
        self.key_pos = torch.zeros(batch, cap, dtype=torch.long, device=device)  # (B, cap)
        self.key_sum = torch.zeros(batch, cap, dtype=torch.bool, device=device)  # (B, cap) a summary key
        self.key_ok = torch.ones(batch, cap, dtype=torch.bool, device=device)  # (B, cap) False: a dummy summary
        # the newest token's masks over the views (True = blocked), unchanged within a bar but for its own key
        self.view_len = 0  # columns of the self view in use
        self.view_blocked = torch.ones(batch, 64, dtype=torch.bool, device=device)  # (B, capv)
        self.cross_blocked: Optional[Tensor] = None  # (B, 1, 1, Sv)
        self.caches: List[Dict] = [{"capacity": cap} for _ in range(n_layers)]  # per layer (append_view, flush)
        self.rules = None  # the decoding rules' DecodeState, where fairseq's generator drives the decoder
        # the decoder's parameters as plain tensors, taken by MuseformerDecoder.start_state
        self.weights: List[LayerWeights] = []
        self.tables = None  # embeddings.StepTables
        self.final_ln: tuple = ()  # torch.layer_norm's arguments
        self.align: Optional["Linear"] = None  # the --align-source projection
        self.heads: Dict[int, tuple] = {}  # id(candidates) -> (candidates, their projection rows transposed)
        self.native = None  # museformer.native's module, where the C++ step is used
        self.native_step = None  # its SameBarStep for this generation
        self.dim, self.device = dim, device
        self._sinusoid = sinusoid(torch.arange(cap, device=device), dim)  # (cap, C) position embeddings

    def native_room(self) -> bool:
        """Whether the C++ step can take a step that opens no bar: every layer's view holds room for its key
        (else the Python step grows it) and its cross-attention view."""
        col = self.view_len
        return all("xv" in c and col < c["vv"].shape[2] for c in self.caches)

    def native_view(self) -> int:
        """:meth:`same_bar_view`'s bookkeeping for the C++ step, which opens the mask column itself, and
        ``append_view``'s: the view column of the newest token's key."""
        col = self.view_len
        if col + 1 > self.view_blocked.shape[1]:
            self._grow_view(col + 1)
        self.view_len = col + 1
        for cache in self.caches:
            cache["view_len"] = col + 1
        return col

    def native_caches(self) -> List[Tensor]:
        """Every layer's view buffers for the C++ step, four per layer (vk_t, vv, xk_t, xv)."""
        return [t for c in self.caches for t in (c["vk_t"], c["vv"], c["xk_t"], c["xv"])]

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
        cap, used = 2 * need, min(self.length, self.capacity)
        for name, fill in (("key_bar", 0), ("key_pos", 0), ("key_sum", False), ("key_ok", True)):
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

    def put_content_key(self, step: int) -> None:
        """Append the key of the newest token, at position ``step``, which opens no bar in any row. Its
        metadata is written with the other keys of the bar at the next :meth:`new_bar_view` (a run of
        such keys holds the rows' current bars at consecutive positions; a valid content key is what the
        buffers hold beyond ``length`` already)."""
        if self.pending is None:
            self.pending = (self.length, step)
        self.length += 1

    def _write_pending(self) -> None:
        if self.pending is None:
            return
        start, first_step = self.pending
        n = self.length - start
        self.reserve(self.length)
        self.key_bar[:, start:self.length] = self.bar.unsqueeze(1)  # (B, n)
        self.key_pos[:, start:self.length] = torch.arange(first_step, first_step + n, device=self.device)
        self.pending = None

    def same_bar_view(self) -> StepView:
        """The step of a token that opens no bar in any row: its own key joins the previous token's views."""
        col = self.view_len
        if col + 1 > self.view_blocked.shape[1]:
            self._grow_view(col + 1)
        self.view_blocked[:, col] = False
        self.view_len = col + 1
        n = col + 1
        return StepView(self.view_blocked[:, :n].view(-1, 1, 1, n), self.cross_blocked, col)

    def new_bar_view(self, q_bar: Tensor, q_sum: Tensor, q_pos: Tensor, q_ok: Tensor, fine_bars, enc_layout,
                     cross_window: int) -> StepView:
        """The step where some row opens a bar (or the first): its n queries' keys (B, n) metadata are
        appended, the views rebuilt (the keys before the step gathered, then the step's own), and the masks
        of the queries over them computed from ``pattern`` (the dense attention's, restricted to the view)."""
        self._write_pending()
        old = self.length
        self.put_keys(q_bar, q_sum, q_pos, q_ok)
        kb, ks, kp, kv = self.keys()  # (B, L)

        def allowed(bar: Tensor, is_sum: Tensor, pos: Tensor, ok: Tensor) -> Tensor:  # (B, n, Lk)
            m = pattern.decoder_mask(q_bar, q_sum, q_pos, bar, is_sum, pos, fine_bars)
            return (m & ok.unsqueeze(1)) | (q_pos.unsqueeze(-1) == pos.unsqueeze(-2))

        before = [x[:, :old] for x in (kb, ks, kp, kv)]  # (B, L0) the keys before this step
        need = allowed(*before).any(1) if self.compact else torch.ones_like(before[3])  # (B, L0)
        gather, pad = pick_columns(need)  # (B, M)
        view = [x.gather(1, gather) for x in before]  # (B, M)
        view[2] = view[2].masked_fill(pad, -1)  # padding: no position, not valid
        view[3] = view[3] & ~pad
        view = [torch.cat([v, x[:, old:]], 1) for v, x in zip(view, (kb, ks, kp, kv))]  # (B, Lv)
        blocked = ~allowed(*view).unsqueeze(1)  # (B, 1, n, Lv)
        lv = view[0].shape[1]
        if lv > self.view_blocked.shape[1]:
            self._grow_view(lv, keep=False)
        self.view_blocked[:, :lv] = blocked[:, 0, -1]  # the token's row, kept for the bar
        self.view_blocked[:, lv:] = True
        self.view_len = lv
        cross = pattern.cross_mask(q_bar, enc_layout.bar, enc_layout.is_sum, cross_window)
        cross = cross & enc_layout.valid.unsqueeze(1)  # (B, n, S)
        cross_gather, cross_pad = pick_columns(cross.any(1) if self.compact else torch.ones_like(cross[:, 0]))
        cross = cross.gather(2, cross_gather.unsqueeze(1).expand(-1, cross.shape[1], -1))  # (B, n, Mx)
        cross_blocked = ~(cross & ~cross_pad.unsqueeze(1)).unsqueeze(1)  # (B, 1, n, Mx)
        self.cross_blocked = cross_blocked[:, :, -1:]  # (B, 1, 1, Mx)
        return StepView(blocked, cross_blocked, gather.shape[1], gather, cross_gather)

    def _grow_view(self, need: int, keep: bool = True) -> None:
        old = self.view_blocked
        new = torch.ones(old.shape[0], 2 * need, dtype=torch.bool, device=old.device)  # (B, capv)
        if keep:
            new[:, :self.view_len] = old[:, :self.view_len]
        self.view_blocked = new

    def reorder(self, order: Tensor) -> None:
        """Keep (and repeat) rows ``order`` (B',) in place: beam search's reordering, finished rows dropped."""
        for name in ("bar", "in_bar", "key_bar", "key_pos", "key_sum", "key_ok", "view_blocked", "cross_blocked"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, order))
        for cache in self.caches:
            for key, value in list(cache.items()):
                if torch.is_tensor(value):
                    cache[key] = value.index_select(0, order)
        if self.rules is not None:
            self.rules.reorder(order)


# ------------------------------------------------------------------ one layer's generation step
class Linear:
    """``nn.Linear`` modules side by side for one generation step: their weights transposed and joined,
    (in, sum of outs), and their biases as plain tensors. ``rows @ weight`` is a plain matrix product,
    faster than ``F.linear``'s product with a transposed operand (the joined product's columns equal the
    separate products' bit for bit); no ``nn.Parameter`` (an op given one pays a ``__torch_function__``
    check, about 1.5 us)."""

    def __init__(self, *modules):
        self.weight_t = torch.cat([m.weight.detach().t() for m in modules], 1).contiguous()  # (in, out)
        biases = [m.bias for m in modules]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])  # (out,)

    def __call__(self, rows: Tensor) -> Tensor:
        """(N, in) -> (N, out)."""
        return rows.mm(self.weight_t) if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)


class LayerWeights:
    """A ``layers.DecoderLayer``'s parameters for its generation step, taken once per generation."""

    def __init__(self, layer):
        def norm(m):
            return m.normalized_shape, m.weight.detach(), m.bias.detach(), m.eps  # torch.layer_norm's (F.layer_norm's)

        att, cross = layer.self_attn, layer.cross_attn
        self.heads = att.h
        self.ln1, self.ln2, self.ln3 = norm(layer.ln1), norm(layer.ln2), norm(layer.ln3)
        self.qkv, self.o = Linear(att.q_proj, att.k_proj, att.v_proj), Linear(att.out_proj)
        self.cross_q, self.cross_o = Linear(cross.q_proj), Linear(cross.out_proj)
        self.cross_kv = cross  # the encoder's keys/values: once per generation, with the module itself
        self.fc1, self.fc2 = Linear(layer.ffn.fc1), Linear(layer.ffn.fc2)

    def flat(self) -> Optional[List[Tensor]]:
        """The 18 tensors of the C++ ``layer_step`` (csrc/step.cpp), or None where it cannot take this layer
        (a linear without bias, layer norms of different eps or shape)."""
        linears = (self.qkv, self.o, self.cross_q, self.cross_o, self.fc1, self.fc2)
        norms = (self.ln1, self.ln2, self.ln3)
        if any(m.bias is None for m in linears) or len({(tuple(n[0]), n[3]) for n in norms}) != 1:
            return None
        (n1, n2, n3), (qkv, o, cq, co, f1, f2) = norms, linears
        return [n1[1], n1[2], qkv.weight_t, qkv.bias, o.weight_t, o.bias, n2[1], n2[2], cq.weight_t, cq.bias,
                co.weight_t, co.bias, n3[1], n3[2], f1.weight_t, f1.bias, f2.weight_t, f2.bias]


def split_heads(rows: Tensor, b: int, n: int, n_heads: int) -> Tensor:
    """(B * n, C) rows, batch-major -> (B, H, n, D)."""
    d = rows.shape[1] // n_heads
    if n == 1:
        return rows.view(b, n_heads, 1, d)  # (B, H, 1, D): the same layout
    return rows.view(b, n, n_heads, d).transpose(1, 2)  # (B, H, n, D)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, n, D) -> (B * n, C) rows."""
    b, h, n, d = x.shape
    if n == 1:
        return x.view(b, h * d)  # (B, C): the same layout
    return x.transpose(1, 2).reshape(b * n, h * d)  # (B * n, C)


def attend_transposed(q: Tensor, keys_t: Tensor, values: Tensor, blocked: Tensor) -> Tensor:
    """q (B, H, n, D), keys_t (B, H, D, L) (keys stored transposed: the product is a plain matrix
    product, three times faster than with a transposed operand), values (B, H, L, D), blocked
    (B, 1, n, L) True = not attended -> (B, H, n, D); the softmax in float32, as ``backends.dense_attend``'s.
    The products are ``torch.bmm`` on the operands ``torch.matmul`` would reshape them to (the same
    kernel on the same operands, without matmul's dispatch)."""
    dtype = q.dtype
    if dtype != torch.float32:
        q, keys_t, values = q.float(), keys_t.float(), values.float()
    b, h, n, d = q.shape
    length = keys_t.shape[-1]
    scores = torch.bmm(q.reshape(b * h, n, d), keys_t.reshape(b * h, d, length)).mul_(d ** -0.5)  # (B * H, n, L)
    scores = scores.view(b, h, n, length).masked_fill_(blocked, torch.finfo(torch.float32).min)  # (B, H, n, L)
    probs = torch.softmax(scores, dim=-1).view(b * h, n, length)  # (B * H, n, L)
    out = torch.bmm(probs, values.reshape(b * h, length, d)).view(b, h, n, d)  # (B, H, n, D)
    return out if dtype == torch.float32 else out.to(dtype)


def layer_step(x: Tensor, enc: Tensor, cache: Dict, view: StepView, w: LayerWeights) -> Tensor:
    """``layers.DecoderLayer`` in eval mode on a step's new positions, x (B * n, C) rows (batch-major):
    pre-norm self attention over the step's view of the keys (``append_view``), cross attention over
    the encoder's view, FFN. ``cache``: the layer's keys and values."""
    b, _, n, _ = view.self_blocked.shape
    c = x.shape[1]
    qkv = w.qkv(torch.layer_norm(x, *w.ln1))  # (B * n, 3C)
    keys_t, values = append_view(cache, qkv[:, c:2 * c], qkv[:, 2 * c:], view, w.heads)  # (B, H, D, Lv), (B, H, Lv, D)
    q = split_heads(qkv[:, :c], b, n, w.heads)  # (B, H, n, D)
    x = x + w.o(merge_heads(attend_transposed(q, keys_t, values, view.self_blocked)))
    if cache.get("ek_t") is None:  # the encoder's keys/values, as the module computes them: once
        cross = w.cross_kv
        cache["ek_t"] = cross.heads(enc, cross.k_proj).transpose(-1, -2).contiguous()  # (B, H, D, S)
        cache["ev"] = cross.heads(enc, cross.v_proj)  # (B, H, S, D)
    if view.cross_gather is not None:
        cache["xk_t"] = gather_columns(cache["ek_t"], view.cross_gather)  # (B, H, D, Mx)
        cache["xv"] = gather_rows(cache["ev"], view.cross_gather)  # (B, H, Mx, D)
    q = split_heads(w.cross_q(torch.layer_norm(x, *w.ln2)), b, n, w.heads)  # (B, H, n, D)
    x = x + w.cross_o(merge_heads(attend_transposed(q, cache["xk_t"], cache["xv"], view.cross_blocked)))
    return x + w.fc2(F.gelu(w.fc1(torch.layer_norm(x, *w.ln3))))


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """(B, H, L, D), (B, M) positions -> (B, H, M, D)."""
    b, h, _, d = x.shape
    return x.gather(2, index.view(b, 1, -1, 1).expand(b, h, index.shape[1], d))


def gather_columns(x_t: Tensor, index: Tensor) -> Tensor:
    """(B, H, D, L) transposed, (B, M) positions -> (B, H, D, M)."""
    b, h, d, _ = x_t.shape
    return x_t.gather(3, index.view(b, 1, 1, -1).expand(b, h, d, index.shape[1]))


def append_view(cache: Dict, k_rows: Tensor, v_rows: Tensor, view: StepView, n_heads: int) -> Tuple[Tensor, Tensor]:
    """Add the step's (B * n, C) new keys and values to the layer's view and return the view in use:
    keys transposed (B, H, D, Lv), values (B, H, Lv, D).

    The view ("vk_t", "vv") holds since the last rebuild its gathered columns, then every key appended
    after them; the layer's full cache of all keys ("k_t" (B, H, D, L), "v"), which the rebuilds gather
    from, receives those appended keys only at the next rebuild, in one copy ("flushed": keys in it)."""
    b, _, n, _ = view.self_blocked.shape
    d = k_rows.shape[1] // n_heads
    col, end = view.column, view.column + n
    if view.gather is not None:
        flush(cache, b, n_heads, d, k_rows)
        cap = 2 * end + 64  # room for the bar's tokens to come
        kt, vv = cache["k_t"], cache["v"]
        cache["vk_t"] = kt.new_empty(b, n_heads, d, cap)  # (B, H, D, capv)
        cache["vv"] = vv.new_empty(b, n_heads, cap, d)  # (B, H, capv, D)
        cache["vk_t"][..., :col] = gather_columns(kt[..., :cache["flushed"]], view.gather)
        cache["vv"][:, :, :col] = gather_rows(vv[:, :, :cache["flushed"]], view.gather)
        cache["view_base"] = col
    elif end > cache["vv"].shape[2]:
        old_kt, old_v = cache["vk_t"], cache["vv"]
        cache["vk_t"] = old_kt.new_empty(b, n_heads, d, 2 * end)  # (B, H, D, capv)
        cache["vv"] = old_v.new_empty(b, n_heads, 2 * end, d)  # (B, H, capv, D)
        cache["vk_t"][..., :col], cache["vv"][:, :, :col] = old_kt[..., :col], old_v[:, :, :col]
    if n == 1:
        cache["vk_t"][..., col:end] = k_rows.view(b, n_heads, d, 1)
        cache["vv"][:, :, col:end] = v_rows.view(b, n_heads, 1, d)
    else:
        cache["vk_t"][..., col:end] = k_rows.view(b, n, n_heads, d).permute(0, 2, 3, 1)  # (B, H, D, n)
        cache["vv"][:, :, col:end] = v_rows.view(b, n, n_heads, d).transpose(1, 2)  # (B, H, n, D)
    cache["view_len"] = end
    return cache["vk_t"][..., :end], cache["vv"][:, :, :end]


def flush(cache: Dict, b: int, n_heads: int, d: int, like: Tensor) -> None:
    """Copy the keys/values appended to the view since its last rebuild into the full cache (allocated
    like ``like`` for ``cache["capacity"]`` keys, doubled when full)."""
    start = cache.get("flushed", 0)
    base, used = cache.get("view_base", 0), cache.get("view_len", 0)
    n = used - base
    kt, vv = cache.get("k_t"), cache.get("v")
    if kt is None or start + n > vv.shape[2]:
        cap = max(cache.get("capacity", 64), 2 * (start + n))
        new_kt, new_v = like.new_empty(b, n_heads, d, cap), like.new_empty(b, n_heads, cap, d)  # (B, H, D, cap)
        if kt is not None:
            new_kt[..., :start], new_v[:, :, :start] = kt[..., :start], vv[:, :, :start]
        cache["k_t"], cache["v"] = new_kt, new_v
    if n > 0:
        cache["k_t"][..., start:start + n] = cache["vk_t"][..., base:used]
        cache["v"][:, :, start:start + n] = cache["vv"][:, :, base:used]
    cache["flushed"] = start + n
