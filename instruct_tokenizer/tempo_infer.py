"""A notated tempo for every score: the metronome mark where the score states one, else an estimate from
its tempo words, meter and content, fitted on the (n)ASAP training pieces' human tempi.

Before this, a score without a metronome mark got 120 quarters per minute (``vocab.DEFAULT_QPM``), which
is what score MIDI files and MusicXML exporters write when nothing is stated: an Adagio in 3/8 and a
Presto in 2/2 both got 120. The estimate is a line on the log2 tempo (quarter notes per minute); there
are two, over these features of the score tokens (units in each name):

- ``content`` (no tempo word: a score MIDI, most MusicXML without words), a Huber line (robust to the
  pieces played at twice or half the expected speed) with its ridge on standardised features, both
  chosen by leave-one-piece-out cross-validation on the training pieces: the meter of the first bar
  (log2 of its beat unit in quarters: 4 -> 0, 8 -> -1, 2 -> 1), log2 of onset groups per quarter (its
  coefficient near -1: performers keep a roughly constant range of onsets per second), the share of
  notes no longer than a sixteenth, log2 of the 25th percentile of the onset gaps (the shortest common
  note value, quarters), log2 of notes per onset (chord density: block chords read slower), log2 of
  the pitch range in semitones (a wide compass reads as a faster, virtuoso piece) and the spread of the
  notes' lengths (standard deviation of their log2, in octaves: an Adagio mixes long notes with 32nd-note
  figures, an Allegro runs in even sixteenths; since 2026-12-07). It is fitted on the training pieces as a
  notation program's score MIDI export gives them (``score.as_score_midi``: no markings, staccato notes
  written short), the input most scores without a tempo word come as (until 2026-12-07: at their notated
  lengths);
- ``words`` (a score with a tempo word): the class (``TempoWord_slow|moderate|fast``: Adagio-, Andante-,
  Allegro-like) of the tempo word in force over the most notated quarters (:func:`dominant_tempo_word`:
  a Grave introduction does not make its Allegro slow; until 2026-12-06 the first word's class, which
  did, in 13 of the 120 training pieces with a word), on top of the same content features, its loss and
  ridge chosen the same way on the training pieces that have a word. (Until 2026-12-05 the words line read the word, the
  meter, whether it is compound, the median onset gap, onsets per quarter and the share of sixteenths,
  by least squares; a ``tempo_model.json`` stores the names its coefficients go with, so such a file
  still loads and predicts as it did.)

**No extrapolation.** Each line also stores the range of its features (:data:`BOUNDED_FEATURES`: all but
the pitch range) over the training pieces it was fitted on (``ranges`` in ``tempo_model.json``, since
2026-12-07), and :meth:`TempoModel.predict` reads such a feature outside it at the range's edge
(:meth:`TempoModel.within_range`): a straight line has no support there. The rhythm's coefficients say that
pianists keep a roughly constant onset rate, which holds over the training pieces and not beyond:
whole-note triads (a quarter of an onset per quarter note, four times sparser than any training piece)
read 300 quarters per minute, the clamp's ceiling, without it, Schoenberg's op. 19/6 (a few chords in
nine bars) 233. The pitch range is read as given: every training piece spans 40 semitones or more, and
read at that edge a melody (a lead sheet) came out faster than any piano piece of its rhythm, 165 -> 300
(docs/experiments.md section 39). The render log names the features read at an edge.

A score without a mark whose tempo words change class (Grave, Allegro, Grave again) is cut into **tempo
sections** (:func:`tempo_sections`), each estimated by the words line on its own bars with its own word
(:func:`section_tempi`) and written into its bars' ``QPM`` (:func:`with_bar_qpm`), as a score that states a
tempo at each change already gives the model.

``scripts/fit_tempo.py`` fits it on the training pieces of an ``instruct-tokenize build`` and writes the
coefficients to ``instruct_tokenizer/data/tempo_model.json`` (shipped with the package); it also prints
the error on the test pieces, the benchmark's score MIDI files and Vienna 4x22 against the default 120
and the previous content model. The pitch range is read over the whole score given: on a short excerpt
it is narrower than the piece's, and the estimate slower.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import vocab as V
from .score import score_timeline

MODEL_PATH = Path(__file__).resolve().parent / "data" / "tempo_model.json"
WORD_CLASSES = ("slow", "moderate", "fast")
CONTENT_FEATURES = ("bias", "log2_beat_unit_q", "log2_groups_per_q", "short_share", "log2_p25_ioi_q",
                    "log2_notes_per_onset", "log2_pitch_range", "length_spread")  # the content model (no words)
FEATURES = ("bias",) + tuple(f"word_{c}" for c in WORD_CLASSES) + CONTENT_FEATURES[1:]  # the words model
MODELS = {"words": FEATURES, "content": CONTENT_FEATURES}  # which model a score gets: words if it has one
KNOWN_FEATURES = FEATURES + ("compound", "log2_median_ioi_q")  # every name score_features gives
SHORT_Q = 0.25  # quarters: a sixteenth note
SHORT_GAP_PERCENTILE = 25.0  # the "shortest common" onset gap: this percentile of the gaps
QPM_RANGE = (30.0, 300.0)  # quarter notes per minute: an estimate is clamped here
BOUNDED_FEATURES = ("log2_beat_unit_q", "log2_groups_per_q", "short_share", "log2_p25_ioi_q",
                    "log2_notes_per_onset", "length_spread")  # read within the training pieces' range
FEATURE_WORDS = {"log2_beat_unit_q": "the beat unit", "log2_groups_per_q": "onsets per quarter",
                 "short_share": "the share of sixteenths", "log2_p25_ioi_q": "the shortest common onset gap",
                 "log2_notes_per_onset": "notes per onset", "log2_pitch_range": "the pitch range",
                 "length_spread": "the spread of the written lengths", "compound": "compound meter",
                 "log2_median_ioi_q": "the median onset gap"}  # for the render log: a feature read at its edge
OPENING_BARS = 4  # bars: a first metronome mark this close to the start holds from the start (a pickup, an
# opening chord); an opening this long or longer before it is a section that states no tempo and gets an estimate


@dataclass
class TempoEstimate:
    """A score's notated tempo in quarter notes per minute, where it came from (``mark``, ``words``,
    ``content``, ``override``, ``default``; the renderer's ``performance``: a MIDI file that reads as a
    performance, at its own tempo) and why, in words (for the render log)."""

    qpm: float
    source: str
    reason: str
    bar_qpm: Optional[List[float]] = None  # per bar, where sections differ (:func:`tempo_sections`)


def first_tempo_word(score_tokens: Sequence[str]) -> Optional[str]:
    """The class of the first constant tempo word (slow, moderate, fast), None when there is none."""
    for t in score_tokens:
        if t.startswith(V.TEMPO_WORD + "_"):
            value = t.partition("_")[2]
            if value in WORD_CLASSES:
                return value
    return None


def group_tempo_words(score_tokens: Sequence[str]) -> List[Optional[str]]:
    """Per onset group (``Pos`` token), the class of the constant tempo word in force there: the last one
    at or before it, else the first one of the score (a pickup before the first word is played in it);
    None for every group of a score without one. ``TempoWord_atempo`` right after a change of word returns
    to the word before it (an Adagio episode in an Allegro ends at its "a tempo"); after a ``rit``/``accel``
    it ends the ramp and the word stays. ("Tempo I" is not a ``TempoWord_atempo``: the MusicXML reader writes
    the first tempo word's class there, ``musicxml.resolve_tempo_primo``.)"""
    words: List[Optional[str]] = []
    current: Optional[str] = None
    before: Optional[str] = None  # the word in force before the last change of word
    last_was_change = False  # the last tempo text was a constant word (not rit/accel)
    for t in score_tokens:
        if t.startswith(V.POS + "_"):
            words.append(current)
            continue
        if not t.startswith(V.TEMPO_WORD + "_"):
            continue
        value = t.partition("_")[2]
        if value in WORD_CLASSES:
            before, current, last_was_change = current, value, True
        elif value == "atempo" and last_was_change and before is not None:
            current, last_was_change = before, False
        elif value in ("rit", "accel", "atempo"):
            last_was_change = False
        else:
            continue
        if words:
            words[-1] = current  # a tempo text under this group's onset: in force from it
    first = next((w for w in words if w is not None), None)
    return [w or first for w in words]


def group_spans_q(group_q: np.ndarray) -> np.ndarray:
    """(G,) the notated quarters each onset group holds: its gap to the next group, the last group one quarter."""
    onsets = np.asarray(group_q, dtype=np.float64)
    return np.append(np.maximum(np.diff(onsets), 0.0), 1.0) if len(onsets) else np.zeros(0)


def dominant_tempo_word(score_tokens: Sequence[str], group_q: Optional[np.ndarray] = None) -> Optional[str]:
    """The class of the constant tempo word in force over the most notated quarters (each onset group
    counts its gap to the next; the last group one quarter), None when there is none. A slow introduction
    (Grave, then Allegro di molto e con brio) does not set the tempo of the movement it opens; a tie goes
    to the first word's class. ``group_q``: the groups' onsets in quarters, when the caller has them."""
    words = group_tempo_words(score_tokens)
    if not words or words[0] is None:
        return None
    spans = group_spans_q(group_q if group_q is not None else score_timeline(score_tokens).group_q)
    quarters = {c: float(spans[[w == c for w in words]].sum()) for c in WORD_CLASSES}
    return max(WORD_CLASSES, key=lambda c: (quarters[c], c == words[0]))


@dataclass
class TempoSection:
    """A run of bars under one tempo word's class, and its estimated notated tempo."""

    first_bar: int  # 0-based bar index
    n_bars: int
    word: str  # slow, moderate or fast
    quarters: float  # notated length of its onset groups (each to the next onset), quarters
    qpm: float = float("nan")  # quarter notes per minute


def bar_tempo_words(score_tokens: Sequence[str], group_bar: Optional[np.ndarray] = None,
                    n_bars: Optional[int] = None) -> List[Optional[str]]:
    """Per bar, the class of the tempo word in force over most of its onset groups (ties: the later
    group's); a bar without an onset takes the bar before's. None for every bar of a score without one."""
    words = group_tempo_words(score_tokens)
    if group_bar is None or n_bars is None:
        tl = score_timeline(score_tokens)
        group_bar, n_bars = tl.group_bar, tl.n_bars
    per_bar: List[List[str]] = [[] for _ in range(n_bars)]
    for bar, word in zip(np.asarray(group_bar).tolist(), words):
        if word is not None and 0 <= bar < n_bars:
            per_bar[bar].append(word)
    out: List[Optional[str]] = []
    for ws in per_bar:
        out.append(max(reversed(ws), key=ws.count) if ws else (out[-1] if out else None))
    first = next((w for w in out if w is not None), None)
    return [w or first for w in out]


def tempo_sections(score_tokens: Sequence[str], tl=None) -> List[TempoSection]:
    """The score cut into runs of bars of one tempo word's class (:func:`bar_tempo_words`): a Grave
    introduction, its Allegro, a return of the Grave are three sections. Empty for a score without a
    tempo word; one section when its words are all of one class. ``tl``: its ``score_timeline``, when the
    caller has it."""
    tl = tl if tl is not None else score_timeline(score_tokens)
    words = bar_tempo_words(score_tokens, tl.group_bar, tl.n_bars)
    if not words or words[0] is None:
        return []
    spans = group_spans_q(tl.group_q)  # quarters, as dominant_tempo_word counts them
    bar_quarters = np.bincount(tl.group_bar, weights=spans, minlength=tl.n_bars) if len(spans) else np.zeros(tl.n_bars)
    out: List[TempoSection] = []
    for bar, word in enumerate(words):
        if out and out[-1].word == word:
            out[-1].n_bars += 1
            out[-1].quarters += float(bar_quarters[bar])
        else:
            out.append(TempoSection(bar, 1, word, float(bar_quarters[bar])))
    return out


def bar_slices(score_tokens: Sequence[str]) -> List[List[str]]:
    """The tokens of each bar (from its ``Bar`` token to the next), each with the ``TimeSig`` in force
    where the bar states none (so a slice read alone has its meter); the prefix is left out."""
    out: List[List[str]] = []
    meter: Optional[str] = None
    for t in score_tokens:
        if t.startswith(V.BAR + "_"):
            out.append([t] + ([meter] if meter else []))
            continue
        if not out:
            continue
        if t.startswith(V.TIME_SIG + "_"):
            meter = t
            if len(out[-1]) > 1 and out[-1][1] == t:
                continue  # stated where it was carried: once
            if len(out[-1]) > 1 and out[-1][1].startswith(V.TIME_SIG + "_"):
                out[-1][1] = t  # the bar's own meter replaces the one carried in
                continue
        out[-1].append(t)
    return out


def section_tempi(score_tokens: Sequence[str], model: Optional["TempoModel"] = None, tl=None) -> List[TempoSection]:
    """:func:`tempo_sections`, each with the words line's estimate read on its own bars with its own
    word: an introduction's Grave and its Allegro each get theirs (docs/experiments.md section 30: on
    the (n)ASAP pieces with several, per-section error against the pianists' tempo of each section
    well under one tempo for the whole score). ``tl``: the score's ``score_timeline``, when the caller has it."""
    sections = tempo_sections(score_tokens, tl)
    if len(sections) < 2:
        return sections
    m = model or default_model()
    bars = bar_slices(score_tokens)
    for sec in sections:
        tokens = [t for b in bars[sec.first_bar:sec.first_bar + sec.n_bars] for t in b]
        features = score_features(tokens)
        features.update({f"word_{c}": float(c == sec.word) for c in WORD_CLASSES})
        sec.qpm = m.predict(features)
    return sections


def piece_qpm(sections: Sequence[TempoSection]) -> float:
    """The one tempo at which the whole score takes as long as at its sections' tempi (their notated
    quarters over their minutes), quarter notes per minute."""
    quarters = sum(s.quarters for s in sections)
    minutes = sum(s.quarters / s.qpm for s in sections)
    return quarters / minutes if minutes > 0 else float(sections[0].qpm)


def first_time_signature(score_tokens: Sequence[str]) -> tuple:
    """(numerator, denominator) of the first ``TimeSig`` token; (4, 4) when there is none."""
    for t in score_tokens:
        if t.startswith(V.TIME_SIG + "_"):
            num, _, den = t.partition("_")[2].partition("/")
            try:
                return int(num), int(den)
            except ValueError:
                break
    return 4, 4


def stated_qpm(score_tokens: Sequence[str]) -> Optional[float]:
    """The first ``QPM`` value other than the default 120 (a metronome mark), None when there is none."""
    default = V.tok(V.QPM, int(V.DEFAULT_QPM))
    for t in score_tokens:
        if t.startswith(V.QPM + "_") and t != default:
            return float(t.partition("_")[2])
    return None


def stated_bar_qpm(score_tokens: Sequence[str]) -> List[Optional[float]]:
    """Per bar, the metronome mark in force (quarter notes per minute): its ``QPM`` header, else the bar
    before's; None before the first ``QPM`` other than the default 120 (a bar that states no tempo)."""
    out: List[Optional[float]] = []
    default = V.tok(V.QPM, int(V.DEFAULT_QPM))
    for t in score_tokens:
        if t.startswith(V.BAR + "_"):
            out.append(out[-1] if out else None)
        elif t.startswith(V.QPM + "_") and out and (t != default or out[-1] is not None):
            out[-1] = float(t.partition("_")[2])
    return out


def opening_before_mark(score_tokens: Sequence[str], model: Optional["TempoModel"] = None) -> List[TempoSection]:
    """The bars before a score's first metronome mark, when they are :data:`OPENING_BARS` or more (a mark
    stated only at a later section, or an exporter's 120 until then, which reads as no mark), estimated as
    a score without a mark is: one section with the estimate of their words and content, or their tempo
    sections (:func:`section_tempi`) where their words change class. Empty when the score has no mark,
    states it within the first bars or has no note before it."""
    marks = stated_bar_qpm(score_tokens)
    first = next((b for b, q in enumerate(marks) if q is not None), None)
    if first is None or first < OPENING_BARS:
        return []
    tokens = [t for bar in bar_slices(score_tokens)[:first] for t in bar]
    tl = score_timeline(tokens)
    if tl.n_groups == 0:
        return []  # rests only: nothing to estimate from, the mark holds from the start
    sections = section_tempi(tokens, model, tl)
    if len(sections) > 1:
        return sections
    section = TempoSection(0, first, dominant_tempo_word(tokens, tl.group_q) or "none",
                           float(group_spans_q(tl.group_q).sum()))
    section.qpm = (model or default_model()).predict(score_features(tokens, tl))
    return [section]


def with_opening(marks: Sequence[Optional[float]], opening: Sequence[TempoSection]) -> List[float]:
    """Per bar, the stated tempo (``stated_bar_qpm``) with the bars before the first mark given the
    ``opening``'s sections' estimates, or the first mark itself where there are none (a pickup is played
    in it)."""
    first = next(q for q in marks if q is not None)
    estimated = bar_tempi(opening)
    return [q if q is not None else (estimated[b] if b < len(estimated) else first) for b, q in enumerate(marks)]


def onset_gaps_q(group_q: np.ndarray) -> np.ndarray:
    """The positive gaps between successive distinct onsets, in quarters."""
    gaps = np.diff(np.unique(group_q))
    return gaps[gaps > 0]


def notes_per_onset(tl) -> float:
    """Chord density: notes per distinct onset (1.0 for a single line or an empty score)."""
    n_onsets = len(np.unique(tl.group_q))
    return tl.n_notes / n_onsets if n_onsets and tl.n_notes else 1.0


def pitch_range_semitones(note_pitch: np.ndarray) -> float:
    """Highest minus lowest MIDI pitch, in semitones, at least 1 (so its log2 is defined)."""
    return float(max(np.ptp(note_pitch), 1)) if len(note_pitch) else 1.0


def length_spread_octaves(note_dur_q: np.ndarray) -> float:
    """Standard deviation of log2 of the notes' notated lengths (octaves; grace notes, length 0, left out;
    0.0 for fewer than two notes): 0 for a piece of even sixteenths, about 1 where quarters, sixteenths
    and 32nds mix."""
    lengths = np.asarray(note_dur_q, dtype=np.float64)
    lengths = lengths[lengths > 0]
    return float(np.std(np.log2(lengths))) if len(lengths) > 1 else 0.0


def score_features(score_tokens: Sequence[str], tl=None) -> Dict[str, float]:
    """The features of the module docstring for one score (whole piece or a long excerpt). ``tl``: its
    ``score_timeline``, when the caller has it."""
    tl = tl if tl is not None else score_timeline(score_tokens)
    word = dominant_tempo_word(score_tokens, tl.group_q)
    num, den = first_time_signature(score_tokens)
    onsets = np.unique(tl.group_q)
    gaps = onset_gaps_q(tl.group_q)
    median_ioi = float(np.median(gaps)) if len(gaps) else 1.0
    short_gap = float(np.percentile(gaps, SHORT_GAP_PERCENTILE)) if len(gaps) else 1.0
    span = float(onsets[-1] - onsets[0]) if len(onsets) > 1 else 0.0
    groups_per_q = (len(onsets) - 1) / span if span > 0 else 1.0
    durs = tl.note_dur_q[tl.note_dur_q > 0]
    short = float(np.mean(durs <= SHORT_Q)) if len(durs) else 0.0
    return {"bias": 1.0,
            **{f"word_{c}": float(word == c) for c in WORD_CLASSES},
            "log2_beat_unit_q": math.log2(4.0 / den),
            "compound": float(num in (6, 9, 12) and num % 3 == 0),
            "log2_median_ioi_q": math.log2(median_ioi),
            "log2_p25_ioi_q": math.log2(short_gap),
            "log2_groups_per_q": math.log2(groups_per_q),
            "short_share": short,
            "log2_notes_per_onset": math.log2(notes_per_onset(tl)),
            "log2_pitch_range": math.log2(pitch_range_semitones(tl.note_pitch)),
            "length_spread": length_spread_octaves(tl.note_dur_q)}


def feature_row(features: Dict[str, float], names: Sequence[str] = FEATURES) -> np.ndarray:
    return np.array([features[name] for name in names], dtype=np.float64)


def feature_ranges(features: Sequence[Dict[str, float]], names: Sequence[str],
                   bounded: Sequence[str] = BOUNDED_FEATURES) -> Dict[str, Tuple[float, float]]:
    """(lowest, highest) of each of ``names`` that is ``bounded`` over the ``features`` of the pieces a
    line is fitted on."""
    return {n: (min(f[n] for f in features), max(f[n] for f in features)) for n in names if n in bounded}


def within(features: Dict[str, float], ranges: Dict[str, Tuple[float, float]]) -> Dict[str, float]:
    """The features with each one that has a range (:func:`feature_ranges`) set to its nearer edge where
    it lies outside."""
    return {**features, **{n: min(max(features[n], lo), hi) for n, (lo, hi) in ranges.items()}}


def fit(rows: np.ndarray, log2_qpm: np.ndarray, ridge: float = 1e-2, huber_delta: Optional[float] = None,
        standardize: bool = False, iterations: int = 100) -> np.ndarray:
    """Coefficients of log2 qpm on the feature rows (first column the bias, which is not penalised).

    Least squares with a ridge penalty, or with ``huber_delta`` (log2 units: residuals beyond it count
    linearly, so a few pieces played at twice or half the expected tempo pull the line less) the Huber
    loss by iteratively reweighted least squares. ``standardize`` applies the ridge to the coefficients of
    features scaled to unit standard deviation (so one ridge suits features of any unit); the returned
    coefficients are always for the raw features."""
    centre = rows[:, 1:].mean(axis=0) if standardize else np.zeros(rows.shape[1] - 1)
    scale = rows[:, 1:].std(axis=0) if standardize else np.ones(rows.shape[1] - 1)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.column_stack([rows[:, :1], (rows[:, 1:] - centre) / scale])
    penalty = ridge * np.eye(z.shape[1])
    penalty[0, 0] = 0.0
    weights = np.ones(len(z))
    for _ in range(iterations if huber_delta else 1):
        coef = np.linalg.solve((z.T * weights) @ z + penalty, (z.T * weights) @ log2_qpm)
        if not huber_delta:
            break
        residual = np.abs(log2_qpm - z @ coef)
        new_weights = np.minimum(1.0, huber_delta / np.maximum(residual, 1e-12))
        if np.allclose(new_weights, weights, atol=1e-8):
            break
        weights = new_weights
    raw = coef[1:] / scale
    return np.concatenate([[coef[0] - raw @ centre], raw])


class TempoModel:
    """Two fitted lines (``tempo_model.json``): ``words`` for a score with a tempo word (``FEATURES``),
    ``content`` for one without (``CONTENT_FEATURES``: meter and content only, fitted on the training
    pieces as a score MIDI export gives them). ``predict`` gives quarter notes per minute.

    Each line reads the feature names its coefficients are stored under (any of ``KNOWN_FEATURES``, the
    bias among them), so a file fitted on an older feature set predicts as it did. ``ranges``: per line,
    the (lowest, highest) value of each bounded feature over its training pieces (:func:`feature_ranges`); a
    feature outside is read at the edge (:meth:`within_range`). A file without them (until 2026-12-07)
    predicts as it did, on the raw features."""

    def __init__(self, coef: Dict[str, Dict[str, float]], meta: Optional[dict] = None,
                 ranges: Optional[Dict[str, Dict[str, Sequence[float]]]] = None):
        self.coef: Dict[str, np.ndarray] = {}
        self.names: Dict[str, Tuple[str, ...]] = {}
        for kind in MODELS:
            line = coef.get(kind, {})
            if "bias" not in line:
                raise ValueError(f"tempo model {kind}: missing coefficients (no bias)")
            unknown = [f for f in line if f not in KNOWN_FEATURES]
            if unknown:
                raise ValueError(f"tempo model {kind}: unknown features {', '.join(unknown)}")
            self.names[kind] = tuple(line)
            self.coef[kind] = np.array([line[f] for f in self.names[kind]], dtype=np.float64)
        self.ranges: Dict[str, Dict[str, Tuple[float, float]]] = {}
        for kind, line_ranges in (ranges or {}).items():
            if kind not in MODELS:
                raise ValueError(f"tempo model ranges: unknown line {kind}")
            for name, bounds in line_ranges.items():
                if name not in self.names[kind] or len(bounds) != 2 or not bounds[0] <= bounds[1]:
                    raise ValueError(f"tempo model {kind}: range of {name} must be (low, high) of one of its "
                                     f"features, got {bounds}")
            self.ranges[kind] = {n: (float(lo), float(hi)) for n, (lo, hi) in line_ranges.items()}
        self.meta = meta or {}

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> "TempoModel":
        data = json.loads(Path(path).read_text())
        return cls(data["coef"], data.get("meta"), data.get("ranges"))

    def save(self, path: Path = MODEL_PATH) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        coef = {kind: dict(zip(self.names[kind], c.round(6).tolist())) for kind, c in self.coef.items()}
        data = {"coef": coef, "meta": self.meta}
        if self.ranges:
            data["ranges"] = {kind: {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in r.items()}
                              for kind, r in self.ranges.items()}
        path.write_text(json.dumps(data, indent=1) + "\n")

    @staticmethod
    def kind(features: Dict[str, float]) -> str:
        return "words" if any(features[f"word_{c}"] for c in WORD_CLASSES) else "content"

    def within_range(self, features: Dict[str, float]) -> Tuple[Dict[str, float], List[str]]:
        """The features with each one outside its line's training range set to the nearer edge, and the
        names so set (none for a line stored without ranges)."""
        ranges = self.ranges.get(self.kind(features), {})
        inside = within(features, ranges)
        return inside, [n for n in ranges if inside[n] != features[n]]

    def predict(self, features: Dict[str, float]) -> float:
        """Quarter notes per minute from the line of the features' kind, each feature read within its
        training range (:meth:`within_range`), the result within :data:`QPM_RANGE`."""
        kind = self.kind(features)
        inside, _ = self.within_range(features)
        qpm = 2.0 ** float(feature_row(inside, self.names[kind]) @ self.coef[kind])
        return float(min(max(qpm, QPM_RANGE[0]), QPM_RANGE[1]))


_MODEL: List[TempoModel] = []


def default_model() -> TempoModel:
    """The shipped model, loaded once."""
    if not _MODEL:
        _MODEL.append(TempoModel.load())
    return _MODEL[0]


def notated_tempo(score_tokens: Sequence[str], override: Optional[float] = None,
                  model: Optional[TempoModel] = None) -> TempoEstimate:
    """The tempo a rendering of ``score_tokens`` starts from: ``override`` (``--qpm``), else the score's
    metronome mark (a ``QPM`` other than 120), else the fitted estimate from its words, meter and content.
    A score without a mark whose tempo words change class (Grave, then Allegro) gets one estimate per
    section (:func:`section_tempi`) in ``bar_qpm``, and ``qpm`` the whole score's (:func:`piece_qpm`);
    ``override`` then sets the first section's tempo and keeps the ratios between them. A score whose
    first mark comes later holds it from the start when it is within :data:`OPENING_BARS`, else the bars
    before it get their own estimate (:func:`opening_before_mark`), both in ``bar_qpm``; until 2026-12-06
    they were played at 120 (Chopin's Polonaise op. 53 in (n)ASAP: 120, which reads as no mark, until bar 57)."""
    if override is not None and not (override > 0 and math.isfinite(override)):
        raise ValueError(f"--qpm: expected a positive number of quarter notes per minute, got {override}")
    mark = stated_qpm(score_tokens)
    if mark is not None:
        return _marked_tempo(score_tokens, mark, override, model)
    tl = score_timeline(score_tokens)  # parsed once for the sections and the features
    sections = section_tempi(score_tokens, model, tl)
    if override is not None:
        scale = float(override) / sections[0].qpm if len(sections) > 1 else None
        return TempoEstimate(float(override), "override", f"--qpm {override:g}" + (
            f" (its {len(sections)} tempo sections keep their ratios)" if scale else ""),
            bar_tempi(sections, scale) if scale else None)
    if len(sections) > 1:
        return TempoEstimate(piece_qpm(sections), "words", "estimated per section from its tempo word and "
                             "content (no metronome mark): " + describe_sections(sections), bar_tempi(sections))
    features = score_features(score_tokens, tl)
    model = model or default_model()
    qpm = model.predict(features)
    word = next((c for c in WORD_CLASSES if features[f"word_{c}"]), None)
    num, den = first_time_signature(score_tokens)
    content = (f"median onset gap {2 ** features['log2_median_ioi_q']:g} quarters, "
               f"{100 * features['short_share']:.0f} % of notes sixteenths or shorter, "
               f"written lengths spread over {features['length_spread']:.2f} octaves")
    edges = [FEATURE_WORDS.get(n, n) for n in model.within_range(features)[1]]
    if edges:
        content += (f"; {', '.join(edges)} beyond the training pieces', read at their edge: a rough estimate, "
                    "--qpm sets the tempo")
    if word is not None:
        return TempoEstimate(qpm, "words", f"estimated from the tempo word in force over most of the score ({word}), "
                                           f"{num}/{den} and the content "
                                           f"({content}); no metronome mark")
    return TempoEstimate(qpm, "content", f"estimated from {num}/{den} and the content ({content}); no metronome "
                                         f"mark or tempo word")


def _marked_tempo(score_tokens: Sequence[str], mark: float, override: Optional[float],
                  model: Optional["TempoModel"]) -> TempoEstimate:
    """:func:`notated_tempo` for a score that states a metronome mark: the marks, per bar where bars before
    the first one state none (:func:`with_opening`), all scaled by ``override`` over the first bar's."""
    marks = stated_bar_qpm(score_tokens)
    opening = opening_before_mark(score_tokens, model)
    bar_qpm = with_opening(marks, opening)
    filled = bar_qpm != marks
    if override is not None:
        scale = float(override) / bar_qpm[0]
        return TempoEstimate(float(override), "override", f"--qpm {override:g} (the score's metronome marks keep "
                             "their ratios)", [q * scale for q in bar_qpm])
    reason = f"the score's metronome mark ({mark:g} quarter notes per minute)"
    if len(opening) > 1:
        reason += (f"; bars 1-{sum(sec.n_bars for sec in opening)} before it state none, estimated per section "
                   "from their tempo words and content: " + describe_sections(opening))
    elif opening:
        reason += (f"; bars 1-{opening[0].n_bars} before it state none: {opening[0].qpm:.0f} estimated from their "
                   + (f"tempo word ({opening[0].word}) and content" if opening[0].word != "none" else "content"))
    elif marks[0] is None:
        reason += f", from the first bar (stated in bar {next(b for b, q in enumerate(marks) if q is not None) + 1})"
    return TempoEstimate(mark, "mark", reason, bar_qpm if filled else None)


def bar_tempi(sections: Sequence[TempoSection], scale: Optional[float] = None) -> List[float]:
    """Per bar, its section's tempo (times ``scale``), quarter notes per minute."""
    return [sec.qpm * (scale or 1.0) for sec in sections for _ in range(sec.n_bars)]


def describe_sections(sections: Sequence[TempoSection], most: int = 6) -> str:
    """``bars 1-10 slow 30 qpm, bars 11-132 fast 190 qpm`` (1-based bars in token order), at most
    ``most`` of them, then how many more."""
    parts = [f"bars {s.first_bar + 1}-{s.first_bar + s.n_bars} {s.word} {s.qpm:.0f} qpm" for s in sections[:most]]
    more = len(sections) - most
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def with_qpm(score_tokens: Sequence[str], qpm: float) -> List[str]:
    """The score tokens with the first ``QPM`` set to ``qpm`` and every later one scaled with it (a tempo
    change keeps its ratio), quantised: the notated tempo the model reads. A stream without ``QPM`` tokens
    (a model trained without them) is returned unchanged."""
    qpms = [float(t.partition("_")[2]) for t in score_tokens if t.startswith(V.QPM + "_")]
    if not qpms:
        return list(score_tokens)
    ratio = qpm / qpms[0]
    return [V.tok(V.QPM, V.quantise_qpm(float(t.partition("_")[2]) * ratio)) if t.startswith(V.QPM + "_") else t
            for t in score_tokens]


def with_bar_qpm(score_tokens: Sequence[str], bar_qpm: Sequence[float]) -> List[str]:
    """The score tokens with each bar's ``QPM`` set to ``bar_qpm`` of that bar (quantised; bars past the
    list keep the last value). A stream without ``QPM`` tokens is returned unchanged."""
    out: List[str] = []
    bar = -1
    for t in score_tokens:
        if t.startswith(V.BAR + "_"):
            bar += 1
        elif t.startswith(V.QPM + "_") and bar >= 0 and bar_qpm:
            t = V.tok(V.QPM, V.quantise_qpm(bar_qpm[min(bar, len(bar_qpm) - 1)]))
        out.append(t)
    return out


def apply_notated_tempo(score_tokens: Sequence[str], override: Optional[float] = None) -> Tuple[List[str], TempoEstimate]:
    """The score tokens with the notated tempo a rendering starts from (:func:`notated_tempo`): unchanged
    where the score states a metronome mark from its first bars, else with every ``QPM`` set from the
    estimate (or ``override``): per bar where the estimate has sections or an opening before the first
    mark (:func:`with_bar_qpm`), else by :func:`with_qpm`; and the estimate. What ``instruct-render``,
    ``instruct-eval`` and ``instruct-tokenize build --infer-tempo`` all give a model that reads ``QPM``."""
    tempo = notated_tempo(score_tokens, override=override)
    if tempo.source == "mark" and not tempo.bar_qpm:
        return list(score_tokens), tempo
    if tempo.bar_qpm:
        return with_bar_qpm(score_tokens, tempo.bar_qpm), tempo
    return with_qpm(score_tokens, tempo.qpm), tempo
