"""``instruct-tokenize build``: a corpus of match files -> {split}.score/.perf, dict.txt, manifest.jsonl.

Hygiene: duplicates (checksum of the aligned notes, not of the file bytes; the copy kept is a valid
file), a minimum matched share, a plausible note density, and unreadable files are each skipped with a
one-line reason. Splits are by piece (composer, title), deterministic by seed; ``--test-pieces`` pins
pieces to ``test``. A split asked for that would get no performance stops the build before it writes
(:class:`EmptySplitError`).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from . import vocab as V
from .encode import Encoded, encode_match, segment_ranges, split_bars
from .match import STRANDED_BARS, MatchFile, MatchParseError, load_match, stranded_rows, without_rows
from .musicxml import for_anchor, xml_info_of_match
from .score import as_score_midi, with_marking_state

SPLITS = ("train", "valid", "test")
MIN_MATCHED_SHARE = 0.5  # played score notes / (score notes + insertions)
DENSITY_RANGE = (0.3, 40.0)  # performed notes per second
# alignment outliers (played notes more than the Time range off their chord or out of the score's
# order, encoded as not played: encode.alignment_outliers) / played notes: above this the alignment
# itself is broken (e.g. (n)ASAP Schubert D935/3 SunY08M: 14 %), and the file is skipped
MAX_OUTLIER_SHARE = 0.05


class EncodeError(Exception):
    """A readable match file whose performance cannot be encoded (the message says why)."""


class EmptySplitError(Exception):
    """A split that was asked for would get no performance; the message says why and how to fix it.
    Raised before anything is written."""


@dataclass
class Source:
    """One performance file and who/what it is."""

    path: str
    composer: str
    title: str
    performer: str

    @property
    def piece(self) -> Tuple[str, str]:
        return (self.composer, self.title)


@dataclass
class Item:
    """One encoded performance, already cut into segments by its worker: bars as joined token strings
    (the score ones without the prefix), the segments' bar ranges, and the token counts of those
    segments (bars counted once per segment holding them; the prefix is added when written)."""

    source: Source
    augment: str
    score_bars: List[str]
    perf_bars: List[str]
    ranges: List[Tuple[int, int]]
    counts: Counter
    stats: Dict[str, float]
    perf_prefix: List[str] = field(default_factory=list)  # before every segment's bars (``TempoLevel``)


def prefix_length(cfg: "BuildConfig") -> int:
    """Tokens of the score prefix (:func:`prefix_tokens`): instruct levels, then meta tokens."""
    return (len(V.INSTRUCT_TYPES) if cfg.instruct else 0) + sum(m in cfg.meta for m in ("composer", "performer"))


def make_item(source: "Source", augment: str, enc: Encoded, cfg: "BuildConfig") -> Item:
    _, score_bars = split_bars(with_marking_state(enc.score) if cfg.marking_state else enc.score)
    perf_prefix, perf_bars = split_bars(enc.perf)  # the relative encoding's TempoLevel, in every segment
    budget = cfg.max_tokens - max(prefix_length(cfg), len(perf_prefix)) - 1
    ranges = segment_ranges(score_bars, perf_bars, budget, cfg.overlap_bars)
    mult = np.zeros(len(score_bars) + 1, np.int64)
    for a, b in ranges:
        mult[a] += 1
        mult[b] -= 1
    counts: Counter = Counter(perf_prefix * len(ranges))
    for b, m in enumerate(np.cumsum(mult)[:-1].tolist()):
        for _ in range(m):
            counts.update(score_bars[b])
            counts.update(perf_bars[b])
    return Item(source, augment, [" ".join(b) for b in score_bars], [" ".join(b) for b in perf_bars], ranges,
                counts, enc.stats, perf_prefix)


@dataclass
class BuildConfig:
    split: Tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_tokens: int = 1024
    overlap_bars: int = 2
    workers: int = 1
    test_pieces: Optional[str] = None
    instruct: bool = True
    meta: Tuple[str, ...] = ()
    transpose: Tuple[int, ...] = ()
    tempo_scale: Tuple[float, ...] = ()
    progress: bool = True
    xml_markings: bool = False  # add MusicXML markings to the score stream where the XML is found
    cache_dir: Optional[str] = None  # parsed-XML cache (default musicxml.default_cache_dir())
    markings_dropout: float = 0.0  # share of performances built without their markings (seeded by file)
    # what such a performance's score is: "markings-dropped" (the notated lengths) or "score-midi" (as a notation
    # program's score MIDI writes it: staccato notes shorter, score.as_score_midi)
    dropout_view: str = "markings-dropped"
    notated_tempo: bool = False  # a QPM token (notated tempo from the MusicXML) in every bar header
    relative_tempo: bool = False  # TempoLevel + TempoRel (relative to the QPM) instead of Tempo; needs notated_tempo
    infer_tempo: bool = False  # with notated_tempo: a score without a metronome mark gets tempo_infer's estimate, not 120
    beat_grid: bool = False  # one tempo token value per quarter-note beat, off-beat timing in Time (encode.beat_grid_targets)
    marking_state: bool = False  # the markings in force at each bar start in every bar header (with markings)


@dataclass
class Report:
    built: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    insertions: int = 0
    deletions: int = 0
    notes: int = 0
    warnings: List[Tuple[str, str]] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        print(f"skipped {path}: {reason}", flush=True)

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append((path, reason))
        print(f"warning {path}: {reason}", flush=True)


# ----------------------------------------------------------------------------------------- sources
def _metadata(root: Path) -> Dict[str, Tuple[str, str]]:
    meta = root / "metadata.csv"
    if not meta.is_file():
        return {}
    out = {}
    with meta.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("match_file"):
                out[str((root / row["match_file"]).resolve())] = (row["composer"], row["title"])
    return out


def _fallback_piece(path: Path) -> Tuple[str, str, str]:
    """Vienna 4x22 style names: ``Chopin_op10_no3_p01.match`` -> (Chopin, Chopin_op10_no3, p01)."""
    stem = path.stem
    base, sep, perf = stem.rpartition("_")
    if not sep:
        base, perf = stem, stem
    return base.split("_")[0], base, perf


def find_sources(srcs: Sequence[str]) -> List[Source]:
    """All match files under the given files/directories, with composer/title/performer."""
    out: List[Source] = []
    for src in srcs:
        root = Path(src)
        files = sorted(root.rglob("*.match")) if root.is_dir() else [root]
        meta = _metadata(root) if root.is_dir() else {}
        for f in files:
            composer, title, performer = _fallback_piece(f)
            if str(f.resolve()) in meta:
                composer, title = meta[str(f.resolve())]
                performer = f.stem
            out.append(Source(str(f), composer, title, performer))
    return out


def read_piece_list(path: str) -> set:
    with open(path, newline="") as f:
        return {(r["composer"], r["title"]) for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------------------- per file
def checksum(mf: MatchFile) -> str:
    """Content checksum of the aligned notes (score onset, pitch, performed onset ms, velocity)."""
    h = hashlib.sha1()
    rows = np.stack([np.round(mf.onset_q * 96), mf.pitch, np.nan_to_num(np.round(mf.onset_s * 1000), nan=-1),
                     mf.velocity]).astype(np.int64)
    h.update(rows.tobytes())
    return h.hexdigest()


def hygiene(mf: MatchFile) -> Optional[str]:
    """A reason to skip this performance, or None."""
    share = mf.n_played / max(mf.n_notes + mf.n_insertions, 1)
    if share < MIN_MATCHED_SHARE:
        return f"matched share {share:.2f} below {MIN_MATCHED_SHARE}"
    played = mf.played
    span = float(np.nanmax(mf.offset_s[played]) - np.nanmin(mf.onset_s[played])) if played.any() else 0.0
    density = mf.n_played / span if span > 0 else float("inf")
    if not DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1]:
        return f"note density {density:.1f} notes/s outside {DENSITY_RANGE}"
    return None


def augmentations(mf: MatchFile, cfg: BuildConfig) -> Iterable[Tuple[str, MatchFile, float]]:
    """The original, then transposed (MIDI range kept) and tempo-scaled copies, each with the factor on
    its notated tempo. A copy whose performance times are scaled by ``s`` (``s`` > 1: slower) is the
    same score asking for ``1 / s`` of the notated tempo, so its ``QPM`` is scaled with it: the copy then
    teaches the model that the tempo it plays follows the tempo it is told. (Before 2026-12-05 the copies
    kept the original ``QPM``, which taught the opposite: the same notated tempo, played 10 % faster or
    slower.)"""
    yield "", mf, 1.0
    for k in cfg.transpose:
        if k == 0 or mf.pitch.min() + k < 21 or mf.pitch.max() + k > 108:
            continue
        yield f"transpose{k:+d}", dataclasses.replace(mf, pitch=mf.pitch + k, perf_pitch=mf.perf_pitch + k), 1.0
    for s in cfg.tempo_scale:
        if s == 1.0:
            continue
        yield f"tempo{s:g}", dataclasses.replace(
            mf, onset_s=mf.onset_s * s, offset_s=mf.offset_s * s,
            sustain=[(t * s, v) for t, v in mf.sustain], soft=[(t * s, v) for t, v in mf.soft]), 1.0 / s


def process(job: Tuple[Source, BuildConfig, bool]) -> dict:
    """Worker: read, check and encode one file (and, in the training split, its augmentations and
    markings dropout). Never raises for bad input."""
    source, cfg, augment = job
    try:
        mf = load_match(source.path)
    except MatchParseError as e:
        return {"source": source, "error": str(e)}
    reason = hygiene(mf)
    if reason:
        return {"source": source, "error": reason}
    stranded = stranded_rows(mf)  # a writer's overflowed positions: left out, with their performed notes
    stranded_played = int(mf.played[stranded].sum())
    mf = without_rows(mf, stranded)
    wants_xml = cfg.xml_markings or cfg.notated_tempo
    info, warning = xml_info_of_match(source.path, cfg.cache_dir) if wants_xml else (None, None)
    if warning:
        warning += ": built without markings (notated tempo: " + \
            ("inferred from the notes)" if cfg.infer_tempo else "the default 120)")
    if stranded.any():
        warning = "; ".join(filter(None, [warning, (
            f"{int(stranded.sum())} score notes ({stranded_played} played) left out: their positions lie more "
            f"than {STRANDED_BARS} bars past their measure's start (a writer's overflowed backup)")]))
    drop = augment and drops_markings(source, cfg)  # training performances only: evaluation keeps them
    as_midi = drop and cfg.dropout_view == "score-midi"  # the markings read for the lengths, then dropped
    marks = info.marks if info is not None and cfg.xml_markings and (not drop or as_midi) else None
    view = as_score_midi if as_midi and marks is not None else None
    qpm = (info.qpm if info is not None else {}) if cfg.notated_tempo else None
    items = []
    try:
        qpm, default_qpm = renderer_notated_tempo(mf, marks, qpm, cfg, view)
    except (ValueError, IndexError) as e:
        return {"source": source, "error": f"cannot encode: {e}"}
    for name, variant, qpm_scale in (augmentations(mf, cfg) if augment else [("", mf, 1.0)]):
        try:
            variant_qpm = {k: v * qpm_scale for k, v in qpm.items()} if qpm is not None else None
            enc: Encoded = encode_match(variant, marks=marks, qpm=variant_qpm, relative_tempo=cfg.relative_tempo,
                                        default_qpm=default_qpm * qpm_scale, beat_grid=cfg.beat_grid,
                                        score_view=view)
        except (ValueError, IndexError) as e:
            return {"source": source, "error": f"cannot encode: {e}"}
        if not name:
            outliers = int(enc.stats.get("outliers", 0))
            share = outliers / max(mf.n_played, 1)
            if share > MAX_OUTLIER_SHARE:
                return {"source": source, "error": f"broken alignment: {outliers} of {mf.n_played} played notes "
                        f"({share:.1%}) are alignment outliers (> 2 s off the score order), above "
                        f"{MAX_OUTLIER_SHARE:.0%}"}
        # the instruct tempo level measures the pianist against the tempo the copy's score asks for
        enc.stats["notated_log_scale"] = float(np.log(qpm_scale))
        items.append(make_item(source, name, enc, cfg))
    return {"source": source, "items": items, "checksum": checksum(mf), "insertions": mf.n_insertions,
            "deletions": int(mf.n_notes - mf.n_played), "notes": mf.n_notes, "warning": warning}


def renderer_notated_tempo(mf: MatchFile, marks: Optional[Dict], qpm: Optional[Dict[str, float]],
                           cfg: BuildConfig, score_view: Optional[Callable[[List[str]], List[str]]] = None
                           ) -> Tuple[Optional[Dict[str, float]], float]:
    """(notated tempo by XML note id, the tempo where it gives none), both in quarter notes per minute,
    as the renderer will give them (``--infer-tempo``): where the score states no metronome mark,
    ``tempo_infer``'s estimate from its tokens (so a performance built without its markings gets the
    content estimate, as a score MIDI does at render time), every ``QPM`` scaled by one ratio as
    ``tempo_infer.with_qpm`` does. Without ``--infer-tempo``, or for a score with a mark: as read (120
    where it states none). Decided once per file, on the unscaled performance, so that tempo-scaled
    copies (:func:`augmentations`) scale this tempo and are not mistaken for marked scores. ``score_view``:
    as :func:`encode.encode_match`'s (the estimate reads the score the performance is encoded against)."""
    if qpm is None or not (cfg.notated_tempo and cfg.infer_tempo):
        return qpm, V.DEFAULT_QPM
    from .tempo_infer import notated_tempo

    enc = encode_match(mf, marks=marks, qpm=qpm, relative_tempo=cfg.relative_tempo, beat_grid=cfg.beat_grid,
                       score_view=score_view)
    estimate = notated_tempo(enc.score)
    anchors = [mf.anchor[i] for i in enc.order] if enc.order is not None else None
    if estimate.source == "mark":  # bars before a late first mark: their estimate (tempo_infer.opening_before_mark)
        if estimate.bar_qpm and anchors is not None:
            qpm = {**qpm, **section_qpm_by_id(qpm, anchors, enc.bar_of_note, estimate.bar_qpm)}
        return qpm, V.DEFAULT_QPM
    first = next(float(t.partition("_")[2]) for t in enc.score if t.startswith(V.QPM + "_"))
    ratio = estimate.qpm / first
    scaled = {k: v * ratio for k, v in qpm.items()}
    if estimate.bar_qpm and anchors is not None:
        scaled.update(section_qpm_by_id(qpm, anchors, enc.bar_of_note, estimate.bar_qpm))
    return scaled, V.DEFAULT_QPM * ratio


