"""Encoder-decoder Museformer: FC-attention over bars, for score -> performance translation.

Every layer sees the content tokens followed by ``S`` summary positions per bar (learned embeddings).
Bar index of a token = number of ``Bar_None`` tokens up to and including it (prefix tokens and the
decoder's start token are bar 0). Embeddings: token (scaled) + sinusoidal position + bar + position in bar.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from torch import Tensor, nn

from . import pattern
from .backends import get_backend, step_attend
from .barplan import build_bar_plan
from .constants import BAR_TOKEN, EOS_TYPE, MEAN
from .layers import DecoderLayer, EncoderLayer

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

    def summaries(self, sum_bar: Tensor) -> Tensor:
        """(B, NS) bar of each summary position -> (B, NS, C)."""
        n_summary = self.summary.num_embeddings
        slot = torch.arange(sum_bar.shape[1], device=sum_bar.device) % n_summary
        return self.summary(slot).unsqueeze(0) + self.bar(sum_bar.clamp(max=self.max_bars - 1))


def zero_linear(dim: int) -> nn.Linear:
    """A (C -> C) projection without bias that starts at zero, so that a model with an added input
    path begins (and warm-starts) exactly as it would without it."""
    proj = nn.Linear(dim, dim, bias=False)
    nn.init.zeros_(proj.weight)
    return proj


def fill_missing_zero_linear(state_dict: Dict, name: str, attr: str, proj: Optional[nn.Linear]) -> Dict:
    """Warm start: a checkpoint trained without the :func:`zero_linear` ``proj`` (module attribute
    ``attr``) gets its zero start, so the loaded model computes what the checkpoint computed."""
    key = f"{name}.{attr}.weight" if name else f"{attr}.weight"
    if proj is not None and key not in state_dict:
        state_dict[key] = torch.zeros_like(proj.weight)
    return state_dict


def grow_rows(state_dict: Dict, name: str, attr: str, weight: Optional[Tensor]) -> Dict:
    """Warm start with a grown dictionary (new token types appended at its end, docs/tokens.md): the
    checkpoint's (V_old, C) embedding gets zero rows for the V - V_old new entries, so every old token
    keeps its vector and its index, and the new ones start from nothing."""
    key = f"{name}.{attr}" if name else attr
    old = state_dict.get(key)
    if weight is None or old is None or old.dim() != 2 or old.shape[0] >= weight.shape[0]:
        return state_dict
    if old.shape[1] != weight.shape[1]:
        return state_dict  # a different width: strict loading reports it
    pad = old.new_zeros(weight.shape[0] - old.shape[0], old.shape[1])  # (V - V_old, C)
    state_dict[key] = torch.cat([old, pad], dim=0)  # (V, C)
    return state_dict


class SlotAnchors:
    """Which source token each performance slot belongs to, for ``--align-source``.

    The performance grammar expands every score token on its own (``Bar`` -> 1 slot, ``Pos`` -> the
    onset group's slots, ``Pitch`` -> the note's slots, anything else -> none), so the slot count of
    each dictionary entry is ``len(target_slots([token]))`` and the anchor of slot ``s`` is the first
    source position whose cumulative slot count exceeds ``s``. Example (one bar, one group, 2 notes)::

        source  Bar  Pos  Pitch Dur  Pitch Dur  </s>
        slots    1    5     3    0     3    0     0
        anchor  0 | 1 1 1 1 1 | 2 2 2 | 4 4 4 | 6 (EOS step: the source EOS)
    """

    def __init__(self, src_dict, target_slots):
        counts = [len(target_slots([src_dict[i]])) for i in range(len(src_dict))]
        self.counts = torch.tensor(counts, dtype=torch.long)  # (V,)

    def __call__(self, src_tokens: Tensor, valid: Tensor) -> Tensor:
        """(B, T) source ids (any padding side) -> (B, S + 1) padded source position of each slot's
        score token, the last column (and any beyond a row's slots) pointing at the row's last position."""
        n = self.counts.to(src_tokens.device)[src_tokens] * valid.long()  # (B, T)
        cum = n.cumsum(dim=1)  # (B, T)
        width = int(cum[:, -1].max().item()) + 1 if cum.numel() else 1
        slots = torch.arange(width, device=src_tokens.device).expand(cum.shape[0], -1).contiguous()  # (B, S + 1)
        return torch.searchsorted(cum, slots, right=True).clamp(max=src_tokens.shape[1] - 1)


class MuseformerEncoder(FairseqEncoder):
    """Bidirectional FC-attention over the score."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(dictionary)
        self.args = args
        self.bar_idx = dictionary.index(BAR_TOKEN)
        dim = args.encoder_embed_dim
        self.embed = Embedder(embed_tokens, dim, args.max_bars, args.summary_tokens, args.dropout)
        self.layers = nn.ModuleList([
            EncoderLayer(dim, args.encoder_attention_heads, args.encoder_ffn_embed_dim, args.dropout,
                         args.attention_dropout, args.activation_dropout)
            for _ in range(args.encoder_layers)])
        self.ln = nn.LayerNorm(dim)
        self.attend = get_backend(args.attention_impl)
        self.grammar = None  # set by the task for constrained generation
        self.style = zero_linear(dim) if getattr(args, "style_embed", False) else None
        self.anchors: Optional[SlotAnchors] = None  # set by build_model with --align-source

    def style_vector(self, src_tokens: Tensor, bar: Tensor, valid: Tensor) -> Optional[Tensor]:
        """(B, 1, C) style vector: the projected mean (scaled) embedding of the prefix, i.e. the tokens
        before the first bar (instruct levels, composer, performer); zero for a source without one.
        None without ``--style-embed``. Added to every encoder and decoder position, so that the
        instruct levels reach every bar, where the bar attention would show them to bar 0 only."""
        if self.style is None:
            return None
        prefix = (valid & bar.eq(0)).unsqueeze(-1)  # (B, T, 1)
        emb = self.embed.scale * self.embed.tokens(src_tokens)  # (B, T, C)
        n = prefix.sum(dim=1, keepdim=True).clamp(min=1).to(emb.dtype)  # (B, 1, 1)
        mean = (emb * prefix.to(emb.dtype)).sum(dim=1, keepdim=True) / n  # (B, 1, C)
        return self.style(mean)

    def upgrade_state_dict_named(self, state_dict: Dict, name: str) -> Dict:
        """Warm start of a ``--style-embed`` model from a checkpoint trained without it: the missing
        projection starts at zero (the checkpoint's function is unchanged); a grown dictionary gets zero
        embedding rows for its new tokens (:func:`grow_rows`)."""
        grow_rows(state_dict, name, "embed.tokens.weight", self.embed.tokens.weight)
        return fill_missing_zero_linear(state_dict, name, "style", self.style)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None,
                tempo_prior: Optional[Tensor] = None, dynamics_prior: Optional[Tensor] = None,
                **kwargs) -> Dict:
        """``tempo_prior``: (B, 4) tempo level state of the music before this segment (the renderer's,
        ``Grammar.level_after``), read by the tempo band; ``dynamics_prior``: (B, 4) dynamics state
        (``Grammar.dynamics_after``), read by the dynamics band; zeros when not given."""
        valid = src_tokens.ne(self.dictionary.pad())
        bar = bar_indices(src_tokens, self.bar_idx)  # (B, T)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # left padding aware
        layout = Layout(bar, valid, self.args.summary_tokens)
        x = torch.cat([self.embed.content(src_tokens, positions, bar, in_bar_index(src_tokens, self.bar_idx, valid)),
                       self.embed.summaries(layout.sum_bar)], dim=1)  # (B, L, C)
        style = self.style_vector(src_tokens, bar, valid)  # (B, 1, C) or None
        if style is not None:
            x = x + style
        plan = self.plan(layout)
        for layer in self.layers:
            x = layer(x, self.attend, plan)
        out = {"enc": self.ln(x), "layout": layout}
        if style is not None:
            out["style"] = style
        if self.grammar is not None:
            out.update(self.grammar.slot_tensors(src_tokens, valid))  # "slots" [, "slot_q", "slot_once", ...]
            if "slot_gap" in out:
                prior = torch.zeros(src_tokens.shape[0], LEVEL_FIELDS, device=src_tokens.device)  # (B, 4)
                out["tempo_prior"] = prior if tempo_prior is None else tempo_prior.to(prior)
            if "slot_dyn" in out:
                prior = torch.zeros(src_tokens.shape[0], DYN_FIELDS, device=src_tokens.device)  # (B, 4)
                out["dynamics_prior"] = prior if dynamics_prior is None else dynamics_prior.to(prior)
        if self.anchors is not None:
            out["anchors"] = self.anchors(src_tokens, valid)  # (B, S + 1)
        return out

    def plan(self, layout: Layout):
        return make_plan(layout, "encoder", self.args)

    def reorder_encoder_out(self, encoder_out: Dict, new_order: Tensor) -> Dict:
        out = {"enc": encoder_out["enc"].index_select(0, new_order),
               "layout": encoder_out["layout"].select(new_order)}
        for key in ("slots", "slot_q", "slot_once", "slot_gap", "slot_scale", "slot_fermata", "tempo_prior",
                    "tempo_ref", "slot_dyn", "dynamics_prior", "style", "anchors"):
            if key in encoder_out:
                out[key] = encoder_out[key].index_select(0, new_order)
        return out

    def max_positions(self) -> int:
        return self.args.max_source_positions


