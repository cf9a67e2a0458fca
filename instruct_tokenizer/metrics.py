"""Evaluation metrics (every definition is written out in docs/evaluation.md).

Distribution metrics are Pianist Transformer's (arXiv 2512.02652, appendix A.4; code yhj137/PianistTransformer
``src/evaluate/normalize.py``, ``evaluate.py`` and ``src/utils/midi.py``), reproduced step by step so that
figures stand side by side with theirs:

1. every MIDI is rewritten at 500 ticks per beat and 120 BPM (1 tick = 1 ms): note and CC64 times are read
   in seconds through the file's tempo map (miditoolkit's tick-to-time mapping) and rounded to integer ms;
   a note that rounds to zero length gets 1 ms; all non-drum tracks are merged; per pitch, a note that
   reaches the next onset of the same pitch is cut there, and a note cut to zero length is dropped;
2. features, pooled over all notes of all files of a set:
   - velocity: 128 bins over 0..127;
   - duration: key-release duration (note off - note on, not pedal-extended), ms, [0, 500) in 250 bins;
   - IOI: differences of consecutive onsets (notes sorted by onset, chords give 0), ms, [0, 200) in
     200 bins;
   - pedal: for each note, the last CC64 value at or before onset + k/4 * gap (k = 0..3, gap = next
     note's onset - this onset; 4990 ms for the last note of a file) is binarised at >= 64 and read as a
     4-bit pattern, first sample = most significant bit (16 bins);
3. each histogram is normalised, 1e-10 is added, it is renormalised; scores are the Jensen-Shannon
   *distance* ``jensenshannon(p, q, base=2)`` and the intersection ``sum(min(p, q))``; "overall" is the
   mean of the four features.

Pure numpy/scipy/symusic/miditoolkit: no torch, no fairseq.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

FEATURES = ("velocity", "duration", "ioi", "pedal")
BINS = {"velocity": (128, (0, 128)), "duration": (250, (0, 500)), "ioi": (200, (0, 200)), "pedal": (16, (0, 16))}
EPS = 1e-10
TICKS_PER_BEAT = 500  # Pianist Transformer's normalised MIDI: 500 ticks per beat at 120 BPM = 1 ms per tick
LAST_GAP_MS = 4990  # the gap Pianist Transformer's tokenizer gives the last note of a file
PEDAL_THRESHOLD = 64


class MidiReadError(Exception):
    """A MIDI file that cannot be read (the message says why)."""


@dataclass
class NoteFeatures:
    """Per-note features of one performance after Pianist Transformer's normalisation.

    Notes are sorted by (onset, pitch); times in ms (integers stored as float)."""

    onset_ms: np.ndarray
    duration_ms: np.ndarray
    velocity: np.ndarray
    pitch: np.ndarray
    pedal_pattern: np.ndarray  # int 0..15, per note

    def values(self, feature: str) -> np.ndarray:
        if feature == "ioi":
            return np.diff(self.onset_ms)
        if feature == "pedal":
            return self.pedal_pattern
        if feature == "duration":
            return self.duration_ms
        if feature == "velocity":
            return self.velocity
        raise KeyError(feature)

    @property
    def end_ms(self) -> float:
        return float((self.onset_ms + self.duration_ms).max()) if len(self.onset_ms) else 0.0


# ------------------------------------------------------------------------------- normalisation
def normalise_notes(start_ms: np.ndarray, end_ms: np.ndarray, pitch: np.ndarray, velocity: np.ndarray):
    """Pianist Transformer's ``normalize_midi`` on integer-ms notes: zero-length notes get 1 ms; per pitch
    (notes by onset, ties in input order), a note whose end reaches the next onset is cut there and a note
    cut to zero length is dropped; the result is sorted by (onset, pitch)."""
    start = np.asarray(start_ms, np.int64)
    end = np.asarray(end_ms, np.int64)
    pitch = np.asarray(pitch, np.int64)
    velocity = np.asarray(velocity, np.int64)
    end = np.where(start >= end, start + 1, end)
    order = np.lexsort((start, pitch))  # stable: per pitch by onset, ties keep input order
    s, e, p, v = start[order], end[order], pitch[order], velocity[order]
    same = p[:-1] == p[1:]
    cut = same & (e[:-1] >= s[1:])
    e = e.copy()
    e[:-1][cut] = s[1:][cut]
    keep = s < e
    s, e, p, v = s[keep], e[keep], p[keep], v[keep]
    order = np.lexsort((p, s))
    return s[order], e[order], p[order], v[order]


def pedal_patterns(onset_ms: np.ndarray, pedal_times_ms: np.ndarray, pedal_values: np.ndarray,
                   last_gap_ms: float = LAST_GAP_MS) -> np.ndarray:
    """4-bit sustain pattern per note (``onset_ms`` sorted ascending; CC times sorted, ties in file order):
    bit 3-k = (value of the last CC64 at or before onset + k/4 * gap) >= 64, k = 0..3, where gap is the
    next note's onset minus this one (0 for a chord) and ``last_gap_ms`` for the last note."""
    on = np.asarray(onset_ms, np.float64)
    if len(on) == 0:
        return np.zeros(0, np.int64)
    gap = np.append(np.diff(on), float(last_gap_ms))
    ped_t = np.asarray(pedal_times_ms, np.float64)
    down = np.asarray(pedal_values) >= PEDAL_THRESHOLD
    pattern = np.zeros(len(on), np.int64)
    if len(ped_t) == 0:
        return pattern
    for k in range(4):
        idx = np.searchsorted(ped_t, on + gap * k / 4, side="right") - 1  # bisect_right - 1
        bit = np.where(idx >= 0, down[np.clip(idx, 0, None)], False)
        pattern |= bit.astype(np.int64) << (3 - k)
    return pattern


