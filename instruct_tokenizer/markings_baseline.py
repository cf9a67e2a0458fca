"""The markings baseline: the simplest rule-based renderer, the one to beat on per-note correlations.

Score tokens with MusicXML markings (``Dyn``, ``Wedge``, ``TempoWord`` after ``Pos``; ``Mark`` after
``Staff``; see :mod:`instruct_tokenizer.musicxml`) -> performance tokens of the same grammar as a model's
output (so it is decoded, written to MIDI and measured exactly like one). Rules (docs/evaluation.md):

- **velocity** from the last dynamic: pppp 20, ppp 28, pp 36, p 48, mp 60, mf 72, f 84, ff 96, fff 106,
  ffff 114 (64 before the first one); ``sf`` +15 on its onset group only, ``fp`` f on its group then p.
  A crescendo/diminuendo wedge ramps linearly over its span (score quarters) from the current level to
  the next dynamic after its start when that lies in the wedge's direction (reached at the wedge's end
  and held); otherwise it is a local hairpin: one step (12) up/down over its span, back to the
  prevailing level after its end. A wedge ends at its end mark, the next dynamic or the next wedge
  (4 quarters when none follows).
  ``accent`` +10, ``marcato`` +15 on that note;
- **tempo**: a constant beat period, from the first metronome mark of the MusicXML where one is given
  (``qpm``), else from the tempo word class: slow (grave .. adagio) 1.0 s per beat, moderate (andante,
  moderato, allegretto) 0.7, fast (allegro .. presto) 0.43; the beat is a dotted quarter in 6/8, 9/8,
  12/8 and a half in x/2, a quarter otherwise; 0.5 s per quarter (120 BPM) when there is no tempo
  marking at all. Later tempo words scale the period by the ratio of their class to the first class;
  ``rit``/``accel`` ramp the period to x1.25 / x0.8 over the next 4 quarters and hold it until
  ``atempo`` or the next tempo word; ``atempo`` returns to the last constant tempo; a ``fermata`` doubles
  the gap after its onset group;
- **timing** 0 (every note on the grid), **articulation** the notated duration (log2 ratio 0), staccato
  x0.5, staccatissimo x0.33, tenuto x1; no pedal.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence

import numpy as np

from . import vocab as V
from .grammar import note_values_at, target_slots

DYN_VELOCITY = {"pppp": 20, "ppp": 28, "pp": 36, "p": 48, "mp": 60, "mf": 72, "f": 84, "ff": 96, "fff": 106,
                "ffff": 114}
DEFAULT_VELOCITY = 64
SF_BOOST = 15
WEDGE_STEP = 12
WEDGE_DEFAULT_Q = 4.0
ACCENT_BOOST = {"accent": 10, "marcato": 15}
TEMPO_CLASS_S = {"slow": 1.0, "moderate": 0.7, "fast": 0.43}  # seconds per beat
DEFAULT_PERIOD_S = 0.5  # seconds per quarter (120 BPM) when nothing is marked
RAMP_Q = 4.0
RIT_FACTOR, ACCEL_FACTOR = 1.25, 0.8
FERMATA_FACTOR = 2.0
ARTICULATION = {"staccato": math.log2(0.5), "staccatissimo": math.log2(0.33), "tenuto": 0.0}


def beat_quarters(ts) -> float:
    """The beat of a time signature in quarters: dotted quarter in compound x/8, half in x/2, else quarter."""
    num, den = ts
    if den == 8 and num in (6, 9, 12):
        return 1.5
    if den == 2:
        return 2.0
    return 1.0


def _parse(score_tokens: Sequence[str]):
    """Per onset group: (score q, group marking values by type, time signature); per note: (group,
    note mark values). Uses :func:`score.score_timeline` for positions."""
    from .score import score_timeline

    tl = score_timeline(score_tokens)
    group_marks: List[dict] = [dict() for _ in range(tl.n_groups)]
    note_marks: List[set] = [set() for _ in range(tl.n_notes)]
    group_ts = [(4, 4)] * tl.n_groups
    ts, g, n, started = (4, 4), -1, -1, False
    for t in score_tokens:
        type_, _, value = t.partition("_")
        if type_ == V.BAR:
            started = True
        elif not started:
            continue
        elif type_ == V.TIME_SIG:
            a, b = value.split("/")
            ts = (int(a), int(b))
        elif type_ == V.POS:
            g += 1
            group_ts[g] = ts
        elif type_ == V.PITCH:
            n += 1
        elif type_ in V.GROUP_MARKING_TYPES and g >= 0:
            group_marks[g].setdefault(type_, []).append(value)
        elif type_ in V.NOTE_MARKING_TYPES and n >= 0:
            note_marks[n].add(value)
    return tl, group_marks, note_marks, group_ts


def _velocities(tl, group_marks) -> np.ndarray:
    """Velocity per onset group from dynamics and wedges."""
    q = tl.group_q
    ng = tl.n_groups
    dyn_at: List[Optional[int]] = [None] * ng  # level set at this group by a constant dynamic
    sf = np.zeros(ng)
    after_fp = [False] * ng
    for g, m in enumerate(group_marks):
        for v in m.get(V.DYN, []):
            if v in DYN_VELOCITY:
                dyn_at[g] = DYN_VELOCITY[v]
            elif v == "sf":
                sf[g] = SF_BOOST
            elif v == "fp":
                after_fp[g] = True
    # wedges: (start group, end q, direction)
    wedges = []
    for g, m in enumerate(group_marks):
        for v in m.get(V.WEDGE, []):
            if v in ("cresc", "dim"):
                end_q = None
                for h in range(g + 1, ng):
                    hm = group_marks[h]
                    if "end" in hm.get(V.WEDGE, []) or hm.get(V.DYN) or any(
                            x in ("cresc", "dim") for x in hm.get(V.WEDGE, [])):
                        end_q = q[h]
                        break
                if end_q is None or end_q <= q[g]:
                    end_q = q[g] + WEDGE_DEFAULT_Q
                wedges.append((g, end_q, 1 if v == "cresc" else -1))
    wedge_of = {g: (end_q, d) for g, end_q, d in wedges}
    vel = np.zeros(ng)
    level = float(DEFAULT_VELOCITY)
    ramp = None  # (start q, end q, from, to)
    for g in range(ng):
        if dyn_at[g] is not None:
            level, ramp = float(dyn_at[g]), None
        if after_fp[g]:
            level, ramp = float(DYN_VELOCITY["p"]), None
        if g in wedge_of:
            end_q, d = wedge_of[g]
            target = None
            for h in range(g + 1, ng):
                if dyn_at[h] is not None:
                    target = dyn_at[h]
                    break
            after = float(target) if target is not None else level
            if target is None or (target - level) * d <= 0:  # a local hairpin: one step, then back
                target, after = level + d * WEDGE_STEP, level
            ramp = (q[g], end_q, level, float(target), after)
        if ramp is not None:
            a, b, lo, hi, after = ramp
            frac = min(max((q[g] - a) / max(b - a, 1e-9), 0.0), 1.0)
            level_now = lo + (hi - lo) * frac
            if q[g] >= b:
                level, ramp = after, None
                level_now = after
        else:
            level_now = level
        vel[g] = (DYN_VELOCITY["f"] if after_fp[g] else level_now) + sf[g]
    return vel


def _periods(tl, group_marks, group_ts, qpm: Optional[float]) -> np.ndarray:
    """Beat period (s per quarter) per onset group from tempo words, rit/accel, fermatas and ``qpm``."""
    q = tl.group_q
    ng = tl.n_groups
    first_class = None
    for m in group_marks:
        for v in m.get(V.TEMPO_WORD, []):
            if v in TEMPO_CLASS_S:
                first_class = v
                break
        if first_class:
            break

    def class_period(v: str, g: int) -> float:
        base = TEMPO_CLASS_S[v] / beat_quarters(group_ts[g])
        if qpm:
            return 60.0 / qpm * (TEMPO_CLASS_S[v] / TEMPO_CLASS_S[first_class])
        return base

    if qpm:
        steady = 60.0 / qpm
    elif first_class is not None:
        g0 = next(g for g, m in enumerate(group_marks) if first_class in m.get(V.TEMPO_WORD, []))
        steady = class_period(first_class, g0)
    else:
        steady = DEFAULT_PERIOD_S
    period = np.zeros(ng)
    current, ramp = steady, None
    for g in range(ng):
        for v in group_marks[g].get(V.TEMPO_WORD, []):
            if v in TEMPO_CLASS_S and first_class is not None:
                steady = class_period(v, g)
                current, ramp = steady, None
            elif v == "atempo":
                current, ramp = steady, None
            elif v in ("rit", "accel"):
                ramp = (q[g], q[g] + RAMP_Q, current, current * (RIT_FACTOR if v == "rit" else ACCEL_FACTOR))
        if ramp is not None:
            a, b, lo, hi = ramp
            frac = min(max((q[g] - a) / (b - a), 0.0), 1.0)
            value = lo * (hi / lo) ** frac
            if q[g] >= b:
                current, ramp = hi, None
        else:
            value = current
        period[g] = value
    # the period of group g sets the gap from g-1 to g: a fermata on g-1 doubles it
    for g in range(1, ng):
        if group_marks[g - 1].get("_fermata"):
            period[g] *= FERMATA_FACTOR
    return period


def dynamic_levels(score_tokens: Sequence[str]) -> Optional[np.ndarray]:
    """(notes,) MIDI velocity of each score note's notated dynamic level by the velocity rules above
    (the last dynamic, wedge ramps, ``sf``/``fp``; no accents), or None when the score tokens hold no
    constant dynamic (``Dyn_p`` .. ``Dyn_ffff``; a score MIDI has none): the reference of the
    renderer's dynamics band (``--dynamics-band``)."""
    if not any(t.startswith(V.DYN + "_") and t.partition("_")[2] in DYN_VELOCITY for t in score_tokens):
        return None
    tl, group_marks, _, _ = _parse(score_tokens)
    return _velocities(tl, group_marks)[tl.note_group]


