"""Task ``museformer_s2p``: translation of bar-synchronous score tokens into performance tokens.

It reads ``fairseq-preprocess --source-lang score --target-lang perf`` output like fairseq's
``translation`` task, checks that the dictionaries hold the bar token (looked up by string), and at
generation time constrains every step to the token type the performance grammar expects, sizing the
maximum length from the source (no ``--max-len-*`` flag needed).
"""
from __future__ import annotations

from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationTask

from .constants import BAR_TOKEN
from .decoding import DecodeConfig, DecodeRules
from .decoding.rules import parse_type_temperature  # noqa: F401  (re-exported: the flag's parser)

# The grammar ends every hypothesis exactly; fairseq only needs a bound to size its buffers. Per onset
# group the score has >= 4 tokens (Pos Pitch Dur Staff) and the performance 8 (Tempo, 3 Sus, Soft, Vel
# Time Art), bars map 1:1, so a performance is at most 2x its score (+ EOS).
MAX_LEN_A, MAX_LEN_B = 2, 16


@register_task("museformer_s2p")
class MuseformerS2PTask(TranslationTask):
    """Score -> performance translation with bar-aware models and grammar-constrained generation."""

    @staticmethod
    def add_args(parser):
        TranslationTask.add_args(parser)
        # fmt: off
        parser.add_argument("--grammar", default="instruct_tokenizer.grammar", metavar="MODULE",
                            help="module exporting target_slots(score_tokens) and token_type(token) "
                                 "for constrained generation")
        DecodeConfig.add_args(parser, profile="task")  # every decoding rule, off by default here
        # fmt: on

    @classmethod
    def setup_task(cls, args, **kwargs):
        task = super().setup_task(args, **kwargs)
        for name, d in (("source", task.src_dict), ("target", task.tgt_dict)):
            if d.index(BAR_TOKEN) == d.unk():
                raise ValueError(f"{args.data}: the {name} dictionary has no {BAR_TOKEN!r} token")
        return task

    def decode_config(self) -> DecodeConfig:
        """The decoding rules' settings from the task's flags (``DecodeConfig``'s "task" profile)."""
        return DecodeConfig.from_args(self.args, profile="task")

    def build_rules(self, config: Optional[DecodeConfig] = None) -> DecodeRules:
        """The ordered decoding rules for ``config`` (default: the task's flags) and this task's
        dictionaries and ``--grammar`` module. Raises ValueError naming the flag of a bad setting."""
        return DecodeRules.build(config or self.decode_config(), self.src_dict, self.tgt_dict,
                                 getattr(self.args, "grammar", None) or "instruct_tokenizer.grammar")

    def use_rules(self, rules: Optional[DecodeRules]) -> None:
        """Generate with these rules from now on instead of the ones the flags give (the renderer builds
        them once from its own DecodeConfig; None: unconstrained)."""
        self.fixed_rules = (rules,)

    def generation_rules(self) -> Optional[DecodeRules]:
        """The rules generation applies: those given to :meth:`use_rules`, else the flags' (None:
        unconstrained). fairseq's generator and the lean sampler (``museformer.sampler``) both use them."""
        fixed = getattr(self, "fixed_rules", None)
        if fixed is not None:
            return fixed[0]
        config = self.decode_config()
        return self.build_rules(config) if config.constrained else None

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's training step; a criterion with a schedule (``museformer_scheduled_sampling``) is told
        the update number first (fairseq 0.10.2's trainer tells the model only)."""
        if hasattr(criterion, "set_num_updates"):
            criterion.set_num_updates(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None):
        rules = self.generation_rules()
        for model in models:
            model.enable_decoding(rules)
        args.max_len_a = MAX_LEN_A
        args.max_len_b = MAX_LEN_B
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs)