class MuseformerDecoder(FairseqIncrementalDecoder):
    """Causal FC-attention over the performance, bar-aligned cross FC-attention to the score."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(dictionary)
        self.args = args
        self.bar_idx = dictionary.index(BAR_TOKEN)
        dim = args.decoder_embed_dim
        self.embed = Embedder(embed_tokens, dim, args.max_bars, args.summary_tokens, args.dropout)
        self.layers = nn.ModuleList([
            DecoderLayer(dim, args.decoder_attention_heads, args.decoder_ffn_embed_dim, args.dropout,
                         args.attention_dropout, args.activation_dropout)
            for _ in range(args.decoder_layers)])
        self.ln = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.out.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.out.weight, std=dim ** -0.5)
        self.attend = get_backend(args.attention_impl)
        self.align = zero_linear(dim) if getattr(args, "align_source", False) else None

    def aligned_source(self, encoder_out: Dict, steps: Tensor) -> Optional[Tensor]:
        """(B, n, C) projection of the encoder output at the score token of each step's slot (the
        note's ``Pitch`` for its velocity/timing/articulation, the group's ``Pos`` for its tempo and
        pedal, the ``Bar``), so that the decoder knows exactly which score note it is rendering; the
        bar cross-attention alone has to find it among the bar's notes. ``steps``: (n,) decoder
        positions (position t predicts target token t). None without ``--align-source``."""
        if self.align is None:
            return None
        anchors = encoder_out["anchors"]  # (B, S + 1)
        cols = steps.clamp(max=anchors.shape[1] - 1)
        index = anchors[:, cols]  # (B, n)
        enc = encoder_out["enc"]  # (B, L, C)
        picked = enc.gather(1, index.unsqueeze(-1).expand(-1, -1, enc.shape[-1]))  # (B, n, C)
        return self.align(picked)

    def upgrade_state_dict_named(self, state_dict: Dict, name: str) -> Dict:
        """Warm start of an ``--align-source`` model from a checkpoint trained without it: the missing
        projection starts at zero (the checkpoint's function is unchanged); a grown dictionary gets zero
        embedding and output rows for its new tokens (:func:`grow_rows`)."""
        grow_rows(state_dict, name, "embed.tokens.weight", self.embed.tokens.weight)
        grow_rows(state_dict, name, "out.weight", self.out.weight)
        return fill_missing_zero_linear(state_dict, name, "align", self.align)

    def drop_inputs(self, prev_output_tokens: Tensor) -> Tensor:
        """In training, replace each previous performance token by ``<unk>`` with probability
        ``--decoder-input-dropout`` (bar tokens, which carry the bar structure, and specials are kept),
        so that the model leans on the score rather than on its own history: free-running, a model that
        copies its recent velocities drifts (measured: louder and louder over 12 bars)."""
        p = getattr(self.args, "decoder_input_dropout", 0.0)
        if not self.training or p <= 0:
            return prev_output_tokens
        d = self.dictionary
        keep = (prev_output_tokens.eq(self.bar_idx) | prev_output_tokens.eq(d.pad())
                | prev_output_tokens.eq(d.eos()) | prev_output_tokens.eq(d.bos()))
        drop = torch.rand(prev_output_tokens.shape, device=prev_output_tokens.device) < p
        return prev_output_tokens.masked_fill(drop & ~keep, d.unk())

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, prev_output_tokens: Tensor, encoder_out: Optional[Dict] = None,
                incremental_state: Optional[Dict] = None, features_only: bool = False, **kwargs):
        if incremental_state is not None:
            return self.forward_incremental(prev_output_tokens, encoder_out, incremental_state)
        prev_output_tokens = self.drop_inputs(prev_output_tokens)
        valid = prev_output_tokens.ne(self.dictionary.pad())
        bar = bar_indices(prev_output_tokens, self.bar_idx)  # (B, T)
        t = prev_output_tokens.shape[1]
        positions = torch.arange(t, device=bar.device).expand_as(bar)
        layout = Layout(bar, valid, self.args.summary_tokens)
        content = self.embed.content(prev_output_tokens, positions, bar,
                                     in_bar_index(prev_output_tokens, self.bar_idx, valid))  # (B, T, C)
        aligned = self.aligned_source(encoder_out, positions[0])  # (B, T, C) or None
        if aligned is not None:
            content = content + aligned
        x = torch.cat([content, self.embed.summaries(layout.sum_bar)], dim=1)  # (B, L, C)
        if "style" in encoder_out:
            x = x + encoder_out["style"]  # (B, 1, C) onto every position
        enc_layout = encoder_out["layout"]
        self_plan = make_plan(layout, "decoder", self.args)
        cross_plan = make_plan(layout, "cross", self.args, enc_layout)
        for layer in self.layers:
            x = layer(x, encoder_out["enc"], self.attend, self_plan, cross_plan)
        x = self.ln(x[:, :t])  # content positions only: (B, T, C)
        return (x if features_only else self.out(x)), {"attn": [None], "inner_states": None}

    # ------------------------------------------------------------------ incremental decoding
    def forward_incremental(self, prev_output_tokens: Tensor, encoder_out: Dict, incremental_state: Dict):
        """One generation step: embeds the newest token (and, when it opens a bar, the summary of the
        bar just closed), attends against the per-layer caches, returns logits for the newest token."""
        state = self.get_incremental_state(incremental_state, "fc") or self.init_state(prev_output_tokens)
        if "tempo_prior" in encoder_out and "level" not in state:
            state["level"] = encoder_out["tempo_prior"].clone()  # (B, 4)
        tok = prev_output_tokens[:, -1:]  # (B, 1)
        b = tok.shape[0]
        step = prev_output_tokens.shape[1] - 1
        if getattr(self, "token_period", None) is not None:  # the beat period of the latest tempo token
            period = self.token_period.to(tok.device)[tok[:, 0]]  # (B,)
            state["period"] = torch.where(torch.isfinite(period), period, state["period"])
            if "slot_gap" in encoder_out and step > 0:  # the token just read filled slot step - 1
                k = min(step - 1, encoder_out["slot_gap"].shape[1] - 1)
                state["level"] = tempo_level_update(state["level"], period, encoder_out["slot_gap"][:, k],
                                                    encoder_out["slot_scale"][:, k])
        if "slot_dyn" in encoder_out:
            if "dyn" not in state:
                state["dyn"] = encoder_out["dynamics_prior"].clone()  # (B, 4)
            if step > 0:  # the token just read filled slot step - 1
                k = min(step - 1, encoder_out["slot_dyn"].shape[1] - 1)
                value = self.token_value.to(tok.device)[tok[:, 0]]  # (B,) velocity bin at a Vel slot
                state["dyn"] = dynamics_level_update(state["dyn"], value, encoder_out["slot_dyn"][:, k])
        is_bar = tok.eq(self.bar_idx).squeeze(1)  # (B,)
        new_bar = state["bar"] + is_bar.long()  # (B,)
        in_bar = torch.where(is_bar, torch.zeros_like(state["in_bar"]), state["in_bar"] + 1)
        pos = torch.full((b, 1), step, device=tok.device, dtype=torch.long)
        x_tok = self.embed.content(tok, pos, new_bar.unsqueeze(1), in_bar.clamp(max=MAX_IN_BAR - 1).unsqueeze(1))
        aligned = self.aligned_source(encoder_out, pos[0])  # (B, 1, C) or None, as in teacher forcing
        if aligned is not None:
            x_tok = x_tok + aligned
        rows = [x_tok]
        q_bar, q_sum, q_pos = [new_bar.unsqueeze(1)], [torch.zeros_like(tok, dtype=torch.bool)], [pos]
        closes = is_bar & (step > 0)  # (B,) rows whose previous bar just closed
        n_s = self.args.summary_tokens
        q_ok = [torch.ones_like(tok, dtype=torch.bool)]
        closing = bool(closes.any())
        if closing:  # summaries of the bar that just closed, computed now, through every layer
            sum_bar = state["bar"].unsqueeze(1).expand(b, n_s)  # (B, S)
            sum_pos = state["next_sum_pos"] + torch.arange(n_s, device=tok.device).expand(b, -1)
            rows.insert(0, self.embed.summaries(sum_bar))
            q_bar.insert(0, sum_bar)
            q_sum.insert(0, torch.ones_like(sum_bar, dtype=torch.bool))
            q_pos.insert(0, sum_pos)
            q_ok.insert(0, closes.unsqueeze(1).expand(b, n_s))  # rows not closing: an unused dummy
        x = torch.cat(rows, dim=1)  # (B, n_new, C)
        if "style" in encoder_out:
            x = x + encoder_out["style"]  # (B, 1, C), as in teacher forcing
        qb, qs, qp = torch.cat(q_bar, 1), torch.cat(q_sum, 1), torch.cat(q_pos, 1)
        qv = torch.cat(q_ok, 1)
        kb = torch.cat([state["k_bar"], qb], 1)
        ks = torch.cat([state["k_sum"], qs], 1)
        kp = torch.cat([state["k_pos"], qp], 1)
        kv = torch.cat([state["k_ok"], qv], 1)
        m = pattern.decoder_mask(qb, qs, qp, kb, ks, kp, self.args.fine_bars_list)  # (B, n_new, L)
        m = (m & kv.unsqueeze(1)) | (qp.unsqueeze(-1) == kp.unsqueeze(-2))
        enc_layout = encoder_out["layout"]
        cm = pattern.cross_mask(qb, enc_layout.bar, enc_layout.is_sum, self.args.cross_window)
        cm = cm & enc_layout.valid.unsqueeze(1)
        caches = state["caches"]
        for layer, cache in zip(self.layers, caches):
            x = layer.forward_step(x, encoder_out["enc"], cache, m, cm, step_attend)
        logits = self.out(self.ln(x[:, -1:]))  # (B, 1, V)
        state.update(bar=new_bar, in_bar=in_bar, k_bar=kb, k_sum=ks, k_pos=kp, k_ok=kv)
        if closing:
            state["next_sum_pos"] = state["next_sum_pos"] + n_s
        self.set_incremental_state(incremental_state, "fc", state)
        if "slots" in encoder_out:
            logits = self.constrain(logits, encoder_out, step, state["period"], state.get("level"),
                                    state.get("dyn"))
        return logits, {"attn": [None], "inner_states": None}

    def init_state(self, prev_output_tokens: Tensor) -> Dict:
        b = prev_output_tokens.shape[0]
        dev = prev_output_tokens.device
        empty_l = torch.zeros(b, 0, dtype=torch.long, device=dev)
        return {"bar": torch.zeros(b, dtype=torch.long, device=dev),
                "in_bar": torch.zeros(b, dtype=torch.long, device=dev),  # the start token is 1 past "bar -1"
                "k_bar": empty_l, "k_sum": empty_l.bool(), "k_pos": empty_l, "k_ok": empty_l.bool(),
                "next_sum_pos": torch.full((b, 1), 1 << 40, dtype=torch.long, device=dev),
                "period": torch.full((b,), float("nan"), device=dev),  # s per quarter, for the key-down floor
                "caches": [{} for _ in self.layers]}

    def constrain(self, logits: Tensor, encoder_out: Dict, step: int, period: Optional[Tensor] = None,
                  level: Optional[Tensor] = None, dyn: Optional[Tensor] = None) -> Tensor:
        """Allow only tokens of the grammar's type at this step (``encoder_out["slots"]``; EOS after the
        last slot), keep the key-down floor (``encoder_out["slot_q"]``: (B, S + 1) notated quarters of
        articulation slots, ``period``: (B,) s per quarter; see ``key_down_floor``), play a unison's
        repeated pitch once (``encoder_out["slot_once"]``: (B, S + 1) velocity slots that take the
        grammar's deletion token; applied after the mean), keep the tempo band (``encoder_out["slot_gap"]``,
        ``["slot_scale"]``, ``level``: (B, 4), see ``tempo_band_penalty``; before the mean, which then
        takes the expected value under the banded distribution), hold fermatas (``["slot_fermata"]``: (B, S
        + 1) slots whose expected tempo is lifted, see ``fermata_hold``; after the band, before the mean),
        keep the dynamics band (``["slot_dyn"]``, ``dyn``: (B, 4), see ``dynamics_band_penalty``; before
        the mean),
        and divide the logits by that type's
        relative temperature (1 unless set, see Grammar); a "mean" type leaves one allowed token, the one
        nearest the expected value (``expected_value_choice``)."""
        slots = encoder_out["slots"]
        col = slots[:, min(step, slots.shape[1] - 1)]  # (B,)
        allowed = self.type_table.to(logits.device)[col]  # (B, V)
        logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        slot_q = encoder_out.get("slot_q")
        if slot_q is not None and period is not None:
            nominal_q = slot_q[:, min(step, slot_q.shape[1] - 1)]  # (B,)
            logits = key_down_floor(logits, self.token_value.to(logits.device), nominal_q, period,
                                    self.min_key_down_s)
        slot_gap = encoder_out.get("slot_gap")
        if slot_gap is not None and level is not None and self.tempo_band > 0:
            k = min(step, slot_gap.shape[1] - 1)
            logits = tempo_band_penalty(logits, self.token_period.to(logits.device), level, slot_gap[:, k],
                                        encoder_out["slot_scale"][:, k], self.tempo_band, self.tempo_bin_log,
                                        ref=encoder_out.get("tempo_ref"))
        slot_fermata = encoder_out.get("slot_fermata")
        if slot_fermata is not None and level is not None and period is not None:
            k = min(step, slot_fermata.shape[1] - 1)
            held = slot_fermata[:, k]  # (B,)
            if held.any():
                ref = fermata_reference_bin(level, period, encoder_out["slot_scale"][:, k], self.first_period,
                                            self.tempo_bin_log)  # (B,)
                logits = fermata_hold(logits, self.tempo_ids.to(logits.device), ref, self.fermata_hold, held)
        slot_dyn = encoder_out.get("slot_dyn")
        if slot_dyn is not None and dyn is not None and self.dynamics_band > 0:
            ref = slot_dyn[:, min(step, slot_dyn.shape[1] - 1)]  # (B,)
            logits = dynamics_band_penalty(logits, self.token_value.to(logits.device), dyn, ref, self.dynamics_band)
        mean = getattr(self, "type_mean", None)
        if mean is not None:
            rows = mean.to(logits.device)[col].view(-1, 1, 1)  # (B, 1, 1)
            if rows.any():
                choice = expected_value_choice(logits, self.token_value.to(logits.device))
                logits = torch.where(rows, choice, logits)
        slot_once = encoder_out.get("slot_once")  # after the mean, which would pick a velocity there
        if slot_once is not None:
            once = slot_once[:, min(step, slot_once.shape[1] - 1)]  # (B,)
            if once.any():
                only = logits.masked_fill(torch.isfinite(logits), FORCEABLE_LOGIT)  # (B, 1, V)
                only[..., self.once_token] = 0.0
                logits = torch.where(once.view(-1, 1, 1), only, logits)
        scale = getattr(self, "type_scale", None)
        if scale is not None:
            logits = logits * scale.to(logits.device, logits.dtype)[col].view(-1, 1, 1)  # (B, 1, V)
        return logits

    def reorder_incremental_state(self, incremental_state: Dict, new_order: Tensor) -> None:
        state = self.get_incremental_state(incremental_state, "fc")
        if state is None:
            return
        if new_order.numel() == state["bar"].numel() and torch.equal(
                new_order, torch.arange(new_order.numel(), device=new_order.device)):
            return  # identity (greedy/sampling): nothing to move
        for key, value in list(state.items()):
            if torch.is_tensor(value):
                state[key] = value.index_select(0, new_order)
        for cache in state["caches"]:
            for key, value in list(cache.items()):
                if torch.is_tensor(value):
                    cache[key] = value.index_select(0, new_order)
        self.set_incremental_state(incremental_state, "fc", state)

    def max_positions(self) -> int:
        return self.args.max_target_positions


FORCEABLE_LOGIT = -80.0  # logit of a token the grammar allows but decoding never picks (the other tokens
# of a "mean" slot, articulations under the key-down floor, the velocities of a unison's repeated pitch):
# exp(-80) ~ 2e-35 is never sampled, yet a
# positive float32 probability, so that fairseq can still force one of them as a prefix token (a
# segment's overlap bars) and sample the row (a probability of 0 there fails torch.multinomial)


def expected_value_choice(logits: Tensor, value: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (V,) token numbers (NaN: none) -> (B, 1, V) logits that put all the
    mass on the numbered token nearest the expected number under softmax(logits) over the allowed
    numbered tokens: the minimum-squared-error point estimate, on the token's scale (a bin, ms, log2
    ratio). The other allowed tokens get ``FORCEABLE_LOGIT`` (finite: still forceable), the rest stay -inf."""
    allowed = torch.isfinite(logits)  # (B, 1, V)
    ok = allowed & torch.isfinite(value)  # (B, 1, V)
    p = torch.softmax(logits.float().masked_fill(~ok, float("-inf")), dim=-1)  # (B, 1, V)
    mean = (p.nan_to_num(0.0) * value.nan_to_num(0.0)).sum(-1, keepdim=True)  # (B, 1, 1)
    dist = (value - mean).abs().masked_fill(~ok, float("inf"))  # (B, 1, V)
    best = dist.argmin(-1, keepdim=True)  # (B, 1, 1)
    out = torch.full_like(logits, float("-inf")).masked_fill(allowed, FORCEABLE_LOGIT)
    return out.scatter(-1, best, 0.0)


