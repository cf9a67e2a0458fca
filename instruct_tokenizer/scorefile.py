"""Score files for rendering: score MIDI (miditoolkit) and MusicXML (partitura) -> :class:`ScoreNotes`.

MusicXML is parsed by partitura, whose reader uses lxml with ``resolve_entities=False`` (no external
entities, no expansion bombs); a file whose DOCTYPE declares entities, or an .mxl that unpacks to more than
``MAX_XML_BYTES``, is refused before that. Repeats are unfolded as a performer plays them unless
``unfold_repeats=False`` (read as written, with a warning, where partitura cannot unfold them). Score MIDI
carries no staff: the first two instrument tracks are staff 1/2 when present, else notes at or above middle
C are staff 1. Score time in quarter notes.
"""
from __future__ import annotations

import bisect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

import numpy as np

from . import vocab as V
from .musicxml import Marks, MusicXMLError, load_partitura, qpm_of_tempo
from .score import LONG_BAR_SPLIT_Q, ScoreNotes, bar_qpm_from_changes, nominal_bar_len_q, sort_order, split_long_bars

MIDI_SUFFIXES = {".mid", ".midi"}
XML_SUFFIXES = {".musicxml", ".xml", ".mxl"}
MAX_XML_BYTES = 50 * 1024 * 1024


class ScoreReadError(Exception):
    """A score file that cannot be read; the message says why (the caller adds the file name)."""


MIN_BAR_Q = 0.5  # quarters: a rest of a measure shorter than this before a time-signature change joins the bar
SCORE_GRID_PER_Q = 48  # positions per quarter a notated onset sits on: down to 64th notes and 32nd-note triplets
GRID_TOLERANCE_Q = 1 / 480  # quarters: one tick of a 480-per-quarter file, the commonest resolution
PERFORMANCE_GRID_SHARE = 0.5  # a MIDI file with fewer of its onsets on that grid reads as a performance
MIN_JUDGED_TPQ = 192  # ticks per quarter: in a coarser file a played onset falls on the grid too often to tell
MIN_JUDGED_ONSETS = 50  # notes: fewer do not tell a performance from a score of tuplets


def _bars_from_time_sigs(starts_q: List[Tuple[float, Tuple[int, int]]], end_q: float):
    """Bar start times (quarters) and time signatures from (time, ts) changes, up to end_q.

    A time-signature change starts a new bar where it falls, also inside a measure of the previous
    signature (notation programs write a free-meter passage as, say, 65/4 and change the signature before
    it ends: that measure ends at the change). A measure longer than the positions a bar can hold
    (``vocab.MAX_POS``: 16 quarters) is read as bars of ``LONG_BAR_SPLIT_Q`` quarters, so that no two
    onsets of it collapse onto the last position (before, the notes of a 65/4 measure after its 16th
    quarter all took one position); those bars carry 4/4. A remainder under ``MIN_BAR_Q`` before a
    change (tick rounding in the file) joins the bar before it."""
    bar_starts, bar_ts = [], []
    t, i = 0.0, 0
    ts = starts_q[0][1] if starts_q else (4, 4)
    longest_q = (V.MAX_POS + 1) / V.GRID
    while t <= end_q or not bar_starts:
        while i < len(starts_q) and starts_q[i][0] <= t + 1e-6:
            ts = starts_q[i][1]
            i += 1
        length = nominal_bar_len_q(ts)
        split = length > longest_q
        bar_starts.append(t)
        bar_ts.append((4, 4) if split else ts)  # the split bars read as 4/4
        if split:
            length = LONG_BAR_SPLIT_Q
        next_change = starts_q[i][0] if i < len(starts_q) else float("inf")
        if 0 < next_change - (t + length) < MIN_BAR_Q and next_change - t <= longest_q:
            length = next_change - t  # a sliver before a change joins this bar
        t = min(t + length, next_change)
        if len(bar_starts) > 100000:
            raise ScoreReadError("absurd length (more than 100000 bars)")
    return bar_starts, bar_ts


