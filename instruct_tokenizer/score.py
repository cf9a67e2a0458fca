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
    # per bar, optional notated tempo in quarter notes per minute (a ``QPM`` value), see vocab.quantise_qpm
    bar_qpm: Optional[List[int]] = None

    def __len__(self) -> int:
        return len(self.pitch)


def quantise_pos_array(pos_q: np.ndarray) -> np.ndarray:
    """Vectorised :func:`vocab.quantise_pos` (numpy rounds half to even, as Python's round does)."""
    pos = np.asarray(pos_q, dtype=np.float64)
    return np.clip(np.round(pos * V.GRID), 0, V.MAX_POS).astype(np.int64)


_DUR_STEPS = np.array(V.duration_values()[1:], dtype=np.float64)


def quantise_dur_array(dur_q: np.ndarray, grace: np.ndarray) -> np.ndarray:
    """Vectorised :func:`vocab.quantise_dur` (nearest value, ties to the lower one)."""
    steps = np.maximum(np.asarray(dur_q, dtype=np.float64) * V.GRID, 1.0)
    out = _DUR_STEPS[V.nearest_index(_DUR_STEPS, steps)].astype(np.int64)
    return np.where(np.asarray(grace, bool), 0, out)


def sort_order(bar: np.ndarray, pos_q: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Token order: bar, then quantised position, then pitch (low to high)."""
    pos_grid = quantise_pos_array(pos_q) if len(pos_q) else np.array([])
    return np.lexsort((pitch, pos_grid, bar))


_PITCH_TOKENS = [V.tok(V.PITCH, p) for p in range(128)]
_POS_TOKENS = [V.tok(V.POS, p) for p in range(V.MAX_POS + 1)]
_DUR_TOKENS = {d: V.tok(V.DUR, d) for d in V.duration_values()}
_STAFF_TOKENS = {s: V.tok(V.STAFF, s) for s in V.STAFFS}


def nominal_bar_len_q(ts: Tuple[int, int]) -> float:
    return ts[0] * 4.0 / ts[1]


def score_tokens(notes: ScoreNotes, prefix: Sequence[str] = ()) -> List[str]:
    """Score token stream: prefix, then per bar Bar [TimeSig] [BarLen] [QPM]; per onset group Pos
    [group markings]; per note Pitch Dur Staff [note markings]."""
    fast = _score_tokens_fast(notes, prefix)
    if fast is not None:
        return fast
    out = list(prefix)
    current_ts: Optional[Tuple[int, int]] = None
    n_bars = len(notes.bar_len_q)
    idx_by_bar: Dict[int, List[int]] = {}
    for i, b in enumerate(notes.bar):
        idx_by_bar.setdefault(int(b), []).append(i)
    for b in range(n_bars):
        header, current_ts = _bar_header(notes, b, current_ts)
        out += header
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


def _bar_header(notes: ScoreNotes, b: int, current_ts):
    """Bar [TimeSig] [BarLen] [QPM] of bar ``b`` and the time signature in force after it. ``QPM`` is in
    every bar header (when the notes carry a notated tempo), so that every segment starts with it."""
    out = [V.BAR_TOKEN]
    ts = notes.bar_ts[b]
    if ts != current_ts and f"{ts[0]}/{ts[1]}" in V.TIME_SIGS:
        out.append(V.tok(V.TIME_SIG, f"{ts[0]}/{ts[1]}"))
        current_ts = ts
    length = int(round(notes.bar_len_q[b] * V.GRID))
    nominal = int(round(nominal_bar_len_q(current_ts or (4, 4)) * V.GRID))
    if length != nominal:
        out.append(V.tok(V.BAR_LEN, min(max(length, 1), V.MAX_BAR_LEN)))
    if notes.bar_qpm is not None:
        out.append(V.tok(V.QPM, notes.bar_qpm[b]))
    return out, current_ts


def _score_tokens_fast(notes: ScoreNotes, prefix: Sequence[str]) -> Optional[List[str]]:
    """:func:`score_tokens` for notes in token order without markings (vectorised), else None."""
    n = len(notes)
    n_bars = len(notes.bar_len_q)
    if notes.marks is not None or n == 0:
        return None
    bar = np.asarray(notes.bar, dtype=np.int64)
    pos = quantise_pos_array(notes.pos_q)
    pitch = np.asarray(notes.pitch, dtype=np.int64)
    if bar[0] < 0 or bar[-1] >= n_bars or pitch.min() < 0 or pitch.max() > 127:
        return None
    d_bar = np.diff(bar)
    if np.any(d_bar < 0) or np.any((d_bar == 0) & (np.diff(pos) < 0)):
        return None  # not in token order: the general path keeps its grouping
    dur = quantise_dur_array(notes.dur_q, notes.grace)
    staff = np.where(np.isin(notes.staff, V.STAFFS), notes.staff, 1)
    flat: List[str] = [""] * (3 * n)
    flat[0::3] = [_PITCH_TOKENS[p] for p in pitch.tolist()]
    flat[1::3] = [_DUR_TOKENS[d] for d in dur.tolist()]
    flat[2::3] = [_STAFF_TOKENS[s] for s in staff.tolist()]
    new_group = np.ones(n, bool)
    new_group[1:] = (d_bar != 0) | (np.diff(pos) != 0)
    g_start = np.nonzero(new_group)[0]
    g_end = np.append(g_start[1:], n)
    g_bar = bar[g_start].tolist()
    g_pos = pos[g_start].tolist()
    g_start3 = (3 * g_start).tolist()
    g_end3 = (3 * g_end).tolist()
    out = list(prefix)
    current_ts: Optional[Tuple[int, int]] = None
    g = 0
    n_groups = len(g_bar)
    for b in range(n_bars):
        header, current_ts = _bar_header(notes, b, current_ts)
        out += header
        while g < n_groups and g_bar[g] == b:
            out.append(_POS_TOKENS[g_pos[g]])
            out += flat[g_start3[g]:g_end3[g]]
            g += 1
    return out


def _group_marks(marks, members: List[int]) -> List[str]:
    """Union of the group markings of a group's notes, in canonical (vocabulary) order."""
    found = {t for i in members for t in marks[i][0]}
    return sorted(found, key=lambda t: V.MARKING_RANK.get(t, len(V.MARKING_RANK)))


_TIMELESS_TYPES = frozenset(V.GROUP_MARKING_TYPES + V.NOTE_MARKING_TYPES + (V.QPM, V.AFTER)
                            + V.MARKING_STATE_TYPES)
_HEADER_TYPES = frozenset((V.TIME_SIG, V.BAR_LEN, V.QPM))


def with_marking_state(tokens: Sequence[str], after_fermata: bool = True) -> List[str]:
    """Score tokens with the marking state in force at each bar start added to every bar header (after
    ``TimeSig``/``BarLen``/``QPM``), so that every bar (and every segment) sees the dynamics and tempo
    directions given bars before it, which the bar attention would otherwise not reach:

    - ``DynLevel_x``: the last dynamic level (``Dyn`` pppp..ffff; ``fp`` leaves p); none before the first;
    - ``WedgeOpen_cresc|dim``: a wedge started and not yet closed (by ``Wedge_end``, a dynamic level or
      another wedge);
    - ``TempoMode_rit|accel``: a ritardando/accelerando not yet closed (by ``atempo`` or a constant
      tempo word);
    - ``After_fermata`` (``after_fermata``), right after the ``Pos`` of the onset group that follows a
      group with a ``Mark_fermata`` note: the held fermata is the performed gap before that onset, which
      its ``Tempo`` token encodes; the fermata itself sits on earlier notes, often in an earlier bar.
      (False: the marking state of models trained before it existed.)

    A pure function of the tokens (existing state tokens are recomputed, so applying it twice changes
    nothing); a score without markings gets no state token. Example, two bars::

        Bar_None Pos_0 Dyn_p Wedge_cresc Pitch_60 ...  Bar_None Pos_0 ...
     -> Bar_None Pos_0 Dyn_p Wedge_cresc Pitch_60 ...  Bar_None DynLevel_p WedgeOpen_cresc Pos_0 ...
    """
    level: Optional[str] = None
    wedge: Optional[str] = None
    mode: Optional[str] = None
    out: List[str] = []
    in_header = False
    fermata_here = False  # a Mark_fermata in the current onset group
    for t in tokens:
        type_, value = _parse_cached(t)
        if type_ in V.MARKING_STATE or type_ == V.AFTER:
            continue
        if in_header and type_ not in _HEADER_TYPES:
            out += _state_tokens(level, wedge, mode)
            in_header = False
        out.append(t)
        if type_ == V.POS:
            if fermata_here and after_fermata:  # the group before this one held a fermata
                out.append(V.AFTER_FERMATA)
            fermata_here = False
        elif t == V.FERMATA_MARK:
            fermata_here = True
        elif t == V.BAR_TOKEN:
            in_header = True
        elif type_ == V.DYN and (value in V.DYN_VALUES or value == "fp"):
            level, wedge = ("p" if value == "fp" else value), None
        elif type_ == V.WEDGE:
            wedge = None if value == "end" else value
        elif type_ == V.TEMPO_WORD and value != "other":
            mode = value if value in V.MARKING_STATE[V.TEMPO_MODE] else None
    if in_header:
        out += _state_tokens(level, wedge, mode)
    return out


def _state_tokens(level: Optional[str], wedge: Optional[str], mode: Optional[str]) -> List[str]:
    out = []
    for type_, value in ((V.DYN_LEVEL, level), (V.WEDGE_OPEN, wedge), (V.TEMPO_MODE, mode)):
        if value is not None:
            out.append(V.tok(type_, value))
    return out


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


_PARSED: Dict[str, Tuple[str, str]] = {}


def _parse_cached(t: str) -> Tuple[str, str]:
    r = _PARSED.get(t)
    if r is None:
        r = V.parse(t)
        if len(_PARSED) < 100000:
            _PARSED[t] = r
    return r


# score_timeline reads each token through a small cache: token -> (kind, value already converted)
_PITCH_K, _DUR_K, _STAFF_K, _POS_K, _BAR_K, _TS_K, _BAR_LEN_K, _TIMELESS_K, _OTHER_K = range(9)
_TIMELINE_ENTRY: Dict[str, Tuple[int, object]] = {}


def _timeline_entry(t: str) -> Tuple[int, object]:
    """(kind, value) of a score token for :func:`score_timeline`: Pitch/Staff as int, Dur/Pos/BarLen in
    quarters, TimeSig as (num, den); cached."""
    type_, value = V.parse(t)
    if type_ == V.PITCH:
        r = (_PITCH_K, int(value))
    elif type_ == V.DUR:
        r = (_DUR_K, int(value) / V.GRID)
    elif type_ == V.STAFF:
        r = (_STAFF_K, int(value))
    elif type_ == V.POS:
        r = (_POS_K, int(value) / V.GRID)
    elif type_ == V.BAR:
        r = (_BAR_K, None)
    elif type_ == V.TIME_SIG:
        num, den = value.split("/")
        r = (_TS_K, (int(num), int(den)))
    elif type_ == V.BAR_LEN:
        r = (_BAR_LEN_K, int(value) / V.GRID)
    elif type_ in _TIMELESS_TYPES:
        r = (_TIMELESS_K, None)  # markings and the notated tempo carry no score time
    else:
        r = (_OTHER_K, None)
    if len(_TIMELINE_ENTRY) < 100000:
        _TIMELINE_ENTRY[t] = r
    return r


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
    cache_get = _TIMELINE_ENTRY.get
    group_bar = -2  # bar of the last onset group
    for t in tokens:
        entry = cache_get(t) or _timeline_entry(t)
        kind = entry[0]
        if bar < 0 and kind != _BAR_K:
            prefix.append(t)
        elif kind == _PITCH_K:
            if group_bar != bar:
                raise ValueError("Pitch before any Pos in its bar")
            n_group.append(len(groups_q) - 1)
            n_pitch.append(entry[1])
        elif kind == _DUR_K:
            n_dur.append(entry[1])
        elif kind == _STAFF_K:
            n_staff.append(entry[1])
        elif kind == _POS_K:
            groups_q.append(bar_start + entry[1])
            groups_bar.append(bar)
            group_bar = bar
        elif kind == _BAR_K:
            if bar >= 0:
                bar_start += bar_len
            bar += 1
            bar_len = nominal_bar_len_q(ts)
        elif kind == _TS_K:
            ts = entry[1]
            bar_len = nominal_bar_len_q(ts)
        elif kind == _BAR_LEN_K:
            bar_len = entry[1]
        elif kind == _OTHER_K:
            raise ValueError(f"unexpected score token {t!r}")
    if not (len(n_pitch) == len(n_dur) == len(n_staff)):
        raise ValueError("each note needs Pitch, Dur and Staff")
    return Timeline(prefix=prefix, n_bars=bar + 1, note_group=np.array(n_group, np.int64),
                    note_pitch=np.array(n_pitch, np.int64), note_dur_q=np.array(n_dur),
                    note_staff=np.array(n_staff, np.int64), group_q=np.array(groups_q),
                    group_bar=np.array(groups_bar, np.int64))


def without_markings(tokens: Sequence[str]) -> List[str]:
    """The score tokens without their marking tokens (``V.MARKING_TYPES``), the notated lengths and tempo
    (``QPM``) kept: a score MIDI of the same score as far as it carries no markings (a notation program's
    export also writes staccato notes shorter: :func:`as_score_midi`)."""
    return [t for t in tokens if _parse_cached(t)[0] not in V.MARKING_TYPES]


# What a score without markings is taken to be (fit_plan.py --plain-view / --plain-offsets, instruct-eval
# --plain-scores): the MusicXML's notated lengths with its markings dropped, or what a notation program's
# score MIDI export gives (staccato notes written shorter)
PLAIN_VIEWS = ("markings-dropped", "score-midi", "score-midi-dynamics")


def plain_view(tokens: Sequence[str], view: str) -> List[str]:
    """The score tokens without markings, in ``view`` (:data:`PLAIN_VIEWS`): ``markings-dropped``
    (:func:`without_markings`) or ``score-midi`` (:func:`as_score_midi`). Raises ValueError for another
    view."""
    if view == "markings-dropped":
        return without_markings(tokens)
    if view == "score-midi":
        return as_score_midi(tokens)
    if view == "score-midi-dynamics":
        return as_score_midi_with_dynamics(tokens)
    raise ValueError(f"unknown plain view {view!r} (one of {', '.join(PLAIN_VIEWS)})")


# What a notation program's MIDI export plays for a note with this mark, as a share of its notated length
# (MuseScore, whose exports (n)ASAP's and the benchmark's score MIDI files are: a staccato note half of it,
# a staccatissimo note a third; docs/experiments.md section 23). The first that applies wins.
PLAYBACK_LENGTH_SHARE = (("staccatissimo", 1.0 / 3.0), ("staccato", 0.5))


def as_score_midi(tokens: Sequence[str]) -> List[str]:
    """The score tokens a score MIDI exported by a notation program gives for the same score: no marking
    tokens (:func:`without_markings`), and each staccato or staccatissimo note held for the share of its
    notated length the program plays (:data:`PLAYBACK_LENGTH_SHARE`; the notes of one staff at one onset
    with one length share a chord's marks, as the program plays a chord's articulation on all of them;
    grace notes untouched). ``without_markings`` keeps the notated lengths, which no such file has: of the
    benchmark's score MIDI notes 13.8 % are written shorter or longer than in the MusicXML (in one piece,
    Chopin's op. 25/4, 71 %), mostly a half or a third; this view reproduces 96.7 % of their lengths."""
    notes: List[dict] = []  # per note: its Dur token's index, length (grid steps), onset group, staff, marks
    group = -1
    for i, t in enumerate(tokens):
        kind, value = _parse_cached(t)
        if kind == V.POS:
            group += 1
        elif kind == V.PITCH:
            notes.append({"dur_at": None, "dur": 0, "group": group, "staff": None, "marks": set()})
        elif kind == V.DUR and notes and notes[-1]["dur_at"] is None:
            notes[-1].update(dur_at=i, dur=int(value))
        elif kind == V.STAFF and notes and notes[-1]["staff"] is None:
            notes[-1]["staff"] = value
        elif kind == V.MARK and notes:
            notes[-1]["marks"].add(value)
    chord_marks: Dict[tuple, set] = {}
    for n in notes:
        chord_marks.setdefault((n["group"], n["staff"], n["dur"]), set()).update(n["marks"])
    out = list(tokens)
    for n in notes:
        marks = chord_marks[(n["group"], n["staff"], n["dur"])]
        share = next((s for mark, s in PLAYBACK_LENGTH_SHARE if mark in marks), None)
        if share is not None and n["dur"] > 0 and n["dur_at"] is not None:
            out[n["dur_at"]] = V.tok(V.DUR, V.quantise_dur(n["dur"] * share / V.GRID, grace=False))
    return without_markings(out)


def as_score_midi_with_dynamics(tokens: Sequence[str]) -> List[str]:
    """:func:`as_score_midi`, with the dynamics such an export plays as note velocities read back as
    ``instruct-render`` reads a score MIDI's (``scorefile.midi_dynamics``): each note played at the
    velocity of the dynamic level in force (``vocab.EXPORT_DYN_VELOCITY``; mf before the first, pppp and
    ffff as ppp and fff; sf, fp and other dynamics change no level), and a ``Dyn`` token after the ``Pos``
    of each onset group where the level read back changes. Wedges, words and note marks stay dropped."""
    from .scorefile import midi_dynamics

    velocity_of = dict(V.EXPORT_DYN_VELOCITY)
    velocity_of.update({"pppp": velocity_of["ppp"], "ffff": velocity_of["fff"]})
    level, group = "mf", -1
    note_group, note_velocity = [], []
    for t in tokens:
        kind, value = _parse_cached(t)
        if kind == V.POS:
            group += 1
        elif kind == V.DYN and value in velocity_of:
            level = value
        elif kind == V.PITCH:
            note_group.append(group)
            note_velocity.append(velocity_of[level])
    marks = midi_dynamics(np.array(note_group, np.float64), np.array(note_velocity)) if note_group else None
    stated = {g: m[0] for g, m in zip(note_group, marks or []) if m[0]}  # onset group -> its Dyn token
    out, group = [], -1
    for t in as_score_midi(tokens):
        out.append(t)
        if _parse_cached(t)[0] == V.POS:
            group += 1
            out += list(stated.get(group, ()))
    return out


def dynamics_only(tokens: Sequence[str]) -> bool:
    """Whether the score tokens' only markings are dynamic levels (``Dyn`` of ``vocab.DYN_VALUES``): what a
    score MIDI's velocities state (``scorefile.midi_dynamics``), with no word, slur, wedge or note mark."""
    kinds = [_parse_cached(t) for t in tokens]
    marks = [(k, v) for k, v in kinds if k in V.MARKING_TYPES]
    return bool(marks) and all(k == V.DYN and v in V.DYN_VALUES for k, v in marks)


def has_markings(tokens: Sequence[str]) -> bool:
    """Whether the score tokens hold any marking (a MusicXML's dynamics, tempo words, slurs, ...)."""
    return any(_parse_cached(t)[0] in V.MARKING_TYPES for t in tokens)


def bar_notated_period_s(tokens: Sequence[str]) -> np.ndarray:
    """Per bar of score tokens, the notated beat period in seconds per quarter note (60 / ``QPM``): the
    ``QPM`` token in the bar's header, else the previous bar's (``vocab.DEFAULT_QPM`` before the first
    one, and for scores without ``QPM`` tokens). The reference of the relative tempo encoding
    (``--relative-tempo``), read from the tokens alone, so it does not matter where the ``QPM`` came from."""
    out: List[float] = []
    period = 60.0 / V.DEFAULT_QPM
    for t in tokens:
        if t == V.BAR_TOKEN:
            out.append(period)
        elif out and t.startswith(_QPM_HEAD):
            period = out[-1] = 60.0 / float(V.parse(t)[1])
    return np.array(out, dtype=np.float64)


_QPM_HEAD = V.QPM + "_"


def bar_qpm_from_changes(bar_starts_q: Sequence[float], changes: Sequence[Tuple[float, float]]) -> List[int]:
    """Notated tempo in force at each bar start, as ``QPM`` values. ``changes``: (time in quarters,
    quarter notes per minute), any order; before the first change (or with none) the tempo is
    ``vocab.DEFAULT_QPM``. A change inside a bar applies from the next bar."""
    ordered = sorted(changes)
    times = [t for t, _ in ordered]
    out = []
    for start in bar_starts_q:
        i = int(np.searchsorted(times, start + 1e-6, side="right")) - 1
        out.append(V.quantise_qpm(ordered[i][1] if i >= 0 else V.DEFAULT_QPM))
    return out


LONG_BAR_SPLIT_Q = 4.0  # quarters: a measure longer than a bar's positions reach is read as bars of this length


@dataclass
class SplitBars:
    """Bars after :func:`split_long_bars`: per note ``bar`` and ``pos_q`` (quarters); per bar ``bar_len_q``,
    ``bar_ts``, ``source`` (the index of the bar it was cut from) and ``offset_q`` (its start, in
    quarters after that bar's start)."""

    bar: np.ndarray
    pos_q: np.ndarray
    bar_len_q: np.ndarray
    bar_ts: List[Tuple[int, int]]
    source: np.ndarray
    offset_q: np.ndarray


def split_long_bars(bar: np.ndarray, pos_q: np.ndarray, bar_len_q: np.ndarray,
                    bar_ts: Sequence[Tuple[int, int]]) -> SplitBars:
    """Bars that run past the positions a bar can hold (``vocab.MAX_POS``: 16 quarters; a cadenza or
    free-meter passage written as one measure) cut into bars of ``LONG_BAR_SPLIT_Q`` quarters read as
    4/4, as the score MIDI reader reads such a measure, so that no two onsets collapse onto the bar's
    last position (where the unison rule would strike all but one of a pitch's notes once). A stretch
    of such bars without notes joins the bar before it (a broken file's empty hundreds of quarters make
    one long bar, not a hundred). ``bar`` (N,) int and ``pos_q`` (N,) quarters per note; ``bar_len_q``
    (B,) quarters and ``bar_ts`` per bar. Other bars are left as they are (returned unchanged when no bar
    is long)."""
    bar = np.asarray(bar, dtype=np.int64)
    pos_q = np.asarray(pos_q, dtype=np.float64)
    lengths = np.asarray(bar_len_q, dtype=np.float64)
    n_bars = len(lengths)
    pos_grid = np.round(pos_q * V.GRID)  # as quantise_pos rounds
    last = np.full(n_bars, -1.0)
    np.maximum.at(last, bar, pos_grid)
    long = (lengths > (V.MAX_POS + 1) / V.GRID + 1e-9) | (last > V.MAX_POS)
    if not long.any():
        return SplitBars(bar, pos_q, lengths, list(bar_ts), np.arange(n_bars), np.zeros(n_bars))
    step_grid = LONG_BAR_SPLIT_Q * V.GRID
    chunk = np.where(long[bar], np.floor(np.maximum(pos_grid, 0) / step_grid), 0).astype(np.int64)  # (N,)
    new_len, new_ts, source, offset = [], [], [], []
    first_of = {}  # (old bar, chunk) -> new bar
    for b in range(n_bars):
        if not long[b]:
            first_of[(b, 0)] = len(new_len)
            new_len.append(lengths[b]), new_ts.append(tuple(bar_ts[b])), source.append(b), offset.append(0.0)
            continue
        chunks = sorted({0, *chunk[bar == b].tolist()})
        last_start = chunks[-1] * LONG_BAR_SPLIT_Q
        last_end = lengths[b] if lengths[b] > last_start else last_start + LONG_BAR_SPLIT_Q  # notes past its end
        ends = [c * LONG_BAR_SPLIT_Q for c in chunks[1:]] + [last_end]
        for c, end in zip(chunks, ends):
            first_of[(b, c)] = len(new_len)
            new_len.append(end - c * LONG_BAR_SPLIT_Q), new_ts.append((4, 4)), source.append(b)
            offset.append(c * LONG_BAR_SPLIT_Q)
    new_bar = np.array([first_of[(b, c)] for b, c in zip(bar.tolist(), chunk.tolist())], dtype=np.int64)
    return SplitBars(new_bar, pos_q - chunk * LONG_BAR_SPLIT_Q, np.array(new_len), new_ts,
                     np.array(source, dtype=np.int64), np.array(offset))
