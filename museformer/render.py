"""``instruct-render``: a score (MusicXML or score MIDI) -> an expressive performance MIDI, in one command.

The path: score file -> score tokens (``instruct_tokenizer``) -> bar-bounded segments no longer than the
model was trained on -> grammar-constrained sampling with the lean loop of ``museformer.sampler`` (the
same tokens as fairseq's ``SequenceGenerator``, which ``--generator fairseq``, beam search and greedy
decoding use; the previous segment's last bars are forced as the decoder prefix, so segments join
without seams) -> stitched whole-piece performance tokens -> MIDI with sustain (CC64) and soft (CC67)
pedal. A piece that fits the model's context is rendered in a single pass; several scores (or a folder)
are rendered together, their segments batched across pieces.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import bar_ranges, split_bars
from instruct_tokenizer.grammar import target_slots
from instruct_tokenizer.scorefile import MIDI_SUFFIXES

from .constants import PLAN_PRIORS
from .decoding import DecodeConfig, DecodeRules

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "instruct-museformer.pt"
logger = logging.getLogger("instruct_render")


class RenderError(Exception):
    """A user-facing error: the message names the file and the reason."""


# --------------------------------------------------------------------------------------- model
class _threads:
    """Temporarily set torch's intra-op thread count."""

    def __init__(self, n: int):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


@dataclass
class Sampling:
    """Decoding settings: plain sampling by default (a performance is one draw from the model, and
    sampling keeps the human spread that greedy decoding collapses; nucleus p 0.95 cut the velocity
    tails and measured further from the human distributions); beam search when beam > 1 or ``greedy``."""

    beam: int = 1
    temperature: float = 1.0
    topp: float = 1.0  # 1.0: plain ancestral sampling (measured closest to human distributions)
    seed: int = 0
    greedy: bool = False
    generator: str = "lean"  # sampling loop: "lean" (museformer.sampler) or "fairseq" (its SequenceGenerator)

    @property
    def sampling(self) -> bool:
        return self.beam <= 1 and not self.greedy

    @property
    def lean(self) -> bool:
        """Whether the lean loop samples (fairseq's generator does beam search and greedy decoding, and
        sampling when asked: the same tokens with the same seed, slower)."""
        if self.generator not in GENERATORS:
            raise RenderError(f"--generator: expected one of {', '.join(GENERATORS)}, got {self.generator!r}")
        return self.sampling and self.generator == "lean"


GENERATORS = ("lean", "fairseq")


def _dictionary_dir(state: dict, data_dir: Optional[str]) -> str:
    """A directory with dict.score.txt / dict.perf.txt: the embedded one of a released model, else args.data."""
    if "dictionary" in state:
        tmp = tempfile.mkdtemp(prefix="instruct-render-dict-")
        for lang in ("score", "perf"):
            Path(tmp, f"dict.{lang}.txt").write_text(state["dictionary"])
        return tmp
    if data_dir and Path(data_dir, "dict.score.txt").exists():
        return data_dir
    raise RenderError(f"{data_dir}: no dict.score.txt; pass --data DIR (the fairseq-preprocess output)")


@dataclass
class Performance:
    """One rendering: the score tokens it was rendered from, its performance tokens, the decoded MIDI
    (a ``miditoolkit.MidiFile``: notes, sustain CC64, soft CC67; times in ticks at 120 quarters per minute,
    480 per quarter) and the file it was written to, if any."""

    score_tokens: List[str]
    tokens: List[str]
    midi: object
    path: Optional[Path] = None