def _assemble(onset_q, dur_q, pitch, staff, grace, bar_starts, bar_ts, marks=None, tempo_changes=()) -> ScoreNotes:
    """``tempo_changes``: (quarters, quarter notes per minute) of the notated tempo (see vocab.QPM)."""
    starts = np.array(bar_starts)
    bar = np.clip(np.searchsorted(starts, onset_q + 1e-6, side="right") - 1, 0, len(starts) - 1)
    pos_q = onset_q - starts[bar]
    lengths = np.diff(starts, append=starts[-1] + bar_ts[-1][0] * 4.0 / bar_ts[-1][1])
    cut = split_long_bars(bar, pos_q, lengths, bar_ts)  # a MusicXML cadenza measure (score MIDI: cut already)
    bar, pos_q = cut.bar, cut.pos_q
    order = sort_order(bar, pos_q, pitch)
    return ScoreNotes(bar=bar[order], pos_q=pos_q[order], dur_q=dur_q[order], grace=grace[order],
                      pitch=pitch[order], staff=staff[order], bar_len_q=cut.bar_len_q, bar_ts=cut.bar_ts,
                      marks=[marks[i] for i in order] if marks is not None else None,
                      bar_qpm=bar_qpm_from_changes(starts[cut.source] + cut.offset_q, tempo_changes))


def velocity_levels(velocity: np.ndarray) -> np.ndarray:
    """(N,) the dynamic level (index into ``vocab.EXPORT_DYN_VELOCITY``) nearest each MIDI velocity."""
    table = np.array([v for _, v in V.EXPORT_DYN_VELOCITY], dtype=np.float64)
    return np.abs(np.asarray(velocity, np.float64)[:, None] - table[None, :]).argmin(axis=1)


def midi_dynamics(onset_q: np.ndarray, velocity: np.ndarray) -> Optional[List[Marks]]:
    """The dynamics a notation program's score MIDI export states in its note velocities, as per-note marks
    (group tokens, note tokens), or None where its velocities tell none (one level throughout: a score
    without dynamics, or a file that is not such an export).

    Each onset (``onset_q``, quarters) takes the level most of its notes are played at
    (:func:`velocity_levels`); a ``Dyn`` token marks the onset where the level changes to one that the
    next onset keeps too, so an accented or sforzando chord (one onset louder) is no new dynamic, and a
    hairpin, which an export plays as a velocity ramp, reads as the levels it passes through. A file whose
    velocities are not an export's (``vocab.EXPORT_LEVELS_SHARE``: a recorded performance) states none."""
    counts = np.sort(np.unique(np.asarray(velocity), return_counts=True)[1])[::-1]
    if counts[:V.EXPORT_LEVELS_MAX].sum() < V.EXPORT_LEVELS_SHARE * len(velocity):
        return None
    levels = velocity_levels(velocity)
    onsets, group = np.unique(np.round(np.asarray(onset_q, np.float64), 6), return_inverse=True)
    votes = np.zeros((len(onsets), len(V.EXPORT_DYN_VELOCITY)), np.int64)  # (onsets, levels) notes per level
    np.add.at(votes, (group, levels), 1)
    group_level = votes.argmax(axis=1)  # (onsets,) the level most of its notes are played at
    stated: dict = {}
    current = None
    for g, level in enumerate(group_level):
        lasting = g + 1 == len(group_level) or group_level[g + 1] == level
        if level != current and lasting:
            stated[g] = V.tok(V.DYN, V.EXPORT_DYN_VELOCITY[level][0])
            current = level
    if len(set(stated.values())) < 2:
        return None
    return [((stated[g],) if g in stated else (), ()) for g in group.tolist()]


def _off_grid_q(values_q: np.ndarray) -> np.ndarray:
    """How far each value (quarters) lies from the nearest multiple of 1/:data:`SCORE_GRID_PER_Q` quarter."""
    scaled = np.asarray(values_q, np.float64) * SCORE_GRID_PER_Q
    return np.abs(scaled - np.round(scaled)) / SCORE_GRID_PER_Q


