"""The one home of token names: every token is ``Type_Value``, built by :func:`tok`, parsed by :func:`parse`.

Units: score time in quarter notes (``GRID`` steps per quarter); performance time in seconds; tempo
as the beat period in seconds per quarter note; velocity in MIDI units.
All quantisers live here too, so that encode and decode cannot disagree on a bin.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

# ----------------------------------------------------------------------------------------- types
BAR = "Bar"
TIME_SIG = "TimeSig"
BAR_LEN = "BarLen"
POS = "Pos"
PITCH = "Pitch"
DUR = "Dur"
STAFF = "Staff"
TEMPO = "Tempo"
VEL = "Vel"
TIME = "Time"
ART = "Art"
SUS = "Sus"
SOFT = "Soft"
# instruct prefix (score side)
I_TEMPO, I_DYN, I_RANGE, I_RUBATO, I_ARTIC = "ITempo", "IDyn", "IRange", "IRubato", "IArtic"
COMPOSER, PERFORMER = "Composer", "Performer"
# score markings from MusicXML (``--xml-markings``): group markings after Pos, note markings after Staff
DYN, WEDGE, TEMPO_WORD, MARK, SLUR = "Dyn", "Wedge", "TempoWord", "Mark", "Slur"
# notated tempo (``--notated-tempo``): quarter notes per minute in force at the bar start, in every bar header
QPM = "QPM"
# marking state (``--marking-state``): the markings in force at the bar start, in every bar header
DYN_LEVEL, WEDGE_OPEN, TEMPO_MODE = "DynLevel", "WedgeOpen", "TempoMode"
AFTER = "After"  # ``After_fermata``: this onset follows an onset group holding a fermata (marking state)
# relative tempo (``--relative-tempo``): the performance's tempo level over the notated tempo, once per segment,
# and each onset group's beat period relative to notated tempo x level (instead of ``Tempo``)
TEMPO_LEVEL, TEMPO_REL = "TempoLevel", "TempoRel"

NONE = "None"
DELETED = "Del"


def tok(type_: str, value) -> str:
    """Build a token string ``Type_Value``."""
    return f"{type_}_{value}"


def parse(token: str) -> Tuple[str, str]:
    """Parse ``Type_Value`` into (type, value); raises ValueError on a malformed token."""
    type_, sep, value = token.partition("_")
    if not sep or not type_ or not value:
        raise ValueError(f"malformed token {token!r} (expected Type_Value)")
    return type_, value


BAR_TOKEN = tok(BAR, NONE)

# ----------------------------------------------------------------------------------------- score grid
GRID = 24  # positions per quarter note: divisible by 2, 3, 4, 6, 8, 12, 24 (tuplets up to 32nd triplets)
MAX_POS = 16 * GRID - 1  # a bar up to 16 quarters
MAX_BAR_LEN = 32 * GRID  # an actual bar length (pickup, or a bar spanning skipped empty bars)
DUR_FINE_MAX = 4 * GRID  # durations in 1/24 quarter steps up to 4 quarters ...
DUR_COARSE_STEP = GRID // 2  # ... then in eighth-note steps
DUR_MAX = 16 * GRID
STAFFS = (1, 2)
TIME_SIGS = [f"{n}/{d}" for d in (2, 4, 8, 16) for n in range(1, 19)]


# notated tempo bins: 120 * 2**(k/12) quarter notes per minute (6 % steps), 21 to 381 qpm; 120 is the
# value that score MIDI files and MusicXML exporters write when the score states no tempo
DEFAULT_QPM = 120.0
QPM_VALUES = [int(round(DEFAULT_QPM * 2 ** (k / 12))) for k in range(-30, 21)]
_LOG_QPM = np.log(np.array(QPM_VALUES, dtype=np.float64))


def quantise_qpm(qpm: float) -> int:
    """A notated tempo (quarter notes per minute) -> the nearest ``QPM`` value (in log tempo)."""
    if not (qpm > 0 and math.isfinite(qpm)):
        qpm = DEFAULT_QPM
    return QPM_VALUES[int(np.argmin(np.abs(_LOG_QPM - math.log(qpm))))]


def quantise_pos(pos_quarters: float) -> int:
    return int(min(max(round(pos_quarters * GRID), 0), MAX_POS))


def duration_values() -> List[int]:
    fine = list(range(0, DUR_FINE_MAX + 1))
    coarse = list(range(DUR_FINE_MAX + DUR_COARSE_STEP, DUR_MAX + 1, DUR_COARSE_STEP))
    return fine + coarse


_DUR_VALUES = np.array(duration_values())


def quantise_dur(dur_quarters: float, grace: bool) -> int:
    """Notated duration in grid steps; 0 means a grace note; a real note is at least one step."""
    if grace:
        return 0
    steps = max(dur_quarters * GRID, 1.0)
    return int(_DUR_VALUES[1:][np.argmin(np.abs(_DUR_VALUES[1:] - steps))])


# ----------------------------------------------------------------------------------------- performance bins
TEMPO_MIN_S, TEMPO_MAX_S, TEMPO_BINS = 0.08, 8.0, 160  # beat period (s per quarter), log-spaced
_TEMPO_CENTERS = np.exp(np.linspace(math.log(TEMPO_MIN_S), math.log(TEMPO_MAX_S), TEMPO_BINS))

# Relative tempo (``--relative-tempo``), both on one log2 lattice of REL_STEPS_PER_OCTAVE steps (2.9 %, the
# absolute Tempo bins' step): ``TempoLevel_k`` = the performance's level, 2 ** (k / 24) times the notated beat
# period (60 / QPM s per quarter), k in +-72 (+-3 octaves: +-2 clamped 9 of the 1,062 (n)ASAP performances,
# pieces without a metronome mark); ``TempoRel_j`` = an onset group's beat period over notated period x
# level, 2 ** (j / 24), 1/16 to 32 (0.34 % and 0.075 % of (n)ASAP's onset groups at the two ends). Measured
# by scripts/relative_tempo_stats.py (docs/tokens.md, Relative tempo).
REL_STEPS_PER_OCTAVE = 24
TEMPO_LEVEL_STEPS = range(-72, 73)
TEMPO_REL_STEPS = range(-96, 121)


def quantise_tempo_level(log2_level: float) -> int:
    """log2(performed beat period / notated beat period) -> the nearest ``TempoLevel`` step (clamped)."""
    k = round(log2_level * REL_STEPS_PER_OCTAVE) if math.isfinite(log2_level) else 0
    return int(min(max(k, TEMPO_LEVEL_STEPS[0]), TEMPO_LEVEL_STEPS[-1]))


def tempo_level_factor(step: int) -> float:
    """The beat period factor of a ``TempoLevel`` step: 2 ** (step / 24) (1.0: the notated tempo)."""
    return 2.0 ** (step / REL_STEPS_PER_OCTAVE)


def tempo_rel_ratio(step: int) -> float:
    """The beat period ratio of a ``TempoRel`` step (over notated period x level): 2 ** (step / 24)."""
    return 2.0 ** (step / REL_STEPS_PER_OCTAVE)


VEL_STEP = 2  # velocity bins of 2 MIDI units: 64 bins; decoded to one of the bin's values (error <= 1)
VEL_BINS = 128 // VEL_STEP


def _time_base_ms() -> List[int]:
    """The first timing deviation bin centres in ms: 1 ms to +-40, 4 ms to +-160, 16 ms to +-800, 50 ms to
    +-2000."""
    pos = list(range(0, 41)) + list(range(44, 161, 4)) + list(range(176, 801, 16)) + list(range(850, 2001, 50))
    return sorted(set([-p for p in pos] + pos))


def _time_extension_ms() -> List[int]:
    """Later bins, 40 ms steps from +-2040 to +-4000 ms (quantisation error <= 20 ms): a note within the
    alignment-outlier bound (2 s) of its chord's target whose decoded grid lies farther from the target
    (a fermata or a final rolled chord at the tempo range's limit) keeps its onset."""
    pos = list(range(2040, 4001, 40))
    return sorted([-p for p in pos] + pos)


def _time_fine_ms() -> List[int]:
    """The third set of bins, between the coarser ones past +-160 ms: 8 ms steps to +-800 and 10 ms steps
    to +-4000, so that every note within the range quantises to 5 ms or better (an arpeggio, a grid at
    the tempo range's limit, a final rolled chord: the notes that made a piece's end less exact than its
    start). Only values the earlier sets lack."""
    old = set(_time_base_ms() + _time_extension_ms())
    pos = list(range(168, 801, 8)) + list(range(810, 4001, 10))
    return sorted(v for v in [-p for p in pos] + pos if v not in old)


_TIME_CENTERS_MS = np.array(sorted(_time_base_ms() + _time_extension_ms() + _time_fine_ms()), dtype=np.float64)

ART_MIN, ART_MAX, ART_STEP = -7.0, 4.0, 0.04  # log2(played / notated-at-local-tempo)
_ART_CENTERS = np.round(np.arange(ART_MIN, ART_MAX + 1e-9, ART_STEP), 2)


def _pedal_base_ms() -> List[int]:
    """Pedal change offset after its onset group's grid time, in ms: 4 ms steps to 400, 10 to 1500, 25
    to 6000."""
    return list(range(0, 400, 4)) + list(range(400, 1500, 10)) + list(range(1500, 6001, 25))


def _pedal_extension_ms() -> List[int]:
    """Later bins: before the group's grid time (negative offsets), 4 ms steps to -400 ms and 10 to
    -1500, for a change when every earlier group's slots are full (fast pedal flutter) or when it
    precedes the first notes; and 25 ms steps from 6 to 10 s, for a release held long after the last
    notes."""
    return sorted([-p for p in list(range(4, 400, 4)) + list(range(400, 1501, 10))]) + list(range(6025, 10001, 25))


def _pedal_wide_ms() -> List[int]:
    """The third set: 40 ms steps (error <= 20 ms) from 10 to 20 s after the grid time, for a pedal held
    through a long final chord or a long pause, and from -1.54 to -14.06 s, for a pedal pressed seconds before
    the first notes (every such change in (n)ASAP lies within these)."""
    return sorted([-p for p in range(1540, 14061, 40)]) + list(range(10040, 20001, 40))


_PEDAL_CENTERS_MS = np.array(sorted(_pedal_base_ms() + _pedal_extension_ms() + _pedal_wide_ms()),
                             dtype=np.float64)
PEDAL_MAX_MS = float(_PEDAL_CENTERS_MS[-1])
PEDAL_MIN_MS = float(_PEDAL_CENTERS_MS[0])


def _nearest(centers: np.ndarray, x: float) -> int:
    i = int(np.searchsorted(centers, x))
    if i <= 0:
        return 0
    if i >= len(centers):
        return len(centers) - 1
    return i - 1 if x - centers[i - 1] <= centers[i] - x else i


def nearest_index(centers: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_nearest`: index of the nearest centre for every x (ties go down)."""
    x = np.asarray(x, dtype=np.float64)
    i = np.clip(np.searchsorted(centers, x), 1, len(centers) - 1)
    lower = centers[i - 1]
    upper = centers[i]
    return np.where(x - lower <= upper - x, i - 1, i)


def time_tokens(dev_s: np.ndarray) -> List[str]:
    """Timing deviations (s) -> Time tokens (value: bin centre in ms)."""
    return [_TIME_TOKENS[i] for i in nearest_index(_TIME_CENTERS_MS, np.asarray(dev_s) * 1000.0)]


def art_values(log2_ratio: np.ndarray) -> np.ndarray:
    idx = nearest_index(_ART_CENTERS, np.clip(log2_ratio, ART_MIN, ART_MAX))
    return _ART_CENTERS[idx]


def art_tokens(values: np.ndarray) -> List[str]:
    return [tok(ART, fmt_art(a)) for a in values]


def vel_tokens(velocity: np.ndarray) -> List[str]:
    bins = np.clip(np.asarray(velocity, dtype=np.int64) // VEL_STEP, 0, VEL_BINS - 1)
    return [_VEL_TOKENS[b] for b in bins]


def quantise_tempo(beat_period_s: float) -> int:
    x = math.log(min(max(beat_period_s, TEMPO_MIN_S), TEMPO_MAX_S))
    return _nearest(np.log(_TEMPO_CENTERS), x)


def tempo_value(bin_: int) -> float:
    """Beat period in seconds per quarter note of a tempo bin."""
    return float(_TEMPO_CENTERS[bin_])


def quantise_vel(velocity: float) -> int:
    return int(min(max(int(velocity) // VEL_STEP, 0), VEL_BINS - 1))


def vel_value(bin_: int, offset: int = VEL_STEP // 2) -> int:
    """MIDI velocity of a bin: its lowest value plus ``offset`` (0 .. VEL_STEP-1), kept in 1..127."""
    return int(min(max(bin_ * VEL_STEP + offset, 1), 127))


def quantise_time(dev_s: float) -> int:
    """Timing deviation (s) -> bin value in ms (the token value itself is the bin centre in ms)."""
    return int(_TIME_CENTERS_MS[_nearest(_TIME_CENTERS_MS, dev_s * 1000.0)])


def quantise_art(log2_ratio: float) -> float:
    x = min(max(log2_ratio, ART_MIN), ART_MAX)
    return float(_ART_CENTERS[_nearest(_ART_CENTERS, x)])


def quantise_pedal(offset_s: float) -> int:
    """A pedal change's offset from its group's grid time (s; negative: before it) -> bin value in ms."""
    return int(_PEDAL_CENTERS_MS[_nearest(_PEDAL_CENTERS_MS, offset_s * 1000.0)])


def quantise_pedal_array(offsets_s: np.ndarray) -> List[int]:
    """Vectorised :func:`quantise_pedal`: offsets (s) -> bin values in ms."""
    ms = np.asarray(offsets_s, dtype=np.float64) * 1000.0
    return _PEDAL_CENTERS_MS[nearest_index(_PEDAL_CENTERS_MS, ms)].astype(np.int64).tolist()


def fmt_art(x: float) -> str:
    return f"{x:.2f}"


_TIME_TOKENS = [tok(TIME, int(ms)) for ms in _TIME_CENTERS_MS]
_VEL_TOKENS = [tok(VEL, b) for b in range(VEL_BINS)]


# ----------------------------------------------------------------------------------------- instruct
INSTRUCT_LEVELS = {
    I_TEMPO: ("slow", "mid", "fast"),
    I_DYN: ("soft", "mid", "loud"),
    I_RANGE: ("narrow", "mid", "wide"),
    I_RUBATO: ("low", "mid", "high"),
    I_ARTIC: ("staccato", "mid", "legato"),
}
INSTRUCT_TYPES = tuple(INSTRUCT_LEVELS)
# --style keys of instruct-render -> token types
STYLE_KEYS = {"tempo": I_TEMPO, "dynamics": I_DYN, "range": I_RANGE, "rubato": I_RUBATO,
              "articulation": I_ARTIC}
UNKNOWN_META = "unknown"


def meta_value(name: str) -> str:
    """A composer/performer name as a token value (no spaces, no underscores)."""
    clean = "".join(c if c.isalnum() else "-" for c in name.strip()).strip("-")
    return clean or UNKNOWN_META


# ----------------------------------------------------------------------------------------- markings
DYN_VALUES = ("pppp", "ppp", "pp", "p", "mp", "mf", "f", "ff", "fff", "ffff")
# The note velocity a notation program's MIDI export plays for each dynamic level (MuseScore's table, which
# (n)ASAP's and the benchmark's score MIDI files follow; other programs' levels lie near these): a score
# MIDI's velocities are read back as these levels (scorefile.midi_dynamics)
EXPORT_DYN_VELOCITY = (("ppp", 16), ("pp", 33), ("p", 49), ("mp", 64), ("mf", 80), ("f", 96), ("ff", 112),
                       ("fff", 126))
# ... read only from a file whose velocities are an export's: its EXPORT_LEVELS_MAX most common velocities
# play at least EXPORT_LEVELS_SHARE of its notes (the benchmark's score MIDI files: 0.8 and more; a recorded
# performance spreads its velocities over dozens of values)
EXPORT_LEVELS_MAX, EXPORT_LEVELS_SHARE = 12, 0.75
GROUP_MARKINGS = {
    DYN: DYN_VALUES + ("sf", "fp", "other"),
    WEDGE: ("cresc", "dim", "end"),
    TEMPO_WORD: ("slow", "moderate", "fast", "rit", "accel", "atempo", "other"),
}
NOTE_MARKINGS = {
    MARK: ("staccato", "staccatissimo", "tenuto", "accent", "marcato", "fermata"),
    SLUR: ("start", "end"),
}
GROUP_MARKING_TYPES = tuple(GROUP_MARKINGS)
NOTE_MARKING_TYPES = tuple(NOTE_MARKINGS)
# partitura articulation names -> Mark values
MARK_ALIASES = {"staccato": "staccato", "staccatissimo": "staccatissimo", "spiccato": "staccatissimo",
                "tenuto": "tenuto", "detached-legato": "tenuto", "accent": "accent",
                "strong-accent": "marcato"}
# constant tempo words -> TempoWord values: the first class with a word that starts a word of the text
# (lower case; "andant" reads Andante and Andantino, "lent" Lent and lentement but not violent). Italian, and the
# German, French and English words that composers and editors write instead (Langsam, Nicht schnell, Modéré,
# Vif, Slowly); a negated fast word is moderate (its class is read first)
TEMPO_WORD_CLASSES = (
    ("slow", ("grave", "largo", "larghetto", "lento", "adagio", "langsam", "getragen", "lent", "slow")),
    ("moderate", ("andant", "moderato", "allegretto", "comodo", "mässig", "mäßig", "massig", "gehend",
                  "nicht schnell", "nicht zu schnell", "nicht zu rasch", "nicht zu geschwind", "modéré", "modere",
                  "moderate", "not fast", "not too fast")),
    ("fast", ("allegro", "vivac", "vivo", "presto", "prestissimo", "schnell", "rasch", "lebhaft", "geschwind",
              "vif", "vite", "animé", "fast", "quick", "lively")),
)
TEMPO_WORD_ELSEWHERE = ("attacca",)  # a text with one of these names the next movement's tempo: other


def marking_tokens() -> List[str]:
    """Every marking token, group types then note types (this order is the canonical order)."""
    out = []
    for table in (GROUP_MARKINGS, NOTE_MARKINGS):
        for type_, values in table.items():
            out += [tok(type_, v) for v in values]
    return out


MARKING_RANK = {t: i for i, t in enumerate(marking_tokens())}

# the marking state in force at a bar start (score.with_marking_state): the last dynamic level, an open
# crescendo/diminuendo, an open ritardando/accelerando
MARKING_STATE = {
    DYN_LEVEL: DYN_VALUES,
    WEDGE_OPEN: ("cresc", "dim"),
    TEMPO_MODE: ("rit", "accel"),
}
MARKING_STATE_TYPES = tuple(MARKING_STATE)


def marking_state_tokens() -> List[str]:
    return [tok(type_, v) for type_, values in MARKING_STATE.items() for v in values]


# the onset right after a fermata (score.with_marking_state): the performed gap before it is the held
# fermata, and the performance stream's Tempo token of this onset is what encodes that gap
AFTER_FERMATA = tok(AFTER, "fermata")
FERMATA_MARK = tok(MARK, "fermata")
# every type a MusicXML's markings give and a score MIDI lacks (score.without_markings)
MARKING_TYPES = frozenset(GROUP_MARKING_TYPES + NOTE_MARKING_TYPES + MARKING_STATE_TYPES + (AFTER,))


def after_fermata_tokens() -> List[str]:
    return [AFTER_FERMATA]


# ----------------------------------------------------------------------------------------- vocabularies
def score_vocabulary() -> List[str]:
    """Every token the score stream can hold (meta names are added from data at build time)."""
    toks = [BAR_TOKEN]
    toks += [tok(TIME_SIG, ts) for ts in TIME_SIGS]
    toks += [tok(BAR_LEN, n) for n in range(1, MAX_BAR_LEN + 1)]
    toks += [tok(POS, p) for p in range(MAX_POS + 1)]
    toks += [tok(PITCH, p) for p in range(128)]
    toks += [tok(DUR, d) for d in duration_values()]
    toks += [tok(STAFF, s) for s in STAFFS]
    for type_, levels in INSTRUCT_LEVELS.items():
        toks += [tok(type_, lv) for lv in levels]
    toks += [tok(COMPOSER, UNKNOWN_META), tok(PERFORMER, UNKNOWN_META)]
    toks += marking_tokens()
    toks += qpm_tokens()
    toks += marking_state_tokens()
    toks += after_fermata_tokens()
    return toks


def relative_tempo_tokens() -> List[str]:
    """``TempoLevel`` then ``TempoRel`` tokens (``--relative-tempo`` corpora), last in the dictionary."""
    return ([tok(TEMPO_LEVEL, k) for k in TEMPO_LEVEL_STEPS] + [tok(TEMPO_REL, j) for j in TEMPO_REL_STEPS])


def qpm_tokens() -> List[str]:
    return [tok(QPM, v) for v in QPM_VALUES]


def dictionary_tokens() -> List[str]:
    """Both vocabularies in dict.txt order. Marking tokens, notated-tempo tokens, marking-state tokens
    and the performance extensions come after the first performance tokens, in the order they were
    added to the project, so the indices of every token of a corpus built without them are unchanged by
    their addition (older models keep working)."""
    late_groups = [marking_tokens(), qpm_tokens(), marking_state_tokens(), perf_extension_tokens(),
                   after_fermata_tokens(), perf_fine_tokens(), relative_tempo_tokens()]
    late = {t for group in late_groups for t in group}
    base = [t for t in score_vocabulary() + perf_vocabulary() if t not in late]
    return list(dict.fromkeys(base + [t for group in late_groups for t in group]))


def perf_extension_tokens() -> List[str]:
    """Performance values added after the first releases (``Time`` past +-2 s, pedal offsets before the
    grid time and past 6 s)."""
    toks = [tok(TIME, ms) for ms in _time_extension_ms()]
    for kind in (SUS, SOFT):
        toks += [tok(kind, ms) for ms in _pedal_extension_ms()]
    return toks


def perf_fine_tokens() -> List[str]:
    """Performance values of the third set (finer ``Time`` past +-160 ms, pedal offsets to -14.06 s and
    20 s): added after the fermata tokens, so every earlier corpus keeps its indices."""
    toks = [tok(TIME, ms) for ms in _time_fine_ms()]
    for kind in (SUS, SOFT):
        toks += [tok(kind, ms) for ms in _pedal_wide_ms()]
    return toks


def perf_vocabulary() -> List[str]:
    """Every token the performance stream can hold."""
    toks = [BAR_TOKEN]
    toks += [tok(TEMPO, b) for b in range(TEMPO_BINS)]
    toks += [tok(VEL, b) for b in range(VEL_BINS)] + [tok(VEL, DELETED)]
    toks += [tok(TIME, int(ms)) for ms in _TIME_CENTERS_MS]
    toks += [tok(ART, fmt_art(a)) for a in _ART_CENTERS]
    toks += [tok(SUS, NONE)] + [tok(SUS, int(ms)) for ms in _PEDAL_CENTERS_MS]
    toks += [tok(SOFT, NONE)] + [tok(SOFT, int(ms)) for ms in _PEDAL_CENTERS_MS]
    toks += relative_tempo_tokens()
    return toks
