"""Score notes as plain arrays, their score tokens, and the score timeline read back from score tokens.

The timeline (:func:`score_timeline`) is the single source of truth for score time: the encoder builds
score tokens first and reads the timeline back from them, and the decoder reads the same timeline, so
the two can never disagree on a beat. Score time is in quarter notes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import vocab as V


@dataclass
class ScoreNotes:
    """Score notes in token order (bar, position, pitch). Positions and durations in quarter notes."""

    bar: np.ndarray  # int, 0-based bar index in performance order
    pos_q: np.ndarray  # position in the bar
    dur_q: np.ndarray  # notated duration (0 for grace)
    grace: np.ndarray  # bool
    pitch: np.ndarray  # int
    staff: np.ndarray  # int 1/2
    bar_len_q: np.ndarray  # per bar: actual length in quarters (distance to the next bar's start)
    bar_ts: List[Tuple[int, int]]  # per bar: time signature (numerator, denominator)
    # per note (token order), optional MusicXML markings: (group tokens, note tokens), see musicxml.py
    marks: Optional[List[Tuple[Tuple[str, ...], Tuple[str, ...]]]] = None

    def __len__(self) -> int:
        return len(self.pitch)


def sort_order(bar: np.ndarray, pos_q: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Token order: bar, then quantised position, then pitch (low to high)."""
    pos_grid = np.array([V.quantise_pos(p) for p in pos_q])
    return np.lexsort((pitch, pos_grid, bar))


def nominal_bar_len_q(ts: Tuple[int, int]) -> float:
    return ts[0] * 4.0 / ts[1]


def score_tokens(notes: ScoreNotes, prefix: Sequence[str] = ()) -> List[str]:
    """Score token stream: prefix, then per bar Bar [TimeSig] [BarLen]; per onset group Pos; per note
    Pitch Dur Staff."""
    out = list(prefix)
    current_ts: Optional[Tuple[int, int]] = None
    n_bars = len(notes.bar_len_q)
    idx_by_bar: Dict[int, List[int]] = {}
    for i, b in enumerate(notes.bar):
        idx_by_bar.setdefault(int(b), []).append(i)
    for b in range(n_bars):
        out.append(V.BAR_TOKEN)
        ts = notes.bar_ts[b]
        if ts != current_ts and f"{ts[0]}/{ts[1]}" in V.TIME_SIGS:
            out.append(V.tok(V.TIME_SIG, f"{ts[0]}/{ts[1]}"))
            current_ts = ts
        length = int(round(notes.bar_len_q[b] * V.GRID))
        nominal = int(round(nominal_bar_len_q(current_ts or (4, 4)) * V.GRID))
        if length != nominal:
            out.append(V.tok(V.BAR_LEN, min(max(length, 1), V.MAX_BAR_LEN)))
        groups: Dict[int, List[int]] = {}
        for i in idx_by_bar.get(b, []):
            groups.setdefault(V.quantise_pos(notes.pos_q[i]), []).append(i)
        for pos, members in groups.items():
            out.append(V.tok(V.POS, pos))
            if notes.marks is not None:
                out += _group_marks(notes.marks, members)
            for i in members:
                out.append(V.tok(V.PITCH, int(notes.pitch[i])))
                out.append(V.tok(V.DUR, V.quantise_dur(notes.dur_q[i], bool(notes.grace[i]))))
                out.append(V.tok(V.STAFF, int(notes.staff[i]) if notes.staff[i] in V.STAFFS else 1))
                if notes.marks is not None:
                    out += list(notes.marks[i][1])
    return out


def _group_marks(marks, members: List[int]) -> List[str]:
    """Union of the group markings of a group's notes, in canonical (vocabulary) order."""
    found = {t for i in members for t in marks[i][0]}
    return sorted(found, key=lambda t: V.MARKING_RANK.get(t, len(V.MARKING_RANK)))


_MARKING_TYPES = frozenset(V.GROUP_MARKING_TYPES + V.NOTE_MARKING_TYPES)


@dataclass
class Timeline:
    """The score read back from tokens: per note and per onset group, in token order."""

    prefix: List[str]
    n_bars: int
    note_group: np.ndarray  # int, onset group of each note
    note_pitch: np.ndarray
    note_dur_q: np.ndarray  # notated duration in quarters (grace: 0)
    note_staff: np.ndarray
    group_q: np.ndarray  # score onset of each group, quarters from the first bar's start
    group_bar: np.ndarray  # bar of each group

    @property
    def n_groups(self) -> int:
        return len(self.group_q)

    @property
    def n_notes(self) -> int:
        return len(self.note_pitch)


def score_timeline(tokens: Sequence[str]) -> Timeline:
    """Parse score tokens into the timeline. Raises ValueError on a malformed stream."""
    prefix: List[str] = []
    bar = -1
    bar_start = 0.0
    bar_len = 4.0
    ts = (4, 4)
    groups_q: List[float] = []
    groups_bar: List[int] = []
    n_group, n_pitch, n_dur, n_staff = [], [], [], []
    for t in tokens:
        type_, value = V.parse(t)
        if type_ == V.BAR:
            if bar >= 0:
                bar_start += bar_len
            bar += 1
            bar_len = nominal_bar_len_q(ts)
        elif bar < 0:
            prefix.append(t)
        elif type_ == V.TIME_SIG:
            num, den = value.split("/")
            ts = (int(num), int(den))
            bar_len = nominal_bar_len_q(ts)
        elif type_ == V.BAR_LEN:
            bar_len = int(value) / V.GRID
        elif type_ == V.POS:
            groups_q.append(bar_start + int(value) / V.GRID)
            groups_bar.append(bar)
        elif type_ == V.PITCH:
            if not groups_q or groups_bar[-1] != bar:
                raise ValueError("Pitch before any Pos in its bar")
            n_group.append(len(groups_q) - 1)
            n_pitch.append(int(value))
        elif type_ == V.DUR:
            n_dur.append(int(value) / V.GRID)
        elif type_ == V.STAFF:
            n_staff.append(int(value))
        elif type_ in _MARKING_TYPES:
            continue  # markings carry no time
        else:
            raise ValueError(f"unexpected score token {t!r}")
    if not (len(n_pitch) == len(n_dur) == len(n_staff)):
        raise ValueError("each note needs Pitch, Dur and Staff")
    return Timeline(prefix=prefix, n_bars=bar + 1, note_group=np.array(n_group, np.int64),
                    note_pitch=np.array(n_pitch, np.int64), note_dur_q=np.array(n_dur),
                    note_staff=np.array(n_staff, np.int64), group_q=np.array(groups_q),
                    group_bar=np.array(groups_bar, np.int64))