def grid_share(onset_q: np.ndarray) -> float:
    """The share of a MIDI file's onsets (quarters) that keep to a notated grid (multiples of
    1/:data:`SCORE_GRID_PER_Q` quarter, within :data:`GRID_TOLERANCE_Q`): the larger of two readings,

    - phase: onsets at one offset from the grid (an export may shift the whole grid by a few ticks, after
      a pickup of odd length);
    - gaps: the gaps between successive distinct onsets on the grid (a grid that shifts part way, after a
      cadenza or a tuplet group of odd length, keeps its gaps).

    Measured (MIDI files of 192 ticks per quarter or more): score exports, the benchmark's 23 (MuseScore) 0.80
    to 1.00, the 61 such of (n)ASAP's MusicXML exported by partitura 0.67 to 1.00, 550 of music21's corpus
    exported by music21 0.60 to 1.00 (median 1.00 in each); performances, the benchmark's 166 human files 0.13 to
    0.38, Vienna 4x22's 112 0.22 to 0.39, Pianist Transformer's 23 renderings 0.21 to 0.24."""
    onset_q = np.sort(np.asarray(onset_q, np.float64))
    if len(onset_q) < 2:
        return 1.0
    phase = (onset_q * SCORE_GRID_PER_Q) % 1.0  # (N,) in grid steps
    candidates = np.unique(np.round(phase, 6))
    if len(candidates) > 256:  # a fine resolution: the 64 commonest of 256 phase bins
        counts, edges = np.histogram(phase, bins=256, range=(0.0, 1.0))
        candidates = edges[np.argsort(-counts)[:64]]
    shifted_q = onset_q[None, :] - candidates[:, None] / SCORE_GRID_PER_Q  # (C, N) each onset less each phase
    phase_share = float((_off_grid_q(shifted_q) <= GRID_TOLERANCE_Q + 1e-9).mean(axis=1).max())
    gaps_q = np.diff(np.unique(onset_q))
    gap_share = float(np.mean(_off_grid_q(gaps_q) <= GRID_TOLERANCE_Q + 1e-9)) if len(gaps_q) else 1.0
    return max(phase_share, gap_share)


@dataclass(frozen=True)
class PerformanceMidi:
    """A MIDI file given as a score whose timing is a performance's (a recording, a transcription)."""

    grid_share: float  # its onsets on a notated grid (:func:`grid_share`)
    qpm: float  # its tempo at its first note, quarter notes (MIDI beats) per minute

    def warning(self, path: str) -> str:
        """The render log's warning for the file at ``path``."""
        return (f"{path}: reads as a performance, not a score ({100 * self.grid_share:.0f} % of its onsets on a "
                f"notated grid, a score's {100 * PERFORMANCE_GRID_SHARE:.0f} % or more): played at its own MIDI "
                "tempo; a MusicXML or a quantised MIDI gives the model the notated rhythm it reads")


def performance_midi(path: str) -> Optional[PerformanceMidi]:
    """A MIDI file whose onsets are not on a notated grid (:func:`grid_share` under
    :data:`PERFORMANCE_GRID_SHARE`): what it is and its tempo; None for a score MIDI, for a file of under
    :data:`MIN_JUDGED_TPQ` ticks per quarter or :data:`MIN_JUDGED_ONSETS` notes (too few to tell) and for
    one that cannot be read (the score reader says why). Its beats are not notated quarters, so a tempo
    estimated from its content reads its performer's rubato as note values: the renderer plays such a file
    at its own tempo."""
    import miditoolkit

    try:
        midi = miditoolkit.MidiFile(str(path))
    except Exception:  # mido raises many types for junk input; load_score_midi names the reason
        return None
    ticks = [n.start for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    if len(ticks) < MIN_JUDGED_ONSETS or midi.ticks_per_beat < MIN_JUDGED_TPQ:
        return None
    share = grid_share(np.array(ticks, np.float64) / midi.ticks_per_beat)
    if share >= PERFORMANCE_GRID_SHARE:
        return None
    first = min(ticks)
    tempi = [t for t in sorted(midi.tempo_changes, key=lambda t: t.time) if t.time <= first] or midi.tempo_changes
    return PerformanceMidi(share, float(tempi[-1].tempo) if tempi else V.DEFAULT_QPM)


def load_score_midi(path: str, dynamics: bool = False) -> ScoreNotes:
    """Score MIDI -> ScoreNotes; ``dynamics``: the dynamics its note velocities state as ``Dyn`` marks
    (:func:`midi_dynamics`; none where they state none)."""
    import miditoolkit

    try:
        midi = miditoolkit.MidiFile(str(path))
    except Exception as e:  # mido raises many types for junk input
        raise ScoreReadError(f"not a readable MIDI file ({type(e).__name__}: {e})") from None
    tracks = [inst for inst in midi.instruments if inst.notes and not inst.is_drum]
    if not tracks:
        raise ScoreReadError("MIDI file has no notes")
    tpq = float(midi.ticks_per_beat)
    rows = []
    for k, inst in enumerate(tracks):
        for n in inst.notes:
            rows.append((n.start / tpq, max(n.end - n.start, 0) / tpq, n.pitch, k, n.velocity))
    arr = np.array(rows)
    onset_q, dur_q, pitch = arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int64)
    if len(tracks) >= 2:
        staff = np.minimum(arr[:, 3].astype(np.int64) + 1, 2)
    else:
        staff = np.where(pitch >= 60, 1, 2)
    ts_changes = [(ts.time / tpq, (ts.numerator, ts.denominator)) for ts in midi.time_signature_changes]
    ts_changes.sort(key=lambda x: x[0])
    bar_starts, bar_ts = _bars_from_time_sigs(ts_changes, float(onset_q.max()))
    tempo_changes = [(t.time / tpq, float(t.tempo)) for t in midi.tempo_changes]  # MIDI tempo is per quarter
    marks = midi_dynamics(onset_q, arr[:, 4]) if dynamics else None
    return _assemble(onset_q, dur_q, pitch, staff, np.zeros(len(pitch), bool), bar_starts, bar_ts, marks,
                     tempo_changes=tempo_changes)