# The dynamics band's reference (museformer.decoding, --dynamics-band): the notated dynamic level by the velocity
# rules above, scaled by DYNAMICS_REF_SCALE. Human performances follow the markings' contour at about a third
# of its range: the least-squares slope of human on markings velocity, within each performance, is 0.357 over 67
# (n)ASAP training performances with MusicXML (0.358 for the 32-note windowed levels; the markings baseline's
# p-to-f step of 36 velocities is about 13 in a human performance).
DYNAMICS_REF_SCALE = 0.36


def dynamics_slot_refs(score_tokens: Sequence[str], relative: bool = False) -> List[float]:
    """Per performance slot (``target_slots`` order), for the dynamics band (``--dynamics-band``): at each
    ``Vel`` slot, its note's notated dynamic level as a fractional velocity bin: :func:`dynamic_levels`
    times ``DYNAMICS_REF_SCALE``, in ``VEL_STEP`` units (the band compares offsets from it, so only its
    contour matters); NaN at every other slot, and at every slot of a score without a dynamic marking
    (score MIDI: no band). ``relative``: the relative tempo encoding's slots (``grammar.target_slots``)."""
    levels = dynamic_levels(score_tokens)
    if levels is None:
        return [float("nan")] * len(target_slots(score_tokens, relative))
    return note_values_at(score_tokens, V.VEL, (DYNAMICS_REF_SCALE * levels / V.VEL_STEP).tolist(), float("nan"),
                          relative)


