"""Fast reader for match files (versions 1.0.0 and the "5.0" header, i.e. partitura's 0.x line format).

Line kinds: ``info(...)``, ``scoreprop(...)`` (1.0.0), ``meta(...)`` (5.0), ``snote(...)-note(...)``,
``snote(...)-deletion.``, ``insertion-note(...)``, ``sustain(tick,value)``, ``soft(tick,value)``.
Anything else is a :class:`MatchParseError`, and so is a note whose pitch (score or performed) or
velocity MIDI cannot carry (pitch 0-127, velocity 1-127): a bad file, never a clipped training note.
Tested against ``partitura.load_match`` in ``tests/tokenizer/test_match.py``.

Units: score time in quarter notes, performance time in seconds (``midiClockRate`` microseconds per
``midiClockUnits`` ticks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

MIDI_PITCHES = (0, 127)  # a MIDI note number
MIDI_VELOCITIES = (1, 127)  # a sounding note-on (velocity 0 is a note-off)
STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ALTERS = {"n": 0, "#": 1, "b": -1, "##": 2, "bb": -2, "x": 2, "0": 0, "1": 1, "-1": -1, "2": 2, "-2": -2}


class MatchParseError(Exception):
    """A match file that cannot be read; the message says why (the caller adds the file name)."""


_SNOTE = re.compile(
    r"snote\(([^,]+),\[([A-Ga-g]),([^\]]*)\],(-?\d+),(-?\d+):(\d+),([^,]+),([^,]+),([^,]+),([^,]+),\[([^\]]*)\]\)-"
)
_NOTE_V1 = re.compile(r"note\(([^,]+),(\d+),(-?\d+),(-?\d+),(\d+),(\d+),(\d+)\)\.?\s*$")
_NOTE_V5 = re.compile(r"note\(([^,]+),\[([A-Ga-g]),([^\]]*)\],(-?\d+),(-?\d+),(-?\d+),(-?\d+),(\d+)\)\.?\s*$")
_PEDAL = re.compile(r"(sustain|soft)\((-?\d+),(\d+)\)\.?\s*$")
_INFO = re.compile(r"info\((\w+),(.*)\)\.?\s*$")
_TS_SCOREPROP = re.compile(r"scoreprop\(timeSignature,(\d+)/(\d+),(-?\d+):")
_TS_META = re.compile(r"meta\(timeSignature,(\d+)/(\d+),(-?\d+),")
# OnsetInBeats of a time signature change: last field of scoreprop(...) (1.0.0) / meta(...) (5.0)
_TS_BEATS = re.compile(r"(?:scoreprop|meta)\(timeSignature,[^,]*,(-?\d+)(?::[^,]*,[^,]*)?,([-+.\deE]+)\)")


@dataclass
class MatchFile:
    """An aligned performance: one row per score note (``snote``), with its performed note if played."""

    path: str
    version: str
    info: Dict[str, str]
    time_sigs: List[Tuple[int, int, int]]  # (measure, numerator, denominator)
    anchor: List[str]
    measure: np.ndarray  # int, the score measure number
    repeat_pass: np.ndarray  # int, the pass of a repeated section (anchor suffix "-2" -> 2)
    pos_q: np.ndarray  # position in the bar, quarter notes
    onset_q: np.ndarray  # score onset, quarter notes (from OnsetInBeats and the time signature)
    dur_q: np.ndarray  # notated duration, quarter notes (0 for grace notes)
    grace: np.ndarray  # bool
    pitch: np.ndarray  # int, notated MIDI pitch
    staff: np.ndarray  # int, 1 or 2 (0 when the file does not say)
    played: np.ndarray  # bool: False for a deletion
    onset_s: np.ndarray  # performed onset, s (nan when deleted)
    offset_s: np.ndarray  # performed key release, s (nan when deleted)
    velocity: np.ndarray  # int (0 when deleted)
    perf_pitch: np.ndarray  # int, performed MIDI pitch (-1 when deleted)
    n_insertions: int = 0
    sustain: List[Tuple[float, int]] = field(default_factory=list)  # (time s, CC value)
    soft: List[Tuple[float, int]] = field(default_factory=list)

    @property
    def n_notes(self) -> int:
        return len(self.anchor)

    @property
    def n_played(self) -> int:
        return int(self.played.sum())


STRANDED_BARS = 32  # nominal bar lengths: a score note further than this past its measure's start is stranded
_ROW_FIELDS = ("measure", "repeat_pass", "pos_q", "onset_q", "dur_q", "grace", "pitch", "staff", "played",
               "onset_s", "offset_s", "velocity", "perf_pitch")  # MatchFile's per-row arrays (and ``anchor``)


def time_signature_at(time_sigs: List[Tuple[int, int, int]], measure: int) -> Tuple[int, int]:
    """(numerator, denominator) in force at a measure: the last change at or before it in ``time_sigs``
    (sorted by measure), the first one before any, 4/4 without one."""
    ts = (time_sigs[0][1], time_sigs[0][2]) if time_sigs else (4, 4)
    for m, num, den in time_sigs:
        if m <= measure:
            ts = (num, den)
    return ts


def nominal_bar_q(time_sigs: List[Tuple[int, int, int]], measures: np.ndarray) -> np.ndarray:
    """(N,) the length in quarters that the time signature in force gives each measure."""
    quarters = {m: num * 4.0 / den for m in np.unique(measures).tolist()
                for num, den in [time_signature_at(time_sigs, m)]}
    return np.array([quarters[m] for m in np.asarray(measures).tolist()], dtype=np.float64)


def stranded_rows(mf: MatchFile) -> np.ndarray:
    """(N,) bool: the score notes whose position lies more than ``STRANDED_BARS`` bar lengths past their
    measure's start. No score writes that (a cadenza written as one measure runs a few bars long); a writer
    that overflowed a backup wrote it, and the match files made from its score keep it: (n)ASAP's Beethoven
    op. 57/i puts a run and its bass 661 quarters into 12 of its measures, in all 17 performances."""
    return mf.pos_q > STRANDED_BARS * nominal_bar_q(mf.time_sigs, mf.measure)


def without_rows(mf: MatchFile, drop: np.ndarray) -> MatchFile:
    """The match file without the rows (score notes, each with its performed note) where ``drop`` is true
    (the same object where none is)."""
    keep = ~np.asarray(drop, dtype=bool)
    if keep.all():
        return mf
    rows = {name: getattr(mf, name)[keep] for name in _ROW_FIELDS}
    return replace(mf, anchor=[a for a, k in zip(mf.anchor, keep) if k], **rows)


def without_stranded(mf: MatchFile) -> MatchFile:
    """The match file as ``instruct-tokenize build`` encodes it: its stranded notes (:func:`stranded_rows`)
    left out, each with its performed note."""
    return without_rows(mf, stranded_rows(mf))


_FRAC_CACHE: Dict[str, float] = {}


def _frac(text: str) -> float:
    """A match number ("3/16", "-1/28", "0.5") as a float, memoised (a file repeats few values)."""
    value = _FRAC_CACHE.get(text)
    if value is None:
        try:
            value = float(Fraction(text.strip()))
        except (ValueError, ZeroDivisionError):
            raise MatchParseError(f"bad number {text!r}") from None
        _FRAC_CACHE[text] = value
    return value


def _pitch(step: str, alter: str, octave: str) -> int:
    alter_v = ALTERS.get(alter.strip())
    if alter_v is None:
        raise MatchParseError(f"bad pitch alteration {alter!r}")
    return (int(octave) + 1) * 12 + STEPS[step.upper()] + alter_v


def _staff(attrs: str) -> int:
    for attr in attrs.split(","):
        if attr.startswith("staff"):
            try:
                return int(attr[5:])
            except ValueError:
                return 0
    return 0


def _repeat_pass(anchor: str) -> int:
    _, sep, suffix = anchor.rpartition("-")
    return int(suffix) if sep and suffix.isdigit() else 1


def _den_at(time_sigs: List[Tuple[int, int, int]], measure: int) -> int:
    return time_signature_at(time_sigs, measure)[1]


def _header_line(line: str, info: Dict[str, str], time_sigs: List[Tuple[int, int, int]],
                 ts_beats: Optional[List[Tuple[int, float, int]]] = None) -> None:
    """An ``info(...)``, ``scoreprop(...)`` or ``meta(...)`` line (stripped) into ``info``/``time_sigs``."""
    if line.startswith("info("):
        m = _INFO.match(line)
        if not m:
            raise MatchParseError("bad info line")
        key, value = m.group(1), m.group(2)
        info[key] = value
        if key == "timeSignature":
            ts = re.match(r"\[?(\d+)/(\d+)", value)
            if ts and not time_sigs:
                time_sigs.append((-(10**9), int(ts.group(1)), int(ts.group(2))))
        return
    m = _TS_SCOREPROP.match(line) or _TS_META.match(line)
    if m:
        time_sigs.append((int(m.group(3)), int(m.group(1)), int(m.group(2))))
        b = _TS_BEATS.match(line)
        if b and ts_beats is not None:
            try:
                ts_beats.append((int(b.group(1)), float(b.group(2)), int(m.group(2))))
            except ValueError:
                raise MatchParseError("bad time signature onset") from None
    elif not (line.startswith("scoreprop(") or line.startswith("meta(")):
        raise MatchParseError("unknown line type")


def parse_text(text: str, path: str = "<match>") -> MatchFile:
    """Parse a whole match file's text: the fast whole-text path, or :func:`parse_lines` when a line
    is not plain (then its error names the line)."""
    try:
        return _parse_fast(text, path)
    except (_Fallback, MatchParseError):
        return parse_lines(text.splitlines(), path)


def parse_lines(lines: List[str], path: str = "<match>") -> MatchFile:
    """Parse the lines of a match file; raises MatchParseError naming the line on any bad line."""
    info: Dict[str, str] = {}
    time_sigs: List[Tuple[int, int, int]] = []
    rows: List[tuple] = []
    ts_beats: List[Tuple[int, float, int]] = []  # (measure, OnsetInBeats, denominator) per change
    sustain: List[Tuple[int, int]] = []
    soft: List[Tuple[int, int]] = []
    n_ins = 0
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        try:
            head = line[:5]
            if head == "snote":
                rows.append(_parse_snote(line))
            elif head == "susta" or head == "soft(":
                m = _PEDAL.match(line)
                if not m:
                    raise MatchParseError("bad pedal line")
                (sustain if m.group(1) == "sustain" else soft).append((int(m.group(2)), int(m.group(3))))
            elif head == "inser":
                if not line.startswith("insertion-note("):
                    raise MatchParseError("bad insertion line")
                n_ins += 1
            elif head == "info(" or head == "score" or head == "meta(":
                _header_line(line, info, time_sigs, ts_beats)
            else:
                raise MatchParseError("unknown line type")
        except MatchParseError as e:
            raise MatchParseError(f"line {lineno}: {e}: {line[:60]!r}") from None
    version = info.get("matchFileVersion", "")
    if version not in ("1.0.0", "5.0", "0.5.0"):
        raise MatchParseError(f"unsupported or missing matchFileVersion {version!r}")
    if not rows:
        raise MatchParseError("no score notes (snote lines): empty score")
    return _assemble(path, version, info, sorted(time_sigs), rows, n_ins, sustain, soft, ts_beats)


def _parse_snote(line: str) -> tuple:
    m = _SNOTE.match(line)
    if not m:
        raise MatchParseError("bad snote")
    anchor, step, alter, octave, measure, beat, offset, dur, onset_b, _, attrs = m.groups()
    rest = line[m.end():]
    pitch = _pitch(step, alter, octave)
    _check_midi_range("score pitch", pitch, MIDI_PITCHES)
    base = (anchor, int(measure), int(beat), _frac(offset), _frac(dur), float(onset_b), pitch, _staff(attrs))
    if rest.startswith("deletion"):
        return base + (None,)
    n = _NOTE_V1.match(rest)
    if n:
        perf = (int(n.group(2)), int(n.group(3)), int(n.group(4)), int(n.group(5)))
    else:
        n = _NOTE_V5.match(rest)
        if not n:
            raise MatchParseError("bad note")
        perf = (_pitch(n.group(2), n.group(3), n.group(4)), int(n.group(5)), int(n.group(6)), int(n.group(8)))
    if perf[2] < perf[1]:
        raise MatchParseError("note offset before onset")
    _check_midi_range("performed pitch", perf[0], MIDI_PITCHES)
    _check_midi_range("velocity", perf[3], MIDI_VELOCITIES)
    return base + (perf,)


def _check_midi_range(what: str, value: int, bounds: Tuple[int, int]) -> None:
    """A note whose pitch or velocity MIDI cannot carry makes the file bad (not a clipped training note)."""
    if not bounds[0] <= value <= bounds[1]:
        raise MatchParseError(f"{what} {value} outside the MIDI range {bounds[0]}-{bounds[1]}")


def _outside(values: np.ndarray, bounds: Tuple[int, int]) -> bool:
    return bool(np.any((values < bounds[0]) | (values > bounds[1])))


def beat_segments(ts_beats: List[Tuple[int, float, int]]) -> List[Tuple[int, float, float, int]]:
    """(measure, OnsetInBeats, onset in quarters, denominator) at each time signature change.

    ``OnsetInBeats`` counts beats of the time signature in force, so its unit changes with the
    denominator (4/4 then 3/2: quarters, then halves); quarters accumulate segment by segment. With
    one denominator throughout this is ``beats * 4 / den`` everywhere."""
    out: List[Tuple[int, float, float, int]] = []
    for measure, beats, den in ts_beats:
        if den <= 0:
            raise MatchParseError(f"bad time signature denominator {den}")
        if out and out[-1][0] == measure:
            out.pop()  # a later signature in the same measure replaces the earlier one
        if out:
            _, b0, q0, d0 = out[-1]
            out.append((measure, beats, q0 + (beats - b0) * 4.0 / d0, den))
        else:
            out.append((measure, beats, beats * 4.0 / den, den))
    return out


def _assemble(path, version, info, time_sigs, rows, n_ins, sustain, soft, ts_beats=()) -> MatchFile:
    n = len(rows)
    measure = np.empty(n, np.int64)
    beat = np.empty(n, np.int64)
    offset_whole = np.empty(n)
    den_of = np.empty(n, np.int64)
    onset_q = np.empty(n)
    dur_q = np.empty(n)
    pitch = np.empty(n, np.int64)
    staff = np.empty(n, np.int64)
    played = np.zeros(n, bool)
    onset_t = np.full(n, np.nan)
    offset_t = np.full(n, np.nan)
    vel = np.zeros(n, np.int64)
    ppitch = np.full(n, -1, np.int64)
    den_cache: Dict[int, int] = {}
    for i, (anchor, meas, beat_, offset, dur, onset_b, p, st, perf) in enumerate(rows):
        den = den_cache.get(meas)
        if den is None:
            den = den_cache[meas] = _den_at(time_sigs, meas)
        measure[i], beat[i], offset_whole[i], den_of[i] = meas, beat_, offset, den
        onset_q[i] = onset_b * 4.0 / den
        dur_q[i] = dur * 4.0
        pitch[i], staff[i] = p, st
        if perf is not None:
            played[i] = True
            ppitch[i], onset_t[i], offset_t[i], vel[i] = perf
    return _finish(path, version, info, time_sigs, [r[0] for r in rows], measure, (beat, offset_whole, den_of),
                   onset_q, dur_q, pitch, staff, played, onset_t, offset_t, vel, ppitch, n_ins, sustain, soft, ts_beats)


def _finish(path, version, info, time_sigs, anchors, measure, bar_beat, onset_q, dur_q, pitch, staff, played,
            onset_t, offset_t, vel, ppitch, n_ins, sustain, soft, ts_beats=()) -> MatchFile:
    """``bar_beat``: per note the ``Bar:Beat`` field's beat (1-based), its ``Offset`` (whole notes) and the
    denominator of the time signature in force (see :func:`bar_positions`)."""
    try:
        units = float(info.get("midiClockUnits", 480))
        rate = float(info.get("midiClockRate", 500000))
    except ValueError:
        raise MatchParseError("bad midiClockUnits/midiClockRate") from None
    if units <= 0 or rate <= 0:
        raise MatchParseError(f"absurd clock: midiClockUnits={units}, midiClockRate={rate}")
    s_per_tick = rate / units / 1e6
    grace = dur_q <= 0
    dur_q[grace] = 0.0
    onset_q = _mixed_meter_onsets(onset_q, measure, ts_beats)
    rp_cache: Dict[str, int] = {}
    repeat_pass = np.fromiter((rp_cache[a] if a in rp_cache else rp_cache.setdefault(a, _repeat_pass(a))
                               for a in anchors), np.int64, len(anchors))
    pos_q = bar_positions(measure, repeat_pass, *bar_beat, onset_q)
    return MatchFile(
        path=path, version=version, info=info, time_sigs=time_sigs, anchor=anchors, measure=measure,
        repeat_pass=repeat_pass, pos_q=pos_q, onset_q=onset_q,
        dur_q=dur_q, grace=grace, pitch=pitch, staff=staff, played=played, onset_s=onset_t * s_per_tick,
        offset_s=offset_t * s_per_tick, velocity=vel, perf_pitch=ppitch, n_insertions=n_ins,
        sustain=_scale_pedal(sustain, s_per_tick), soft=_scale_pedal(soft, s_per_tick),
    )


def bar_positions(measure: np.ndarray, repeat_pass: np.ndarray, beat: np.ndarray, offset_whole: np.ndarray,
                  den: np.ndarray, onset_q: np.ndarray) -> np.ndarray:
    """(N,) each score note's position in its bar, quarter notes, from its ``Bar:Beat`` and ``Offset``.

    The ``Beat`` field counts beats of the time signature's denominator in the "5.0" files (a 6/8 bar has
    beats 1-6, each an eighth) and quarter notes in (n)ASAP's 1.0.0 files (a 9/8 bar has beats 1-5; 159 of
    its 380 1.0.0 files are in a meter over 8, 16 or 2, e.g. Bach's Fugue BWV 864: beat 3 is the fifth
    eighth). Both readings are tried where they differ, and the one whose positions agree with
    ``OnsetInBeats`` (``onset_q``: within a measure and repeat pass, onset minus position is one bar start)
    for more notes is kept; with a quarter-note denominator they are the same. ``offset_whole``: the
    ``Offset`` field, whole notes; ``den``: the denominator in force at each note's measure."""
    by_denominator = ((beat - 1) / den + offset_whole) * 4.0
    if np.all(den == 4) or len(beat) == 0:
        return by_denominator
    by_quarter = (beat - 1) + offset_whole * 4.0
    if _off_bar_start(measure, repeat_pass, by_quarter, onset_q) < _off_bar_start(measure, repeat_pass, by_denominator,
                                                                                  onset_q):
        return by_quarter
    return by_denominator


