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

Pure numpy/scipy/miditoolkit: no torch, no fairseq.
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
    tpb, tempos, max_tick, insts = read_midi(path)
    insts = [i for i in insts if not i[0]]
    notes = [n for i in insts for n in i[1]]
    if not notes:
        raise MidiReadError("no notes")
    ccs = [c for i in insts for c in i[2] if c[1] == 64]
    raw = np.array(notes, np.int64).reshape(-1, 4)
    cc = np.array(ccs, np.int64).reshape(-1, 3)
    ms = tick_to_ms(tpb, tempos, max(int(max_tick), int(raw[:, :2].max()), int(cc[:, 0].max()) if len(cc) else 0))
    start, end, pitch, vel = normalise_notes(ms[raw[:, 0]], ms[raw[:, 1]], raw[:, 2], raw[:, 3])
    ped_t = ms[cc[:, 0]]
    order = np.argsort(ped_t, kind="stable")
    return NoteFeatures(onset_ms=start.astype(np.float64), duration_ms=(end - start).astype(np.float64),
                        velocity=vel, pitch=pitch,
                        pedal_pattern=pedal_patterns(start, ped_t[order], cc[order, 2]))


# ------------------------------------------------------------------------------- fast MIDI reading
class _Unsupported(Exception):
    """Something the fast reader leaves to mido/miditoolkit (which then reads it or names the error)."""


def _read_smf(data: bytes):
    """Standard MIDI File -> (ticks_per_beat, tracks): each track (events, last tick), events a list of (abs_tick, status, a, b) for
    channel messages and (abs_tick, 0x51, tempo_us, 0) for set_tempo. Follows mido's reader (running
    status, meta events not setting it, chunks read in order) without building message objects."""
    if len(data) < 14 or data[:4] != b"MThd":
        raise _Unsupported("no MThd header")
    hlen = int.from_bytes(data[4:8], "big")
    ntrk = int.from_bytes(data[10:12], "big")
    tpb = int.from_bytes(data[12:14], "big")
    if tpb & 0x8000 or tpb == 0:
        raise _Unsupported("SMPTE time division")
    pos = 8 + hlen
    tracks = []
    for _ in range(ntrk):
        if data[pos:pos + 4] != b"MTrk":
            raise _Unsupported("no MTrk header")
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        i, end = pos + 8, pos + 8 + size
        if end > len(data):
            raise _Unsupported("truncated track")
        pos = end
        ev = []
        tick = 0
        last = None
        while i < end:
            delta = 0
            while True:
                byte = data[i]
                i += 1
                delta = (delta << 7) | (byte & 0x7F)
                if byte < 0x80:
                    break
            tick += delta
            st = data[i]
            if st < 0x80:
                if last is None:
                    raise _Unsupported("running status without last status")
                st = last
            else:
                i += 1
                if st != 0xFF:
                    last = st
            if st == 0xFF:
                mtype = data[i]
                i += 1
                length = 0
                while True:
                    byte = data[i]
                    i += 1
                    length = (length << 7) | (byte & 0x7F)
                    if byte < 0x80:
                        break
                if mtype == 0x51:
                    if length != 3:
                        raise _Unsupported("bad set_tempo")
                    ev.append((tick, 0x51, int.from_bytes(data[i:i + 3], "big"), 0))
                i += length
            elif st == 0xF0 or st == 0xF7:
                length = 0
                while True:
                    byte = data[i]
                    i += 1
                    length = (length << 7) | (byte & 0x7F)
                    if byte < 0x80:
                        break
                i += length
            elif st < 0xF0:
                hi = st & 0xF0
                if hi == 0xC0 or hi == 0xD0:
                    a, b = data[i], 0
                    i += 1
                else:
                    a, b = data[i], data[i + 1]
                    i += 2
                if a > 127 or b > 127:
                    raise _Unsupported("data byte over 127")
                if hi in (0x80, 0x90, 0xB0, 0xC0, 0xE0):
                    ev.append((tick, st, a, b))
                else:
                    ev.append((tick, 0x100, 0, 0))  # keeps the track's last tick
            else:
                raise _Unsupported("system common message in a track")
        if i != end:
            raise _Unsupported("event runs past its track")
        if size == 0:
            raise _Unsupported("empty track")
        tracks.append((ev, tick))
    return tpb, tracks


