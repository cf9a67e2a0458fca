"""The lean sampling loop (beam 1), outside the network like nanoGPT's ``generate``: ``instruct-render``,
``instruct-eval`` and ``scripts/bench_quality.py`` sample with it; beam search, greedy decoding and
``fairseq-generate`` keep fairseq's ``SequenceGenerator``.

Per step: the decoder's network step (:meth:`MuseformerDecoder.step`, its caches preallocated; a step
that opens no bar and the draw in C++ where ``museformer.native`` builds, operator for operator), the
decoding rules as one call on the (B, 1, V) logits (``DecodeRules``), then the draw. No beam bookkeeping,
no reordering of the caches but when rows end (they leave the batch), ``torch.inference_mode``.

It draws from torch's global generator exactly as ``SequenceGenerator`` with ``search.Sampling`` does:
the logits divided by the temperature, ``log_softmax`` in float32, pad never chosen, EOS barred at the
first step, a forced prefix token keeps its own log-probability and every other token of its row
becomes -inf, then one ``torch.multinomial`` over the (rows, V) probabilities of the rows still running
(top-p through fairseq's own ``Sampling._sample_topp``), the rows that drew EOS dropped before the next
step. So with a fixed seed the two paths give the same tokens (tests/render/test_sampler.py).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.search import Sampling as FairseqSampling
from torch import Tensor

from .decoding import DecodeRules

# fairseq's SequenceGenerator bounds the length by max_len_a * source length + max_len_b; the grammar
# ends every row before (the task sets the same two numbers for fairseq's generator)
from .task import MAX_LEN_A, MAX_LEN_B


@torch.inference_mode()
def sample(model, net_input: Dict[str, Tensor], rules: Optional[DecodeRules], prefix_tokens: Optional[Tensor] = None,
           temperature: float = 1.0, topp: float = -1.0) -> List[Tensor]:
    """Sample one performance per source row. ``net_input``: fairseq's (``src_tokens`` (B, S) left-padded,
    ``src_lengths``, optional ``tempo_prior``/``dynamics_prior`` (B, 4)); ``rules``: the decoding rules
    (None: unconstrained); ``prefix_tokens`` (B, P): forced first tokens (pad: none); ``topp`` in (0, 1):
    nucleus sampling, else plain. Returns per row its (n,) token ids ending with EOS, as fairseq's
    hypothesis ``tokens``."""
    model.enable_decoding(rules)
    decoder, tgt_dict = model.decoder, model.decoder.dictionary
    eos, pad = tgt_dict.eos(), tgt_dict.pad()
    src_tokens = net_input["src_tokens"]
    batch, src_len = src_tokens.shape
    max_len = min(int(MAX_LEN_A * src_len + MAX_LEN_B), decoder.max_positions() - 1)
    encoder_out = model.encoder(**net_input)
    state = decoder.start_state(batch, encoder_out, native_steps=True)
    rule_state = rules.init_state(encoder_out["decode"]) if rules is not None else None
    tokens = torch.full((batch, max_len + 2), pad, dtype=torch.long, device=src_tokens.device)  # (B, T)
    tokens[:, 0] = eos
    draw = Draw(tgt_dict, temperature, topp, max_len, prefix_tokens, native=state.native)
    out = decoder.out  # a hooked projection computes every logit (MuseformerDecoder.project)
    only = rule_state is not None and not (out._forward_hooks or out._forward_pre_hooks)
    rows = list(range(batch))  # original row of each row still running
    done: List[Optional[Tensor]] = [None] * batch
    for step in range(max_len + 1):
        tok = tokens[:, step:step + 1]  # (B, 1)
        table = encoder_out.get("decode")
        if rule_state is not None:
            rules.update(rule_state, tok[:, 0], step, table)
        candidates = rules.candidates(table, step) if rule_state is not None else None
        logits = decoder.step(tok, step, encoder_out, state, candidates)  # (B, 1, V)
        if rule_state is not None:
            logits = rules(logits, rule_state, table, step, candidates_only=only)
        chosen = draw(logits, step, rules.draw_columns(candidates) if rule_state is not None else None)  # (B,)
        tokens[:, step + 1] = chosen
        ended = chosen.eq(eos)
        if not bool(ended.any()):
            continue
        for i in ended.nonzero().squeeze(1).tolist():
            done[rows[i]] = tokens[i, 1:step + 2].clone()
        keep = (~ended).nonzero().squeeze(1)  # (B',)
        if keep.numel() == 0:
            break
        rows = [rows[i] for i in keep.tolist()]
        tokens = tokens.index_select(0, keep)
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, keep)  # the rules' table with it
        state.reorder(keep)
        if rule_state is not None:
            rule_state.reorder(keep)
        draw.keep(keep)
    return done


class Draw:
    """The next token of every running row from its (B, 1, V) logits, as fairseq's ``SequenceGenerator``
    with ``search.Sampling`` draws it (the module docstring lists the steps)."""

    def __init__(self, tgt_dict, temperature: float, topp: float, max_len: int, prefix_tokens: Optional[Tensor],
                 native=None):
        self.native = native  # museformer.native's module: its draw_columns on plain steps (None: Python)
        self.eos, self.pad, self.unk = tgt_dict.eos(), tgt_dict.pad(), tgt_dict.unk()
        self.temperature, self.max_len = temperature, max_len
        self.prefix = prefix_tokens  # (B, P) or None
        self.topp = FairseqSampling(tgt_dict, sampling_topp=topp) if 0 < topp < 1 else None

    def keep(self, rows: Tensor) -> None:
        """Only rows ``rows`` (B',) still run."""
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, rows)

    def lprobs(self, logits: Tensor, step: int) -> Tensor:
        """(B, 1, V) logits -> (B, V) log-probabilities with fairseq's adjustments."""
        if self.temperature != 1.0:  # fairseq divides always; by 1.0 it changes nothing
            logits = logits / self.temperature
        lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)[:, -1, :]  # (B, V)
        lprobs = lprobs.masked_fill(torch.isnan(lprobs), -math.inf)
        lprobs[:, self.pad] = -math.inf  # never pad (the unk penalty is 0)
        if step >= self.max_len:  # only EOS
            lprobs[:, :self.eos] = -math.inf
            lprobs[:, self.eos + 1:] = -math.inf
        if self.prefix is not None and step < self.prefix.shape[1] and step < self.max_len:
            forced = self.prefix[:, step]  # (B,)
            rows = forced.ne(self.pad)  # (B,)
            if bool(rows.any()):
                own = lprobs.gather(-1, forced.unsqueeze(-1))  # (B, 1)
                only = torch.full_like(lprobs, -math.inf).scatter_(-1, forced.unsqueeze(-1), own)  # (B, V)
                lprobs = torch.where(rows.unsqueeze(-1), only, lprobs)
        elif step < 1:  # fairseq's min_len 1 (not with a prefix)
            lprobs[:, self.eos] = -math.inf
        return lprobs

    def plain(self, step: int) -> bool:
        """Whether step ``step`` samples as plainly as fairseq's ``Sampling`` can: no top-p, no forced
        prefix token, not the first step (EOS barred) nor the last (EOS only)."""
        forced = self.prefix is not None and step < self.prefix.shape[1]
        return self.topp is None and not forced and 1 <= step < self.max_len

    def __call__(self, logits: Tensor, step: int, columns: Optional[Tensor] = None) -> Tensor:
        """(B, 1, V) logits -> (B,) tokens. ``columns`` (K,), ascending: a set of tokens outside which
        every logit is -inf (the rules' :meth:`~museformer.decoding.DecodeRules.draw_columns`); on a
        :meth:`plain` step the draw then reads only those columns of the log-probabilities (the same
        tokens: the other columns have probability 0, and ``torch.max`` keeps the first maximum in the
        same column order)."""
        if columns is not None and self.plain(step):
            if self.native is not None and logits.dtype == torch.float32:
                return self.native.draw_columns(logits, columns, self.temperature)  # the lines below, in C++
            if self.temperature != 1.0:
                logits = logits / self.temperature
            lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)[:, -1, :]  # (B, V)
            probs = lprobs.index_select(1, columns).exp_()  # (B, K); pad is no column; NaN draws as 0
            return multinomial_columns(probs, columns, lprobs.shape[1])
        lprobs = self.lprobs(logits, step)
        b = lprobs.shape[0]
        if self.topp is None:
            return multinomial_one(lprobs.exp_())
        probs, top = self.topp._sample_topp(lprobs.unsqueeze(1))  # (B, 1, k)
        pick = torch.multinomial(probs.view(b, -1), 1, replacement=True)  # (B, 1)
        return top.view(b, -1).gather(1, pick).view(b)