def section_qpm_by_id(qpm: Dict[str, float], anchors: Sequence[str], bar_of_note: Sequence[int],
                      bar_qpm: Sequence[float]) -> Dict[str, float]:
    """Notated tempo by XML note id where the estimate has tempo sections (``tempo_infer.section_tempi``):
    each note of ``qpm`` found among the score's notes (``anchors``, in token order, ``bar_of_note`` their
    bars) gets its bar's tempo (the first pass of a repeat decides), so that each bar's ``QPM`` is its
    section's, as the renderer gives it."""
    out: Dict[str, float] = {}
    for anchor, bar in zip(anchors, bar_of_note):
        key = anchor if anchor in qpm else anchor.rpartition("-")[0] if for_anchor(qpm, anchor) is not None else None
        if key is not None and key not in out:
            out[key] = float(bar_qpm[min(int(bar), len(bar_qpm) - 1)])
    return out


def drops_markings(source: Source, cfg: BuildConfig) -> bool:
    """Whether this training performance is built without its markings (``--markings-dropout``; valid
    and test keep theirs): a draw seeded by the build seed and the file path, so that a rebuild drops
    the same files. The model then also learns to render scores without markings (score MIDI)."""
    if cfg.markings_dropout <= 0:
        return False
    digest = hashlib.sha1(f"{cfg.seed}:{source.path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < cfg.markings_dropout


# ----------------------------------------------------------------------------------------- split
def assign_splits(pieces: Sequence[Tuple[str, str]], cfg: BuildConfig) -> Dict[Tuple[str, str], str]:
    """Piece -> split, deterministic by seed; pinned test pieces go to test and only there."""
    pinned = read_piece_list(cfg.test_pieces) if cfg.test_pieces else set()
    free = sorted(set(pieces) - pinned)
    random.Random(cfg.seed).shuffle(free)
    total = sum(cfg.split)
    n_train = int(round(len(free) * cfg.split[0] / total))
    n_valid = int(round(len(free) * cfg.split[1] / total))
    if len(free) >= 2 and cfg.split[1] > 0 and n_valid == 0:
        n_valid, n_train = 1, min(n_train, len(free) - 1)
    out = {p: "train" for p in free[:n_train]}
    out.update({p: "valid" for p in free[n_train:n_train + n_valid]})
    out.update({p: "test" for p in free[n_train + n_valid:]})
    out.update({p: "test" for p in pinned if p in set(pieces)})
    return out


# ----------------------------------------------------------------------------------------- instruct
def _level(value: float, lo: float, hi: float, levels: Tuple[str, str, str]) -> str:
    return levels[0] if value < lo else levels[2] if value > hi else levels[1]


def instruct_log_period(it: Item) -> float:
    """The item's mean log beat period (ln s per quarter) at the notated tempo of the original score: a
    tempo-scaled copy's own, less the log of its time scale."""
    return it.stats["mean_log_period"] + it.stats.get("notated_log_scale", 0.0)


def instruct_values(items: List[Item]) -> Dict[int, Dict[str, str]]:
    """Per item: instruct levels from corpus tertiles. Tempo is relative to the piece's median tempo
    where the piece has several performances (else absolute), each taken at the notated tempo its score
    asks for: a tempo-scaled copy (:func:`augmentations`) gets its original's level, since its score's
    ``QPM`` moved with its performance."""
    by_piece: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    for it in items:
        by_piece[it.source.piece].append(instruct_log_period(it))
    rel_tempo = []
    for it in items:
        periods = by_piece[it.source.piece]
        base = float(np.median(periods)) if len(periods) > 1 else 0.0
        rel_tempo.append(-(instruct_log_period(it) - base))  # higher = faster
    features = {
        V.I_TEMPO: np.array(rel_tempo),
        V.I_DYN: np.array([it.stats["mean_velocity"] for it in items]),
        V.I_RANGE: np.array([it.stats["std_velocity"] for it in items]),
        V.I_RUBATO: np.array([it.stats["rubato"] for it in items]),
        V.I_ARTIC: np.array([it.stats["mean_art"] for it in items]),
    }
    out: Dict[int, Dict[str, str]] = {i: {} for i in range(len(items))}
    for type_, values in features.items():
        lo, hi = np.quantile(values, [1 / 3, 2 / 3]) if len(values) else (0, 0)
        for i, v in enumerate(values):
            out[i][type_] = _level(float(v), float(lo), float(hi), V.INSTRUCT_LEVELS[type_])
    return out


def prefix_tokens(levels: Dict[str, str], meta: Dict[str, str]) -> List[str]:
    """The score-side prefix: instruct levels (fixed order), then optional meta tokens."""
    out = [V.tok(t, levels[t]) for t in V.INSTRUCT_TYPES if t in levels]
    for type_, value in meta.items():
        out.append(V.tok(type_, V.meta_value(value)))
    return out


# ----------------------------------------------------------------------------------------- checks
def dedupe(results: Sequence[dict], splits: Dict[Tuple[str, str], str]) -> List[Tuple[dict, Optional[str]]]:
    """Each worker result with the reason it is skipped (None: kept), in input order.

    A file that failed is skipped with its own reason and never stands for a duplicate, so the copy
    kept of a content (the checksum of its aligned notes) is always a valid file. Of several valid
    copies the one kept is, in this order: in the evaluation split (test, then valid, then train: a copy
    left in train would leak a held-out performance into training); built whole (no warning, e.g. its
    MusicXML found); first in input (path) order."""
    rank = {"test": 0, "valid": 1, "train": 2}
    best: Dict[str, Tuple[Tuple[int, bool, int], dict]] = {}
    for i, res in enumerate(results):
        if "error" in res:
            continue
        key = (rank.get(splits.get(res["source"].piece, "train"), 2), bool(res.get("warning")), i)
        if res["checksum"] not in best or key < best[res["checksum"]][0]:
            best[res["checksum"]] = (key, res)
    out: List[Tuple[dict, Optional[str]]] = []
    for res in results:
        if "error" in res:
            out.append((res, res["error"]))
            continue
        kept = best[res["checksum"]][1]
        out.append((res, None if kept is res else f"duplicate of {kept['source'].path}"))
    return out


def empty_split_reason(items: Sequence[Item], splits: Dict[Tuple[str, str], str], cfg: BuildConfig) -> Optional[str]:
    """Why the build would write an empty split that was asked for (share above 0, or pinned test
    pieces), and how to fix it; None when every such split has a performance. An empty split makes
    ``fairseq-preprocess --{split}pref`` fail (ZeroDivisionError), so the build stops before writing."""
    built = Counter(splits[it.source.piece] for it in items if not it.augment)
    pieces = Counter(splits.values())
    shares = ",".join(f"{x:g}" for x in cfg.split)
    for i, name in enumerate(SPLITS):
        wanted = cfg.split[i] > 0 or (name == "test" and bool(cfg.test_pieces))
        if not wanted or built[name]:
            continue
        spread = ", ".join(f"{pieces[s]} {s}" for s in SPLITS)
        why = (f"its {pieces[name]} piece(s) gave no performance (every file skipped)" if pieces[name] else
               f"--split {shares} with --seed {cfg.seed} gives {sum(pieces.values())} pieces as {spread}")
        return (f"split {name!r} would be empty: {why}. Give it a larger share (e.g. --split 0.5,0.25,0.25), "
                + ("pin pieces to it with --test-pieces, " if name == "test" else "")
                + f"or a share of 0 to build without it (and leave --{name}pref out of fairseq-preprocess)")
    return None


# ----------------------------------------------------------------------------------------- build
def build(srcs: Sequence[str], out_dir: str, cfg: BuildConfig) -> Report:
    """Tokenize the match files under ``srcs`` into ``out_dir`` (module docstring). Raises ValueError for
    ``relative_tempo`` without ``notated_tempo`` (the QPM it is relative to), EmptySplitError for a split
    that would be empty; nothing is written then."""
    if cfg.relative_tempo and not cfg.notated_tempo:
        raise ValueError("relative_tempo needs notated_tempo (the QPM it is relative to)")
    report = Report()
    sources = find_sources(srcs)
    splits = assign_splits([s.piece for s in sources], cfg)
    jobs = [(s, cfg, splits.get(s.piece) == "train") for s in sources]
    results = _run(jobs, cfg)
    items: List[Item] = []
    for res, reason in dedupe(results, splits):
        src = res["source"]
        if reason:
            report.skip(src.path, reason)
            continue
        if res.get("warning"):
            report.warn(src.path, res["warning"])
        report.insertions += res["insertions"]
        report.deletions += res["deletions"]
        report.notes += res["notes"]
        items.extend(res["items"])
    if items:
        empty = empty_split_reason(items, splits, cfg)
        if empty:
            raise EmptySplitError(empty)
    levels = instruct_values(items) if cfg.instruct else {i: {} for i in range(len(items))}
    _write(out_dir, items, levels, splits, cfg, report)
    return report


def _run(jobs, cfg: BuildConfig) -> List[dict]:
    bar = dict(total=len(jobs), desc="tokenize", unit="file", disable=not cfg.progress)
    if cfg.workers <= 1:
        return [process(j) for j in tqdm(jobs, **bar)]
    with Pool(cfg.workers) as pool:
        return list(tqdm(pool.imap(process, jobs, chunksize=4), **bar))


def _write(out_dir: str, items: List[Item], levels, splits, cfg: BuildConfig, report: Report) -> None:
    """Write every output into a temporary directory, then move them in (no partial outputs)."""
    lines: Dict[str, List[Tuple[str, str]]] = {s: [] for s in SPLITS}
    manifest: List[dict] = []
    counts: Counter = Counter()
    for i, it in enumerate(items):
        split = splits[it.source.piece]
        meta = {V.COMPOSER: it.source.composer} if "composer" in cfg.meta else {}
        if "performer" in cfg.meta:
            meta[V.PERFORMER] = it.source.performer
        prefix = prefix_tokens(levels[i], meta)
        if len(prefix) != prefix_length(cfg):
            raise AssertionError(f"prefix {prefix} is not {prefix_length(cfg)} tokens long")
        head = " ".join(prefix) + " " if prefix else ""
        perf_head = " ".join(it.perf_prefix) + " " if it.perf_prefix else ""
        for start, end in it.ranges:
            counts.update(prefix)
            lines[split].append((head + " ".join(it.score_bars[start:end]),
                                 perf_head + " ".join(it.perf_bars[start:end])))
            manifest.append({"split": split, "line": len(lines[split]) - 1, "source": it.source.path,
                             "composer": it.source.composer, "title": it.source.title,
                             "performer": it.source.performer, "augment": it.augment,
                             "bar_start": start, "bar_end": end, "n_bars": len(it.score_bars),
                             "prefix": prefix, **({"perf_prefix": it.perf_prefix} if it.perf_prefix else {})})
        counts.update(it.counts)
        report.built[split] += 1
    if not manifest:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        for split in SPLITS:
            (tmp / f"{split}.score").write_text("".join(s + "\n" for s, _ in lines[split]))
            (tmp / f"{split}.perf").write_text("".join(p + "\n" for _, p in lines[split]))
        vocab = list(dict.fromkeys(V.dictionary_tokens() + sorted(counts)))
        (tmp / "dict.txt").write_text("".join(f"{t} {counts.get(t, 0)}\n" for t in vocab))
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
        (tmp / "skipped.txt").write_text("".join(f"{p}: {r}\n" for p, r in report.skipped))
        (tmp / "warnings.txt").write_text("".join(f"{p}: {r}\n" for p, r in report.warnings))
        summary = {"built": report.built, "skipped": len(report.skipped), "warnings": len(report.warnings),
                   "notes": report.notes,
                   "insertions_dropped": report.insertions, "deletions": report.deletions,
                   "lines": {s: len(lines[s]) for s in SPLITS}, "config": dataclasses.asdict(cfg)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for f in tmp.iterdir():
            os.replace(f, Path(out_dir) / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