def _entities_of(stream) -> List[str]:
    """The entities that an XML document's internal DTD subset declares (read up to the root element,
    with entity resolution, DTD loading and network access off); [] when the prolog does not parse (the
    full parse then says why)."""
    from lxml import etree

    try:
        for _, element in etree.iterparse(stream, events=("start",), resolve_entities=False, load_dtd=False,
                                          no_network=True):
            dtd = element.getroottree().docinfo.internalDTD
            return [e.name for e in dtd.iterentities()] if dtd is not None else []
    except etree.LxmlError:
        return []
    return []


def declared_entities(path: str) -> List[str]:
    """The entities a MusicXML file (or each XML document of a compressed .mxl) declares. A score needs
    none: a declaration is how external-entity and expansion attacks start, so such files are refused."""
    import zipfile

    if Path(path).suffix.lower() != ".mxl":
        with open(path, "rb") as f:
            return _entities_of(f)
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.lower().endswith((".xml", ".musicxml"))]
            found: List[str] = []
            for name in names:
                with z.open(name) as f:
                    found += _entities_of(f)
            return found
    except (zipfile.BadZipFile, OSError):
        return []  # partitura says why


def _unpacked_bytes(path: str) -> int:
    """The unpacked size an .mxl (zip) declares for its files; zipfile reads no member past its declared
    size, so this bounds what unpacking it costs (0 when it is no zip: partitura then says why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError):
        return 0


def merged_part(parts: List["partitura.score.Part"], pt: ModuleType) -> "partitura.score.Part":
    """A score's parts as one part. A grand staff written as two parts of one staff each (one per hand, as
    some exports write a piano score) keeps its hands apart: the first part is staff 1, the second staff 2,
    as a score MIDI's two tracks are (:func:`load_score_midi`); otherwise partitura's staves (a piano part's
    two, a voice part's one)."""
    if len(parts) == 1:
        return parts[0]
    two_hands = len(parts) == 2 and all(p.number_of_staves <= 1 for p in parts)
    return pt.score.merge_parts(parts, reassign="staff" if two_hands else "voice")


def off_bar_repeats(part: "partitura.score.Part", pt: ModuleType) -> int:
    """Keeps one repeat per span that starts and ends on the part's bar lines and removes the rest from
    ``part``; returns how many of those removed were off its bar lines.

    A score merged from several parts (:func:`merged_part`) carries each part's repeats, and the merged
    part's bars are the first part's. Where every part's bars are as long, the copies coincide and
    partitura unfolds them once; where a part has an overfull or short bar (a string quartet in music21's
    corpus, Haydn's op. 74/1 ii: one repeat per part at 2,028, 2,040 and 2,052 divisions), the copies
    overlap and it unfolded them into each other: 62,866 notes from 1,946 (1.8 hours of music, from a
    movement of about 8 minutes)."""
    lines = {t for m in part.iter_all(pt.score.Measure) for t in (m.start.t, m.end.t)}
    seen, off = set(), 0
    for repeat in list(part.iter_all(pt.score.Repeat)):
        span = (repeat.start.t, repeat.end.t)
        on_lines = span[0] in lines and span[1] in lines
        if on_lines and span not in seen:
            seen.add(span)
            continue
        off += not on_lines
        part.remove(repeat)
    return off


def unfolded(part: "partitura.score.Part", path: str, pt: ModuleType) -> "partitura.score.Part":
    """The part with its repeats unfolded as a performer plays them (one per span: :func:`off_bar_repeats`,
    which a warning names where the parts' bars disagree); as written (each bar once) when partitura
    cannot unfold them (an ending without a number, a jump it cannot follow), with a warning that names the
    file: the score is still rendered."""
    off = off_bar_repeats(part, pt)
    if off:
        logging.getLogger(__name__).warning(
            "%s: %d repeat(s) of its other parts fall off the first part's bar lines (bars of unequal length "
            "across parts); the first part's repeats unfolded", path, off)
    try:
        return pt.score.unfold_part_maximal(part)
    except Exception as e:  # partitura raises IndexError, ValueError, ... on repeat structures it cannot follow
        logging.getLogger(__name__).warning(
            "%s: its repeats could not be unfolded (%s: %s); read as written, each bar once", path,
            type(e).__name__, str(e)[:80])
        return part


def load_musicxml(path: str, unfold_repeats: bool = True, markings: bool = False) -> ScoreNotes:
    """MusicXML -> ScoreNotes; ``markings`` adds the notes' MusicXML markings (cached on disk). A file that
    declares XML entities is refused (:func:`declared_entities`)."""
    import partitura as pt

    if Path(path).stat().st_size > MAX_XML_BYTES:
        raise ScoreReadError(f"file larger than {MAX_XML_BYTES // 2**20} MiB")
    if Path(path).suffix.lower() == ".mxl" and _unpacked_bytes(path) > MAX_XML_BYTES:
        raise ScoreReadError(f"compressed MusicXML of more than {MAX_XML_BYTES // 2**20} MiB unpacked")
    entities = declared_entities(path)
    if entities:
        raise ScoreReadError(f"declares XML entities ({', '.join(entities[:3])}): refused, a score needs none")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # partitura warns about every dangling slur
            score = load_partitura(str(path))
            part = merged_part(list(score.parts), pt)
            if unfold_repeats:
                part = unfolded(part, path, pt)
            na = part.note_array(include_staff=True, include_grace_notes=True)
        measures = list(part.iter_all(pt.score.Measure))
        m_starts = [float(q) for q in part.quarter_map([m.start.t for m in measures])] if measures else [0.0]
        ts_objs = list(part.iter_all(pt.score.TimeSignature))
        tempo_changes = [(float(part.quarter_map(t.start.t)), qpm_of_tempo(t.bpm, t.unit))
                         for t in part.iter_all(pt.score.Tempo)]
    except ScoreReadError:
        raise
    except MusicXMLError as e:
        raise ScoreReadError(str(e)) from None
    except Exception as e:  # partitura/lxml raise many types on hostile or broken XML
        raise ScoreReadError(f"cannot parse MusicXML ({type(e).__name__}: {str(e)[:120]})") from None
    if len(na) == 0:
        raise ScoreReadError("empty score (no notes)")
    ts_changes = sorted((float(part.quarter_map(t.start.t)), (int(t.beats), int(t.beat_type))) for t in ts_objs)
    bar_ts = []
    for s in m_starts:
        i = bisect.bisect_right([c[0] for c in ts_changes], s + 1e-9) - 1
        bar_ts.append(ts_changes[i][1] if i >= 0 else (ts_changes[0][1] if ts_changes else (4, 4)))
    grace = na["is_grace"].astype(bool) if "is_grace" in na.dtype.names else np.zeros(len(na), bool)
    dur_q = np.where(grace, 0.0, na["duration_quarter"].astype(float))
    staff = na["staff"].astype(np.int64) if "staff" in na.dtype.names else np.where(na["pitch"] >= 60, 1, 2)
    marks = None
    if markings:
        from .musicxml import load_markings, marks_for_anchor

        try:
            by_id = load_markings(path)
        except MusicXMLError as e:
            raise ScoreReadError(str(e)) from None
        marks = [marks_for_anchor(by_id, str(i)) for i in na["id"]]
    return _assemble(na["onset_quarter"].astype(float), dur_q, na["pitch"].astype(np.int64),
                     np.clip(staff, 1, 2), grace, sorted(m_starts), bar_ts, marks, tempo_changes)


def load_score(path: str, unfold_repeats: bool = True, markings: bool = False,
               midi_velocities: bool = True) -> ScoreNotes:
    """MusicXML or score MIDI by suffix (``markings``: a MusicXML's markings, and a score MIDI's dynamics read
    from its velocities unless ``midi_velocities`` is False). Raises ScoreReadError with a one-line reason."""
    p = Path(path)
    if not p.is_file():
        raise ScoreReadError("file not found")
    if p.stat().st_size == 0:
        raise ScoreReadError("empty file")
    suffix = p.suffix.lower()
    if suffix in MIDI_SUFFIXES:
        return load_score_midi(path, dynamics=markings and midi_velocities)
    if suffix in XML_SUFFIXES:
        return load_musicxml(path, unfold_repeats, markings)
    raise ScoreReadError(f"unknown score format {suffix!r} (MusicXML or MIDI)")