class Renderer:
    """A loaded model with its decoding rules; renders scores. The Python API::

        from museformer import Renderer
        renderer = Renderer.load()                      # the released model, instruct-render's rules
        perf = renderer.render("score.musicxml", style="tempo=fast,dynamics=loud", seed=7, out="perf.mid")
        perf.midi, perf.tokens                          # a miditoolkit MidiFile, the performance tokens
    """

    def __init__(self, models, task, args, threads: int = 1):
        self.models, self.task, self.args = models, task, args
        self.threads = threads  # step-by-step decoding is latency-bound: one thread is fastest
        self.src_dict, self.tgt_dict = task.source_dictionary, task.target_dictionary
        self.max_positions = min(int(getattr(args, "max_source_positions", 1024)),
                                 int(getattr(args, "max_target_positions", 1024)))
        self.rules: Optional[DecodeRules] = None  # the decoding rules (their state crosses segments)
        self.decode: Optional[DecodeConfig] = None  # what they were built from
        self.tempo = None  # the notated tempo of the latest score_tokens (tempo_infer.TempoEstimate) or None
        self.tempo_planner = None  # the checkpoint's tempo plan (tempo_plan.TempoPlan or TempoPlanEnsemble) or None
        self.velocity_planner = None  # its velocity plan model (museformer.velocity_plan.VelocityPlan) or None
        self.articulation_planner = None  # its articulation plan (museformer.velocity_plan.ArticulationPlan) or None
        self.timing_planner = None  # its timing plan (museformer.velocity_plan.TimingPlan) or None

    @classmethod
    def from_checkpoint(cls, path: str, data: Optional[str] = None, attention_impl: Optional[str] = None,
                        decode: Optional[DecodeConfig] = None, **settings) -> "Renderer":
        """Load a checkpoint (a released model with its embedded dictionary, or a training checkpoint with
        ``data``: the fairseq-preprocess folder). ``decode``: the decoding rules (default:
        ``DecodeConfig()``, instruct-render's defaults; docs/decoding.md); ``settings``: DecodeConfig
        fields to change, e.g. ``tempo_band=0`` or ``type_temperature="Tempo=mean,Vel=mean"``. Raises
        RenderError (file and reason) for a missing or unreadable checkpoint or a bad setting."""
        from fairseq import checkpoint_utils, tasks

        import museformer  # noqa: F401  (registers the task and architectures)

        if not Path(path).is_file():
            raise RenderError(f"{path}: checkpoint not found")
        try:
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
        except (RuntimeError, OSError, KeyError, EOFError) as e:
            raise RenderError(f"{path}: cannot load checkpoint: {str(e).splitlines()[0]}") from None
        args = state["args"]
        args.data = _dictionary_dir(state, data or getattr(args, "data", None))
        trained_positions = min(int(getattr(args, "max_source_positions", 1024)),
                                int(getattr(args, "max_target_positions", 1024)))
        # positions are sinusoidal: a bar longer than the training segments may exceed them at render time
        args.max_source_positions = args.max_target_positions = 10 ** 6
        if attention_impl:
            args.attention_impl = attention_impl
        try:
            task = tasks.setup_task(args)
        finally:
            if "dictionary" in state:  # the embedded dictionary's temporary copy is read now
                shutil.rmtree(args.data, ignore_errors=True)
        try:
            config = (decode or DecodeConfig()).replace(**settings)
            rules = DecodeRules.build(config, task.source_dictionary, task.target_dictionary,
                                      getattr(args, "grammar", None) or "instruct_tokenizer.grammar")
        except ValueError as e:
            raise RenderError(str(e)) from None
        task.use_rules(rules)
        model = task.build_model(args)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
        model.load_state_dict(weights, strict=True, args=args)
        model.eval()
        renderer = cls([model], task, args)
        renderer.rules, renderer.decode = rules, config
        plans = plan_models_of(state, path)
        renderer.tempo_planner, renderer.velocity_planner = plans["tempo_plan"], plans["velocity_plan"]
        renderer.articulation_planner, renderer.timing_planner = plans["articulation_plan"], plans["timing_plan"]
        renderer.max_positions = trained_positions  # segments are planned at the trained size
        return renderer

    @classmethod
    def load(cls, checkpoint: Optional[str] = None, decode: Optional[DecodeConfig] = None,
             threads: Optional[int] = None, **settings) -> "Renderer":
        """The model of ``checkpoint`` (default: the released ``checkpoints/instruct-museformer.pt``), loaded
        once, with ``decode`` (default: instruct-render's rules) and DecodeConfig ``settings`` changed, e.g.
        ``Renderer.load(tempo_band=0)``; ``threads``: torch threads while decoding (default 1: one step is
        latency-bound). Raises RenderError."""
        renderer = cls.from_checkpoint(str(checkpoint or DEFAULT_CHECKPOINT), decode=decode, **settings)
        if threads:
            renderer.threads = int(threads)
        return renderer

    def render(self, score_path: str, style: Union[None, str, Dict[str, str]] = None, seed: int = 0,
               out: Optional[str] = None, sampling: Optional[Sampling] = None, composer: Optional[str] = None,
               performer: Optional[str] = None, unfold_repeats: bool = True, progress: bool = False,
               qpm: Optional[float] = None, midi_velocities: bool = True) -> Performance:
        """Render one score file (MusicXML .musicxml/.xml/.mxl or score MIDI .mid). ``style``: instruct
        levels, ``"tempo=fast,dynamics=loud"`` or ``{"tempo": "fast"}`` (keys tempo, dynamics, range, rubato,
        articulation); ``seed``: the sampling seed (``sampling`` overrides temperature, top-p, beam);
        ``out``: also write the MIDI there (atomically); ``qpm``: the notated tempo (quarter notes per minute)
        instead of the score's mark or the estimate; ``midi_velocities=False``: a score MIDI's note velocities
        are not read as its dynamics. Raises RenderError or ScoreReadError (bad file)."""
        from instruct_tokenizer.decode import tokens_to_midi

        style_map = parse_style(style) if isinstance(style, str) or style is None else dict(style)
        score_tokens = self.score_tokens(str(score_path), style=style_map, composer=composer, performer=performer,
                                         unfold_repeats=unfold_repeats, qpm=qpm, midi_velocities=midi_velocities)
        sampling = sampling or Sampling(seed=seed)
        tokens = self.render_tokens(score_tokens, sampling, progress=progress)
        path = None
        if out is not None:
            path = Path(out)
            path.parent.mkdir(parents=True, exist_ok=True)
        midi = tokens_to_midi(score_tokens, tokens, None if path is None else str(path))
        return Performance(list(score_tokens), tokens, midi, path)

    @property
    def score_features(self) -> Dict[str, bool]:
        """Which optional score tokens the model was trained with, read from its dictionary's training
        counts: ``instruct`` (prefix), ``markings`` (MusicXML markings), ``notated_tempo`` (``QPM``),
        ``marking_state`` (``DynLevel``/``WedgeOpen``/``TempoMode`` bar tokens), ``after_fermata``
        (``After_fermata``, part of the marking state since it was added)."""
        d = self.src_dict

        def seen(tokens: Sequence[str]) -> bool:
            return any(d.count[d.indices[t]] > 0 for t in tokens if t in d.indices)

        return {"instruct": seen([V.tok(t, lv) for t, lvs in V.INSTRUCT_LEVELS.items() for lv in lvs]),
                "markings": seen(V.marking_tokens()),
                "notated_tempo": seen(V.qpm_tokens()),
                "marking_state": seen(V.marking_state_tokens()),
                "after_fermata": seen(V.after_fermata_tokens())}

    @property
    def relative_tempo(self) -> bool:
        """Whether the model was trained on the relative tempo encoding (its dictionary counts ``TempoRel``
        tokens: ``instruct-tokenize build --relative-tempo``). Its performance streams start with a
        ``TempoLevel`` token, chosen with the first segment and forced on every later one."""
        from instruct_tokenizer.grammar import relative_tempo

        from .decoding.rules import dictionary_counts

        return relative_tempo(dictionary_counts(self.tgt_dict))

    def score_tokens(self, path: str, style: Optional[Dict[str, str]] = None, composer: Optional[str] = None,
                     performer: Optional[str] = None, unfold_repeats: bool = True,
                     qpm: Optional[float] = None, midi_velocities: bool = True) -> List[str]:
        """A MusicXML or score MIDI file -> score tokens with the optional tokens this model was trained
        with (:attr:`score_features`). For a model that reads the notated tempo (``QPM``), a score without a
        metronome mark gets the estimate of ``instruct_tokenizer.tempo_infer`` instead of 120, ``qpm``
        (quarter notes per minute) overrides both; :attr:`tempo` says which and why. A MIDI file whose onsets
        are not on a notated grid reads as a performance (``instruct_tokenizer.scorefile.performance_midi``)
        and is played at its own MIDI tempo, with a warning (its content would read its rubato as note
        values). A model that reads markings gets a score MIDI's dynamics from its note velocities unless
        ``midi_velocities`` is False (``instruct_tokenizer.scorefile.midi_dynamics``). Raises ScoreReadError."""
        from instruct_tokenizer.encode import score_file_to_tokens
        from instruct_tokenizer.scorefile import performance_midi
        from instruct_tokenizer.tempo_infer import TempoEstimate, apply_notated_tempo

        f = self.score_features
        tokens = score_file_to_tokens(path, style=style, composer=composer, performer=performer,
                                      unfold_repeats=unfold_repeats, markings=f["markings"],
                                      instruct=f["instruct"], notated_tempo=f["notated_tempo"],
                                      marking_state=f["marking_state"], after_fermata=f["after_fermata"],
                                      midi_velocities=midi_velocities)
        if not f["notated_tempo"]:
            self.tempo = None
            return tokens
        performance = performance_midi(path) if Path(path).suffix.lower() in MIDI_SUFFIXES else None
        if performance is not None:
            logger.warning(performance.warning(path))
        try:
            tokens, self.tempo = apply_notated_tempo(tokens, override=qpm if qpm is not None or performance is None
                                                     else performance.qpm)
        except ValueError as e:
            raise RenderError(str(e)) from None
        if performance is not None and qpm is None:
            self.tempo = TempoEstimate(performance.qpm, "performance", "the file's own MIDI tempo: it reads as a "
                                       "performance, not a score", self.tempo.bar_qpm)
        return tokens

    def encode(self, tokens: Sequence[str], dictionary, what: str) -> torch.Tensor:
        ids = [dictionary.index(t) for t in tokens]
        unknown = sorted({t for t, i in zip(tokens, ids) if i == dictionary.unk()})
        if unknown:
            raise RenderError(f"{what}: tokens unknown to the model's dictionary: {' '.join(unknown[:8])}")
        return torch.tensor(ids, dtype=torch.long)

    def generate_batch(self, scores: Sequence[Sequence[str]], forced: Sequence[Sequence[str]],
                       sampling: Sampling, priors: Optional[Sequence[Dict[str, torch.Tensor]]] = None
                       ) -> List[List[str]]:
        """Performance tokens for a batch of segments; ``forced[i]`` is forced as the decoder's first
        tokens of segment i (fairseq's prefix tokens; shorter prefixes are padded and not forced);
        ``priors[i]``: the (4,) states of the music before segment i (``level_before``: ``tempo_prior``,
        ``dynamics_prior``; a missing one: zeros)."""
        pad = self.src_dict.pad()
        srcs = [torch.cat([self.encode(s, self.src_dict, "score"), torch.tensor([self.src_dict.eos()])])
                for s in scores]
        width = max(len(x) for x in srcs)
        src = torch.full((len(srcs), width), pad, dtype=torch.long)  # (B, S), left-padded like fairseq
        for i, x in enumerate(srcs):
            src[i, width - len(x):] = x
        sample = {"id": torch.arange(len(srcs)),
                  "net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(x) for x in srcs])}}
        from .decoding.functions import DYN_FIELDS, LEVEL_FIELDS

        for name, width in (("tempo_prior", LEVEL_FIELDS), ("dynamics_prior", DYN_FIELDS)):
            if priors is not None and any(name in p for p in priors):
                sample["net_input"][name] = torch.stack(
                    [p.get(name, torch.zeros(width)) for p in priors])  # (B, 4)
        for name in PLAN_PRIORS:
            if priors is not None and any(name in p for p in priors):
                plans = [p.get(name, torch.zeros(0)) for p in priors]
                table = torch.full((len(plans), max(len(x) for x in plans)), float("nan"))  # (B, G or N), NaN: none
                for i, x in enumerate(plans):
                    table[i, : len(x)] = x
                sample["net_input"][name] = table
        prefix = None
        if any(forced):
            p_width = max(len(f) for f in forced)
            prefix = torch.full((len(srcs), p_width), self.tgt_dict.pad(), dtype=torch.long)  # (B, P)
            for i, f in enumerate(forced):
                if f:
                    prefix[i, : len(f)] = self.encode(f, self.tgt_dict, "overlap")
        if sampling.lean:
            from .sampler import sample as lean_sample

            with _threads(self.threads):
                rows = lean_sample(self.models[0], sample["net_input"], self.task.generation_rules(), prefix,
                                   sampling.temperature, sampling.topp if sampling.topp < 1.0 else -1.0)
            return [self.detokenize(r) for r in rows]
        gen_args = argparse.Namespace(
            beam=1 if sampling.sampling else sampling.beam, sampling=sampling.sampling,
            sampling_topk=-1, sampling_topp=sampling.topp if sampling.sampling and sampling.topp < 1.0 else -1.0,
            temperature=sampling.temperature if sampling.sampling else 1.0,
            max_len_a=0, max_len_b=200, min_len=1, unnormalized=False, lenpen=1, unkpen=0,
            match_source_len=False, no_repeat_ngram_size=0, diverse_beam_groups=-1,
            diverse_beam_strength=0.5, diversity_rate=-1.0, constraints=None, prefix_size=0,
            iter_decode_max_iter=10, print_alignment=False, retain_iter_history=False,
        )
        generator = self.task.build_generator(self.models, gen_args)
        with torch.no_grad(), _threads(self.threads):
            hypos = self.task.inference_step(generator, self.models, sample, prefix_tokens=prefix)
        return [self.detokenize(h[0]["tokens"]) for h in hypos]

    def detokenize(self, ids: torch.Tensor) -> List[str]:
        """A hypothesis' token ids -> its performance tokens (EOS left out)."""
        eos = self.tgt_dict.eos()
        return [self.tgt_dict[i] for i in ids.tolist() if i != eos]

    def generate(self, score_tokens: Sequence[str], forced_perf: Sequence[str], sampling: Sampling) -> List[str]:
        return self.generate_batch([score_tokens], [forced_perf], sampling)[0]

    def plan(self, score_tokens: Sequence[str], overlap_bars: int, budget: Optional[int] = None):
        """(prefix, bars, segments): one segment when the piece fits the model's context."""
        prefix, bars = split_bars(score_tokens)
        budget = budget or self.max_positions - 2
        lengths = [max(len(b), len(target_slots(b))) for b in bars]  # the longer of score and perf
        head = max(len(prefix), int(self.relative_tempo))  # the longer prefix: score's, or the TempoLevel
        if head + sum(lengths) + 1 <= self.max_positions:
            return prefix, bars, [(0, len(bars))]
        return prefix, bars, bar_ranges(lengths, budget - head, overlap_bars)

    def render_many(self, pieces: Sequence[Sequence[str]], sampling: Sampling, overlap_bars: int = 2,
                    batch_size: int = 16, progress: bool = True) -> List[List[str]]:
        """Whole-piece performance tokens for several pieces. Round r generates segment r of every
        piece in batches; each segment is forced to start with the previous segment's overlap bars, and
        with the performance prefix the first segment chose (the relative encoding's ``TempoLevel``: one
        level per piece)."""
        torch.manual_seed(sampling.seed)
        plans = [self.plan(p, overlap_bars) for p in pieces]
        whole_plans = [self.plans_of(p) for p in pieces]  # each piece's tempo and velocity plans (or None)
        done: List[List[List[str]]] = [[] for _ in pieces]
        heads: List[List[str]] = [[] for _ in pieces]  # the tokens before the first bar of each performance
        jobs = sum(len(p[2]) for p in plans)
        bar = tqdm(total=jobs, desc="render", unit="segment", disable=not progress)
        for r in range(max((len(p[2]) for p in plans), default=0)):  # no pieces: nothing to do
            todo = [i for i, p in enumerate(plans) if r < len(p[2])]
            for k in range(0, len(todo), batch_size):
                chunk = todo[k:k + batch_size]
                scores, forced, priors = [], [], []
                for i in chunk:
                    prefix, bars, segs = plans[i]
                    start, end = segs[r]
                    scores.append(prefix + [t for b in bars[start:end] for t in b])
                    forced.append(heads[i] + [t for b in done[i][start:] for t in b])
                    priors.append({**self.level_before(prefix, bars[:start], done[i][:start], heads[i]),
                                   **segment_plans(whole_plans[i], start, end)})
                outs = self.generate_batch(scores, forced, sampling, priors)
                for i, out in zip(chunk, outs):
                    start, end = plans[i][2][r]
                    out_head, out_bars = split_bars(out)
                    if len(out_bars) != end - start:
                        raise RenderError(f"segment bars {start}-{end}: model produced {len(out_bars)} bars")
                    if r == 0:
                        heads[i] = out_head
                    done[i] = done[i][:start] + out_bars
                bar.update(len(chunk))
        bar.close()
        return [heads[i] + [t for b in d for t in b] for i, d in enumerate(done)]

    def plans_of(self, score_tokens: Sequence[str]) -> Dict[str, tuple]:
        """The whole score's plans for the plan rules that are on and whose model the checkpoint holds:
        {"tempo_plan": (factors for each group's Tempo token, ``tempo_plan.gap_factors``, group_bar),
        "velocity_plan": (velocities, note_bar), "articulation_plan": (log2 ratios, note_bar),
        "timing_plan": (ms against the onset group's grid, note_bar)}
        (:func:`segment_plans` cuts a segment's part). The score's ``--style`` levels (its instruct prefix) move
        each plan by what pianists of that level do (``instruct_tokenizer.style_levels``; ``mid``: unchanged)."""
        from instruct_tokenizer import style_levels as S
        from instruct_tokenizer.score import dynamics_only, score_timeline, without_markings
        from instruct_tokenizer.tempo_infer import group_spans_q

        on = self.decode is not None
        levels = S.levels_of(score_tokens)  # --style: each plan moved by what pianists of that level do
        # a score whose only markings are dynamic levels (a score MIDI's velocities) is a plain score to the
        # tempo and articulation plans, whose marked scores always came with the MusicXML's other markings
        timing = without_markings(score_tokens) if dynamics_only(score_tokens) else score_tokens
        tempo = self.tempo_plan_of(timing)
        if tempo is not None and S.asked(levels):
            tempo = (S.styled_tempo(tempo[0], levels, quarters=group_spans_q(score_timeline(timing).group_q)), tempo[1])
        # the articulation plan's key-down bound in seconds reads the tempo plan's curve where it is on
        local_tempo = {} if tempo is None else {"group_log_factor": tempo[0]}
        if tempo is not None:  # each Tempo token plays the gap that ends at its group: the plan over that gap
            from .tempo_plan import gap_factors

            tempo = (gap_factors(tempo[0], timing), tempo[1])
        velocity = note_plan_of(self.velocity_planner, on and self.decode.velocity_plan > 0, score_tokens)
        articulation = note_plan_of(self.articulation_planner, on and self.decode.articulation_plan > 0, timing,
                                    **local_tempo)
        if velocity is not None:
            velocity = (S.styled_velocity(velocity[0], levels), velocity[1])
        if articulation is not None:
            articulation = (S.styled_articulation(articulation[0], levels), articulation[1])
        timing = note_plan_of(self.timing_planner, on and self.decode.timing_plan > 0, score_tokens)
        out = {"tempo_plan": tempo, "velocity_plan": velocity, "articulation_plan": articulation,
               "timing_plan": timing}
        return {k: v for k, v in out.items() if v is not None}

    def plans_on(self) -> bool:
        """Whether :meth:`plans_of` gives any plan: a plan the checkpoint holds whose rule is on."""
        if self.decode is None:
            return False
        return any(planner is not None and getattr(self.decode, rule) > 0
                   for planner, rule in ((self.tempo_planner, "tempo_plan"), (self.velocity_planner, "velocity_plan"),
                                         (self.articulation_planner, "articulation_plan"),
                                         (self.timing_planner, "timing_plan")))

    def tempo_plan_of(self, score_tokens: Sequence[str]):
        """(factors, group_bar) of a whole score for the ``--tempo-plan`` rule: the plan model's log factor
        over the notated tempo per onset group (``museformer.tempo_plan``) and each group's bar; None when
        the rule is off or the checkpoint holds no plan."""
        if self.tempo_planner is None or self.decode is None or not self.decode.tempo_plan > 0:
            return None
        from instruct_tokenizer.score import score_timeline

        from .tempo_plan import factors_over_notated

        return factors_over_notated(self.tempo_planner, score_tokens), score_timeline(score_tokens).group_bar

    def level_before(self, prefix: Sequence[str], score_bars: Sequence[Sequence[str]],
                     perf_bars: Sequence[Sequence[str]], perf_prefix: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
        """The (4,) states after the rendered bars before a segment: ``tempo_prior`` (the tempo band's and
        the fermata hold's level) and ``dynamics_prior`` (the dynamics band's), each where it is on
        (none when there are no such bars). ``perf_prefix``: the performance's tokens before its first
        bar (the relative encoding's ``TempoLevel``)."""
        if self.rules is None or not perf_bars:
            return {}
        score = list(prefix) + [t for b in score_bars for t in b]
        return self.rules.state_after(score, list(perf_prefix) + [t for b in perf_bars for t in b])

    def render_tokens(self, score_tokens: Sequence[str], sampling: Sampling, overlap_bars: int = 2,
                      progress: bool = True) -> List[str]:
        """Whole-piece performance tokens: one pass when the piece fits, else stitched segments."""
        return self.render_many([score_tokens], sampling, overlap_bars, 1, progress)[0]


def note_plan_of(planner, on: bool, score_tokens: Sequence[str], **context):
    """(values, note_bar) of a whole score for a per-note plan rule (``--velocity-plan``: MIDI velocity;
    ``--articulation-plan``: log2 ratio; ``museformer.velocity_plan``) and each note's bar; None when the
    rule is off or the checkpoint holds no such plan. ``context``: what the plan's ``predict`` also reads
    (the articulation plan: ``group_log_factor``, the tempo plan's curve)."""
    if planner is None or not on:
        return None
    from instruct_tokenizer.score import score_timeline

    tl = score_timeline(score_tokens)
    return planner.predict(score_tokens, **context), tl.group_bar[tl.note_group]


def style_line(renderer: "Renderer", tokens: Sequence[str]) -> Optional[str]:
    """The render log's line on the ``--style`` levels asked (``style_levels.describe``), or None; where the
    checkpoint holds no plan or every plan rule is off, only the network reads them (the line says so)."""
    from instruct_tokenizer import style_levels as S

    line = S.describe(S.levels_of(tokens))
    if line and not renderer.plans_on():
        line += "; no plan is on, so only the network reads them (small effect)"
    return line


def midi_dynamics_line(tokens: Sequence[str]) -> Optional[str]:
    """The render log's line on a score MIDI's dynamics read from its note velocities, or None (none read)."""
    levels = [value for kind, value in map(V.parse, tokens) if kind == V.DYN]
    if not levels:
        return None
    return (f"dynamics: {len(levels)} marks read from the note velocities ({', '.join(dict.fromkeys(levels))}; "
            "--no-midi-velocities to ignore them)")


def markings_line(tokens: Sequence[str]) -> str:
    """The render log's line on what a MusicXML's markings gave the model (as played: a repeated section's
    twice): counts of dynamics, hairpins, tempo texts, slurs, articulations and fermatas, or that it gave
    none (a file whose markings are not read shows here: docs/experiments.md section 35)."""
    counts = Counter(name for name in (_marking_name(k, v) for k, v in map(V.parse, tokens)) if name)
    if not counts:
        return "markings: none read (no dynamics, hairpins, tempo words, slurs, articulations or fermatas)"
    return "markings: " + ", ".join(f"{counts[name]} {name}{'s' if counts[name] > 1 else ''}"
                                    for name in MARKING_NAMES if counts[name])


MARKING_NAMES = ("dynamic", "hairpin", "tempo text", "slur", "articulation", "fermata")  # the log line's order


def _marking_name(kind: str, value: str) -> Optional[str]:
    """What :func:`markings_line` counts a score token as (one of MARKING_NAMES), None for no marking or a
    marking's end (a hairpin's or slur's end, counted at its start)."""
    if kind == V.MARK:
        return "fermata" if value == "fermata" else "articulation"
    if kind == V.WEDGE:
        return "hairpin" if value in ("cresc", "dim") else None
    if kind == V.SLUR:
        return "slur" if value == "start" else None
    return {V.DYN: "dynamic", V.TEMPO_WORD: "tempo text"}.get(kind)


def segment_plans(plans: Dict[str, tuple], start: int, end: int) -> Dict[str, torch.Tensor]:
    """The part of a whole score's plans (``Renderer.plans_of``) in bars ``[start, end)``: the priors of
    that segment, (G_seg,) or (N_seg,) each."""
    return {name: torch.from_numpy(values[(bar >= start) & (bar < end)]).float()
            for name, (values, bar) in plans.items()}


def plan_models_of(state: dict, path: str) -> Dict[str, object]:
    """The plans stored in a checkpoint: {"tempo_plan", "velocity_plan", "articulation_plan", "timing_plan"} -> the plan
    model (``museformer.tempo_plan``, ``museformer.velocity_plan``), None for a missing one. Raises
    RenderError naming the file for a plan that cannot be loaded."""
    from .tempo_plan import TempoPlanError, tempo_plan_from_state
    from .velocity_plan import ArticulationPlan, TimingPlan, VelocityPlan

    out: Dict[str, object] = {}
    for entry, load in (("tempo_plan", tempo_plan_from_state), ("velocity_plan", VelocityPlan.from_state),
                        ("articulation_plan", ArticulationPlan.from_state), ("timing_plan", TimingPlan.from_state)):
        try:
            out[entry] = load(state[entry]) if entry in state else None
        except (TempoPlanError, KeyError, RuntimeError, TypeError) as e:
            raise RenderError(f"{path}: cannot load its {entry.replace('_', ' ')}: {e}") from None
    return out


# --------------------------------------------------------------------------------------- CLI
def parse_style(text: Optional[str]) -> Dict[str, str]:
    """``tempo=fast,dynamics=loud`` -> {"tempo": "fast", "dynamics": "loud"}."""
    if not text:
        return {}
    style = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise RenderError(f"--style: expected key=value pairs, got {item!r}")
        style[key.strip()] = value.strip()
    return style


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instruct-render", description=__doc__.splitlines()[0],
                                epilog="instruct-render serve [--port N] [--host H] [--checkpoint PT]: a local web "
                                       "page to render a score, hear it, see it and re-render a passage "
                                       "(instruct-render serve --help)")
    p.add_argument("score", nargs="+",
                   help="MusicXML (.musicxml/.xml/.mxl) or score MIDI (.mid) file; several files or a folder of "
                        "them are rendered together (their segments batched: see --batch)")
    p.add_argument("-o", "--output", required=True,
                   help="output performance MIDI path; with several scores or a folder, the output folder "
                        "(one NAME.mid per score NAME)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model file (.pt)")
    p.add_argument("--data", default=None, help="fairseq data dir with dict.*.txt (for training checkpoints)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--topp", type=float, default=1.0,
                   help="nucleus sampling p (default 1.0: plain sampling, which measured closer to human "
                        "velocity/IOI/pedal distributions than 0.95)")
    DecodeConfig.add_args(p, profile="render")  # the decoding rules (docs/decoding.md)
    p.add_argument("--beam", type=int, default=1, help="beam search with this beam size (> 1) instead of sampling")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--n", type=int, default=1, help="number of different renderings (seeds seed..seed+n-1)")
    p.add_argument("--style", default=None,
                   help="instruct tokens, e.g. tempo=fast,dynamics=loud,rubato=high,articulation=legato")
    p.add_argument("--composer", default=None, help="composer meta token (if the model was trained with it)")
    p.add_argument("--performer", default=None, help="performer meta token (if the model was trained with it)")
    p.add_argument("--no-repeats", action="store_true", help="play each repeated section once")
    p.add_argument("--no-midi-velocities", action="store_true",
                   help="do not read a score MIDI's note velocities as its dynamics (by default the levels a "
                        "notation program's export plays, p 49, f 96, ..., become the dynamics the model reads)")
    p.add_argument("--qpm", type=float, default=None, metavar="Q",
                   help="the notated tempo in quarter notes per minute (default: the score's metronome mark, "
                        "else an estimate from its tempo words, meter and content; the output says which)")
    p.add_argument("--overlap-bars", type=int, default=2, help="bars of forced context between segments")
    p.add_argument("--attention-impl", default=None, choices=["dense", "bar", "flex"],
                   help="override the checkpoint's attention backend")
    p.add_argument("--batch", type=int, default=16, metavar="N",
                   help="segments of different scores generated together (default 16; a piece rendered with "
                        "others draws other random numbers than alone)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads while decoding (default 1: one step's matrices are small, measured "
                        "fastest; scripts/bench_speed.py)")
    p.add_argument("--generator", default="lean", choices=list(GENERATORS),
                   help="sampling loop: lean (default, museformer.sampler) or fairseq's SequenceGenerator "
                        "(the same tokens with the same seed, slower; for checking)")
    return p


SCORE_SUFFIXES = (".musicxml", ".xml", ".mxl", ".mid", ".midi")


def score_files(paths: Sequence[str]) -> List[Path]:
    """The score files named: files as given, a folder's score files (``SCORE_SUFFIXES``) sorted by name.
    Raises RenderError for a missing path or a folder without scores."""
    files: List[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SCORE_SUFFIXES)
            if not found:
                raise RenderError(f"{path}: no score files ({', '.join(SCORE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise RenderError(f"{path}: no such file or folder")
    return files


def output_paths(output: str, n: int) -> List[Path]:
    out = Path(output)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(n)]


def output_plan(args: argparse.Namespace, scores: Sequence[Path]) -> List[List[Path]]:
    """Per score, its output paths (one per seed): ``-o`` itself for one score file, else ``-o`` is a
    folder holding NAME.mid per score NAME. Raises RenderError when names collide."""
    if len(args.score) == 1 and not Path(args.score[0]).is_dir():
        return [output_paths(args.output, args.n)]
    folder = Path(args.output)
    if folder.suffix.lower() in (".mid", ".midi"):
        raise RenderError(f"{folder}: with several scores or a folder, -o names the output folder")
    stems: Dict[str, Path] = {}
    for score in scores:
        if score.stem in stems:
            raise RenderError(f"{score}: its output name collides with {stems[score.stem]} ({score.stem}.mid)")
        stems[score.stem] = score
    return [output_paths(str(folder / f"{score.stem}.mid"), args.n) for score in scores]


def write_midi(score_tokens: Sequence[str], perf_tokens: Sequence[str], path: Path) -> None:
    """Write the performance MIDI atomically (a partial file never takes the name)."""
    from instruct_tokenizer.decode import tokens_to_midi

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tokens_to_midi(score_tokens, perf_tokens, str(tmp))
    os.replace(tmp, path)


def render_file(args: argparse.Namespace) -> Tuple[List[Path], List[str]]:
    """Render every score of ``args.score`` (their segments batched); (written paths, error lines of the
    scores that could not be read: the others are rendered all the same)."""
    from instruct_tokenizer.scorefile import ScoreReadError

    scores = score_files(args.score)
    outputs = output_plan(args, scores)
    renderer = Renderer.from_checkpoint(args.checkpoint, args.data, args.attention_impl,
                                        decode=DecodeConfig.from_args(args))
    renderer.threads = max(1, int(args.threads))
    todo, errors = [], []
    for score, paths in zip(scores, outputs):
        try:
            tokens = renderer.score_tokens(str(score), style=parse_style(args.style), composer=args.composer,
                                           performer=args.performer, unfold_repeats=not args.no_repeats,
                                           qpm=args.qpm, midi_velocities=not args.no_midi_velocities)
            renderer.encode(tokens, renderer.src_dict, "score")  # unknown tokens: this score's error
        except (ScoreReadError, RenderError) as e:
            errors.append(f"{score}: {e}")
            continue
        name = f"{score}: " if len(scores) > 1 else ""
        if renderer.tempo is not None:
            print(f"{name}tempo: {renderer.tempo.qpm:.0f} quarter notes per minute: {renderer.tempo.reason}")
        if score.suffix.lower() in MIDI_SUFFIXES:
            read = midi_dynamics_line(tokens)
        else:  # a model that reads no markings is given none
            read = markings_line(tokens) if renderer.score_features.get("markings") else None
        if read:
            print(f"{name}{read}")
        style = style_line(renderer, tokens)
        if style:
            print(f"{name}{style}")
        todo.append((tokens, paths))
    written = []
    for k in range(args.n):
        sampling = Sampling(beam=args.beam, temperature=args.temperature, topp=args.topp,
                            seed=args.seed + k, greedy=args.greedy, generator=args.generator)
        performances = renderer.render_many([tokens for tokens, _ in todo], sampling, args.overlap_bars,
                                            batch_size=max(1, int(args.batch)))
        for (tokens, paths), perf_tokens in zip(todo, performances):
            write_midi(tokens, perf_tokens, paths[k])
            written.append(paths[k])
    return written, errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # instruct-render serve [--port N]: the web page (museformer/serve)
        from .serve.app import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="instruct-render: %(levelname)s: %(message)s")
    try:
        written, errors = render_file(args)
    except RenderError as e:
        print(f"instruct-render: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    for line in errors:  # a score that could not be read: one line each, the others are written
        print(f"instruct-render: error: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