def tick_to_ms(ticks_per_beat: int, tempo_changes, max_tick: int) -> np.ndarray:
    """Integer ms at every tick 0..max_tick, as Pianist Transformer's rewrite computes them: miditoolkit's
    tick-to-second mapping (piecewise-constant tempo), x 1000, rounded half to even like Python's round."""
    from miditoolkit.midi.parser import _get_tick_to_second_mapping

    seconds = _get_tick_to_second_mapping(ticks_per_beat, max_tick, tempo_changes)
    return np.round(seconds * (TICKS_PER_BEAT * 120 / 60.0))


def midi_features(path) -> NoteFeatures:
    """Per-note features of a MIDI file (all non-drum tracks pooled), after the normalisation above.
    Raises MidiReadError (the message says why) for a file that is missing, unreadable or has no notes."""
    tpb, tempos, raw, cc = read_midi(path)
    if not len(raw):
        raise MidiReadError("no notes")
    ms = tick_to_ms(tpb, tempos, max(int(raw[:, :2].max()), int(cc[:, 0].max()) if len(cc) else 0))
    start, end, pitch, vel = normalise_notes(ms[raw[:, 0]], ms[raw[:, 1]], raw[:, 2], raw[:, 3])
    ped_t = ms[cc[:, 0]]
    order = np.argsort(ped_t, kind="stable")
    return NoteFeatures(onset_ms=start.astype(np.float64), duration_ms=(end - start).astype(np.float64),
                        velocity=vel, pitch=pitch,
                        pedal_pattern=pedal_patterns(start, ped_t[order], cc[order, 1]))


