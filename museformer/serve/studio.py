"""The state behind the page, free of any web framework: opened scores, their takes, render jobs, files.

A :class:`Session` is one opened score: its bars (score tokens without the style prefix), the deadpan /
markings reference performance, and the takes rendered of it. A :class:`Take` is a whole-piece
performance: the first is rendered in one go, every later one re-renders a bar range of the take kept at
that moment (``passage.render_bars``) and leaves every other bar token-identical. One take is *kept*:
the base of the next passage and the final MIDI.

Every file (the uploaded score while it is read, MIDI, audio, pictures) lives in one temporary folder
per server, a subfolder per session; an upload is deleted as soon as it is read, a session's folder when
the session is closed or evicted (at most ``max_sessions`` are held), the whole folder when the server
stops. Render jobs run one at a time on a worker thread (decoding is CPU-bound).
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import split_bars, style_prefix
from instruct_tokenizer.grammar import target_slots, unison_repeats
from museformer.decoding.config import (ARTICULATION_PLAN_BINS, DYNAMICS_BAND_BINS, FERMATA_HOLD_BINS, MIN_KEY_DOWN_MS,
                                        TEMPO_ANCHOR, TEMPO_BAND_BINS, TEMPO_PLAN_BINS, TIMING_PLAN_MS,
                                        VELOCITY_PLAN_BINS)
from instruct_tokenizer.scorefile import MIDI_SUFFIXES, XML_SUFFIXES

from . import passage as P
from . import plots
from .audio import Synth, SynthError

logger = logging.getLogger("instruct_serve")
MAX_UPLOAD_BYTES = 20 * 2 ** 20  # a MusicXML piano score is rarely over 5 MB; .mxl and MIDI far less
MAX_SESSIONS = 4
MAX_TAKES = 64  # per session
MAX_JOBS = 32  # finished jobs remembered
EXPECTED_VALUE = "Tempo=mean,Vel=mean"  # the README's expected-value decoding: the bin nearest the mean
SCORE_SUFFIXES = sorted(XML_SUFFIXES | MIDI_SUFFIXES)


class StudioError(Exception):
    """A user-facing error: one line; ``status`` is the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------- settings