def key_down_floor(logits: Tensor, value: Tensor, nominal_q: Tensor, period_s: Tensor,
                   min_key_down_s: float) -> Tensor:
    """(B, 1, V) masked logits of an articulation step, (V,) token log2 ratios (NaN: none), (B,) notated
    quarters (NaN: the row's step is no articulation slot, left as it is), (B,) beat period (s per
    quarter) -> logits where every allowed articulation that holds the note shorter than
    ``min_key_down_s`` (key-down 2 ** value x nominal_q x period_s seconds) gets ``FORCEABLE_LOGIT``
    (never picked, still forceable). When all of them would, the longest stays allowed. Example: an
    eighth note (0.5 quarter) at 0.2 s per quarter and a 25 ms floor keeps log2 ratios >= -2."""
    allowed = torch.isfinite(logits) & torch.isfinite(value)  # (B, 1, V)
    longest = value.masked_fill(~allowed, float("-inf")).amax(-1)  # (B, 1)
    floor = torch.log2(min_key_down_s / (nominal_q * period_s)).unsqueeze(1)  # (B, 1) log2 ratio; NaN: off
    floor = torch.minimum(floor, longest)  # (B, 1)
    too_short = allowed & (value < floor.unsqueeze(-1) - 1e-6)  # (B, 1, V); NaN floor compares False
    return logits.masked_fill(too_short, FORCEABLE_LOGIT)


