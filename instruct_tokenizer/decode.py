"""Score + performance tokens -> performed notes and pedal -> performance MIDI (miditoolkit).

The inverse of :mod:`instruct_tokenizer.encode`; times in seconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import vocab as V
from .encode import ORIGIN_S, SOFT_SLOTS, SUS_SLOTS, nominal_q
from .score import Timeline, bar_notated_period_s, score_timeline

TICKS_PER_BEAT = 480
MIDI_TEMPO_BPM = 120.0  # MIDI files are written at 120 BPM: 1 tick = 1/960 s
VEL_DITHER_SEED = 0  # fixed: decoding the same tokens always gives the same velocities


class DecodeError(ValueError):
    """Performance tokens that do not fit the score's grammar."""


@dataclass
class Performance:
    """Decoded notes in score token order (deleted notes have played=False)."""

    pitch: np.ndarray
    onset_s: np.ndarray
    offset_s: np.ndarray
    velocity: np.ndarray
    played: np.ndarray
    group_grid_s: np.ndarray  # decoded grid time per onset group
    group_period_s: np.ndarray  # decoded beat period (s per quarter) per onset group
    timeline: Timeline
    sustain: List[Tuple[float, bool]] = field(default_factory=list)  # (time s, pedal down?)
    soft: List[Tuple[float, bool]] = field(default_factory=list)


def _expect(tokens: Sequence[str], i: int, type_: str) -> str:
    if i >= len(tokens):
        raise DecodeError(f"performance ends at position {i}, expected {type_}")
    t, value = V.parse(tokens[i])
    if t != type_:
        raise DecodeError(f"position {i}: expected {type_}, got {tokens[i]!r}")
    return value


def tempo_reading(score_tokens: Sequence[str], perf_tokens: Sequence[str], tl: Timeline):
    """(tempo type, position of the first bar token, per-group beat period scale) of a performance
    stream: absolute (``Tempo``, 0, scale 1) or relative (a ``TempoLevel`` first: ``TempoRel``, 1, per
    group the notated beat period of its bar, 60 / ``QPM`` of the score tokens, times the level)."""
    if perf_tokens and V.parse(perf_tokens[0])[0] == V.TEMPO_LEVEL:
        level = V.tempo_level_factor(int(V.parse(perf_tokens[0])[1]))
        notated = bar_notated_period_s(score_tokens)[tl.group_bar] if tl.n_groups else np.zeros(0)
        return V.TEMPO_REL, 1, (notated * level).tolist()
    return V.TEMPO, 0, None