# ------------------------------------------------------------------------------- MIDI reading
def read_midi(path) -> Tuple[int, list, np.ndarray, np.ndarray]:
    """A MIDI file read by symusic, in ticks: (ticks per beat, tempo changes as miditoolkit keeps them,
    notes of the non-drum tracks as an (N, 4) int array [start tick, end tick, pitch, velocity], and
    their sustain (CC64) events as an (M, 2) int array [tick, value]), tracks in file order.

    symusic pairs note-on and note-off as miditoolkit does (the oldest open note of a pitch and channel
    closes first) and is 15 times faster on the benchmark's human files; ``tests/eval/test_metrics.py``
    checks that the features equal miditoolkit's. Tempo changes follow miditoolkit's
    ``_load_tempo_changes``: 120 BPM until the first, one at tick 0 replaces the default (the last of
    several at tick 0 wins), and a change to the BPM already in force is dropped.
    Raises MidiReadError naming the reason."""
    import symusic

    p = Path(path)
    if not p.is_file():
        raise MidiReadError("no such file" if not p.exists() else "not a file")
    try:
        score = symusic.Score(str(p))
    except (RuntimeError, ValueError, OSError) as e:
        why = str(e).replace("MiniMidi: ", "").replace(": iostream error", "").replace("Invaild", "Invalid").strip()
        raise MidiReadError(f"not a readable MIDI file ({why})") from None
    notes, pedal = [np.zeros((0, 4), np.int64)], [np.zeros((0, 2), np.int64)]
    for track in score.tracks:
        if track.is_drum:
            continue
        n, c = track.notes.numpy(), track.controls.numpy()
        notes.append(np.stack([n["time"], n["time"] + n["duration"], n["pitch"], n["velocity"]], 1).astype(np.int64))
        sustain = c["number"] == 64
        pedal.append(np.stack([c["time"][sustain], c["value"][sustain]], 1).astype(np.int64))
    return int(score.tpq), _tempo_changes(score.tempos), np.concatenate(notes), np.concatenate(pedal)


def _tempo_changes(tempos) -> list:
    """miditoolkit's tempo list from symusic's tempo events (see :func:`read_midi`)."""
    import miditoolkit

    changes = [(120.0, 0)]
    for t in tempos:
        bpm = 60 * 1e6 / t.mspq  # mido.tempo2bpm
        if t.time == 0:
            changes = [(bpm, 0)]
        elif bpm != changes[-1][0]:
            changes.append((bpm, int(t.time)))
    return [miditoolkit.TempoChange(bpm, tick) for bpm, tick in changes]


# ------------------------------------------------------------------------------- distribution scores
def histogram(values: np.ndarray, feature: str) -> np.ndarray:
    """Normalised histogram + 1e-10, renormalised (values outside the range are dropped)."""
    bins, rng = BINS[feature]
    h, _ = np.histogram(np.asarray(values, np.float64), bins=bins, range=rng)
    p = h.astype(np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(bins, 1.0 / bins)
    p = p + EPS
    return p / p.sum()


def pooled_values(feats: Iterable[NoteFeatures]) -> Dict[str, np.ndarray]:
    feats = list(feats)
    return {f: (np.concatenate([x.values(f) for x in feats]) if feats else np.zeros(0)) for f in FEATURES}


def pooled_histograms(feats: Iterable[NoteFeatures]) -> Dict[str, np.ndarray]:
    """The four histograms of a set of performances, every note of every file pooled (IOI within files)."""
    return {f: histogram(v, f) for f, v in pooled_values(feats).items()}


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2))


def intersection(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.minimum(p, q).sum())