def _off_bar_start(measure: np.ndarray, repeat_pass: np.ndarray, pos_q: np.ndarray, onset_q: np.ndarray) -> int:
    """How many notes' bar start (onset minus position, quarters) differs from the lower median of their
    measure and repeat pass by more than a 48th of a quarter."""
    start_q = onset_q - pos_q
    _, inverse, lower, _ = middle_per_bar(measure, repeat_pass, start_q)
    return int(np.sum(np.abs(start_q - lower[inverse]) > 1.0 / 48))


def middle_per_bar(measure: np.ndarray, repeat_pass: np.ndarray, values: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (measure, repeat pass): its keys (K, 2) in sorted order, each note's key index (N,), and the
    lower and upper middle of its notes' ``values`` (K,) (equal for an odd count; their mean is the median)."""
    keys, inverse = np.unique(np.stack([measure, repeat_pass], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((values, inverse))
    counts = np.bincount(inverse, minlength=len(keys))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordered = values[order]
    return keys, inverse, ordered[first + (counts - 1) // 2], ordered[first + counts // 2]


def _mixed_meter_onsets(onset_q: np.ndarray, measure: np.ndarray, ts_beats) -> np.ndarray:
    """Correct ``onset_q`` (computed as OnsetInBeats x 4 / den of the note's measure) where the
    denominator changes: OnsetInBeats accumulates beats of each segment's own unit, so each segment is
    offset by the quarters it gained or lost against ``beats * 4 / den``. Unchanged with one denominator."""
    segments = beat_segments(sorted(ts_beats))
    if len({d for _, _, _, d in segments}) <= 1:
        return onset_q
    seg_measure = np.array([m for m, _, _, _ in segments])
    corr = np.array([q - b * 4.0 / d for _, b, q, d in segments])
    k = np.searchsorted(seg_measure, measure, side="right") - 1
    return onset_q + np.where(k >= 0, corr[np.clip(k, 0, None)], 0.0)


def _scale_pedal(events: List[Tuple[int, int]], s_per_tick: float) -> List[Tuple[float, int]]:
    return [(t * s_per_tick, v) for t, v in events]


# ----------------------------------------------------------------------------------------- fast path
# Whole-text regexes, one per line type, anchored to a whole line ("\n"-separated, CRLF normalised).
# They are stricter than the per-line parser: when every line is claimed by exactly one of them, the
# result equals the per-line parser's; otherwise (or on any error) the per-line parser runs and names
# the bad line.
_F_SNOTE = re.compile(
    r"\nsnote\(([^,\n]+),\[([A-Ga-g]),([^\]\n]*)\],(-?\d+),(-?\d+):(\d+),([^,\n]+),([^,\n]+),([^,\n]+),"
    r"([^,\n]+),\[([^\]\n]*)\]\)-(?:(deletion)[^\n]*"
    r"|note\([^,\n]+,(\d+),(-?\d+),(-?\d+),(\d+),\d+,\d+\)\.?[ \t]*"
    r"|note\([^,\n]+,\[([A-Ga-g]),([^\]\n]*)\],(-?\d+),(-?\d+),(-?\d+),-?\d+,(\d+)\)\.?[ \t]*)(?=\n)")
_F_SUSTAIN = re.compile(r"\nsustain\((-?\d+),(\d+)\)\.?[ \t]*(?=\n)")
_F_SOFT = re.compile(r"\nsoft\((-?\d+),(\d+)\)\.?[ \t]*(?=\n)")
_F_INSERTION = re.compile(r"\ninsertion-note\(")
_F_HEADER = re.compile(r"\n((?:info|scoreprop|meta)\([^\n]*)")
_F_BLANK = re.compile(r"\n(?=[ \t]*(?:%|\n))")
_F_ODD = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


class _Fallback(Exception):
    pass


def _parse_fast(text: str, path: str) -> MatchFile:
    text = "\n" + text.replace("\r\n", "\n") + "\n"
    if any(c in text for c in _F_ODD):
        raise _Fallback
    n_lines = text.count("\n") - 1  # every "\n" but the last starts a line
    snotes = _F_SNOTE.findall(text)
    sustain = _F_SUSTAIN.findall(text)
    soft = _F_SOFT.findall(text)
    n_ins = len(_F_INSERTION.findall(text))
    headers = _F_HEADER.findall(text)
    n_blank = len(_F_BLANK.findall(text))
    if len(snotes) + len(sustain) + len(soft) + n_ins + len(headers) + n_blank != n_lines:
        raise _Fallback
    info: Dict[str, str] = {}
    time_sigs: List[Tuple[int, int, int]] = []
    ts_beats: List[Tuple[int, float, int]] = []
    for line in headers:
        _header_line(line.strip(), info, time_sigs, ts_beats)
    version = info.get("matchFileVersion", "")
    if version not in ("1.0.0", "5.0", "0.5.0") or not snotes:
        raise _Fallback
    cols = list(zip(*snotes))
    n = len(snotes)
    anchors = list(cols[0])
    pcache: Dict[tuple, int] = {}
    pitch = np.fromiter((pcache[k] if k in pcache else pcache.setdefault(k, _pitch(*k))
                         for k in zip(cols[1], cols[2], cols[3])), np.int64, n)
    measure = np.array(list(map(int, cols[4])), np.int64)
    beat = np.array(list(map(int, cols[5])), np.int64)
    offset = np.array([_frac(x) for x in cols[6]])
    dur = np.array([_frac(x) for x in cols[7]])
    onset_b = np.array(list(map(float, cols[8])))
    scache: Dict[str, int] = {}
    staff = np.fromiter((scache[a] if a in scache else scache.setdefault(a, _staff(a)) for a in cols[10]),
                        np.int64, n)
    deleted = np.array([d == "deletion" for d in cols[11]], bool)
    v1 = np.array([p != "" for p in cols[12]], bool)
    played = ~deleted
    v5 = played & ~v1
    ppitch = np.full(n, -1, np.int64)
    onset_t = np.full(n, np.nan)
    offset_t = np.full(n, np.nan)
    vel = np.zeros(n, np.int64)
    i1 = np.nonzero(v1)[0]
    if len(i1):
        ppitch[i1] = [int(cols[12][i]) for i in i1]
        onset_t[i1] = [int(cols[13][i]) for i in i1]
        offset_t[i1] = [int(cols[14][i]) for i in i1]
        vel[i1] = [int(cols[15][i]) for i in i1]
    i5 = np.nonzero(v5)[0]
    if len(i5):
        ppitch[i5] = [pcache[k] if k in pcache else pcache.setdefault(k, _pitch(*k))
                      for k in ((cols[16][i], cols[17][i], cols[18][i]) for i in i5)]
        onset_t[i5] = [int(cols[19][i]) for i in i5]
        offset_t[i5] = [int(cols[20][i]) for i in i5]
        vel[i5] = [int(cols[21][i]) for i in i5]
    if np.any(offset_t[played] < onset_t[played]):
        raise _Fallback
    if (_outside(pitch, MIDI_PITCHES) or _outside(ppitch[played], MIDI_PITCHES)
            or _outside(vel[played], MIDI_VELOCITIES)):
        raise _Fallback  # the per-line parser names the line and the value
    time_sigs = sorted(time_sigs)
    den_cache: Dict[int, int] = {}
    den = np.fromiter((den_cache[m] if m in den_cache else den_cache.setdefault(m, _den_at(time_sigs, m))
                       for m in measure.tolist()), np.int64, n)
    onset_q = onset_b * 4.0 / den
    dur_q = dur * 4.0
    return _finish(path, version, info, time_sigs, anchors, measure, (beat, offset, den), onset_q, dur_q, pitch, staff,
                   played, onset_t, offset_t, vel, ppitch, n_ins,
                   [(int(t), int(v)) for t, v in sustain], [(int(t), int(v)) for t, v in soft], ts_beats)


def load_match(path: str) -> MatchFile:
    """Read a match file. Raises MatchParseError (message without the file name) on bad input."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MatchParseError(f"cannot read: {e.strerror}") from None
    if not data.strip():
        raise MatchParseError("empty file")
    if b"\x00" in data[:4096]:
        raise MatchParseError("binary data, not a match file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_text(text, str(path))
