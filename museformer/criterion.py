"""An anchored fine-tuning loss: label-smoothed cross-entropy, plus a KL term that keeps the prediction of
every target token outside some types where a reference model put it.

Fine-tuning the released model on tempo copies (docs/experiments.md, section 15) teaches it to follow
the notated tempo somewhat, and moves its velocities away from the human distributions on the way. With
``--anchor-model released.pt --anchor-free-types Tempo`` the tempo predictions learn from the data while
every other prediction is pulled towards the released model's (learning without forgetting): per
target position t whose token type is not free, ``KL(p_anchor(. | t) || p_model(. | t))``, summed over
those positions and weighted by ``--anchor-weight``. The anchor runs in eval mode on the clean inputs (the
model being trained sees its ``--decoder-input-dropout``), under ``torch.no_grad``.
"""
from __future__ import annotations

import math
from typing import List, Set

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from torch import Tensor

from instruct_tokenizer.grammar import token_type

from .warmstart import parse_types


def free_type_mask(dictionary, free_types: Set[str]) -> Tensor:
    """(V,) bool: True for the symbols whose type is in ``free_types`` (and for fairseq's specials, which
    are never anchored)."""
    return torch.tensor([token_type(s) in free_types or s.startswith("<") for s in dictionary.symbols])


def anchored_kl(lprobs: Tensor, anchor_lprobs: Tensor, anchored: Tensor) -> Tensor:
    """Summed KL(anchor || model) in nats over the positions ``anchored`` (B, T) bool; ``lprobs`` and
    ``anchor_lprobs`` (B, T, V) log-probabilities."""
    p_anchor = anchor_lprobs.exp()  # (B, T, V)
    per_position = (p_anchor * (anchor_lprobs - lprobs)).sum(-1)  # (B, T)
    return per_position.masked_select(anchored).sum()


@register_criterion("museformer_anchored_ce")
class AnchoredCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross-entropy + ``--anchor-weight`` x KL to ``--anchor-model`` on the target
    positions whose token type is not in ``--anchor-free-types``."""

    def __init__(self, task, sentence_avg, label_smoothing, anchor_model, anchor_weight=1.0,
                 anchor_free_types="Tempo", ignore_prefix_size=0, report_accuracy=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not anchor_model:
            raise ValueError("--criterion museformer_anchored_ce needs --anchor-model")
        if anchor_weight < 0:
            raise ValueError("--anchor-weight must be >= 0")
        self.anchor_weight = float(anchor_weight)
        self.free = free_type_mask(task.target_dictionary, set(parse_types(anchor_free_types)))  # (V,)
        self._anchor: List = [load_anchor(anchor_model, task)]  # a list: not a submodule (never saved or trained)

    @staticmethod
    def add_args(parser):
        LabelSmoothedCrossEntropyCriterion.add_args(parser)
        parser.add_argument("--anchor-model", type=str, metavar="CKPT",
                            help="the reference model (a released file or a training checkpoint with this "
                                 "task's dictionary) whose predictions the anchored positions are pulled towards")
        parser.add_argument("--anchor-weight", type=float, default=1.0, metavar="W",
                            help="weight of the KL term (per anchored target token, like the cross-entropy)")
        parser.add_argument("--anchor-free-types", type=str, default="Tempo", metavar="TYPES",
                            help="comma-separated target token types left free to move (default Tempo); every "
                                 "other target position is anchored")

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        target = model.get_targets(sample, net_output)  # (B, T)
        anchor = self._anchor[0]
        if next(anchor.parameters()).device != target.device:
            anchor.to(target.device)
        with torch.no_grad():
            anchor_logits = anchor(**sample["net_input"])[0].float()  # (B, T, V)
            anchor_lprobs = F.log_softmax(anchor_logits, dim=-1)
        lprobs = model.get_normalized_probs(net_output, log_probs=True).float()  # (B, T, V)
        anchored = target.ne(self.padding_idx) & ~self.free.to(target.device)[target]  # (B, T)
        kl = anchored_kl(lprobs, anchor_lprobs, anchored)
        loss = loss + self.anchor_weight * kl
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": loss.data, "nll_loss": nll_loss.data, "anchor_kl": kl.data,
                          "anchored": int(anchored.sum()), "ntokens": sample["ntokens"],
                          "nsentences": sample["target"].size(0), "sample_size": sample_size}
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        kl = sum(float(log.get("anchor_kl", 0)) for log in logging_outputs)
        anchored = sum(log.get("anchored", 0) for log in logging_outputs)
        if anchored:
            metrics.log_scalar("anchor_kl", kl / anchored / math.log(2), anchored, round=4)  # bits per anchored token

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def load_anchor(path: str, task) -> torch.nn.Module:
    """The reference model of ``path`` built for ``task`` (its dictionaries must be the checkpoint's),
    float32, eval mode, no gradients."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    model = task.build_model(state["args"])
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    model.load_state_dict(weights, strict=True, args=state["args"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

