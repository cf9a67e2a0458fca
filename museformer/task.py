"""Task ``museformer_s2p``: translation of bar-synchronous score tokens into performance tokens.

It reads ``fairseq-preprocess --source-lang score --target-lang perf`` output like fairseq's
``translation`` task, checks that the dictionaries hold the bar token (looked up by string), and at
generation time constrains every step to the token type the performance grammar expects, sizing the
maximum length from the source (no ``--max-len-*`` flag needed).
"""
from __future__ import annotations

import importlib
from typing import Dict, Union

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationTask

from .constants import BAR_TOKEN, MEAN
from .model import Grammar

# The grammar ends every hypothesis exactly; fairseq only needs a bound to size its buffers. Per onset
# group the score has >= 4 tokens (Pos Pitch Dur Staff) and the performance 8 (Tempo, 3 Sus, Soft, Vel
# Time Art), bars map 1:1, so a performance is at most 2x its score (+ EOS).
MAX_LEN_A, MAX_LEN_B = 2, 16


def parse_type_temperature(text: str) -> Dict[str, Union[float, str]]:
    """``Tempo=0.7,Vel=mean`` -> {"Tempo": 0.7, "Vel": "mean"}; raises ValueError naming the flag."""
    out: Dict[str, Union[float, str]] = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--type-temperature: expected TYPE=T or TYPE=mean pairs, got {item!r}")
        if value.strip() == MEAN:
            out[name.strip()] = MEAN
            continue
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--type-temperature: expected TYPE=T or TYPE=mean pairs, got {item!r}") from None
    return out


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
        parser.add_argument("--unconstrained", action="store_true",
                            help="generate without the performance grammar (for ablations)")
        parser.add_argument("--no-deletions", action="store_true",
                            help="never generate the grammar module's DELETION token (every score note is "
                                 "played; instruct-render's default), except where --unisons-once asks for it")
        parser.add_argument("--unisons-once", action="store_true",
                            help="a pitch that several notes of one onset share (voices in unison) is "
                                 "struck once, as on a piano: all but its longest note take the DELETION "
                                 "token (the grammar module's unison_repeats; instruct-render's default)")
        parser.add_argument("--type-temperature", default="", metavar="TYPE=T,...",
                            help="per-type sampling temperature relative to --temperature, e.g. Tempo=0.7 "
                                 "(steadier tempo); types are the grammar's token types; TYPE=mean "
                                 "decodes that type as the token nearest the expected value (types "
                                 "the grammar module's token_value gives numbers)")
        parser.add_argument("--min-key-down-ms", type=float, default=0.0, metavar="MS",
                            help="never generate an articulation that holds a note shorter than MS "
                                 "milliseconds at the generated tempo (0: off; instruct-render uses the "
                                 "grammar module's MIN_KEY_DOWN_MS)")
        parser.add_argument("--tempo-band", type=float, default=0.0, metavar="BINS",
                            help="keep the rendering's tempo level, over a window of about 8 quarters and "
                                 "relative to the notated tempo, within BINS tempo bins (3%% steps) of its "
                                 "level so far, after the first 16 quarters: a soft band, each bin beyond "
                                 "it costs one logit (0: off; see museformer.model.tempo_band_penalty)")
        parser.add_argument("--tempo-anchor", default="notated", choices=["notated", "self"],
                            help="what --tempo-band centres on: the rendering's own level so far (self) or "
                                 "the notated tempo where the score states one other than 120, no band elsewhere (notated)")
        parser.add_argument("--fermata-hold", type=float, default=0.0, metavar="BINS",
                            help="at the onset of a fermata and the onset after it, move the tempo "
                                 "distribution so that its expected beat period is at least BINS tempo bins "
                                 "(2.9%% steps) slower than the tempo of the 8 quarters before (0: off; "
                                 "instruct-render uses the grammar module's FERMATA_HOLD_BINS; see "
                                 "museformer.model.fermata_hold)")
        parser.add_argument("--dynamics-band", type=float, default=0.0, metavar="BINS",
                            help="keep the rendering's velocity level, over a window of about 32 notes, "
                                 "within BINS velocity bins (2 MIDI velocities each) of its offset so far "
                                 "from the notated dynamic level, after the first 32 notes, where the score "
                                 "marks dynamics (0: off; instruct-render uses the grammar module's "
                                 "DYNAMICS_BAND_BINS; see museformer.model.dynamics_band_penalty)")
        # fmt: on

    @classmethod
    def setup_task(cls, args, **kwargs):
        task = super().setup_task(args, **kwargs)
        for name, d in (("source", task.src_dict), ("target", task.tgt_dict)):
            if d.index(BAR_TOKEN) == d.unk():
                raise ValueError(f"{args.data}: the {name} dictionary has no {BAR_TOKEN!r} token")
        return task

    def load_grammar(self) -> Grammar:
        module = importlib.import_module(getattr(self.args, "grammar", "instruct_tokenizer.grammar"))
        deletion = getattr(module, "DELETION", None)
        forbidden = [deletion] if deletion and getattr(self.args, "no_deletions", False) else []
        unisons = getattr(module, "unison_repeats", None)
        once = (deletion, unisons) if getattr(self.args, "unisons_once", False) else None
        if once is not None and not (deletion and unisons):
            raise ValueError("--unisons-once: the grammar module lacks DELETION or unison_repeats")
        return Grammar(self.src_dict, self.tgt_dict, module.target_slots, module.token_type, forbidden,
                       parse_type_temperature(getattr(self.args, "type_temperature", "")),
                       getattr(module, "token_value", None),
                       min_key_down_s=float(getattr(self.args, "min_key_down_ms", 0.0) or 0.0) / 1000.0,
                       art_nominal_q=getattr(module, "art_nominal_q", None),
                       beat_period_s=getattr(module, "beat_period_s", None), once=once,
                       tempo_band=float(getattr(self.args, "tempo_band", 0.0) or 0.0),
                       tempo_gaps=getattr(module, "tempo_slot_gaps", None),
                       tempo_anchor=getattr(self.args, "tempo_anchor", "notated") or "notated",
                       states_tempo=getattr(module, "states_tempo", None),
                       fermata_hold=float(getattr(self.args, "fermata_hold", 0.0) or 0.0),
                       fermata_slots=getattr(module, "fermata_slots", None),
                       dynamics_band=float(getattr(self.args, "dynamics_band", 0.0) or 0.0),
                       dynamics_refs=getattr(module, "dynamics_slot_refs", None))

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None):
        if not getattr(args, "unconstrained", False) and not getattr(self.args, "unconstrained", False):
            grammar = self.load_grammar()
            for model in models:
                model.enable_grammar(grammar)
        args.max_len_a = MAX_LEN_A
        args.max_len_b = MAX_LEN_B
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs)