def _number(d: Dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StudioError(f"{key}: expected a number, got {value!r}")
    if not lo <= value <= hi:
        raise StudioError(f"{key}: {value:g} is outside {lo:g}..{hi:g}")
    return float(value)


@dataclass(frozen=True)
class Settings:
    """What the page sets for a rendering: style levels, seed, sampling or expected value, and the
    decoding rules of ``instruct-render`` (same names, same defaults)."""

    style: Tuple[Tuple[str, str], ...] = ()  # (style key, level) pairs, e.g. (("tempo", "fast"),)
    seed: int = 0
    expected_value: bool = False  # Tempo and Vel take the bin nearest the model's expected value
    temperature: float = 1.0
    topp: float = 1.0
    min_key_down_ms: float = MIN_KEY_DOWN_MS
    tempo_band: float = TEMPO_BAND_BINS
    tempo_anchor: str = TEMPO_ANCHOR
    fermata_hold: float = FERMATA_HOLD_BINS
    dynamics_band: float = DYNAMICS_BAND_BINS
    tempo_plan: float = TEMPO_PLAN_BINS
    velocity_plan: float = VELOCITY_PLAN_BINS
    articulation_plan: float = ARTICULATION_PLAN_BINS
    timing_plan: float = TIMING_PLAN_MS
    keep_unisons: bool = False
    allow_deletions: bool = False

    @classmethod
    def from_json(cls, d: Optional[Dict[str, Any]]) -> "Settings":
        """Validate the page's settings object (missing keys: defaults); StudioError names a bad field."""
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise StudioError(f"unknown setting {unknown[0]!r}")
        style = d.get("style") or {}
        if not isinstance(style, dict):
            raise StudioError("style: expected an object of key: level")
        for key, level in style.items():
            type_ = V.STYLE_KEYS.get(key)
            if type_ is None:
                raise StudioError(f"unknown style key {key!r} (one of {', '.join(V.STYLE_KEYS)})")
            if level not in V.INSTRUCT_LEVELS[type_]:
                raise StudioError(f"style {key}={level!r}: one of {', '.join(V.INSTRUCT_LEVELS[type_])}")
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
            raise StudioError(f"seed: expected an integer 0..{2 ** 31 - 1}, got {seed!r}")
        if d.get("tempo_anchor", TEMPO_ANCHOR) not in ("notated", "self"):
            raise StudioError("tempo_anchor: notated or self")
        flags = {}
        for key in ("expected_value", "keep_unisons", "allow_deletions"):
            if not isinstance(d.get(key, False), bool):
                raise StudioError(f"{key}: expected true or false")
            flags[key] = d.get(key, False)
        return cls(style=tuple(sorted((k, v) for k, v in style.items() if v != "mid")), seed=seed,
                   temperature=_number(d, "temperature", 1.0, 0.05, 5.0), topp=_number(d, "topp", 1.0, 0.05, 1.0),
                   min_key_down_ms=_number(d, "min_key_down_ms", MIN_KEY_DOWN_MS, 0.0, 500.0),
                   tempo_band=_number(d, "tempo_band", TEMPO_BAND_BINS, 0.0, 160.0),
                   tempo_anchor=d.get("tempo_anchor", TEMPO_ANCHOR),
                   fermata_hold=_number(d, "fermata_hold", FERMATA_HOLD_BINS, 0.0, 160.0),
                   dynamics_band=_number(d, "dynamics_band", DYNAMICS_BAND_BINS, 0.0, 64.0),
                   tempo_plan=_number(d, "tempo_plan", TEMPO_PLAN_BINS, 0.0, 160.0),
                   velocity_plan=_number(d, "velocity_plan", VELOCITY_PLAN_BINS, 0.0, 64.0),
                   articulation_plan=_number(d, "articulation_plan", ARTICULATION_PLAN_BINS, 0.0, 275.0),
                   timing_plan=_number(d, "timing_plan", TIMING_PLAN_MS, 0.0, 500.0), **flags)

    def to_json(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["style"] = dict(self.style)
        return out

    def rules(self) -> Dict[str, Any]:
        """Keyword arguments of ``Renderer.from_checkpoint``: the decoding rules (``DecodeConfig`` fields)."""
        return dict(no_deletions=not self.allow_deletions,
                    type_temperature=EXPECTED_VALUE if self.expected_value else "",
                    min_key_down_ms=self.min_key_down_ms, unisons_once=not self.keep_unisons,
                    tempo_band=self.tempo_band, tempo_anchor=self.tempo_anchor, fermata_hold=self.fermata_hold,
                    dynamics_band=self.dynamics_band, tempo_plan=self.tempo_plan, velocity_plan=self.velocity_plan,
                    articulation_plan=self.articulation_plan, timing_plan=self.timing_plan)

    def sampling(self):
        from museformer.render import Sampling

        return Sampling(temperature=self.temperature, topp=self.topp, seed=self.seed)

    def describe(self) -> str:
        """The settings that differ from the defaults, for a take's label."""
        default = Settings()
        parts = [f"{k}={v}" for k, v in self.style] or ["style mid"]
        parts.append(f"seed {self.seed}")
        if self.expected_value:
            parts.append("expected value")
        parts += [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                  if f.name not in ("style", "seed", "expected_value")
                  and getattr(self, f.name) != getattr(default, f.name)]
        return ", ".join(parts)


# --------------------------------------------------------------------------------------- takes, sessions
@dataclass
class Take:
    """A whole-piece performance: ``passage`` the re-rendered bars [start, end) (0-based; None: the
    whole piece), ``parent`` the take it was re-rendered from."""

    id: int
    perf: List[str]
    settings: Settings
    passage: Optional[Tuple[int, int]]
    parent: Optional[int]
    render_s: float
    joins: List[P.Join] = field(default_factory=list)


@dataclass
class Session:
    """One opened score and its takes."""

    id: str
    name: str
    folder: Path
    prefix: List[str]  # the default style prefix (decoding ignores it)
    bars: List[List[str]]  # score tokens of every bar
    reference: List[str]  # deadpan / markings-rules performance tokens
    tempo: Optional[str] = None  # the notated tempo it is rendered from and why (instruct-render's tempo line)
    takes: "OrderedDict[int, Take]" = field(default_factory=OrderedDict)
    kept: Optional[int] = None
    counter: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def score_tokens(self) -> List[str]:
        return self.prefix + [t for b in self.bars for t in b]

    def take(self, take_id: int) -> Take:
        if take_id not in self.takes:
            raise StudioError(f"no take {take_id} in this session", 404)
        return self.takes[take_id]


@dataclass
class Job:
    """A render running on the worker thread: ``done``/``total`` segments; ``take`` when finished."""

    id: str
    session: str
    started: float
    done: int = 0
    total: int = 1
    state: str = "running"  # running | done | error
    error: Optional[str] = None
    take: Optional[int] = None
    finished: Optional[float] = None
    preview: List[List[str]] = field(default_factory=list)  # whole-piece render: the final bars so far


def size_text(n_bytes: int) -> str:
    """``20 MiB``, ``512 KiB`` or ``100 bytes``."""
    for unit, size in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes} bytes"


def clean_name(name: str) -> str:
    """An uploaded file's name as shown on the page: its last path part, printable, at most 100 chars."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return (base or "score")[:100]


class Studio:
    """Opened scores, their takes and the render jobs, for one server."""

    def __init__(self, checkpoint: str, data: Optional[str] = None, synth: Optional[Synth] = None,
                 examples: Optional[Path] = None, max_sessions: int = MAX_SESSIONS,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, loader: Optional[Callable[..., Any]] = None):
        """``loader(checkpoint, data, **rules)``: loads a renderer (default ``Renderer.from_checkpoint``)."""
        self.checkpoint, self.data = checkpoint, data
        self.loader = loader
        self.synth = synth if synth is not None else Synth.find()
        self.examples = examples
        self.max_sessions, self.max_upload_bytes = max_sessions, max_upload_bytes
        self.root = Path(tempfile.mkdtemp(prefix="instruct-serve-"))
        self.sessions: "OrderedDict[str, Session]" = OrderedDict()
        self.jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._renderers: "OrderedDict[Tuple, Any]" = OrderedDict()
        self._lock = threading.RLock()
        self._file_locks: Dict[str, threading.Lock] = {}
        self._axes: Dict[str, plots.Axis] = {}  # piano roll picture -> its time axis
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")

    # ----------------------------------------------------------------------------------- model
    def renderer(self, settings: Settings = Settings()):
        """The renderer for these decoding rules (the last three rule sets are kept loaded)."""
        from museformer.render import Renderer, RenderError

        key = tuple(sorted(settings.rules().items()))
        with self._lock:
            if key in self._renderers:
                self._renderers.move_to_end(key)
                return self._renderers[key]
        try:
            r = (self.loader or Renderer.from_checkpoint)(self.checkpoint, self.data, **settings.rules())
        except RenderError as e:
            raise StudioError(str(e)) from None
        with self._lock:
            self._renderers[key] = r
            while len(self._renderers) > 3:
                self._renderers.popitem(last=False)
        return r

    def info(self) -> Dict[str, Any]:
        features = self.renderer().score_features
        return {"checkpoint": Path(self.checkpoint).name, "features": features,
                "style": ({k: list(V.INSTRUCT_LEVELS[t]) for k, t in V.STYLE_KEYS.items()}
                          if features["instruct"] else {}),
                "defaults": Settings().to_json(), "audio": self.synth.missing is None,
                "audio_missing": self.synth.missing, "max_upload_bytes": self.max_upload_bytes,
                "suffixes": SCORE_SUFFIXES, "examples": self.example_names()}

    # ----------------------------------------------------------------------------------- scores
    def example_names(self) -> List[str]:
        if self.examples is None or not self.examples.is_dir():
            return []
        return sorted(p.name for p in self.examples.iterdir() if p.suffix.lower() in XML_SUFFIXES | MIDI_SUFFIXES)

    def open_example(self, name: str) -> Session:
        if name not in self.example_names():
            raise StudioError(f"{clean_name(name)}: no such example", 404)
        return self.open(name, (self.examples / name).read_bytes())

    def open(self, name: str, data: bytes) -> Session:
        """Read an uploaded score (MusicXML or score MIDI) with the CLI's readers; the upload is deleted
        as soon as it is read. StudioError: one line naming the file and the reason."""
        from instruct_tokenizer.scorefile import ScoreReadError
        from museformer.render import RenderError

        name = clean_name(name)
        suffix = Path(name).suffix.lower()
        if suffix not in XML_SUFFIXES | MIDI_SUFFIXES:
            raise StudioError(f"{name}: unknown score format {suffix!r} (MusicXML or MIDI)")
        if len(data) > self.max_upload_bytes:
            raise StudioError(f"{name}: file larger than {size_text(self.max_upload_bytes)}", 413)
        sid = secrets.token_urlsafe(12)
        folder = self.root / sid
        folder.mkdir()
        path = folder / name  # the reader's messages name the file as the user does
        try:
            path.write_bytes(data)
            renderer = self.renderer()
            tokens = renderer.score_tokens(str(path))
            tempo = renderer.tempo
            renderer.encode(tokens, renderer.src_dict, name)
            reference = self._reference(tokens, path)
        except ScoreReadError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise StudioError(f"{name}: {e}") from None
        except (RenderError, ValueError) as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise StudioError(f"{name}: {e}") from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            path.unlink(missing_ok=True)
        prefix, bars = split_bars(tokens)
        session = Session(id=sid, name=name, folder=folder, prefix=prefix, bars=bars, reference=reference,
                          tempo=f"{tempo.qpm:.0f} quarter notes per minute: {tempo.reason}" if tempo else None)
        with self._lock:
            self.sessions[sid] = session
            while len(self.sessions) > self.max_sessions:
                self._drop(next(iter(self.sessions)))
        return session

    @staticmethod
    def _reference(tokens: List[str], path: Path) -> List[str]:
        """The deadpan / markings-rules performance (``markings_baseline``): the notated tempo (the first
        metronome mark, else the tempo words, else the score MIDI's tempo, else 120), the notated
        dynamics (64 where none), notes on the grid at their notated length, no pedal."""
        from instruct_tokenizer.markings_baseline import MarkingsError, markings_perf, xml_qpm

        qpm = None
        if path.suffix.lower() in XML_SUFFIXES:
            try:
                qpm = xml_qpm(str(path))
            except MarkingsError:
                qpm = None
        else:
            stated = [float(t.partition("_")[2]) for t in tokens if t.startswith(V.QPM + "_")]
            qpm = stated[0] if stated else None
        return markings_perf(tokens, qpm)

    def session(self, sid: str) -> Session:
        with self._lock:
            if sid not in self.sessions:
                raise StudioError("this score is no longer open (the server keeps the last "
                                  f"{self.max_sessions}); open it again", 404)
            self.sessions.move_to_end(sid)
            return self.sessions[sid]

    def close(self, sid: str) -> None:
        with self._lock:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            shutil.rmtree(session.folder, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop the worker and delete every file of this server."""
        self._worker.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self.sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------------------- rendering
    def _score_for(self, session: Session, settings: Settings) -> List[str]:
        renderer = self.renderer(settings)
        if renderer.score_features["instruct"]:
            prefix = style_prefix(dict(settings.style))
        elif settings.style:
            raise StudioError("this model was trained without style tokens: leave the style at mid")
        else:
            prefix = []
        return prefix + [t for b in session.bars for t in b]

    def render(self, sid: str, settings: Settings, first_bar: Optional[int] = None,
               last_bar: Optional[int] = None, base: Optional[int] = None,
               progress: Optional[P.Progress] = None) -> Take:
        """Render the whole piece (no bars given) or re-render bars ``first_bar``..``last_bar`` (1-based,
        inclusive) of take ``base`` (default: the kept take). Returns the new take."""
        from museformer.render import RenderError

        session = self.session(sid)
        passage = None
        parent = None
        if first_bar is not None or last_bar is not None:
            parent = session.take(base if base is not None else self.kept_id(session)).id
            n = len(session.bars)
            if not (isinstance(first_bar, int) and isinstance(last_bar, int) and 1 <= first_bar <= last_bar <= n):
                raise StudioError(f"bars {first_bar}-{last_bar}: choose bars within 1-{n}, first <= last")
            passage = (first_bar - 1, last_bar)
        renderer = self.renderer(settings)
        score = self._score_for(session, settings)
        start = time.perf_counter()
        try:
            if passage is None:
                perf = P.render_bars(renderer, score, settings.sampling(), progress=progress)
                joins: List[P.Join] = []
            else:
                base_perf = session.takes[parent].perf
                perf = P.render_bars(renderer, score, settings.sampling(), base=base_perf, start=passage[0],
                                     end=passage[1], progress=progress)
                joins = P.joins(score, perf, base_perf, passage[0], passage[1])
        except (P.PassageError, RenderError) as e:
            raise StudioError(str(e)) from None
        take = Take(id=next(session.counter), perf=perf, settings=settings, passage=passage, parent=parent,
                    render_s=time.perf_counter() - start, joins=joins)
        with self._lock:
            session.takes[take.id] = take
            if session.kept is None:
                session.kept = take.id
            while len(session.takes) > MAX_TAKES:
                oldest = next(k for k in session.takes if k != session.kept)
                session.takes.pop(oldest)
        return take

    def kept_id(self, session: Session) -> int:
        if session.kept is None:
            raise StudioError("render the whole piece first")
        return session.kept

    def keep(self, sid: str, take_id: int) -> None:
        session = self.session(sid)
        session.take(take_id)
        session.kept = take_id

    def submit(self, sid: str, work: Callable[[P.Progress], Take], preview: bool = False) -> Job:
        """Run ``work(progress)`` on the worker thread; the job records its progress and result, and with
        ``preview`` (a whole-piece render) the bars finished so far, to be heard before the end."""
        self.session(sid)
        job = Job(id=secrets.token_urlsafe(8), session=sid, started=time.time())

        def progress(done: int, total: int, bars: List[List[str]]) -> None:
            job.done, job.total = done, total
            if preview and done < total:
                job.preview = [list(b) for b in bars]

        def run() -> None:
            try:
                job.take = work(progress).id
                job.state = "done"
            except StudioError as e:
                job.error, job.state = str(e), "error"
            except Exception as e:  # a bug: the page gets one line, the log the traceback
                logger.exception("render job failed")
                first_line = str(e).splitlines()[0] if str(e) else ""
                job.error, job.state = f"internal error: {type(e).__name__}: {first_line}", "error"
            finally:
                job.finished = time.time()

        with self._lock:
            self.jobs[job.id] = job
            while len(self.jobs) > MAX_JOBS:
                self.jobs.popitem(last=False)
        self._worker.submit(run)
        return job

    def job(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self.jobs:
                raise StudioError("no such job", 404)
            return self.jobs[job_id]

    def preview_audio(self, job_id: str) -> Path:
        """Ogg Vorbis of the bars a whole-piece render has finished so far (they do not change)."""
        from instruct_tokenizer.decode import tokens_to_midi

        if self.synth.missing:
            raise StudioError(self.synth.missing, 503)
        job = self.job(job_id)
        bars = job.preview
        if not bars:
            raise StudioError("no bars rendered yet", 404)
        session = self.session(job.session)
        score = session.prefix + [t for b in session.bars[:len(bars)] for t in b]
        midi = self._file(session.folder / f"preview-{job.id}-{len(bars)}.mid",
                          lambda p: tokens_to_midi(score, [t for b in bars for t in b], str(p)))
        return self._audio_of(midi)

    # ----------------------------------------------------------------------------------- files
    def _audio_of(self, midi: Path) -> Path:
        """Ogg Vorbis beside ``midi``, synthesised once; StudioError 500 when FluidSynth fails."""
        def make(path: Path) -> None:
            try:
                self.synth.render(midi, path)
            except SynthError as e:
                raise StudioError(str(e), 500) from None

        return self._file(midi.with_suffix(".oga"), make)

    def _file(self, path: Path, make: Callable[[Path], Any]) -> Path:
        """``path``, made by ``make(path)`` once (concurrent requests for it wait for the first)."""
        with self._lock:
            lock = self._file_locks.setdefault(str(path), threading.Lock())
        with lock:
            if not path.exists():
                if not path.parent.is_dir():
                    raise StudioError("this score is no longer open; open it again", 404)
                make(path)
        return path

    def midi(self, sid: str, take_id: Optional[int] = None) -> Path:
        """The MIDI of a take (None: the kept one; 0: the deadpan / markings reference)."""
        from instruct_tokenizer.decode import tokens_to_midi

        session = self.session(sid)
        if take_id is None:
            take_id = self.kept_id(session)
        perf = session.reference if take_id == 0 else session.take(take_id).perf
        name = "reference" if take_id == 0 else f"take{take_id}"
        return self._file(session.folder / f"{name}.mid",
                          lambda p: tokens_to_midi(session.score_tokens, perf, str(p)))

    def audio(self, sid: str, take_id: int) -> Path:
        """Ogg Vorbis of a take (0: the reference). StudioError 503 when FluidSynth is missing."""
        if self.synth.missing:
            raise StudioError(self.synth.missing, 503)
        midi = self.midi(sid, take_id)
        return self._audio_of(midi)

    def piano_roll(self, sid: str, take_id: int) -> Tuple[Path, plots.Axis]:
        """The piano roll of a take, and where its time axis lies in the picture."""
        session = self.session(sid)
        take = session.take(take_id)

        def make(path: Path) -> None:
            self._axes[str(path)] = plots.piano_roll(session.score_tokens, take.perf, path, take.passage,
                                                     f"{session.name}: take {take.id}")

        path = self._file(session.folder / f"roll{take.id}.png", make)
        return path, self._axes[str(path)]

    def curves(self, sid: str, take_id: int) -> Path:
        """Tempo and velocity curves of a take and of the reference, with those of the kept take when it
        is another (else of the take this one was re-rendered from), for comparison."""
        session = self.session(sid)
        take = session.take(take_id)
        other = session.kept if session.kept != take.id else take.parent
        series = [(f"take {take.id}", take.perf)]
        if other is not None and other in session.takes:
            kept = " (kept)" if other == session.kept else ""
            series.insert(0, (f"take {other}{kept}", session.takes[other].perf))
        name = f"curves{take.id}-{other or 0}-{session.kept}.png"
        return self._file(session.folder / name,
                          lambda p: plots.curves(session.score_tokens, series, session.reference, p, take.passage))

    # ----------------------------------------------------------------------------------- JSON
    def session_json(self, session: Session) -> Dict[str, Any]:
        score = session.score_tokens
        repeats = [r for r, slot in zip(unison_repeats(score), target_slots(score)) if slot == V.VEL]
        with self._lock:  # the worker adds takes
            takes = list(session.takes.values())
        return {"id": session.id, "name": session.name, "bars": len(session.bars), "notes": len(repeats),
                "notes_to_play": len(repeats) - sum(repeats), "kept": session.kept, "rules": rules_that_apply(score),
                "tempo": session.tempo,
                "takes": [self.take_json(session, t) for t in takes]}

    def take_json(self, session: Session, take: Take) -> Dict[str, Any]:
        from instruct_tokenizer.decode import decode_performance

        perf = decode_performance(session.score_tokens, take.perf)
        end = max([float(perf.offset_s[perf.played].max()) if perf.played.any() else 0.0]
                  + [t for t, _ in perf.sustain])
        return {"id": take.id, "label": take.settings.describe(), "settings": take.settings.to_json(),
                "passage": [take.passage[0] + 1, take.passage[1]] if take.passage else None,
                "parent": take.parent, "render_s": round(take.render_s, 2), "duration_s": round(end, 2),
                "notes_played": int(perf.played.sum()), "kept": take.id == session.kept,
                "bar_times_s": P.bar_grid_times(perf),
                "joins": [{"bar": j.bar + 1, "gap_ms": _ms(j.gap_ms), "base_gap_ms": _ms(j.base_gap_ms),
                           "grid_ms": _ms(j.grid_ms), "base_grid_ms": _ms(j.base_grid_ms)} for j in take.joins]}


def rules_that_apply(score_tokens: Sequence[str]) -> Dict[str, bool]:
    """Which score-dependent decoding rules can act on this score: the tempo band's notated anchor needs a
    stated tempo, the fermata hold a fermata, the dynamics band a dynamic marking (MusicXML gives them)."""
    from instruct_tokenizer.grammar import states_tempo
    from instruct_tokenizer.markings_baseline import dynamic_levels

    return {"notated_tempo": states_tempo(score_tokens), "fermata_hold": V.FERMATA_MARK in score_tokens,
            "dynamics_band": dynamic_levels(score_tokens) is not None}


def _ms(x: float) -> Optional[float]:
    return None if not math.isfinite(x) else round(x, 1)