def compare(pred: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> Dict[str, float]:
    """JS distance and intersection per feature, and their means ("overall")."""
    out: Dict[str, float] = {}
    for f in FEATURES:
        out[f"{f}_js"] = js_distance(pred[f], ref[f])
        out[f"{f}_inter"] = intersection(pred[f], ref[f])
    out["overall_js"] = float(np.mean([out[f"{f}_js"] for f in FEATURES]))
    out["overall_inter"] = float(np.mean([out[f"{f}_inter"] for f in FEATURES]))
    return out


def distribution_metrics(pred: Sequence[NoteFeatures], ref: Sequence[NoteFeatures]) -> Dict[str, float]:
    """Pooled distribution metrics of a set of performances against a reference (human) set."""
    return compare(pooled_histograms(pred), pooled_histograms(ref))


# ------------------------------------------------------------------------------- key-downs and lengths
HELD_S = 0.5  # s: a note held longer than this is past the duration histogram's last bin (500 ms)
SHORT_S = 0.020  # s: a key-down this short barely sounds
LENGTH_FACTOR = 1.5  # a rendering longer or shorter than its pianist's by more than this factor is off


def length_s(f: NoteFeatures) -> float:
    """A performance's length in seconds: its first onset to its last release (normalised notes)."""
    return float((f.onset_ms + f.duration_ms).max() - f.onset_ms.min()) / 1000.0


def key_down_summary(feats: Iterable[NoteFeatures]) -> Dict[str, float]:
    """Key-down times (note off - note on, ms, normalised notes: a key struck again while it sounds is
    released at the new onset, as the duration feature reads it) pooled over ``feats``: their median (ms),
    the share under :data:`SHORT_S` and the share over :data:`HELD_S` (which the duration JS, binned to
    500 ms, does not see)."""
    key_down_s = np.concatenate([f.duration_ms for f in feats]) / 1000.0
    return {"key_down_median_ms": 1000.0 * float(np.median(key_down_s)),
            "under_20ms_share": float(np.mean(key_down_s < SHORT_S)),
            "held_over_500ms_share": float(np.mean(key_down_s > HELD_S))}


def length_summary(ratios: Sequence[float]) -> Dict[str, float]:
    """Lengths over their references' (one ratio per rendering): min, median, max, and how many lie beyond
    :data:`LENGTH_FACTOR` either way (too slow or too fast)."""
    r = np.asarray(ratios, np.float64)
    return {"length_ratio_min": float(np.min(r)), "length_ratio_median": float(np.median(r)),
            "length_ratio_max": float(np.max(r)),
            "beyond_1_5x": int(np.sum((r > LENGTH_FACTOR) | (r < 1.0 / LENGTH_FACTOR)))}


# ------------------------------------------------------------------------------- per-note correlation
def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r over the positions finite on both sides; NaN (shown as n/a) when either side has zero
    variance or fewer than 3 values are left."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"arrays of different lengths: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def aligned_pearson(pred: Dict[int, float], ref: Dict[int, float]) -> float:
    """Pearson r of two per-note feature maps keyed by score note index (only common keys count)."""
    keys = sorted(set(pred) & set(ref))
    return pearson([pred[k] for k in keys], [ref[k] for k in keys])


def log_ioi_ratio(onset_s: np.ndarray, score_onset_q: np.ndarray) -> np.ndarray:
    """Per score note: log(performed IOI / notated IOI) to the next later score onset (a local log
    tempo, without beats); NaN for the last onset group and where a side is not positive."""
    on, q = np.asarray(onset_s, float), np.asarray(score_onset_q, float)
    uq = np.unique(q[np.isfinite(q)])
    group_on = np.array([np.nanmean(on[q == u]) if np.any(np.isfinite(on[q == u])) else np.nan for u in uq])
    d_perf, d_score = np.diff(group_on), np.diff(uq)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((d_perf > 0) & (d_score > 0), np.log(d_perf / np.where(d_score > 0, d_score, 1)), np.nan)
    per_group = np.append(r, np.nan)
    return per_group[np.searchsorted(uq, q)] if len(uq) else np.full(len(q), np.nan)


def fmt(x: Optional[float]) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


# ------------------------------------------------------------------------------- baselines
def deadpan_midi(score_path, out_path, velocity: Optional[int] = None) -> Path:
    """Deadpan baseline: the score MIDI at its notated tempo (its own tempo map), no pedal. With
    ``velocity``, every note gets that velocity; without it the file is kept as is (the Pianist Transformer
    benchmark's deadpan row is ``score/`` as is: its score MIDIs carry their own velocities and some pedal)."""
    import miditoolkit

    midi = miditoolkit.MidiFile(str(score_path))
    for inst in midi.instruments:
        inst.control_changes = [c for c in inst.control_changes if c.number != 64]
        if velocity is not None:
            for n in inst.notes:
                n.velocity = int(velocity)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    midi.dump(str(out_path))
    return Path(out_path)


@dataclass
class TrainingStats:
    """Set-level statistics for the training-mean baseline."""

    velocity: float = 64.0        # mean performed velocity
    tempo_ratio: float = 1.0      # median performed / notated length of a piece (> 1: slower)
    duration_ratio: float = 1.0   # median performed / median notated key-release duration, at the piece's tempo
    pedal: bool = False           # sustain held through (True) or never used (False)


def training_stats(pairs: Sequence[Tuple[NoteFeatures, NoteFeatures]]) -> TrainingStats:
    """Estimate TrainingStats from (score, performance) feature pairs of the training set, without note
    alignment: mean velocity over all performed notes; median of per-pair length ratios; median of
    per-pair (median performed duration / (median notated duration x length ratio)); pedal on when
    most performed notes start with the pedal down."""
    if not pairs:
        return TrainingStats()
    vel = np.concatenate([p.velocity for _, p in pairs]).astype(float)
    ratios, dratios, ped = [], [], []
    for s, p in pairs:
        r = p.end_ms / max(s.end_ms, 1.0)
        ratios.append(r)
        dratios.append(np.median(p.duration_ms) / max(np.median(s.duration_ms) * r, 1.0))
        ped.append(p.pedal_pattern >= 8)
    return TrainingStats(velocity=float(vel.mean()), tempo_ratio=float(np.median(ratios)),
                         duration_ratio=float(np.median(dratios)), pedal=bool(np.concatenate(ped).mean() > 0.5))


def training_mean_midi(score_path, out_path, stats: TrainingStats) -> Path:
    """Training-mean baseline: the score MIDI with every onset scaled by ``stats.tempo_ratio``, every
    duration by ``tempo_ratio x duration_ratio``, every velocity set to ``stats.velocity``, and the
    sustain pedal held through or absent. Written at 500 ticks per beat, 120 BPM."""
    import miditoolkit

    f = midi_features(score_path)
    start = np.round(f.onset_ms * stats.tempo_ratio).astype(int)
    dur = np.maximum(1, np.round(f.duration_ms * stats.tempo_ratio * stats.duration_ratio)).astype(int)
    midi = miditoolkit.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tempo_changes = [miditoolkit.TempoChange(120.0, 0)]
    inst = miditoolkit.Instrument(program=0, is_drum=False, name="Piano")
    v = int(np.clip(round(stats.velocity), 1, 127))
    inst.notes = [miditoolkit.Note(v, int(p), int(s), int(s + d)) for p, s, d in zip(f.pitch, start, dur)]
    if stats.pedal:
        inst.control_changes = [miditoolkit.ControlChange(64, 127, 0),
                                miditoolkit.ControlChange(64, 0, int((start + dur).max()))]
    midi.instruments.append(inst)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    midi.dump(str(out_path))
    return Path(out_path)


# ----------------------------------------------------------------------------------------- per note
PER_NOTE = ("velocity", "beat_tempo", "log_tempo", "timing", "articulation")


def beat_log_tempo(group_q: np.ndarray, group_time_s: np.ndarray, note_q: np.ndarray) -> np.ndarray:
    """Per note: log of the performed period (s per quarter) of the beat (quarter note, counted from
    score time 0) that its onset lies in.

    A beat's period is read off the piecewise-linear map from score time (quarters) to performed time
    (s) through the onset groups: T(end of beat) - T(start of beat), over the beat's score length. So it
    averages the tempo over the beat, and a grace group or an ornament's tiny gap moves it only by its
    share of the beat, where the onset-group period (``log_tempo``) swings with every such gap. The beats
    at the ends count only the part the groups span; a beat they do not span (the one that holds only
    the last onset) takes the nearest earlier beat's period (else the later one's). Example::

        group q (quarters)   0     1     1.5   2     3
        group time (s)       0.0   0.5   0.75  1.5   2.0
        beat                 [0,1)       [1,2)       [2,3)        [3,4): only q = 3, not spanned
        period (s/quarter)   0.5         1.0         0.5          0.5 (from beat [2,3))

    NaN for every note with fewer than two finite groups, and for a note whose ``note_q`` is NaN."""
    q = np.asarray(group_q, float)
    t = np.asarray(group_time_s, float)
    nq = np.asarray(note_q, float)
    ok = np.isfinite(q) & np.isfinite(t)
    q, t = q[ok], t[ok]
    out = np.full(len(nq), np.nan)
    if len(q) < 2:
        return out
    o = np.argsort(q, kind="stable")
    q, t = q[o], t[o]
    first, last = int(np.floor(q[0])), int(np.floor(q[-1]))
    beats = np.arange(first, last + 1, dtype=float)
    lo, hi = np.maximum(beats, q[0]), np.minimum(beats + 1.0, q[-1])
    span = hi - lo
    spanned = span > 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        period = np.where(spanned, (np.interp(hi, q, t) - np.interp(lo, q, t)) / np.where(spanned, span, 1.0), np.nan)
    period = np.where(period > 0, period, np.nan)
    log_p = _fill_nearest_earlier(np.log(period))
    finite = np.isfinite(nq)
    idx = np.clip(np.floor(nq[finite]).astype(np.int64) - first, 0, len(beats) - 1)
    out[finite] = log_p[idx]
    return out


def _fill_nearest_earlier(x: np.ndarray) -> np.ndarray:
    """NaNs replaced by the nearest earlier finite value (leading NaNs: the first finite one)."""
    good = np.isfinite(x)
    if not good.any():
        return x
    idx = np.where(good, np.arange(len(x)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(good))
    return x[idx]


def per_note_features(score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> Dict[str, np.ndarray]:
    """Per score note (token order): velocity; beat-level log tempo (:func:`beat_log_tempo`, s per
    quarter); the log period (s per quarter) of its onset group's grid step (an IOI-level tempo); timing
    deviation from the decoded grid (ms); articulation log2(played / notated-at-local-tempo).
    Deleted notes are NaN."""
    from . import vocab as V
    from .decode import decode_performance
    from .encode import nominal_q

    perf = decode_performance(score_tokens, perf_tokens)
    tl = perf.timeline
    period = perf.group_period_s[tl.note_group]
    nominal = np.array([nominal_q(d) for d in tl.note_dur_q])
    nan = np.where(perf.played, 1.0, np.nan)
    dur = np.maximum(perf.offset_s - perf.onset_s, 1e-3)
    return {
        # the Vel bin's lowest value: decoding dithers velocity inside a bin, which would give a constant
        # velocity row (deadpan) a spurious variance and correlation
        "velocity": (perf.velocity // V.VEL_STEP * V.VEL_STEP) * nan,
        "beat_tempo": beat_log_tempo(tl.group_q, perf.group_grid_s, tl.group_q[tl.note_group]) * nan,
        "log_tempo": np.log(period) * nan,
        "timing": (perf.onset_s - perf.group_grid_s[tl.note_group]) * 1000.0 * nan,
        "articulation": np.log2(dur / (nominal * period)) * nan,
        "score_q": tl.group_q[tl.note_group],
    }


def per_note_r(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> Dict[str, float]:
    return {f"{k}_r": pearson(a[k], b[k]) for k in PER_NOTE}


def tempo_spread(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    """How much a performance's beat tempo varies over the piece against another's (``per_note_features``
    of each, the same score): the standard deviation of the log beat tempo over the notes finite on both
    sides, a's over b's (1: as varied; below: flatter). NaN when fewer than 3 notes are left or b's curve
    is constant. The per-note r does not see it: a curve twice as wide correlates as well."""
    x, y = np.asarray(a["beat_tempo"], float), np.asarray(b["beat_tempo"], float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or y[ok].std() < 1e-12:
        return float("nan")
    return float(x[ok].std() / y[ok].std())
