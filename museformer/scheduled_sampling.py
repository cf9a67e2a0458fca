"""Scheduled sampling against exposure bias: the decoder trained on a mix of the pianist's previous tokens
and its own samples.

Teacher-forced, every decoder input is the pianist's previous token; free-running, it is the model's own
sample, so an error (a tempo drawn too fast, a velocity too loud) is an input the model never saw in
training (exposure bias). Scheduled sampling (Bengio et al. 2015) replaces a share of the inputs by the
model's own predictions; for a transformer, whose training step is one parallel pass, the predictions
come from a first pass on the gold inputs (Mihaylova & Martins 2019, "Scheduled Sampling for
Transformers"): pass 1 (no gradient) on the gold inputs, sample each position's token, replace each input
by the sample of the position before it with probability ``rate``, pass 2 (with gradient) on the mixed
inputs, loss against the gold targets.

Our variant keeps the performance grammar: each sample is drawn among the tokens of the gold token's
type (a ``Vel`` position samples a velocity, a ``Tempo`` position a tempo; ``token_type``), as the
grammar-constrained decoder draws them, and the bar tokens (the bar structure) and specials are never
replaced. ``rate`` ramps linearly from 0 to ``--ss-rate`` over the run's first ``--ss-ramp-updates``
updates (the task passes the update number: ``MuseformerS2PTask.train_step``).
"""
from __future__ import annotations

import math

import torch
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from torch import Tensor

from instruct_tokenizer.grammar import token_type

from .constants import BAR_TOKEN


def symbol_types(dictionary) -> Tensor:
    """(V,) long: an id per token type (``token_type``) of every symbol of ``dictionary``."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(token_type(s), len(ids)) for s in dictionary.symbols])


def replaceable_symbols(dictionary) -> Tensor:
    """(V,) bool: the symbols an input may be replaced at: every token but the bar token and fairseq's
    specials (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, which hold the sequence's structure)."""
    bar = token_type(BAR_TOKEN)
    return torch.tensor([not s.startswith("<") and token_type(s) != bar for s in dictionary.symbols])


def sample_within_type(logits: Tensor, target: Tensor, types: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, T) long: at each position one token drawn from ``logits`` (B, T, V) restricted to the symbols
    whose type (``types``, (V,)) is the type of the gold ``target`` (B, T) token there (Gumbel-max)."""
    same_type = types[None, None, :] == types[target][..., None]  # (B, T, V)
    scaled = logits.float() / max(temperature, 1e-6)
    gumbel = -torch.log(-torch.log(torch.rand_like(scaled).clamp_(1e-10, 1.0 - 1e-7)))  # (B, T, V)
    return (scaled + gumbel).masked_fill(~same_type, -math.inf).argmax(-1)  # (B, T)


def mix_inputs(prev_output_tokens: Tensor, sampled: Tensor, replace: Tensor) -> Tensor:
    """(B, T) decoder inputs: ``prev_output_tokens`` with input t + 1 replaced by ``sampled[:, t]`` (the
    prediction at position t, whose gold token is input t + 1) where ``replace[:, t]`` is true.
    Shapes: all (B, T), fairseq's right-shifted layout (input t + 1 = target t)."""
    mixed = prev_output_tokens.clone()  # (B, T)
    mixed[:, 1:] = torch.where(replace[:, :-1], sampled[:, :-1], prev_output_tokens[:, 1:])
    return mixed


def ramped_rate(max_rate: float, ramp_updates: int, num_updates: int) -> float:
    """The replacement probability at ``num_updates``: linear from 0 to ``max_rate`` over ``ramp_updates``
    (at once where ``ramp_updates`` is 0)."""
    if ramp_updates <= 0:
        return max_rate
    return max_rate * min(1.0, num_updates / ramp_updates)


@register_criterion("museformer_scheduled_sampling")
class ScheduledSamplingCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross-entropy on decoder inputs of which a scheduled share (``--ss-rate``, ramped over
    ``--ss-ramp-updates``) are the model's own type-constrained samples from a first, gold-input pass."""

    def __init__(self, task, sentence_avg, label_smoothing, ss_rate=0.25, ss_ramp_updates=1000,
                 ss_temperature=1.0, ignore_prefix_size=0, report_accuracy=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not 0.0 <= ss_rate <= 1.0:
            raise ValueError("--ss-rate must be in [0, 1]")
        if ss_ramp_updates < 0:
            raise ValueError("--ss-ramp-updates must be >= 0")
        if ss_temperature <= 0:
            raise ValueError("--ss-temperature must be > 0")
        self.max_rate, self.ramp_updates, self.temperature = float(ss_rate), int(ss_ramp_updates), float(ss_temperature)
        self.types = symbol_types(task.target_dictionary)  # (V,)
        self.replaceable = replaceable_symbols(task.target_dictionary)  # (V,)
        self.num_updates = 0

    @staticmethod
    def add_args(parser):
        LabelSmoothedCrossEntropyCriterion.add_args(parser)
        parser.add_argument("--ss-rate", type=float, default=0.25, metavar="P",
                            help="the largest probability that a previous performance token given to the decoder "
                                 "is the model's own sample instead of the pianist's (bar tokens never are)")
        parser.add_argument("--ss-ramp-updates", type=int, default=1000, metavar="N",
                            help="updates over which the probability ramps linearly from 0 to --ss-rate "
                                 "(counted from the run's first update; 0: --ss-rate at once)")
        parser.add_argument("--ss-temperature", type=float, default=1.0, metavar="T",
                            help="sampling temperature of the model's own tokens (1.0: as rendered by default)")

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = int(num_updates)

    def rate(self) -> float:
        return ramped_rate(self.max_rate, self.ramp_updates, self.num_updates)

    def mixed_net_input(self, model, sample) -> tuple:
        """(net_input with mixed decoder inputs, number of inputs replaced, number replaceable)."""
        net_input = sample["net_input"]
        prev = net_input["prev_output_tokens"]  # (B, T)
        target = sample["target"]  # (B, T)
        rate = self.rate() if model.training else 0.0
        replaceable = self.replaceable.to(target.device)[target] & target.ne(self.padding_idx)  # (B, T)
        if rate <= 0:
            return net_input, 0, int(replaceable[:, :-1].sum())
        with torch.no_grad():
            logits = model(**net_input)[0]  # (B, T, V)
            sampled = sample_within_type(logits, target, self.types.to(target.device), self.temperature)  # (B, T)
        replace = replaceable & (torch.rand(target.shape, device=target.device) < rate)  # (B, T)
        mixed = dict(net_input, prev_output_tokens=mix_inputs(prev, sampled, replace))
        changed = replace[:, :-1] & sampled[:, :-1].ne(target[:, :-1])  # (B, T - 1)
        return mixed, int(changed.sum()), int(replaceable[:, :-1].sum())

    def forward(self, model, sample, reduce=True):
        net_input, changed, replaceable = self.mixed_net_input(model, sample)
        net_output = model(**net_input)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["target"].size(0), "sample_size": sample_size,
                          "ss_changed": changed, "ss_replaceable": replaceable}
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        changed = sum(log.get("ss_changed", 0) for log in logging_outputs)
        replaceable = sum(log.get("ss_replaceable", 0) for log in logging_outputs)
        if replaceable:  # the share of decoder inputs that differed from the pianist's token
            metrics.log_scalar("ss_changed", changed / replaceable, replaceable, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