# The tempo band (--tempo-band BINS): keeps the windowed tempo level near a reference (--tempo-anchor).
TEMPO_BAND_TAU_Q = 8.0  # quarters: time constant of the windowed (exponentially weighted) tempo level
TEMPO_BAND_WARMUP_Q = 16.0  # quarters of music decoded before the band applies (the opening sets the level)
TEMPO_BAND_GAIN = 0.002  # prior curvature (logit per squared tempo bin) per bin that the window lies outside
TEMPO_BAND_MAX_CURVE = 1.0 / (2 * 4.0 ** 2)  # at most a Gaussian prior of 4 bins' standard deviation
TEMPO_BAND_MAX_PENALTY = 50.0  # logits: e^-50 is never sampled, yet a token of a segment's forced overlap
# keeps a positive float32 probability after the softmax (fairseq samples forced rows too; see FORCEABLE_LOGIT)
TEMPO_ANCHORS = ("self", "notated")  # what the band centres on (--tempo-anchor)
LEVEL_FIELDS = 4  # a level state row: windowed seconds, windowed quarters, total seconds, total quarters


def tempo_level_update(level: Tensor, period_s: Tensor, gap_q: Tensor, scale: Tensor,
                       tau_q: float = TEMPO_BAND_TAU_Q) -> Tensor:
    """(B, 4) level state [windowed s, windowed quarters, total s, total quarters], (B,) beat period of
    the onset group just decoded (s per quarter), its notated gap from the previous group (quarters) and
    its notated-tempo scale (``QPM`` / 120) -> the state after it. Performed time counts as gap x period x
    scale (seconds at 120 quarters per minute notated), so a notated tempo change moves no level; the
    window decays by exp(-gap / tau_q). Rows whose gap is NaN or 0 (no group, the first group) are
    left as they are."""
    use = torch.isfinite(gap_q) & (gap_q > 0) & torch.isfinite(period_s)  # (B,)
    gap = torch.where(use, gap_q, torch.zeros_like(gap_q))  # (B,)
    secs = gap * torch.where(use, period_s * scale, torch.zeros_like(period_s))  # (B,)
    decay = torch.exp(-gap / tau_q)  # (B,)
    return torch.stack([level[:, 0] * decay + secs, level[:, 1] * decay + gap,
                        level[:, 2] + secs, level[:, 3] + gap], dim=1)  # (B, 4)


def band_reference(level: Tensor, ref: Optional[Tensor] = None) -> Tensor:
    """(B,) reference level of the tempo band, s per quarter relative to the notated tempo: ``ref`` when
    given, else the level so far (total s / total quarters of the (B, 4) level state)."""
    return level[:, 2] / level[:, 3].clamp(min=1e-9) if ref is None else ref


def tempo_band_excess(level: Tensor, band_bins: float, bin_log: float, ref: Optional[Tensor] = None) -> Tensor:
    """(B, 4) level state -> (B,) signed bins by which the windowed level (windowed s / windowed
    quarters) lies outside ``band_bins`` of the reference level: > 0 too slow, < 0 too fast, 0 inside
    the band. The reference is the level so far (total s / total quarters), or ``ref`` (B,) when given
    (s per quarter relative to the notated tempo: 0.5 is the notated tempo itself; NaN rows give NaN).
    ``bin_log``: the log of one tempo bin's period ratio."""
    window = level[:, 0] / level[:, 1].clamp(min=1e-9)  # (B,) s per quarter
    dev = torch.log(window.clamp(min=1e-9) / band_reference(level, ref).clamp(min=1e-9)) / bin_log  # (B,) bins
    return torch.sign(dev) * (dev.abs() - band_bins).clamp(min=0.0)


def tempo_band_penalty(logits: Tensor, period_s: Tensor, level: Tensor, gap_q: Tensor, scale: Tensor,
                       band_bins: float, bin_log: float, warmup_q: float = TEMPO_BAND_WARMUP_Q,
                       gain: float = TEMPO_BAND_GAIN, max_curve: float = TEMPO_BAND_MAX_CURVE,
                       ref: Optional[Tensor] = None) -> Tensor:
    """(B, 1, V) masked logits, (V,) beat period of each token (s per quarter; NaN: no Tempo token),
    (B, 4) level state (``tempo_level_update``), (B,) notated gap (quarters; NaN: no Tempo slot) and
    notated-tempo scale of this step -> logits pulled toward the reference level while the windowed
    level lies outside the band around it (the level so far, or ``ref`` where given; a NaN ``ref``
    leaves its row unchanged; see ``tempo_band_excess``): each Tempo token loses curve x d ** 2, d = its
    distance in bins from the reference (log period x scale / reference / ``bin_log``), curve = ``gain``
    x the excess in bins, at most ``max_curve``. A Gaussian prior centred on the reference, multiplied
    into the model's distribution: it narrows the choice around the reference and never rewards a
    token beyond it (a linear tilt would, and answered a slow passage with bursts of the fastest bins).
    The penalty is taken relative to the allowed token with the least (it keeps its logit) and capped at
    ``TEMPO_BAND_MAX_PENALTY``. Rows before ``warmup_q`` quarters, at no Tempo slot, at a group with gap
    0, or inside the band are unchanged. Example: reference 0.5 s per quarter, window 0.8 s (16.2 bins
    slower), band 12: excess 4.2, curve 0.0085; a token 10 bins from the reference loses 0.85 logits,
    one 20 bins away 3.4."""
    use = torch.isfinite(gap_q) & (gap_q > 0) & (level[:, 3] >= warmup_q)  # (B,)
    curve = (gain * tempo_band_excess(level, band_bins, bin_log, ref).abs()).clamp(max=max_curve)  # (B,)
    curve = torch.where(use & torch.isfinite(curve), curve, torch.zeros_like(curve))  # (B,); NaN ref: none
    if not bool((curve != 0).any()):
        return logits
    reference = band_reference(level, ref)  # (B,) s per quarter
    dist = torch.log(period_s.unsqueeze(0) * scale.unsqueeze(1) / reference.unsqueeze(1)) / bin_log  # (B, V) bins
    return apply_prior(logits, curve.unsqueeze(1) * dist.square())  # (B, V) penalty; NaN: no Tempo token