def _instruments(tracks):
    """miditoolkit's ``_load_instruments`` on the parsed events: instruments keyed by (program, channel,
    track) in creation order, note-offs closing the oldest open note of their (channel, pitch), CCs before
    a track/channel's first note attached to its first instrument ("stragglers"). Returns a list of
    (is_drum, notes [(start, end, pitch, velocity)], ccs [(tick, number, value)])."""
    inst_map: Dict[tuple, tuple] = {}
    stragglers: Dict[tuple, list] = {}
    for t, (ev, _) in enumerate(tracks):
        open_notes: Dict[tuple, list] = {}
        program = [0] * 16
        for tick, st, a, b in ev:
            hi, ch = st & 0xF0, st & 0x0F
            if st > 0xFF:
                continue
            if hi == 0xC0:
                program[ch] = a
            elif hi == 0x90 and b > 0:
                open_notes.setdefault((ch, a), []).append((tick, b))
            elif hi == 0x80 or hi == 0x90:
                q = open_notes.get((ch, a))
                if q is None:
                    continue
                start, vel = q.pop(0)
                if not q:
                    del open_notes[(ch, a)]
                key = (program[ch], ch, t)
                inst = inst_map.get(key)
                if inst is None:
                    ccs = stragglers[(ch, t)] if (ch, t) in stragglers else []
                    inst = inst_map[key] = (ch == 9, [], ccs)
                inst[1].append((start, tick, a, vel))
            elif hi == 0xE0:  # pitch bends create a straggler that later CCs share
                if (program[ch], ch, t) not in inst_map and (ch, t) not in stragglers:
                    stragglers[(ch, t)] = []
            elif hi == 0xB0:
                key = (program[ch], ch, t)
                if key in inst_map:
                    ccs = inst_map[key][2]
                elif (ch, t) in stragglers:
                    ccs = stragglers[(ch, t)]
                else:
                    ccs = stragglers[(ch, t)] = []
                ccs.append((tick, a, b))
    return list(inst_map.values())


def _tempo_changes(tracks):
    """miditoolkit's ``_load_tempo_changes``: 120 BPM default; a tempo at tick 0 restarts the list; a
    change is kept where the BPM differs from the last one kept (tracks in file order)."""
    import miditoolkit

    changes = [(120.0, 0)]
    for ev, _ in tracks:
        for tick, st, a, _ in ev:
            if st == 0x51:
                bpm = 60 * 1e6 / a * 4 / 4.0  # mido.tempo2bpm
                if tick == 0:
                    changes = [(bpm, 0)]
                elif bpm != changes[-1][0]:
                    changes.append((bpm, tick))
    return [miditoolkit.TempoChange(bpm, tick) for bpm, tick in changes]


def read_midi(path):
    """(ticks_per_beat, tempo changes, max_tick, instruments) of a MIDI file exactly as miditoolkit reads
    it (instruments as in ``_instruments``); a fast reader, falling back to miditoolkit itself for what
    it does not handle. Raises MidiReadError naming the reason."""
    p = Path(path)
    if not p.is_file():
        raise MidiReadError("no such file" if not p.exists() else "not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MidiReadError(f"cannot read it ({e.strerror or e})") from None
    try:
        tpb, tracks = _read_smf(data)
        return tpb, _tempo_changes(tracks), max(t for _, t in tracks) + 1, _instruments(tracks)
    except (_Unsupported, IndexError, ValueError):
        pass
    import miditoolkit

    try:
        midi = miditoolkit.MidiFile(str(p))
    except Exception as e:  # mido raises many types on junk
        why = f"{type(e).__name__}: {e}" if str(e).strip() else ("truncated file" if isinstance(e, EOFError)
                                                                   else type(e).__name__)
        raise MidiReadError(f"not a readable MIDI file ({why})") from None
    insts = [(i.is_drum, [(n.start, n.end, n.pitch, n.velocity) for n in i.notes],
              [(c.time, c.number, c.value) for c in i.control_changes]) for i in midi.instruments]
    return midi.ticks_per_beat, midi.tempo_changes, midi.max_tick, insts


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