def markings_perf(score_tokens: Sequence[str], qpm: Optional[float] = None) -> List[str]:
    """Performance tokens for ``score_tokens`` by the markings rules (module docstring). ``qpm``: the
    first metronome mark in quarter notes per minute (:func:`xml_qpm`), if any."""
    tl, group_marks, note_marks, group_ts = _parse(score_tokens)
    for n, g in enumerate(tl.note_group):
        if "fermata" in note_marks[n]:
            group_marks[g]["_fermata"] = True
    gvel = _velocities(tl, group_marks)
    period = _periods(tl, group_marks, group_ts, qpm)
    note_vel = gvel[tl.note_group].copy()
    art = np.zeros(tl.n_notes)
    for n, marks in enumerate(note_marks):
        note_vel[n] += max([ACCENT_BOOST.get(m, 0) for m in marks] + [0])
        art[n] = min([ARTICULATION.get(m, 0.0) for m in marks] + [0.0])
    vel_toks = V.vel_tokens(np.clip(np.round(note_vel), 1, 127).astype(np.int64))
    tempo_toks = [V.tok(V.TEMPO, V.quantise_tempo(p)) for p in period]
    art_toks = [V.tok(V.ART, V.fmt_art(V.quantise_art(a))) for a in art]
    none_sus, none_soft, time0 = V.tok(V.SUS, V.NONE), V.tok(V.SOFT, V.NONE), V.tok(V.TIME, 0)
    out: List[str] = []
    g = n = 0
    slots = target_slots(score_tokens)
    i = 0
    while i < len(slots):
        s = slots[i]
        if s == V.BAR:
            out.append(V.BAR_TOKEN)
            i += 1
        elif s == V.TEMPO:
            out.append(tempo_toks[g])
            g += 1
            i += 1
        elif s == V.SUS:
            out.append(none_sus)
            i += 1
        elif s == V.SOFT:
            out.append(none_soft)
            i += 1
        elif s == V.VEL:
            out += [vel_toks[n], time0, art_toks[n]]
            n += 1
            i += 3
        else:  # pragma: no cover - the grammar has no other slot
            raise ValueError(f"unexpected slot {s}")
    return out