def apply_prior(logits: Tensor, penalty: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (B, V) penalty per token (NaN: none) -> logits minus the penalty taken
    relative to the allowed token with the least (it keeps its logit), capped at
    ``TEMPO_BAND_MAX_PENALTY``: the bands' Gaussian priors."""
    candidate = torch.isfinite(logits[:, 0]) & torch.isfinite(penalty)  # (B, V)
    least = penalty.masked_fill(~candidate, float("inf")).amin(-1, keepdim=True)  # (B, 1)
    penalty = (penalty - least.clamp(max=1e30)).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # (B, V)
    penalty = penalty.masked_fill(~candidate, 0.0).clamp(min=0.0, max=TEMPO_BAND_MAX_PENALTY)  # (B, V)
    return logits - penalty.unsqueeze(1).to(logits.dtype)  # (B, 1, V); -inf stays -inf


# The fermata hold (--fermata-hold BINS): a fermata's onset group and the one after it are played slower.
FERMATA_MIN_WINDOW_Q = 1.0  # quarters in the tempo window below which the latest beat period is the reference


def fermata_reference_bin(level: Tensor, period_s: Tensor, scale: Tensor, first_period_s: float,
                          bin_log: float) -> Tensor:
    """(B, 4) level state (``tempo_level_update``), (B,) beat period of the latest ``Tempo`` token (s per
    quarter; NaN: none yet), (B,) notated-tempo scale of this step -> (B,) fractional tempo bin of the
    reference that the fermata hold lifts: the 8-quarter windowed level converted to this step's notated
    tempo, or the latest beat period while the window holds under ``FERMATA_MIN_WINDOW_Q`` quarters (a
    fermata in the opening bars). ``first_period_s``: bin 0's period; ``bin_log``: log period ratio of
    one bin. NaN where neither exists."""
    window = level[:, 0] / level[:, 1].clamp(min=1e-9) / scale  # (B,) s per quarter at this step's QPM
    ref = torch.where(level[:, 1] >= FERMATA_MIN_WINDOW_Q, window, period_s)  # (B,)
    return torch.log(ref / first_period_s) / bin_log


def fermata_hold(logits: Tensor, tempo_ids: Tensor, ref_bin: Tensor, lift_bins: float, active: Tensor) -> Tensor:
    """(B, 1, V) masked logits, (N,) dictionary ids of the ``Tempo`` tokens in bin order, (B,) reference
    bin (fractional; NaN: no reference), lift (bins), (B,) rows at a fermata slot -> logits whose ``Tempo``
    distribution is moved k whole bins slower, k the least that brings its expected bin to ref_bin +
    lift_bins or beyond (rows already there, inactive or without a reference are unchanged). The shape of
    the model's distribution is kept (a sample keeps its spread; ``Tempo=mean`` then picks the lifted
    mean): bin b takes the logit of bin b - k, the top bin gathers the mass of every bin shifted past it
    (log-sum-exp), and bins below k that were allowed get ``FORCEABLE_LOGIT`` (still forceable as a
    segment's overlap). Example: expected bin 60.4, reference 58.0, lift 15: k = ceil(73.0 - 60.4) = 13,
    the old bin 60 becomes bin 73."""
    if not bool(active.any()):
        return logits
    n = tempo_ids.numel()
    old = logits[:, 0, tempo_ids].float()  # (B, N)
    bins = torch.arange(n, device=logits.device, dtype=torch.float)  # (N,)
    p = torch.softmax(old, dim=-1).nan_to_num(0.0)  # (B, N); a row with no Tempo token is all NaN -> 0
    expected = (p * bins).sum(-1)  # (B,)
    k = torch.ceil(ref_bin + lift_bins - expected - 1e-6)  # (B,)
    use = active & torch.isfinite(k) & (k > 0) & torch.isfinite(old).any(-1)  # (B,)
    if not bool(use.any()):
        return logits
    k = torch.where(use, k, torch.zeros_like(k)).clamp(max=n - 1).long()  # (B,)
    src = bins.long().unsqueeze(0) - k.unsqueeze(1)  # (B, N) source bin of each bin
    shifted = old.gather(1, src.clamp(min=0))  # (B, N)
    tail = torch.logcumsumexp(old.flip(-1), dim=-1).flip(-1)  # (B, N): log-sum-exp of bins j..N-1
    shifted[:, -1] = tail.gather(1, src[:, -1:].clamp(min=0)).squeeze(1)  # the top bin gathers the rest
    below = src < 0  # (B, N)
    shifted = torch.where(below, old.masked_fill(torch.isfinite(old), FORCEABLE_LOGIT), shifted)  # (B, N)
    new = torch.where(use.unsqueeze(1), shifted, old)  # (B, N)
    out = logits.clone()
    out[:, 0, tempo_ids] = new.to(logits.dtype)
    return out


# The dynamics band (--dynamics-band BINS): keeps the windowed velocity level near the notated dynamics.
DYN_BAND_TAU_NOTES = 32.0  # notes: time constant of the windowed (exponentially weighted) offset from the notated level
DYN_BAND_WARMUP_NOTES = 32.0  # notes decoded before the band applies (the opening sets the rendering's own offset)
DYN_BAND_GAIN = 0.03  # prior curvature (logit per squared velocity bin) per bin that the window lies outside
DYN_BAND_MAX_CURVE = 1.0 / (2 * 3.0 ** 2)  # at most a Gaussian prior of 3 bins' (6 MIDI velocities') deviation
DYN_FIELDS = 4  # a dynamics state row: windowed offset sum, windowed weight, total offset sum, total notes


def dynamics_level_update(dyn: Tensor, value: Tensor, ref: Tensor, tau: float = DYN_BAND_TAU_NOTES) -> Tensor:
    """(B, 4) dynamics state [windowed offset sum, windowed weight, total offset sum, total notes], (B,)
    velocity bin of the note just decoded (NaN: none, e.g. a deleted note or no ``Vel`` slot) and its
    notated level (fractional bin, ``dynamics_slot_refs``; NaN: none) -> the state after it. The offset is
    bin - level; the window decays by exp(-1 / tau) per note. Rows where either is NaN are unchanged."""
    use = torch.isfinite(value) & torch.isfinite(ref)  # (B,)
    off = torch.where(use, value - ref, torch.zeros_like(value))  # (B,) bins
    decay = torch.where(use, torch.full_like(value, math.exp(-1.0 / tau)), torch.ones_like(value))  # (B,)
    one = use.to(value.dtype)  # (B,)
    return torch.stack([dyn[:, 0] * decay + off, dyn[:, 1] * decay + one,
                        dyn[:, 2] + off, dyn[:, 3] + one], dim=1)  # (B, 4)


def dynamics_band_excess(dyn: Tensor, band_bins: float) -> Tensor:
    """(B, 4) dynamics state -> (B,) signed velocity bins by which the windowed offset from the notated
    level lies outside ``band_bins`` of the rendering's offset so far: > 0 too loud for the notated
    dynamics, < 0 too soft, 0 inside the band."""
    window = dyn[:, 0] / dyn[:, 1].clamp(min=1e-9)  # (B,) bins
    so_far = dyn[:, 2] / dyn[:, 3].clamp(min=1e-9)  # (B,) bins
    dev = window - so_far  # (B,)
    return torch.sign(dev) * (dev.abs() - band_bins).clamp(min=0.0)


def dynamics_band_penalty(logits: Tensor, value: Tensor, dyn: Tensor, ref: Tensor, band_bins: float,
                          warmup_notes: float = DYN_BAND_WARMUP_NOTES, gain: float = DYN_BAND_GAIN,
                          max_curve: float = DYN_BAND_MAX_CURVE) -> Tensor:
    """(B, 1, V) masked logits, (V,) token numbers (velocity bins at ``Vel`` tokens), (B, 4) dynamics
    state (``dynamics_level_update``), (B,) notated level of this step's note (fractional bin; NaN: no
    ``Vel`` slot or no dynamics marked) -> logits pulled toward the notated level plus the rendering's
    offset so far while the windowed offset lies outside the band (``dynamics_band_excess``): each
    allowed numbered token loses curve x d ** 2, d = its distance in bins from that target, curve =
    ``gain`` x the excess, at most ``max_curve``; relative to the allowed token with the least, capped at
    ``TEMPO_BAND_MAX_PENALTY``. A Gaussian prior multiplied into the model's distribution, as the tempo
    band's: inside the band the model's dynamics are its own, so its phrasing and voicing stay; past it,
    it follows the notated dynamic changes (a *p* after a *f* section) instead of drifting. Rows before
    ``warmup_notes`` notes, without a level or inside the band are unchanged. Example: level 24 bins (p),
    offset so far +6, window +11.5 (too loud), band 4: excess 1.5, curve 0.045; target 30: bin 40 loses
    4.5 logits, bin 32 0.18."""
    use = torch.isfinite(ref) & (dyn[:, 3] >= warmup_notes)  # (B,)
    curve = (gain * dynamics_band_excess(dyn, band_bins).abs()).clamp(max=max_curve)  # (B,)
    curve = torch.where(use & torch.isfinite(curve), curve, torch.zeros_like(curve))  # (B,)
    if not bool((curve != 0).any()):
        return logits
    target = ref + dyn[:, 2] / dyn[:, 3].clamp(min=1e-9)  # (B,) bins
    return apply_prior(logits, curve.unsqueeze(1) * (value.unsqueeze(0) - target.nan_to_num(0.0).unsqueeze(1)).square())


def pad_rows(rows: List[list], fill, dtype: torch.dtype, device) -> Tensor:
    """Per-slot rows of unequal length -> (B, max_len + 1) tensor, ``fill`` after each row's end (the
    extra column is the EOS step)."""
    width = max(len(r) for r in rows) + 1
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=dtype, device=device)


