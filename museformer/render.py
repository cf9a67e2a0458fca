"""``instruct-render``: a score (MusicXML or score MIDI) -> an expressive performance MIDI, in one command.

The path: score file -> score tokens (``instruct_tokenizer``) -> bar-bounded segments no longer than the
model was trained on -> grammar-constrained generation with fairseq's own ``SequenceGenerator`` (the
previous segment's last bars are forced as the decoder prefix, so segments join without seams) ->
stitched whole-piece performance tokens -> MIDI with sustain (CC64) and soft (CC67) pedal.
A piece that fits the model's context is rendered in a single pass.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import split_bars
from instruct_tokenizer.grammar import (DYNAMICS_BAND_BINS, FERMATA_HOLD_BINS, MIN_KEY_DOWN_MS, TEMPO_ANCHOR,
                                       TEMPO_BAND_BINS, target_slots)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "instruct-museformer.pt"
logger = logging.getLogger("instruct_render")


class RenderError(Exception):
    """A user-facing error: the message names the file and the reason."""


# --------------------------------------------------------------------------------------- segments
def plan_segments(bar_lengths: Sequence[int], budget: int, overlap: int) -> List[Tuple[int, int]]:
    """Half-open bar ranges [start, end) of at most ``budget`` tokens each (a single bar longer than the
    budget forms its own segment); consecutive segments share ``overlap`` bars."""
    segments: List[Tuple[int, int]] = []
    start, n = 0, len(bar_lengths)
    while start < n:
        end, used = start, 0
        while end < n and (end == start or used + bar_lengths[end] <= budget):
            used += bar_lengths[end]
            end += 1
        segments.append((start, end))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return segments


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

    @property
    def sampling(self) -> bool:
        return self.beam <= 1 and not self.greedy


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


class Renderer:
    """A loaded model + task + generator settings; renders token streams."""

    def __init__(self, models, task, args, threads: int = 1):
        self.models, self.task, self.args = models, task, args
        self.threads = threads  # step-by-step decoding is latency-bound: one thread is fastest
        self.src_dict, self.tgt_dict = task.source_dictionary, task.target_dictionary
        self.max_positions = min(int(getattr(args, "max_source_positions", 1024)),
                                 int(getattr(args, "max_target_positions", 1024)))
        self.grammar = None  # the task's Grammar, for the tempo band's level across segments

    @classmethod
    def from_checkpoint(cls, path: str, data: Optional[str] = None, attention_impl: Optional[str] = None,
                        allow_deletions: bool = False, type_temperature: str = "",
                        min_key_down_ms: float = MIN_KEY_DOWN_MS, unisons_once: bool = True,
                        tempo_band: float = TEMPO_BAND_BINS, tempo_anchor: str = TEMPO_ANCHOR,
                        fermata_hold: float = FERMATA_HOLD_BINS,
                        dynamics_band: float = DYNAMICS_BAND_BINS) -> "Renderer":
        """``allow_deletions``: let the model leave score notes unplayed (``Vel_Del``), as some human
        performances in its training data do; by default every score note is played.
        ``type_temperature``: per-type relative sampling temperature, e.g. ``Tempo=0.7``.
        ``min_key_down_ms``: the key-down floor (ms; 0: off): no note is held shorter.
        ``unisons_once``: a pitch that several notes of one onset share is struck once (its longest note;
        the others take the deletion token); False plays every score note.
        ``tempo_band``: keep the windowed tempo level within that many tempo bins of the reference (0:
        off; ``museformer.model.tempo_band_penalty``); segments continue the level of the bars before
        them; ``tempo_anchor``: the reference ("notated": the notated tempo where the score states one,
        no band elsewhere; "self": the rendering's level so far).
        ``fermata_hold``: at a fermata's onset and the onset after it, the expected beat period is at
        least that many tempo bins slower than the 8 quarters before (0: off; ``museformer.model.fermata_hold``;
        needs score tokens with markings).
        ``dynamics_band``: keep the 32-note velocity level within that many velocity bins of the
        rendering's offset so far from the notated dynamic level (0: off; ``museformer.model.
        dynamics_band_penalty``; needs score tokens with dynamics markings, elsewhere it does nothing)."""
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
        args.no_deletions = not allow_deletions
        args.type_temperature = type_temperature
        args.min_key_down_ms = min_key_down_ms
        args.unisons_once = unisons_once
        args.tempo_band = tempo_band
        args.tempo_anchor = tempo_anchor
        args.fermata_hold = fermata_hold
        args.dynamics_band = dynamics_band
        try:
            task = tasks.setup_task(args)
        finally:
            if "dictionary" in state:  # the embedded dictionary's temporary copy is read now
                shutil.rmtree(args.data, ignore_errors=True)
        try:
            renderer_grammar = task.load_grammar()  # checks --type-temperature, --min-key-down-ms, --tempo-band
        except ValueError as e:
            raise RenderError(str(e)) from None
        model = task.build_model(args)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
        model.load_state_dict(weights, strict=True, args=args)
        model.eval()
        renderer = cls([model], task, args)
        renderer.grammar = renderer_grammar
        renderer.max_positions = trained_positions  # segments are planned at the trained size
        return renderer

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

    def score_tokens(self, path: str, style: Optional[Dict[str, str]] = None, composer: Optional[str] = None,
                     performer: Optional[str] = None, unfold_repeats: bool = True) -> List[str]:
        """A MusicXML or score MIDI file -> score tokens with the optional tokens this model was trained
        with (:attr:`score_features`). Raises ScoreReadError."""
        from instruct_tokenizer.encode import score_file_to_tokens

        f = self.score_features
        return score_file_to_tokens(path, style=style, composer=composer, performer=performer,
                                    unfold_repeats=unfold_repeats, markings=f["markings"],
                                    instruct=f["instruct"], notated_tempo=f["notated_tempo"],
                                    marking_state=f["marking_state"], after_fermata=f["after_fermata"])

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
        from .model import DYN_FIELDS, LEVEL_FIELDS

        for name, width in (("tempo_prior", LEVEL_FIELDS), ("dynamics_prior", DYN_FIELDS)):
            if priors is not None and any(name in p for p in priors):
                sample["net_input"][name] = torch.stack(
                    [p.get(name, torch.zeros(width)) for p in priors])  # (B, 4)
        prefix = None
        if any(forced):
            p_width = max(len(f) for f in forced)
            prefix = torch.full((len(srcs), p_width), self.tgt_dict.pad(), dtype=torch.long)  # (B, P)
            for i, f in enumerate(forced):
                if f:
                    prefix[i, : len(f)] = self.encode(f, self.tgt_dict, "overlap")
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
        eos = self.tgt_dict.eos()
        return [[self.tgt_dict[i] for i in h[0]["tokens"].tolist() if i != eos] for h in hypos]

    def generate(self, score_tokens: Sequence[str], forced_perf: Sequence[str], sampling: Sampling) -> List[str]:
        return self.generate_batch([score_tokens], [forced_perf], sampling)[0]

    def plan(self, score_tokens: Sequence[str], overlap_bars: int, budget: Optional[int] = None):
        """(prefix, bars, segments): one segment when the piece fits the model's context."""
        prefix, bars = split_bars(score_tokens)
        budget = budget or self.max_positions - 2
        lengths = [max(len(b), len(target_slots(b))) for b in bars]  # the longer of score and perf
        if len(prefix) + sum(lengths) + 1 <= self.max_positions:
            return prefix, bars, [(0, len(bars))]
        return prefix, bars, plan_segments(lengths, budget - len(prefix), overlap_bars)

    def render_many(self, pieces: Sequence[Sequence[str]], sampling: Sampling, overlap_bars: int = 2,
                    batch_size: int = 16, progress: bool = True) -> List[List[str]]:
        """Whole-piece performance tokens for several pieces. Round r generates segment r of every
        piece in batches; each segment is forced to start with the previous segment's overlap bars."""
        torch.manual_seed(sampling.seed)
        plans = [self.plan(p, overlap_bars) for p in pieces]
        done: List[List[List[str]]] = [[] for _ in pieces]
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
                    forced.append([t for b in done[i][start:] for t in b])
                    priors.append(self.level_before(prefix, bars[:start], done[i][:start]))
                outs = self.generate_batch(scores, forced, sampling, priors)
                for i, out in zip(chunk, outs):
                    start, end = plans[i][2][r]
                    _, out_bars = split_bars(out)
                    if len(out_bars) != end - start:
                        raise RenderError(f"segment bars {start}-{end}: model produced {len(out_bars)} bars")
                    done[i] = done[i][:start] + out_bars
                bar.update(len(chunk))
        bar.close()
        return [[t for b in d for t in b] for d in done]

    def level_before(self, prefix: Sequence[str], score_bars: Sequence[Sequence[str]],
                     perf_bars: Sequence[Sequence[str]]) -> Dict[str, torch.Tensor]:
        """The (4,) states after the rendered bars before a segment: ``tempo_prior`` (the tempo band's and
        the fermata hold's level) and ``dynamics_prior`` (the dynamics band's), each where it is on
        (none when there are no such bars)."""
        out: Dict[str, torch.Tensor] = {}
        if self.grammar is None or not perf_bars:
            return out
        score = list(prefix) + [t for b in score_bars for t in b]
        perf = [t for b in perf_bars for t in b]
        if self.grammar.tracks_level:
            out["tempo_prior"] = self.grammar.level_after(score, perf)
        if self.grammar.dynamics_band > 0:
            out["dynamics_prior"] = self.grammar.dynamics_after(score, perf)
        return out

    def render_tokens(self, score_tokens: Sequence[str], sampling: Sampling, overlap_bars: int = 2,
                      progress: bool = True) -> List[str]:
        """Whole-piece performance tokens: one pass when the piece fits, else stitched segments."""
        return self.render_many([score_tokens], sampling, overlap_bars, 1, progress)[0]


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
    p.add_argument("score", help="MusicXML (.musicxml/.xml/.mxl) or score MIDI (.mid) file")
    p.add_argument("-o", "--output", required=True, help="output performance MIDI path")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model file (.pt)")
    p.add_argument("--data", default=None, help="fairseq data dir with dict.*.txt (for training checkpoints)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--topp", type=float, default=1.0,
                   help="nucleus sampling p (default 1.0: plain sampling, which measured closer to human "
                        "velocity/IOI/pedal distributions than 0.95)")
    p.add_argument("--type-temperature", default="", metavar="TYPE=T,...",
                   help="per-type temperature relative to --temperature, e.g. Tempo=0.7 (steadier tempo); "
                        "TYPE=mean takes the bin nearest the expected value (Tempo, Vel, Time, Art)")
    p.add_argument("--min-key-down-ms", type=float, default=MIN_KEY_DOWN_MS, metavar="MS",
                   help=f"hold no note shorter than MS ms (default {MIN_KEY_DOWN_MS:g}: the 1st percentile of the "
                        "training performances' key-down times; sampled articulation otherwise puts a few "
                        "percent of notes under 20 ms, which pianists hardly ever play; 0: off)")
    p.add_argument("--tempo-band", type=float, default=TEMPO_BAND_BINS, metavar="BINS",
                   help=f"keep the tempo level over about 8 quarters within BINS tempo bins (3%% steps) of the "
                        f"reference (--tempo-anchor), after the first 16 quarters: a soft band against tempo "
                        f"drift (default {TEMPO_BAND_BINS:g}; 0: off)")
    p.add_argument("--tempo-anchor", default=TEMPO_ANCHOR, choices=["notated", "self"],
                   help=f"what --tempo-band centres on: the notated tempo where the score states one other "
                        f"than 120, no band elsewhere (notated), or the rendering's own level so far (self; "
                        f"default {TEMPO_ANCHOR})")
    p.add_argument("--fermata-hold", type=float, default=FERMATA_HOLD_BINS, metavar="BINS",
                   help=f"play a fermata's onset and the onset after it (the held gap) at least BINS tempo bins "
                        f"(2.9%% steps) slower than the 8 quarters before, in expectation (default "
                        f"{FERMATA_HOLD_BINS:g}: the training performances' median; 0: off; MusicXML input only)")
    p.add_argument("--dynamics-band", type=float, default=DYNAMICS_BAND_BINS, metavar="BINS",
                   help=f"keep the velocity level over about 32 notes within BINS velocity bins (2 MIDI "
                        f"velocities each) of the rendering's offset so far from the notated dynamics, after "
                        f"the first 32 notes: the rendering follows a p after an f (default "
                        f"{DYNAMICS_BAND_BINS:g}; 0: off; MusicXML input with dynamics only)")
    p.add_argument("--keep-unisons", action="store_true",
                   help="strike both notes where two voices share a pitch at one onset (by default the key "
                        "is struck once, for the longer note: a piano cannot play both)")
    p.add_argument("--beam", type=int, default=1, help="beam search with this beam size (> 1) instead of sampling")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--n", type=int, default=1, help="number of different renderings (seeds seed..seed+n-1)")
    p.add_argument("--style", default=None,
                   help="instruct tokens, e.g. tempo=fast,dynamics=loud,rubato=high,articulation=legato")
    p.add_argument("--composer", default=None, help="composer meta token (if the model was trained with it)")
    p.add_argument("--performer", default=None, help="performer meta token (if the model was trained with it)")
    p.add_argument("--no-repeats", action="store_true", help="play each repeated section once")
    p.add_argument("--allow-deletions", action="store_true",
                   help="let the model leave score notes unplayed (Vel_Del); by default every note is played")
    p.add_argument("--overlap-bars", type=int, default=2, help="bars of forced context between segments")
    p.add_argument("--attention-impl", default=None, choices=["dense", "bar", "flex"],
                   help="override the checkpoint's attention backend")
    return p


