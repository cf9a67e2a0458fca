"""Fast reader for match files (versions 1.0.0 and the "5.0" header, i.e. partitura's 0.x line format).

Line kinds: ``info(...)``, ``scoreprop(...)`` (1.0.0), ``meta(...)`` (5.0), ``snote(...)-note(...)``,
``snote(...)-deletion.``, ``insertion-note(...)``, ``sustain(tick,value)``, ``soft(tick,value)``.
Anything else is a :class:`MatchParseError`. Tested against ``partitura.load_match`` in
``tests/tokenizer/test_match.py``.

Units: score time in quarter notes, performance time in seconds (``midiClockRate`` microseconds per
``midiClockUnits`` ticks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

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
    den = time_sigs[0][2] if time_sigs else 4
    for m, _, d in time_sigs:
        if m <= measure:
            den = d
    return den


def parse_lines(lines: List[str], path: str = "<match>") -> MatchFile:
    """Parse the lines of a match file; raises MatchParseError naming the line on any bad line."""
    info: Dict[str, str] = {}
    time_sigs: List[Tuple[int, int, int]] = []
    rows: List[tuple] = []
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
            elif head == "info(":
                m = _INFO.match(line)
                if not m:
                    raise MatchParseError("bad info line")
                key, value = m.group(1), m.group(2)
                info[key] = value
                if key == "timeSignature":
                    ts = re.match(r"\[?(\d+)/(\d+)", value)
                    if ts and not time_sigs:
                        time_sigs.append((-(10**9), int(ts.group(1)), int(ts.group(2))))
            elif head == "score" or head == "meta(":
                m = _TS_SCOREPROP.match(line) or _TS_META.match(line)
                if m:
                    time_sigs.append((int(m.group(3)), int(m.group(1)), int(m.group(2))))
                elif not (line.startswith("scoreprop(") or line.startswith("meta(")):
                    raise MatchParseError("unknown line type")
            else:
                raise MatchParseError("unknown line type")
        except MatchParseError as e:
            raise MatchParseError(f"line {lineno}: {e}: {line[:60]!r}") from None
    version = info.get("matchFileVersion", "")
    if version not in ("1.0.0", "5.0", "0.5.0"):
        raise MatchParseError(f"unsupported or missing matchFileVersion {version!r}")
    if not rows:
        raise MatchParseError("no score notes (snote lines): empty score")
    return _assemble(path, version, info, sorted(time_sigs), rows, n_ins, sustain, soft)


def _parse_snote(line: str) -> tuple:
    m = _SNOTE.match(line)
    if not m:
        raise MatchParseError("bad snote")
    anchor, step, alter, octave, measure, beat, offset, dur, onset_b, _, attrs = m.groups()
    rest = line[m.end():]
    pitch = _pitch(step, alter, octave)
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
    return base + (perf,)


def _assemble(path, version, info, time_sigs, rows, n_ins, sustain, soft) -> MatchFile:
    try:
        units = float(info.get("midiClockUnits", 480))
        rate = float(info.get("midiClockRate", 500000))
    except ValueError:
        raise MatchParseError("bad midiClockUnits/midiClockRate") from None
    if units <= 0 or rate <= 0:
        raise MatchParseError(f"absurd clock: midiClockUnits={units}, midiClockRate={rate}")
    s_per_tick = rate / units / 1e6
    n = len(rows)
    measure = np.empty(n, np.int64)
    pos_q = np.empty(n)
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
    for i, (anchor, meas, beat, offset, dur, onset_b, p, st, perf) in enumerate(rows):
        den = den_cache.get(meas)
        if den is None:
            den = den_cache[meas] = _den_at(time_sigs, meas)
        measure[i] = meas
        pos_q[i] = ((beat - 1) / den + offset) * 4.0
        onset_q[i] = onset_b * 4.0 / den
        dur_q[i] = dur * 4.0
        pitch[i], staff[i] = p, st
        if perf is not None:
            played[i] = True
            ppitch[i], onset_t[i], offset_t[i], vel[i] = perf
    grace = dur_q <= 0
    dur_q[grace] = 0.0
    anchors = [r[0] for r in rows]
    return MatchFile(
        path=path, version=version, info=info, time_sigs=time_sigs, anchor=anchors, measure=measure,
        repeat_pass=np.array([_repeat_pass(a) for a in anchors], np.int64), pos_q=pos_q, onset_q=onset_q,
        dur_q=dur_q, grace=grace, pitch=pitch, staff=staff, played=played, onset_s=onset_t * s_per_tick,
        offset_s=offset_t * s_per_tick, velocity=vel, perf_pitch=ppitch, n_insertions=n_ins,
        sustain=[(t * s_per_tick, v) for t, v in sustain], soft=[(t * s_per_tick, v) for t, v in soft],
    )


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
    return parse_lines(text.splitlines(), str(path))