def decode_performance(score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Performance:
    """Decode performance tokens against the score tokens they were generated for: absolute (``Tempo``
    per onset group) or relative (``TempoLevel`` first, then ``TempoRel``: the beat period is the
    notated period of the group's bar (60 / ``QPM`` in the score tokens, 120 where none) x level x
    ratio)."""
    tl = score_timeline(score_tokens)
    tempo_type, pos, scale = tempo_reading(score_tokens, perf_tokens, tl)
    n = tl.n_notes
    onset, offset = np.zeros(n), np.zeros(n)
    velocity, played = np.zeros(n, np.int64), np.zeros(n, bool)
    # A Vel bin holds VEL_STEP MIDI velocities; always decoding the same one would leave every other
    # velocity unused (a comb-shaped histogram). Pick one per note, uniformly and reproducibly.
    vel_offset = np.random.default_rng(VEL_DITHER_SEED).integers(0, V.VEL_STEP, n)
    grid, periods = np.zeros(tl.n_groups), np.zeros(tl.n_groups)
    sus_changes: List[float] = []
    soft_changes: List[float] = []
    notes_of_group: List[List[int]] = [[] for _ in range(tl.n_groups)]
    for i, g in enumerate(tl.note_group):
        notes_of_group[g].append(i)
    bar = -1
    for g in range(tl.n_groups):
        while bar < tl.group_bar[g]:
            _expect(perf_tokens, pos, V.BAR)
            pos, bar = pos + 1, bar + 1
        value = int(_expect(perf_tokens, pos, tempo_type))
        period = V.tempo_value(value) if scale is None else V.tempo_rel_ratio(value) * scale[g]
        pos += 1
        if g == 0:
            grid[g] = ORIGIN_S
        else:
            grid[g] = grid[g - 1] + max(tl.group_q[g] - tl.group_q[g - 1], 1.0 / V.GRID) * period
        periods[g] = period
        for kind, slots, sink in ((V.SUS, SUS_SLOTS, sus_changes), (V.SOFT, SOFT_SLOTS, soft_changes)):
            for _ in range(slots):
                value = _expect(perf_tokens, pos, kind)
                pos += 1
                if value != V.NONE:
                    sink.append(grid[g] + int(value) / 1000.0)
        for i in notes_of_group[g]:
            vel = _expect(perf_tokens, pos, V.VEL)
            dev_ms = int(_expect(perf_tokens, pos + 1, V.TIME))
            art = float(_expect(perf_tokens, pos + 2, V.ART))
            pos += 3
            if vel == V.DELETED:
                continue
            played[i] = True
            velocity[i] = V.vel_value(int(vel), int(vel_offset[i]))
            onset[i] = grid[g] + dev_ms / 1000.0
            offset[i] = onset[i] + (2.0 ** art) * nominal_q(tl.note_dur_q[i]) * period
    while bar < tl.n_bars - 1:
        _expect(perf_tokens, pos, V.BAR)
        pos, bar = pos + 1, bar + 1
    if pos != len(perf_tokens):
        raise DecodeError(f"{len(perf_tokens) - pos} tokens left after the last score note")
    return Performance(pitch=tl.note_pitch, onset_s=onset, offset_s=offset, velocity=velocity, played=played,
                       group_grid_s=grid, group_period_s=periods, timeline=tl,
                       sustain=_toggles(sus_changes), soft=_toggles(soft_changes))


def performed_notes(score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Dict[str, np.ndarray]:
    """Per played note, for evaluation: ``onset_s``, ``offset_s`` (key release, s), ``pitch``,
    ``velocity`` (MIDI) and ``note_index`` (index of the score note in score-token order).
    Deleted notes are left out. Raises DecodeError when the tokens do not fit the score."""
    perf = decode_performance(score_tokens, perf_tokens)
    idx = np.nonzero(perf.played)[0]
    return {"onset_s": perf.onset_s[idx], "offset_s": perf.offset_s[idx], "pitch": perf.pitch[idx],
            "velocity": perf.velocity[idx], "note_index": idx}


def _toggles(times: List[float]) -> List[Tuple[float, bool]]:
    """Pedal change times -> (time, down) events, alternating from 'up'."""
    return [(t, k % 2 == 0) for k, t in enumerate(sorted(times))]


def _tick(t_s: float) -> int:
    return max(int(round(t_s * TICKS_PER_BEAT * MIDI_TEMPO_BPM / 60.0)), 0)


def performance_to_midi(perf: Performance):
    """A one-track piano MIDI at 120 BPM with notes, CC64 (sustain) and CC67 (soft)."""
    import miditoolkit

    midi = miditoolkit.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tempo_changes = [miditoolkit.TempoChange(MIDI_TEMPO_BPM, 0)]
    piano = miditoolkit.Instrument(program=0, is_drum=False, name="piano")
    for i in np.nonzero(perf.played)[0]:
        start = _tick(perf.onset_s[i])
        end = max(_tick(perf.offset_s[i]), start + 1)
        piano.notes.append(miditoolkit.Note(int(perf.velocity[i]), int(perf.pitch[i]), start, end))
    piano.notes.sort(key=lambda n: (n.start, n.pitch))
    for number, events in ((64, perf.sustain), (67, perf.soft)):
        for t, down in events:
            piano.control_changes.append(miditoolkit.ControlChange(number, 127 if down else 0, _tick(t)))
    piano.control_changes.sort(key=lambda c: c.time)
    midi.instruments.append(piano)
    midi.max_tick = max([n.end for n in piano.notes] + [c.time for c in piano.control_changes] + [0]) + 1
    return midi


def tokens_to_midi(score_tokens: Sequence[str], perf_tokens: Sequence[str], path: Optional[str] = None):
    """Decode tokens to a miditoolkit MidiFile; if ``path`` is given, write it atomically."""
    midi = performance_to_midi(decode_performance(score_tokens, perf_tokens))
    if path is not None:
        tmp = f"{path}.part"
        midi.dump(tmp)
        os.replace(tmp, path)
    return midi