def output_paths(output: str, n: int) -> List[Path]:
    out = Path(output)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(n)]


def render_file(args: argparse.Namespace) -> List[Path]:
    from instruct_tokenizer.decode import tokens_to_midi

    renderer = Renderer.from_checkpoint(args.checkpoint, args.data, args.attention_impl,
                                        allow_deletions=args.allow_deletions,
                                        type_temperature=args.type_temperature,
                                        min_key_down_ms=args.min_key_down_ms,
                                        unisons_once=not args.keep_unisons, tempo_band=args.tempo_band,
                                        fermata_hold=args.fermata_hold, dynamics_band=args.dynamics_band,
                                        tempo_anchor=args.tempo_anchor)
    score_tokens = renderer.score_tokens(args.score, style=parse_style(args.style), composer=args.composer,
                                         performer=args.performer, unfold_repeats=not args.no_repeats)
    written = []
    for k, path in enumerate(output_paths(args.output, args.n)):
        sampling = Sampling(beam=args.beam, temperature=args.temperature, topp=args.topp,
                            seed=args.seed + k, greedy=args.greedy)
        perf_tokens = renderer.render_tokens(score_tokens, sampling, overlap_bars=args.overlap_bars)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tokens_to_midi(score_tokens, perf_tokens, str(tmp))
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # instruct-render serve [--port N]: the web page (museformer/serve)
        from .serve.app import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from instruct_tokenizer.scorefile import ScoreReadError

    try:
        for path in render_file(args):
            print(f"wrote {path}")
    except RenderError as e:
        print(f"instruct-render: error: {e}", file=sys.stderr)
        return 1
    except ScoreReadError as e:
        print(f"instruct-render: error: {args.score}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
