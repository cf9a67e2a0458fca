"""The score encoder: bidirectional FC-attention over the score's bars."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from fairseq.models import FairseqEncoder
from torch import Tensor, nn

from .backends import get_backend
from .constants import BAR_TOKEN
from .embeddings import Embedder, Layout, bar_indices, in_bar_index, make_plan
from .layers import EncoderLayer
from .warmstart import fill_missing_zero_linear, grow_rows, zero_linear


class SlotAnchors:
    """Which source token each performance slot belongs to, for ``--align-source``.

    The performance grammar expands every score token on its own (``Bar`` -> 1 slot, ``Pos`` -> the
    onset group's slots, ``Pitch`` -> the note's slots, anything else -> none), so the slot count of
    each dictionary entry is ``len(target_slots([token]))`` and the anchor of slot ``s`` is the first
    source position whose cumulative slot count exceeds ``s``. Example (one bar, one group, 2 notes)::

        source  Bar  Pos  Pitch Dur  Pitch Dur  </s>
        slots    1    5     3    0     3    0     0
        anchor  0 | 1 1 1 1 1 | 2 2 2 | 4 4 4 | 6 (EOS step: the source EOS)

    ``lead_slots``: slots before the first token's own, which belong to the segment rather than to a
    score token (the relative tempo encoding's ``TempoLevel``): they anchor at the first source position.
    """

    def __init__(self, src_dict, target_slots, lead_slots: int = 0):
        counts = [len(target_slots([src_dict[i]])) for i in range(len(src_dict))]
        self.counts = torch.tensor(counts, dtype=torch.long)  # (V,)
        self.lead = int(lead_slots)

    def __call__(self, src_tokens: Tensor, valid: Tensor) -> Tensor:
        """(B, T) source ids (any padding side) -> (B, S + 1) padded source position of each slot's
        score token, the last column (and any beyond a row's slots) pointing at the row's last position."""
        n = self.counts.to(src_tokens.device)[src_tokens] * valid.long()  # (B, T)
        cum = n.cumsum(dim=1)  # (B, T)
        width = (int(cum[:, -1].max().item()) if cum.numel() else 0) + 1 + self.lead
        slots = torch.arange(width, device=src_tokens.device).expand(cum.shape[0], -1).contiguous()  # (B, S + 1)
        return torch.searchsorted(cum, slots - self.lead, right=True).clamp(max=src_tokens.shape[1] - 1)


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
        self.rules = None  # museformer.decoding.DecodeRules, set by the model for constrained generation
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
                tempo_plan: Optional[Tensor] = None, velocity_plan: Optional[Tensor] = None,
                articulation_plan: Optional[Tensor] = None, timing_plan: Optional[Tensor] = None, **kwargs) -> Dict:
        """``tempo_prior``, ``dynamics_prior``: (B, 4) states of the music before this segment
        (``DecodeRules.state_after``), where the decoding rules continue them; zeros when not given.
        ``tempo_plan``: (B, G) the tempo plan's log factor per onset group of the segment (NaN padding),
        for the ``--tempo-plan`` rule, ``velocity_plan``: (B, N) the velocity plan's MIDI velocity per score
        note of the segment (NaN padding), for ``--velocity-plan``, ``articulation_plan``: (B, N) the
        articulation plan's log2 ratio per score note, for ``--articulation-plan``, ``timing_plan``: (B, N) the
        timing plan's onset (ms against the group's grid) per score note, for ``--timing-plan``; none when not
        given."""
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
        if self.rules is not None:  # the decoding rules' per-slot tables, reordered with the rest
            out["decode"] = self.rules.prepare(src_tokens, valid, self.dictionary,
                                               {"tempo_prior": tempo_prior, "dynamics_prior": dynamics_prior,
                                                "tempo_plan": tempo_plan, "velocity_plan": velocity_plan,
                                                "articulation_plan": articulation_plan, "timing_plan": timing_plan})
        if self.anchors is not None:
            out["anchors"] = self.anchors(src_tokens, valid)  # (B, S + 1)
        return out

    def plan(self, layout: Layout):
        return make_plan(layout, "encoder", self.args)

    def reorder_encoder_out(self, encoder_out: Dict, new_order: Tensor) -> Dict:
        out = {"enc": encoder_out["enc"].index_select(0, new_order),
               "layout": encoder_out["layout"].select(new_order)}
        for key in ("style", "anchors"):
            if key in encoder_out:
                out[key] = encoder_out[key].index_select(0, new_order)
        if "decode" in encoder_out:
            out["decode"] = encoder_out["decode"].select(new_order)
        return out

    def max_positions(self) -> int:
        return self.args.max_source_positions

