"""The performance decoder: causal FC-attention over the performance, bar-aligned cross FC-attention to
the score, and one incremental step for generation (the decoding rules are applied outside it, by the
``museformer.decoding`` layer the model carries)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor, nn

from . import native
from .backends import get_backend
from .constants import BAR_TOKEN
from .embeddings import MAX_IN_BAR, Embedder, Layout, bar_indices, in_bar_index, make_plan
from .incremental import DecoderState, LayerWeights, Linear, layer_step
from .layers import DecoderLayer
from .warmstart import fill_missing_zero_linear, grow_rows, zero_linear


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
        self.rules = None  # museformer.decoding.DecodeRules, set by the model for constrained generation
        self.compact_steps = True  # generation attends per-bar views of the keys (False: every key, the reference)
        self.native_steps = True  # the lean loop's steps that open no bar in C++ where it builds (False: Python)

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
        """fairseq's generation step (``SequenceGenerator``): the network's :meth:`step` on the newest
        token, then the decoding rules (their state kept with the decoder's). The lean sampling loop
        (``museformer.sampler``) calls :meth:`step` and the rules itself."""
        state = self.get_incremental_state(incremental_state, "fc")
        if state is None:
            state = self.start_state(prev_output_tokens.shape[0], encoder_out)
            self.set_incremental_state(incremental_state, "fc", state)
        tok = prev_output_tokens[:, -1:]  # (B, 1)
        step = prev_output_tokens.shape[1] - 1
        table = encoder_out.get("decode")  # the rules' SlotTable (constrained generation) or None
        if table is not None:
            if state.rules is None:
                state.rules = self.rules.init_state(table)
            self.rules.update(state.rules, tok[:, 0], step, table)
        candidates = self.rules.candidates(table, step) if table is not None else None
        logits = self.step(tok, step, encoder_out, state, candidates)
        if table is not None:
            logits = self.rules(logits, state.rules, table, step)
        return logits, {"attn": [None], "inner_states": None}

    def start_state(self, batch: int, encoder_out: Dict, native_steps: bool = False) -> DecoderState:
        """An empty :class:`DecoderState` with room for the whole generation: every slot of the rules'
        table (when constrained) and the summaries of every score bar; 64 keys (then doubling) otherwise.
        Its steps attend per-bar views of the keys, or every key where ``compact_steps`` is off.
        ``native_steps``: the steps that open no bar run in C++ (``museformer.native``) where it builds and
        ``self.native_steps`` is on (the lean sampling loop asks for it; fairseq's generator runs the
        Python step, the reference the tests compare it with)."""
        enc = encoder_out["enc"]
        table = encoder_out.get("decode")
        steps = table["slots"].shape[1] + 1 if table is not None else 64  # the start token + slots + EOS
        summaries = (encoder_out["layout"].nb + 1) * self.args.summary_tokens
        state = DecoderState(batch, enc.device, len(self.layers), enc.shape[-1], steps + summaries,
                             self.compact_steps)
        state.weights = [LayerWeights(layer) for layer in self.layers]
        state.tables = self.embed.step_tables()
        state.final_ln = (self.ln.normalized_shape, self.ln.weight.detach(), self.ln.bias.detach(), self.ln.eps)
        if self.align is not None:
            state.align = Linear(self.align)
        if native_steps and self.native_steps:
            self._use_native(state, native.load())
        return state

    def _use_native(self, state: DecoderState, module) -> None:
        """Run the steps that open no bar with ``module`` (``museformer.native.load()``; None: Python) where its
        ``SameBarStep`` takes the layers (biases on every linear, one layer-norm eps), on the CPU."""
        flat = [w.flat() for w in state.weights]
        if module is None or any(f is None for f in flat) or state.device.type != "cpu":
            return
        align = state.align
        state.native = module
        state.native_step = module.SameBarStep(
            flat, [state.tables.tokens, state.tables.in_bar], MAX_IN_BAR, None if align is None else align.weight_t,
            None if align is None else align.bias, state.weights[0].heads, state.weights[0].ln1[3],
            state.final_ln[1], state.final_ln[2], state.final_ln[3], self.out.weight.shape[0])

    def step(self, tok: Tensor, step: int, encoder_out: Dict, state: DecoderState,
             candidates: Optional[Tensor] = None) -> Tensor:
        """The network alone, one generation step: (B, 1) newest token ids at decoder position ``step``
        -> (B, 1, V) logits of the next token. Embeds the token (and, when it opens a bar, the summaries
        of the bar just closed) and attends the step's views of the layer caches
        (``museformer.incremental``): rebuilt, with their masks from ``pattern``, whenever a row opens a
        bar; within a bar the newest token's key joins the previous token's views. ``candidates`` (K,):
        the only tokens whose logits are wanted, the others -inf (the grammar's, ``DecodeRules.candidates``:
        the output projection reads K of its V rows)."""
        is_bar = tok[:, 0].eq(self.bar_idx)  # (B,)
        if step == 0 or bool(is_bar.any()):
            x, view = self._new_bar_inputs(tok, step, is_bar, encoder_out, state)
        elif self._native_takes(state, candidates):
            return self._native_same_bar_step(tok, step, encoder_out, state, candidates)
        else:
            x, view = self._same_bar_inputs(tok, step, encoder_out, state)
        b, n, c = x.shape
        rows = x.view(b * n, c)  # (B * n, C)
        for weights, cache in zip(state.weights, state.caches):
            rows = layer_step(rows, encoder_out["enc"], cache, view, weights)
        last = rows if n == 1 else rows.view(b, n, c)[:, -1]  # (B, C) the newest token's
        return self.project(torch.layer_norm(last, *state.final_ln), candidates, state)

    def _native_takes(self, state: DecoderState, candidates: Optional[Tensor]) -> bool:
        """Whether the C++ step (``museformer.native``) can run this step that opens no bar: built, the
        candidates known, a plain projection, room for the key in every layer's view."""
        return (state.native is not None and candidates is not None and state.native_room()
                and not (self.out._forward_hooks or self.out._forward_pre_hooks))

    def _native_same_bar_step(self, tok: Tensor, step: int, encoder_out: Dict, state: DecoderState,
                              candidates: Tensor) -> Tensor:
        """:meth:`_same_bar_inputs`, the layers and :meth:`project` as ``csrc/step.cpp`` runs them, operator
        for operator: (B, 1) tokens -> (B, 1, V) logits."""
        anchors = encoder_out["anchors"] if self.align is not None else None
        state.put_content_key(step)
        col = state.native_view()
        logits, state.in_bar = state.native_step(
            tok, state.position(step), state.tables.bar_rows(state.bar), state.in_bar, anchors,
            0 if anchors is None else min(step, anchors.shape[1] - 1), encoder_out["enc"] if anchors is not None else None,
            encoder_out.get("style"), state.native_caches(), col, state.view_blocked, state.cross_blocked,
            self.head(candidates, state), candidates)
        return logits  # (B, 1, V)

    def project(self, h: Tensor, candidates: Optional[Tensor], state: DecoderState) -> Tensor:
        """(B, C) final features -> (B, 1, V) logits: of ``candidates`` only (the rest -inf) where given.
        A projection with hooks (tests' drifting models) runs as the module, over every token."""
        out = self.out
        if candidates is None or out._forward_hooks or out._forward_pre_hooks:
            return out(h.unsqueeze(1))  # (B, 1, V)
        logits = h.new_full((h.shape[0], out.weight.shape[0]), float("-inf"))  # (B, V)
        logits.index_copy_(1, candidates, h.mm(self.head(candidates, state)))
        return logits.unsqueeze(1)

    def head(self, candidates: Tensor, state: DecoderState) -> Tensor:
        """(C, K) the candidates' rows of the output projection, transposed: taken once per candidate set."""
        head = state.heads.get(id(candidates))
        if head is None:  # keeps the candidates alive with their rows, so that their id stays theirs
            head = state.heads[id(candidates)] = (candidates, self.out.weight.detach()[candidates].t().contiguous())
        return head[1]

    def _embed_step(self, tok: Tensor, step: int, bar: Tensor, in_bar: Tensor, encoder_out: Dict,
                    state: DecoderState) -> Tensor:
        """(B, 1, C) embedding of the newest token: its content and, with ``--align-source``, its score
        token (the style vector is added by the caller, after the summaries join)."""
        x = state.tables.content(tok, state.position(step), bar, in_bar)  # (B, 1, C)
        if self.align is None:
            return x
        anchors = encoder_out["anchors"]  # (B, S + 1)
        col = min(step, anchors.shape[1] - 1)
        enc = encoder_out["enc"]  # (B, L, C)
        if enc.shape[0] == 1:
            at = int(anchors[0, col])
            picked = enc[0, at:at + 1]  # (1, C)
        else:
            picked = enc.gather(1, anchors[:, col].view(-1, 1, 1).expand(-1, 1, enc.shape[-1]))[:, 0]  # (B, C)
        return x + state.align(picked).unsqueeze(1)  # as aligned_source

    def _same_bar_inputs(self, tok: Tensor, step: int, encoder_out: Dict, state: DecoderState):
        """No row opens a bar: the token's key joins the previous token's views."""
        state.in_bar = state.in_bar + 1
        x = self._embed_step(tok, step, state.bar, state.in_bar, encoder_out, state)
        if "style" in encoder_out:
            x = x + encoder_out["style"]  # (B, 1, C), as in teacher forcing
        state.put_content_key(step)
        return x, state.same_bar_view()

    def _new_bar_inputs(self, tok: Tensor, step: int, is_bar: Tensor, encoder_out: Dict, state: DecoderState):
        """Some row opens a bar (or the first step): the summaries of the bars just closed join as extra
        queries (rows not closing one get a masked dummy), and the views are rebuilt."""
        b = tok.shape[0]
        new_bar = state.bar + is_bar.long()  # (B,)
        in_bar = torch.where(is_bar, torch.zeros_like(state.in_bar), state.in_bar + 1)  # (B,)
        rows = [self._embed_step(tok, step, new_bar, in_bar, encoder_out, state)]
        pos = torch.full((b, 1), step, device=tok.device, dtype=torch.long)  # (B, 1)
        q_bar, q_sum, q_pos = [new_bar.unsqueeze(1)], [torch.zeros_like(tok, dtype=torch.bool)], [pos]
        q_ok = [torch.ones_like(tok, dtype=torch.bool)]
        closes = is_bar & (step > 0)  # (B,) rows whose previous bar just closed
        n_s = self.args.summary_tokens
        if bool(closes.any()):  # summaries of the bar that just closed, computed now, through every layer
            sum_bar = state.bar.unsqueeze(1).expand(b, n_s)  # (B, S)
            sum_pos = state.next_sum_pos + torch.arange(n_s, device=tok.device).expand(b, -1)  # (B, S)
            rows.insert(0, self.embed.summaries(sum_bar))
            q_bar.insert(0, sum_bar)
            q_sum.insert(0, torch.ones_like(sum_bar, dtype=torch.bool))
            q_pos.insert(0, sum_pos)
            q_ok.insert(0, closes.unsqueeze(1).expand(b, n_s))  # rows not closing: an unused dummy
            state.next_sum_pos += n_s
        x = torch.cat(rows, dim=1)  # (B, n_new, C)
        if "style" in encoder_out:
            x = x + encoder_out["style"]  # (B, 1, C), as in teacher forcing
        view = state.new_bar_view(torch.cat(q_bar, 1), torch.cat(q_sum, 1), torch.cat(q_pos, 1),
                                  torch.cat(q_ok, 1), self.args.fine_bars_list, encoder_out["layout"],
                                  self.args.cross_window)
        state.bar, state.in_bar = new_bar, in_bar
        return x, view

    def reorder_incremental_state(self, incremental_state: Dict, new_order: Tensor) -> None:
        state = self.get_incremental_state(incremental_state, "fc")
        if state is None:
            return
        if new_order.numel() == state.bar.numel() and torch.equal(
                new_order, torch.arange(new_order.numel(), device=new_order.device)):
            return  # identity (greedy/sampling): nothing to move
        state.reorder(new_order)  # the decoding rules' state with it, as one object

    def max_positions(self) -> int:
        return self.args.max_target_positions