MASK53 = (1 << 53) - 1


def multinomial_one(probs: Tensor) -> Tensor:
    """(B, V) probabilities -> (B,) one draw per row: the token ``torch.multinomial(probs, 1,
    replacement=True)`` draws, from the same random numbers, leaving torch's generator where it leaves it
    (tests/render/test_sampler.py), at a fifth of its cost.

    ATen draws one sample as argmax(probs / q) with q = ``exponential_()`` over every entry, and
    ``exponential_`` makes each q from one 64-bit draw x as -log1p(-u), u = (x & (2^53 - 1)) / 2^53, in
    double, rounded to float. Here the 64-bit draws come from ``random_()`` (the same draws, without a
    logarithm per entry) and q is computed only for the tokens some row may take (the others have
    probability 0: they cannot win). Its validity checks (a maximum, a minimum and a host sync per step)
    are left out; a row with no positive probability is refused as multinomial refuses it."""
    cols = probs.gt(0).any(0).nonzero().squeeze(1)  # (K,) the tokens any row may take
    if cols.numel() == 0:
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return multinomial_columns(probs.index_select(1, cols), cols, probs.shape[1])


def multinomial_columns(probs: Tensor, cols: Tensor, vocab: int) -> Tensor:
    """(B, K) probabilities of the ascending columns ``cols`` (K,) of a (B, ``vocab``) distribution whose
    other columns are 0 (NaN counts as 0) -> (B,) one draw per row, as :func:`multinomial_one` draws it
    from the whole distribution (the 64-bit draws of all ``vocab`` columns taken, q computed for
    ``cols`` only; columns of probability 0 among them cannot win). The chain runs negated: -u is exact
    (a power-of-two scale), log1p(-u) = -q in double, rounded to float exactly as q (rounding is
    symmetric), and the smallest probs / -q is the largest probs / q, first in column order either way."""
    bits = torch.empty((probs.shape[0], vocab), dtype=torch.int64, device=probs.device).random_()  # (B, V)
    minus_u = bits.index_select(1, cols).bitwise_and_(MASK53).double().mul_(-(2.0 ** -53))  # (B, K) in (-1, 0]
    minus_q = torch.log1p(minus_u).float()  # (B, K): -q, q ~ Exp(1) bit for bit exponential_'s
    ratio = probs.div(minus_q).nan_to_num_(nan=0.0)  # (B, K) -p / q; 0 / 0 (p = 0, q = 0) and NaN p: 0
    best, at = torch.min(ratio, -1)  # (B,)
    if not bool(best.lt(0).all()):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return cols[at]