class Grammar:
    """Turns source token ids into per-step allowed token *type* ids for constrained generation."""

    def __init__(self, src_dict, tgt_dict, target_slots, token_type, forbidden: Sequence[str] = (),
                 type_temperature: Optional[Dict[str, Union[float, str]]] = None,
                 token_value: Optional[Callable[[str], Optional[float]]] = None,
                 min_key_down_s: float = 0.0,
                 art_nominal_q: Optional[Callable[[Sequence[str]], List[float]]] = None,
                 beat_period_s: Optional[Callable[[str], Optional[float]]] = None,
                 once: Optional[Tuple[str, Callable[[Sequence[str]], List[bool]]]] = None,
                 tempo_band: float = 0.0,
                 tempo_gaps: Optional[Callable[[Sequence[str]], Tuple[List[float], List[float]]]] = None,
                 tempo_anchor: str = "notated", states_tempo: Optional[Callable[[Sequence[str]], bool]] = None,
                 fermata_hold: float = 0.0,
                 fermata_slots: Optional[Callable[[Sequence[str]], List[bool]]] = None,
                 dynamics_band: float = 0.0,
                 dynamics_refs: Optional[Callable[[Sequence[str]], List[float]]] = None):
        """``forbidden``: target token strings never to generate (e.g. the deletion token);
        ``type_temperature``: {token type: temperature relative to the sampling temperature, or "mean"},
        e.g. {"Tempo": 0.7} samples tempo tokens more conservatively than the rest, and {"Vel": "mean"}
        always takes the velocity bin nearest the model's expected value (``token_value`` gives each
        token's number; only types where it gives one can be "mean");
        ``min_key_down_s`` (s; 0: off): at an articulation slot, never pick a value that holds the note
        shorter than this. ``art_nominal_q(score_tokens)`` gives, per slot, the notated quarters an
        articulation slot scales (NaN for other slots), ``beat_period_s(token)`` the beat period of a
        tempo token (None otherwise), and ``token_value`` the log2 ratio: the key-down time is
        2 ** value x nominal x the period of the latest tempo token;
        ``once``: (token, slots_of(score_tokens)): the slots where ``slots_of`` says True take exactly
        that token, e.g. the deletion token on the repeated pitch of a unison (a piano plays it once)
        while ``forbidden`` keeps it out of every other slot;
        ``tempo_band`` (bins; 0: off): keep the windowed tempo level within that many tempo bins of the
        rendering's level so far (``tempo_band_penalty``); ``tempo_gaps(score_tokens)`` gives, per slot,
        the notated gap and notated-tempo scale of each ``Tempo`` slot (NaN elsewhere), and
        ``beat_period_s`` each tempo token's period; ``tempo_anchor``: "self" centres the band on the
        rendering's level so far, "notated" on the notated tempo where ``states_tempo(score_tokens)``
        says the score states one (no band where it states none);
        ``fermata_hold`` (bins; 0: off): at the slots where ``fermata_slots(score_tokens)`` says True (the
        ``Tempo`` slots of a fermata's onset group and the group after it), move the tempo distribution so
        that its expected bin is at least that many bins slower than the windowed level
        (``fermata_hold``, the function); it needs ``tempo_gaps`` and ``beat_period_s`` too;
        ``dynamics_band`` (velocity bins; 0: off): keep the windowed velocity level, as an offset from the
        notated dynamic level that ``dynamics_refs(score_tokens)`` gives at each ``Vel`` slot (NaN
        elsewhere, and everywhere in a score without dynamics), within that many bins of the rendering's
        offset so far (``dynamics_band_penalty``); it needs ``token_value``."""
        self.src_dict, self.target_slots, self.beat_period_s = src_dict, target_slots, beat_period_s
        self.tgt_dict = tgt_dict
        types = [token_type(tgt_dict[i]) for i in range(len(tgt_dict))]
        names = sorted(set(types) | {EOS_TYPE})
        self.type_id = {n: i for i, n in enumerate(names)}
        table = torch.zeros(len(names), len(tgt_dict), dtype=torch.bool)
        for i, t in enumerate(types):
            table[self.type_id[t], i] = True
        table[self.type_id[EOS_TYPE]] = False
        table[self.type_id[EOS_TYPE], tgt_dict.eos()] = True
        for special in (tgt_dict.bos(), tgt_dict.pad(), tgt_dict.unk()):
            table[:, special] = False
        table[self.type_id[EOS_TYPE], tgt_dict.eos()] = True
        for token in forbidden:
            if tgt_dict.index(token) != tgt_dict.unk():
                table[:, tgt_dict.index(token)] = False
        self.table = table
        self.scale = None  # per type id: 1 / relative temperature
        self.mean = None  # per type id: decode as the expected value
        self.value = None  # per token id: its number (NaN: none)
        type_temperature = dict(type_temperature or {})
        unknown = sorted(set(type_temperature) - set(names))
        if unknown:
            raise ValueError(f"--type-temperature: unknown token types {', '.join(unknown)}")
        mean_types = sorted(n for n, t in type_temperature.items() if t == MEAN)
        self.min_key_down_s = float(min_key_down_s)
        self.art_nominal_q = art_nominal_q
        self.period = None  # per token id: beat period in s (NaN: not a tempo token)
        self.once_token, self.once_slots = None, None
        if once is not None and tgt_dict.index(once[0]) != tgt_dict.unk():
            self.once_token, self.once_slots = tgt_dict.index(once[0]), once[1]
        if self.min_key_down_s < 0:
            raise ValueError("--min-key-down-ms: must be >= 0")
        if self.min_key_down_s > 0:
            if not (art_nominal_q and beat_period_s and token_value):
                raise ValueError("--min-key-down-ms: the grammar module gives no art_nominal_q, beat_period_s "
                                 "and token_value")
            self.period = self.numbers(tgt_dict, beat_period_s)  # (V,)
        self.tempo_band, self.tempo_gaps, self.tempo_bin_log = float(tempo_band), tempo_gaps, float("nan")
        if self.tempo_band < 0:
            raise ValueError("--tempo-band: must be >= 0")
        if tempo_anchor not in TEMPO_ANCHORS:
            raise ValueError(f"--tempo-anchor: expected one of {', '.join(TEMPO_ANCHORS)}, got {tempo_anchor!r}")
        if tempo_anchor == "notated" and self.tempo_band > 0 and states_tempo is None:
            raise ValueError("--tempo-anchor notated: the grammar module gives no states_tempo")
        self.tempo_anchor, self.states_tempo = tempo_anchor, states_tempo
        self.fermata_hold, self.fermata_slots = float(fermata_hold), fermata_slots
        if self.fermata_hold < 0:
            raise ValueError("--fermata-hold: must be >= 0")
        if self.fermata_hold > 0 and fermata_slots is None:
            raise ValueError("--fermata-hold: the grammar module gives no fermata_slots")
        self.dynamics_band, self.dynamics_refs = float(dynamics_band), dynamics_refs
        if self.dynamics_band < 0:
            raise ValueError("--dynamics-band: must be >= 0")
        if self.dynamics_band > 0 and not (dynamics_refs and token_value):
            raise ValueError("--dynamics-band: the grammar module gives no dynamics_slot_refs and token_value")
        self.tempo_ids, self.first_period = None, float("nan")  # Tempo token ids in bin order, bin 0's period
        for flag, on in (("--tempo-band", self.tempo_band > 0), ("--fermata-hold", self.fermata_hold > 0)):
            if on and not (tempo_gaps and beat_period_s):
                raise ValueError(f"{flag}: the grammar module gives no tempo_slot_gaps and beat_period_s")
        if self.tracks_level:
            self.period = self.numbers(tgt_dict, beat_period_s)  # (V,)
            finite = torch.isfinite(self.period)
            logs = torch.log(self.period[finite]).unique()  # sorted
            self.tempo_bin_log = float(logs.diff().median())  # log period ratio of one bin
            ids = torch.nonzero(finite).squeeze(1)  # (N,)
            self.tempo_ids = ids[torch.argsort(self.period[ids])]  # (N,) slowest last
            self.first_period = float(self.period[self.tempo_ids[0]])
        if mean_types or self.period is not None or self.dynamics_band > 0:
            self.value = self.numbers(tgt_dict, token_value)  # (V,)
        if mean_types:
            self.mean = torch.zeros(len(names), dtype=torch.bool)
            for name in mean_types:
                has_value = table[self.type_id[name]] & torch.isfinite(self.value)
                if not has_value.any():
                    raise ValueError(f"--type-temperature: {name}=mean needs a type with numeric values")
                self.mean[self.type_id[name]] = True
        temperatures = {n: t for n, t in type_temperature.items() if t != MEAN}
        if any(t <= 0 for t in temperatures.values()):
            raise ValueError("--type-temperature: temperatures must be > 0")
        if temperatures:
            self.scale = torch.ones(len(names))
            for name, t in temperatures.items():
                self.scale[self.type_id[name]] = 1.0 / t

    @property
    def tracks_level(self) -> bool:
        """Whether decoding keeps the tempo level state (the tempo band and the fermata hold read it)."""
        return self.tempo_band > 0 or self.fermata_hold > 0

    @staticmethod
    def numbers(tgt_dict, number_of: Callable[[str], Optional[float]]) -> Tensor:
        """(V,) float: ``number_of(token)`` for every target token, NaN where it gives None."""
        values = [number_of(tgt_dict[i]) for i in range(len(tgt_dict))]
        return torch.tensor([float("nan") if v is None else v for v in values])

    def score_rows(self, src_tokens: Tensor, valid: Tensor) -> List[List[str]]:
        """(B, T) padded source ids -> each row's score token strings (padding and EOS left out)."""
        eos = self.src_dict.eos()
        return [[self.src_dict[i] for i, k in zip(ids, ok) if k and i != eos]
                for ids, ok in zip(src_tokens.tolist(), valid.tolist())]

    def slot_tensors(self, src_tokens: Tensor, valid: Tensor) -> Dict[str, Tensor]:
        """(B, T) source ids -> what ``MuseformerDecoder.constrain`` reads at each step, every tensor
        (B, max_slots + 1) with one column for the EOS step: ``slots`` (type ids, EOS after each row's
        last slot); with the key-down floor, ``slot_q`` (notated quarters of each articulation slot, NaN
        elsewhere); with a ``once`` rule, ``slot_once`` (the slots that take ``once_token``); with the
        tempo band or the fermata hold, ``slot_gap`` and ``slot_scale`` (``tempo_gaps``); with the
        fermata hold, ``slot_fermata``; with the band's notated anchor, ``tempo_ref`` (B,); with the
        dynamics band, ``slot_dyn`` (``dynamics_refs``)."""
        rows = self.score_rows(src_tokens, valid)
        dev = src_tokens.device
        eos = self.type_id[EOS_TYPE]
        out = {"slots": pad_rows([[self.type_id[s] for s in self.target_slots(r)] for r in rows], eos, torch.long, dev)}
        if self.period is not None:
            out["slot_q"] = pad_rows([self.art_nominal_q(r) for r in rows], float("nan"), torch.float, dev)
        if self.once_slots is not None:
            out["slot_once"] = pad_rows([self.once_slots(r) for r in rows], False, torch.bool, dev)
        if self.tracks_level:
            gaps = [self.tempo_gaps(r) for r in rows]
            out["slot_gap"] = pad_rows([g for g, _ in gaps], float("nan"), torch.float, dev)
            out["slot_scale"] = pad_rows([c for _, c in gaps], float("nan"), torch.float, dev)
        if self.fermata_hold > 0:
            out["slot_fermata"] = pad_rows([self.fermata_slots(r) for r in rows], False, torch.bool, dev)
        if self.dynamics_band > 0:
            out["slot_dyn"] = pad_rows([self.dynamics_refs(r) for r in rows], float("nan"), torch.float, dev)
        if self.tempo_band > 0:
            if self.tempo_anchor == "notated":  # 0.5 s per quarter: the notated tempo, in the level's units
                out["tempo_ref"] = torch.tensor([0.5 if self.states_tempo(r) else float("nan") for r in rows],
                                                device=dev)  # (B,)
        return out

    def level_after(self, score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Tensor:
        """(4,) tempo level state after ``perf_tokens`` (the performance of ``score_tokens``, the same
        bars), computed with the decoder's own update, so that a segment that starts where they end
        continues the level exactly (the renderer's ``tempo_prior``)."""
        gaps, scales = self.tempo_gaps(score_tokens)
        level = torch.zeros(1, LEVEL_FIELDS)
        for tok, gap, scale in zip(perf_tokens, gaps, scales):
            period = self.beat_period_s(tok) if gap == gap else None  # NaN gap: no Tempo slot
            if period is not None:
                level = tempo_level_update(level, torch.tensor([period]), torch.tensor([gap]),
                                           torch.tensor([scale]))
        return level[0]

    def dynamics_after(self, score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Tensor:
        """(4,) dynamics state after ``perf_tokens`` (the performance of ``score_tokens``, the same bars),
        computed with the decoder's own update: the renderer's ``dynamics_prior`` for the next segment."""
        dyn = torch.zeros(1, DYN_FIELDS)
        for tok, ref in zip(perf_tokens, self.dynamics_refs(score_tokens)):
            if ref == ref:  # a Vel slot with a notated level
                value = self.value[self.tgt_dict.index(tok)].view(1)
                dyn = dynamics_level_update(dyn, value, torch.tensor([ref]))
        return dyn[0]


@register_model("museformer_s2p")
class MuseformerS2PModel(FairseqEncoderDecoderModel):
    """Score -> performance encoder-decoder with fine/coarse bar attention."""

    @staticmethod
    def add_args(parser):
        # fmt: off
        parser.add_argument("--encoder-layers", type=int, metavar="N", help="number of encoder layers")
        parser.add_argument("--decoder-layers", type=int, metavar="N", help="number of decoder layers")
        parser.add_argument("--encoder-embed-dim", type=int, metavar="N", help="encoder width")
        parser.add_argument("--decoder-embed-dim", type=int, metavar="N", help="decoder width")
        parser.add_argument("--encoder-ffn-embed-dim", type=int, metavar="N", help="encoder FFN width")
        parser.add_argument("--decoder-ffn-embed-dim", type=int, metavar="N", help="decoder FFN width")
        parser.add_argument("--encoder-attention-heads", type=int, metavar="N", help="encoder heads")
        parser.add_argument("--decoder-attention-heads", type=int, metavar="N", help="decoder heads")
        parser.add_argument("--dropout", type=float, metavar="D", help="dropout probability")
        parser.add_argument("--attention-dropout", type=float, metavar="D", help="dropout on attention weights")
        parser.add_argument("--activation-dropout", type=float, metavar="D", help="dropout after the FFN activation")
        parser.add_argument("--fine-bars", type=str, metavar="LIST",
                            help="decoder fine-grained bar offsets, e.g. 0,1,2,4,8,12,16,24,32 (must include 0)")
        parser.add_argument("--encoder-fine-window", type=int, metavar="N",
                            help="encoder: attend finely to bars within +-N, coarsely (summaries) beyond")
        parser.add_argument("--cross-window", type=int, metavar="N",
                            help="cross-attention: decoder bar b reads encoder bars b-N..b+N finely")
        parser.add_argument("--summary-tokens", type=int, metavar="N", help="summary positions per bar")
        parser.add_argument("--max-bars", type=int, metavar="N", help="size of the bar embedding table")
        parser.add_argument("--attention-impl", choices=["dense", "bar", "flex"],
                            help="attention backend: dense (reference), bar (gathered blocks), flex (GPU)")
        parser.add_argument("--share-all-embeddings", action="store_true",
                            help="share encoder/decoder input and output embeddings (needs a joined dictionary)")
        parser.add_argument("--share-decoder-input-output-embed", action="store_true",
                            help="share decoder input and output embeddings")
        parser.add_argument("--style-embed", action="store_true",
                            help="add a projection of the source prefix (instruct levels, composer, performer) "
                                 "to every encoder and decoder position, so that every bar sees the style")
        parser.add_argument("--decoder-input-dropout", type=float, metavar="D",
                            help="in training, replace previous performance tokens (not bar tokens) by <unk> "
                                 "with this probability (exposure bias: less copying of the model's own history)")
        parser.add_argument("--align-source", action="store_true",
                            help="add to every decoder position a projection of the encoder output at the "
                                 "score token its performance slot belongs to (needs the task's --grammar)")
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        args.fine_bars_list = cls.parse_fine_bars(args.fine_bars)
        cls.check_args(args, task)
        encoder_embed = cls.build_embedding(task.source_dictionary, args.encoder_embed_dim)
        if args.share_all_embeddings:
            decoder_embed = encoder_embed
            args.share_decoder_input_output_embed = True
        else:
            decoder_embed = cls.build_embedding(task.target_dictionary, args.decoder_embed_dim)
        encoder = MuseformerEncoder(args, task.source_dictionary, encoder_embed)
        decoder = MuseformerDecoder(args, task.target_dictionary, decoder_embed)
        if args.align_source:
            encoder.anchors = cls.build_anchors(args, task.source_dictionary)
        return cls(encoder, decoder)

    @staticmethod
    def build_anchors(args, src_dict) -> SlotAnchors:
        """Slot anchors from the task's ``--grammar`` module (its ``target_slots``)."""
        name = getattr(args, "grammar", None) or "instruct_tokenizer.grammar"
        return SlotAnchors(src_dict, importlib.import_module(name).target_slots)

    @staticmethod
    def parse_fine_bars(text: str) -> List[int]:
        try:
            bars = sorted({int(x) for x in str(text).split(",") if x.strip()})
        except ValueError:
            raise ValueError(f"--fine-bars: expected comma-separated integers, got {text!r}") from None
        return bars

    @staticmethod
    def check_args(args, task) -> None:
        if 0 not in args.fine_bars_list or min(args.fine_bars_list) < 0:
            raise ValueError("--fine-bars must include 0 (a bar's own tokens) and no negative offsets")
        if args.encoder_embed_dim != args.decoder_embed_dim:
            raise ValueError("--encoder-embed-dim and --decoder-embed-dim must be equal (cross-attention)")
        if args.share_all_embeddings and task.source_dictionary != task.target_dictionary:
            raise ValueError("--share-all-embeddings needs the same --srcdict and --tgtdict")
        if args.summary_tokens < 1:
            raise ValueError("--summary-tokens must be >= 1")
        if args.encoder_fine_window < 0 or args.cross_window < 0:
            raise ValueError("--encoder-fine-window and --cross-window must be >= 0")
        if args.attention_impl not in ("dense", "bar", "flex"):
            raise ValueError(f"--attention-impl must be dense, bar or flex, not {args.attention_impl!r}")
        if not 0.0 <= args.decoder_input_dropout < 1.0:
            raise ValueError("--decoder-input-dropout must be in [0, 1)")
        if args.attention_impl == "flex" and args.attention_dropout > 0:
            raise ValueError("--attention-impl flex has no attention dropout: use --attention-dropout 0")
        for d in (task.source_dictionary, task.target_dictionary):
            if d.index(BAR_TOKEN) == d.unk():
                raise ValueError(f"the dictionary has no {BAR_TOKEN!r} token: not a bar-structured corpus")

    @classmethod
    def build_embedding(cls, dictionary, dim: int) -> nn.Embedding:
        emb = nn.Embedding(len(dictionary), dim, padding_idx=dictionary.pad())
        nn.init.normal_(emb.weight, mean=0, std=dim ** -0.5)
        nn.init.constant_(emb.weight[dictionary.pad()], 0)
        return emb

    def enable_grammar(self, grammar: Grammar) -> None:
        """Constrain generation: the encoder emits per-step slot types, the decoder masks logits."""
        self.encoder.grammar = grammar
        self.decoder.type_table = grammar.table
        self.decoder.type_scale = grammar.scale
        self.decoder.type_mean = grammar.mean
        self.decoder.token_value = grammar.value
        self.decoder.token_period = grammar.period
        self.decoder.min_key_down_s = grammar.min_key_down_s
        self.decoder.once_token = grammar.once_token
        self.decoder.tempo_band = grammar.tempo_band
        self.decoder.tempo_bin_log = grammar.tempo_bin_log
        self.decoder.fermata_hold = grammar.fermata_hold
        self.decoder.dynamics_band = grammar.dynamics_band
        self.decoder.tempo_ids = grammar.tempo_ids
        self.decoder.first_period = grammar.first_period


@register_model_architecture("museformer_s2p", "museformer_s2p")
def base_architecture(args):
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 2048)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 8)
    args.dropout = getattr(args, "dropout", 0.1)
    args.attention_dropout = getattr(args, "attention_dropout", 0.0)
    args.activation_dropout = getattr(args, "activation_dropout", 0.0)
    args.fine_bars = getattr(args, "fine_bars", "0,1,2,4,8,12,16,24,32")
    args.encoder_fine_window = getattr(args, "encoder_fine_window", 2)
    args.cross_window = getattr(args, "cross_window", 2)
    args.summary_tokens = getattr(args, "summary_tokens", 1)
    args.max_bars = getattr(args, "max_bars", 2048)
    args.attention_impl = getattr(args, "attention_impl", "dense")
    args.share_all_embeddings = getattr(args, "share_all_embeddings", False)
    args.share_decoder_input_output_embed = getattr(args, "share_decoder_input_output_embed", False)
    args.style_embed = getattr(args, "style_embed", False)
    args.align_source = getattr(args, "align_source", False)
    args.decoder_input_dropout = getattr(args, "decoder_input_dropout", 0.0)
    args.max_source_positions = getattr(args, "max_source_positions", 100000)
    args.max_target_positions = getattr(args, "max_target_positions", 100000)


@register_model_architecture("museformer_s2p", "museformer_s2p_tiny")
def museformer_s2p_tiny(args):
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.dropout = getattr(args, "dropout", 0.1)
    base_architecture(args)


@register_model_architecture("museformer_s2p", "museformer_s2p_small")
def museformer_s2p_small(args):
    """9.6 M parameters with the (n)ASAP dictionary: a 22.5 MB released fp16 file (the repository holds at
    most 30 MB); four epochs of (n)ASAP in 5 minutes on one H100 (docs/attention.md)."""
    args.encoder_layers = getattr(args, "encoder_layers", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 4)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 8)
    base_architecture(args)