class MarkingsError(Exception):
    """A MusicXML whose markings cannot be read; the message names the file and says why."""


@functools.lru_cache(maxsize=64)
def xml_qpm(path: str) -> Optional[float]:
    """The first metronome mark (MusicXML ``<sound tempo>``, else a printed ``<metronome>``; quarter notes per
    minute), or None (cached per path within a process)."""
    import warnings

    import partitura as pt

    from .musicxml import load_partitura

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = list(load_partitura(str(path)).parts)
    except Exception as e:  # partitura/lxml raise many types on broken XML
        raise MarkingsError(f"{path}: cannot parse MusicXML ({type(e).__name__}: {str(e)[:120]})") from None
    tempos = sorted((t.start.t, float(t.bpm)) for p in parts for t in p.iter_all(pt.score.Tempo)
                    if t.bpm and t.bpm > 0)
    if not tempos:
        return None
    qpm = tempos[0][1]
    return qpm if 10.0 <= qpm <= 400.0 else None


def xml_markings_perf(xml_path: str, match_path: Optional[str] = None, prefix: Sequence[str] = ()):
    """(score tokens with markings, markings performance tokens) for a MusicXML file; with
    ``match_path``, the score tokens are those of the match file (note order of its human performance)
    with the XML's markings. Raises MarkingsError naming the file on a missing or unparsable XML."""
    from pathlib import Path

    from .encode import encode_match, score_file_to_tokens
    from .musicxml import MusicXMLError, load_markings
    from .scorefile import ScoreReadError

    if not Path(xml_path).is_file():
        raise MarkingsError(f"{xml_path}: file not found")
    try:
        if match_path is not None:
            from .match import load_match

            score = encode_match(load_match(match_path), prefix=prefix, marks=load_markings(str(xml_path))).score
        else:
            score = list(prefix) + score_file_to_tokens(str(xml_path), markings=True, instruct=False)
    except (MusicXMLError, ScoreReadError) as e:
        raise MarkingsError(f"{xml_path}: {e}") from None
    return score, markings_perf(score, xml_qpm(str(xml_path)))
