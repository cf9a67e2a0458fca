"""Score markings from MusicXML (via partitura), keyed by XML note id, cached on disk.

partitura parses MusicXML with lxml and ``resolve_entities=False``: no external entity is read and no
entity expansion happens, so hostile files (XXE, billion laughs) fail or parse inertly. Nothing here
parses XML by other means.

A marking becomes a score token (built in :mod:`vocab`) attached to the notes it applies to:
- *group* markings (one per onset group, emitted right after ``Pos``): dynamics (``Dyn``), the start and
  end of crescendo/diminuendo (``Wedge``), tempo words (``TempoWord``). A direction is attached to the
  notes at the first note onset at or after the direction's start;
- *note* markings (emitted after the note's ``Staff``): articulations and fermata (``Mark``), slur
  start/end (``Slur``).
Repeat passes share the markings of their XML note: match anchor ``n6-2`` uses XML note ``n6``.
The same parse gives each note's notated tempo (``<sound tempo>``, quarter notes per minute, in force at
the note; ``vocab.DEFAULT_QPM`` before any), for the ``QPM`` bar tokens of ``--notated-tempo`` corpora.
A printed metronome mark (``<metronome>``) without a ``<sound tempo>`` beside it is read as one
(:func:`load_partitura`; partitura itself ignores ``<metronome>``).
Time in partitura divisions (only compared, never converted).
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

from . import vocab as V

CACHE_VERSION = "markings-9"  # entries hold markings and notated tempo per note id (3: <metronome>; 4: tempo Words;
# 5: "Tempo primo" read as the first tempo word; 6: German, French and English returns; 7: ids for id-less notes;
# 8: a tempo word from the headings; 9: overflowing backups and forwards shortened)
MAX_XML_BYTES = 50 * 1024 * 1024
Marks = Tuple[Tuple[str, ...], Tuple[str, ...]]  # (group tokens, note tokens)


@dataclass
class XmlInfo:
    """What the tokenizer reads from a score's MusicXML, by XML note id."""

    marks: Dict[str, Marks]
    qpm: Dict[str, float]  # notated tempo (quarter notes per minute) in force at each note


class MusicXMLError(Exception):
    """A MusicXML file whose markings cannot be read; the message says why (caller adds the file)."""


def default_cache_dir() -> Path:
    """``$INSTRUCT_TOKENIZER_CACHE`` or ``~/.cache/instruct_tokenizer``."""
    env = os.environ.get("INSTRUCT_TOKENIZER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "instruct_tokenizer"


# ----------------------------------------------------------------------------------------- classify
def dynamic_value(text: str) -> str:
    """A loudness direction text -> a ``Dyn`` value (``other`` when unknown)."""
    t = (text or "").strip().lower().replace(".", "")
    return t if t in V.DYN_VALUES else "other"


def impulsive_value(text: str) -> str:
    t = (text or "").strip().lower()
    return "fp" if t == "fp" else "sf"


def tempo_word_value(text: str) -> str:
    """A constant tempo text (``Allegro``, ``Allegro con brio ed appassionata``, ``Langsam``, ``Modéré``) ->
    ``slow``/``moderate``/``fast``/``other`` (``vocab.TEMPO_WORD_CLASSES``: the first class with a word
    that starts a word of the text)."""
    t = (text or "").lower()
    if any(re.search(r"\b" + re.escape(w), t) for w in V.TEMPO_WORD_ELSEWHERE):
        return "other"  # "attacca subito l'Allegro": the next movement's
    for value, words in V.TEMPO_WORD_CLASSES:
        if any(re.search(r"\b" + re.escape(w), t) for w in words):
            return value
    return "other"


TEMPO_PRIMO = "tempo primo"  # a return to the first tempo word, resolved by resolve_tempo_primo: never a token
_CONSTANT_WORDS = frozenset(V.tok(V.TEMPO_WORD, c) for c, _ in V.TEMPO_WORD_CLASSES)  # TempoWord_slow|moderate|fast
_PRIMO_RE = re.compile(  # a return to the first tempo: Italian, German, French, English
    r"\btempo\s*(i|1|primo)\b|\b(primo|1\s*[°º.]?|i\.)\s*tempo\b|\bcome\s+prima\b"
    r"|\bwie\s+(vorher|zuerst|anfangs|am\s+anfang)\b|\b(des|vom)\s+anfangs?\b|\bersten?\s+zeitma(ß|ss|ass)"
    r"|\b(1er|premier)\s+mouvement\b|\bmouvement\s+(initial|du\s+d[ée]but)\b|\bas\s+at\s+first\b|\boriginal\s+tempo\b")
_ATEMPO_RE = re.compile(r"\b(im|in|a)\s+tempo\b(?!\s+d[ie]\b)|\bau\s+mouvement\b|\bwieder\s+im\s+zeitma")  # a tempo
_NOT_A_RESET_RE = re.compile(r"\bdoppio\s+movimento\b")  # twice as fast: a change, not a return


def tempo_reset_value(text: str) -> Optional[str]:
    """What a text partitura reads as a tempo reset asks: :data:`TEMPO_PRIMO` for a return to the piece's
    first tempo (``Tempo I``, ``Tempo primo``, ``Primo tempo``, ``a tempo (come prima)``, ``Wie vorher``),
    None for ``doppio movimento`` (twice as fast: a change, which partitura's grammar also reads as a
    reset), else ``atempo`` (``a tempo``, ``in tempo``: the end of a ritardando or of an episode)."""
    t = (text or "").lower()
    if _NOT_A_RESET_RE.search(t):
        return None
    return TEMPO_PRIMO if _PRIMO_RE.search(t) else "atempo"


def _words_tokens(w) -> List[Tuple[int, str]]:
    """(start time in divs, token) for a text partitura leaves as plain ``Words`` (its grammar reads
    ``Allegro molto`` but not ``Allegro con brio ed appassionata``, ``Presto (``, ``Lento, ma non troppo 1)``,
    ``Primo tempo`` nor any German, French or English tempo): a ``TempoWord`` where the text names a
    constant tempo, :data:`TEMPO_PRIMO` where it returns to the first one (``Im ersten Zeitmaß``),
    ``TempoWord_atempo`` where it returns from an episode (``Im Tempo``, ``Au mouvement``)."""
    text = getattr(w, "text", "")
    value = tempo_word_value(text)
    if value != "other":
        return [(w.start.t, V.tok(V.TEMPO_WORD, value))]
    if tempo_reset_value(text) == TEMPO_PRIMO:
        return [(w.start.t, TEMPO_PRIMO)]
    return [(w.start.t, V.tok(V.TEMPO_WORD, "atempo"))] if _ATEMPO_RE.search(text.lower()) else []


def first_constant_word(timed: List[Tuple[int, str]], until: Optional[int] = None) -> Optional[str]:
    """The earliest constant tempo word token (``TempoWord_slow|moderate|fast``) of (time, token) pairs, at
    or before ``until`` when given; None when there is none."""
    at = [(t, tok) for t, tok in timed if tok in _CONSTANT_WORDS and (until is None or t <= until)]
    return min(at, key=lambda x: x[0])[1] if at else None


def resolve_tempo_primo(timed: List[Tuple[int, str]], fallback: Optional[str] = None) -> List[Tuple[int, str]]:
    """(time, token) pairs with every :data:`TEMPO_PRIMO` replaced by the first constant tempo word at or
    before it (``Allegro ... Lento ... rit. ... Tempo I`` is the Allegro again, where ``atempo`` after the
    ritardando would have kept the Lento), else ``fallback`` (the score's first word, from another part),
    else ``TempoWord_atempo``."""
    atempo = V.tok(V.TEMPO_WORD, "atempo")
    return [(t, (first_constant_word(timed, until=t) or fallback or atempo) if tok == TEMPO_PRIMO else tok)
            for t, tok in timed]


def _direction_tokens(d, pt) -> List[Tuple[int, str]]:
    """(start time in divs, token) pairs for one partitura direction."""
    s = pt.score
    start = d.start.t
    end = d.end.t if d.end is not None else None
    if isinstance(d, s.ConstantLoudnessDirection):
        return [(start, V.tok(V.DYN, dynamic_value(d.text)))]
    if isinstance(d, s.ImpulsiveLoudnessDirection):
        return [(start, V.tok(V.DYN, impulsive_value(d.text)))]
    if isinstance(d, (s.IncreasingLoudnessDirection, s.DecreasingLoudnessDirection)):
        kind = "cresc" if isinstance(d, s.IncreasingLoudnessDirection) else "dim"
        out = [(start, V.tok(V.WEDGE, kind))]
        if end is not None and end > start:
            out.append((end, V.tok(V.WEDGE, "end")))
        return out
    if isinstance(d, s.ResetTempoDirection):
        value = tempo_reset_value(d.text)
        if value is None:
            return []
        return [(start, TEMPO_PRIMO if value == TEMPO_PRIMO else V.tok(V.TEMPO_WORD, value))]
    if isinstance(d, s.DecreasingTempoDirection):
        return [(start, V.tok(V.TEMPO_WORD, "rit"))]
    if isinstance(d, s.IncreasingTempoDirection):
        return [(start, V.tok(V.TEMPO_WORD, "accel"))]
    if isinstance(d, s.ConstantTempoDirection):
        return [(start, V.tok(V.TEMPO_WORD, tempo_word_value(d.text)))]
    return []


def _note_tokens(note) -> List[str]:
    out = []
    for a in getattr(note, "articulations", None) or []:
        value = V.MARK_ALIASES.get(a)
        if value:
            out.append(V.tok(V.MARK, value))
    if getattr(note, "fermata", None) is not None:
        out.append(V.tok(V.MARK, "fermata"))
    if getattr(note, "slur_starts", None):
        out.append(V.tok(V.SLUR, "start"))
    if getattr(note, "slur_stops", None):
        out.append(V.tok(V.SLUR, "end"))
    return out


def canonical(tokens) -> Tuple[str, ...]:
    """Distinct marking tokens in vocabulary order (so equal sets give equal token strings)."""
    rank = V.MARKING_RANK
    return tuple(sorted(set(tokens), key=lambda t: rank.get(t, len(rank))))


# ----------------------------------------------------------------------------------------- parse
def parse_markings(path: str) -> Dict[str, Marks]:
    """Markings per XML note id, read by partitura (entities unresolved). Raises MusicXMLError."""
    return parse_xml_info(path).marks


def parse_xml_info(path: str) -> XmlInfo:
    """Markings and notated tempo per XML note id, read by partitura (entities unresolved).
    Raises MusicXMLError."""
    import partitura as pt

    p = Path(path)
    if not p.is_file():
        raise MusicXMLError("file not found")
    size = p.stat().st_size
    if size == 0:
        raise MusicXMLError("empty file")
    if size > MAX_XML_BYTES:
        raise MusicXMLError(f"file larger than {MAX_XML_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xml = _xml_bytes(str(p))  # read (and unpacked) once: the notes and the headings
            parts = list(partitura_of(xml).parts)
            marks = _markings_of_parts(parts, pt, lambda: heading_tempo_word(xml))
            return XmlInfo(marks, _qpm_of_parts(parts, pt))
    except MusicXMLError:
        raise
    except Exception as e:  # partitura/lxml raise many types on hostile or broken XML
        raise MusicXMLError(f"cannot parse MusicXML ({type(e).__name__}: {str(e)[:120]})") from None


def _xml_bytes(path: str) -> bytes:
    """The score document of a MusicXML file or of a compressed .mxl (its container's root file), at most
    ``MAX_XML_BYTES`` unpacked. Raises MusicXMLError."""
    try:
        if not zipfile.is_zipfile(path):
            return Path(path).read_bytes()
        with zipfile.ZipFile(path) as z:
            with z.open("META-INF/container.xml") as container:
                root = re.search(rb'full-path="([^"]+)"', container.read(MAX_XML_BYTES))
            if root is None:
                raise MusicXMLError("compressed MusicXML without a root file in META-INF/container.xml")
            name = root.group(1).decode("utf-8", "replace")
            if z.getinfo(name).file_size > MAX_XML_BYTES:
                raise MusicXMLError(f"compressed MusicXML of more than {MAX_XML_BYTES // 2**20} MiB unpacked")
            return z.read(name)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise MusicXMLError(f"cannot read: {e}") from None


def metronome_qpm(metronome) -> Optional[float]:
    """A ``<metronome>`` element's tempo in quarter notes per minute (``<beat-unit>`` with its
    ``<beat-unit-dot>``s times ``<per-minute>``, its first number: "c. 60" is 60), or None where it states
    none (a metric modulation, unit = unit, has no ``<per-minute>``; an unknown unit)."""
    unit, per_minute = metronome.findtext("beat-unit"), metronome.findtext("per-minute")
    number = re.search(r"\d+(?:\.\d+)?", per_minute or "")
    if unit is None or number is None or unit.strip() not in _UNIT_QUARTERS:
        return None
    dots = len(metronome.findall("beat-unit-dot"))
    return qpm_of_tempo(float(number.group()), unit.strip() + "." * dots) or None


def with_metronome_sound(xml: bytes) -> Optional[bytes]:
    """The MusicXML document with a ``<sound tempo>`` (quarter notes per minute) added to every direction
    whose printed ``<metronome>`` mark has none, or None when no direction needs one. Parsed with entity
    resolution off."""
    from lxml import etree

    if b"<metronome" not in xml:
        return None
    parser = etree.XMLParser(resolve_entities=False, huge_tree=False, no_network=True)
    root = etree.fromstring(xml, parser)
    changed = False
    for direction in root.iter("direction"):
        if any(s.get("tempo") for s in direction.findall("sound")):
            continue
        qpm = next((q for q in map(metronome_qpm, direction.iter("metronome")) if q), None)
        if qpm:
            etree.SubElement(direction, "sound", tempo=f"{qpm:g}")
            changed = True
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") if changed else None


_MOVE = re.compile(rb"<(?:backup|forward)>\s*<duration>\s*(\d+)")
_DIVISIONS = re.compile(rb"<divisions>\s*(\d+)")
MOVE_OVERFLOW_QUARTERS = 64  # a <backup> or <forward> longer than this can only be a writer's overflow


def with_backups_in_measure(xml: bytes) -> Optional[bytes]:
    """The MusicXML document with every ``<backup>`` that steps back past its measure's start shortened to
    reach the start, and the ``<forward>`` after it that returns past everything written in the measure
    shortened by the same amount; None when no move is longer than ``MOVE_OVERFLOW_QUARTERS`` quarters (the
    only files this reads further). A writer that computes positions without clamping writes such pairs:
    (n)ASAP's Beethoven op. 57/i steps back 667 quarters and forward 664 in twelve measures, to put a
    run 3 quarters into the bar. partitura clamps the backup alone and puts the run 664 quarters on (the
    score 2,285 quarters long instead of 1,567.5); with the pair shortened the run is where the writer's
    arithmetic puts it. Units: the file's divisions. Parsed with entity resolution off."""
    divisions = [int(d) for d in _DIVISIONS.findall(xml)]
    moves = [int(d) for d in _MOVE.findall(xml)]
    if not moves or not divisions or max(moves) <= MOVE_OVERFLOW_QUARTERS * max(divisions):
        return None
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, huge_tree=False, no_network=True)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError:
        return None  # partitura's reading says why
    changed = False
    for measure in root.iter("measure"):
        changed |= _mend_measure_moves(measure)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") if changed else None


def _mend_measure_moves(measure) -> bool:
    """Shorten, in place, one measure's backups past its start and the forwards that undo them (see
    :func:`with_backups_in_measure`); whether it changed any. Positions as partitura counts them: a note
    advances by its ``<duration>`` unless it is a chord's later note or a grace note."""
    position = extent = owed = 0  # divisions from the measure's start; owed: what clamped backups cut
    changed = False
    for element in measure:
        duration = element.find("duration")
        length = int(duration.text) if duration is not None and (duration.text or "").strip().isdigit() else 0
        if element.tag == "note" and element.find("chord") is None and element.find("grace") is None:
            position += length
        elif element.tag == "backup" and length > position:
            owed += length - position
            duration.text, position, changed = str(position), 0, True
        elif element.tag == "backup":
            position -= length
        elif element.tag == "forward":
            if owed and position + length > extent:
                cut = min(owed, length)
                owed, length = owed - cut, length - cut
                duration.text, changed = str(length), True
            position += length
        extent = max(extent, position)
    return changed


HEADING_CREDIT_TYPES = ("title", "subtitle")  # credits whose words may name the movement's tempo ("II. Andante")


def heading_tempo_word(xml: bytes) -> Optional[str]:
    """The ``TempoWord`` token of a tempo word in the score's headings, None when they name none: the
    ``<movement-title>``, then the title and subtitle credits (a credit that states no type too; not the
    composer's, lyricist's or rights line), then the ``<work-title>``. Such a score may print its tempo only
    there ("Second movement, Poco adagio": C. P. E. Bach's H186 in music21's corpus); :func:`parse_xml_info`
    reads it where the music states no tempo word. Parsed with entity resolution off."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, huge_tree=False, no_network=True)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError:
        return None  # partitura's reading says why
    texts = [e.text for e in root.iter("movement-title")]
    for credit in root.iter("credit"):
        types = [t.text for t in credit.iter("credit-type")]
        if not types or any(t in HEADING_CREDIT_TYPES for t in types):
            texts += [w.text for w in credit.iter("credit-words")]
    texts += [e.text for e in root.iter("work-title")]
    for text in texts:
        token = V.tok(V.TEMPO_WORD, tempo_word_value(text or ""))
        if token in _CONSTANT_WORDS:
            return token
    return None


def load_partitura(path: str):
    """``partitura.load_musicxml`` of the file's score document (read once, .mxl unpacked here; entities
    unresolved), its printed metronome marks read as tempi (:func:`with_metronome_sound`): partitura reads
    ``<sound tempo>`` and ignores ``<metronome>``, which some notation programs write alone; a writer's
    overflowing backup and forward pairs shortened (:func:`with_backups_in_measure`). Raises MusicXMLError
    for a file it cannot read."""
    return partitura_of(_xml_bytes(path))


def partitura_of(xml: bytes):
    """:func:`load_partitura` of a score document already read (:func:`_xml_bytes`)."""
    import partitura as pt

    xml = with_backups_in_measure(xml) or xml
    return with_note_ids(pt.load_musicxml(io.BytesIO(with_metronome_sound(xml) or xml)), pt)


AUTO_ID_PREFIX = "auto"  # the ids with_note_ids gives notes the file names none: auto-p{part}-n{k}


def with_note_ids(score: "partitura.score.Score", pt: ModuleType) -> "partitura.score.Score":
    """The partitura score with a unique id on every note: a note with none, or with one an earlier note
    already has, gets ``auto-p{part}-n{k}``, k counting the part's notes in document order (the same on
    every read of the file). MusicXML's note ``id`` attribute is optional and most notation programs write
    none ((n)ASAP's files have them, all unique: its match files name them). Markings and notated tempi are
    keyed by note id (:func:`parse_xml_info`), so without ids every note took the last note's markings (a
    score's dynamics, slurs and tempo words lost, or the final fermata on every note), and partitura's
    ``note_array`` fails on such a score's grace notes."""
    notes_of = [list(part.iter_all(pt.score.GenericNote, include_subclasses=True)) for part in score.parts]
    taken = {n.id for notes in notes_of for n in notes if n.id}
    seen = set()
    for part_index, notes in enumerate(notes_of):
        for k, note in enumerate(notes):
            if not note.id or note.id in seen:
                note.id = f"{AUTO_ID_PREFIX}-p{part_index}-n{k}"
                while note.id in taken:  # a file that names its own notes so: keep the new id unique
                    note.id += "x"
                taken.add(note.id)
            seen.add(note.id)
    return score


def _timed_tokens(part, pt) -> List[Tuple[int, str]]:
    """(start time in divs, group token) of a part's directions and tempo-word texts, "Tempo primo" unresolved."""
    timed = [x for d in part.iter_all(pt.score.Direction, include_subclasses=True) for x in _direction_tokens(d, pt)]
    return timed + [x for w in part.iter_all(pt.score.Words) for x in _words_tokens(w)]


def _markings_of_parts(parts, pt, heading_word: Callable[[], Optional[str]] = lambda: None) -> Dict[str, Marks]:
    """Markings per note id. ``heading_word()``: the ``TempoWord`` the score's headings name
    (:func:`heading_tempo_word`), read only where the music states no constant tempo word and then given to
    the first note of the first part with notes."""
    out: Dict[str, Marks] = {}
    timed_by_part = [_timed_tokens(part, pt) for part in parts]
    first_word = next((w for w in map(first_constant_word, timed_by_part) if w is not None), None)
    from_heading = heading_word() if first_word is None else None
    first_word = first_word or from_heading
    for part, timed in zip(parts, timed_by_part):
        notes = [n for n in part.iter_all(pt.score.GenericNote, include_subclasses=True)
                 if isinstance(n, pt.score.Note)]
        if not notes:
            continue
        onsets = sorted({n.start.t for n in notes})
        if from_heading is not None:  # at this part's first onset, once
            timed, from_heading = [(onsets[0], from_heading)] + timed, None
        group: Dict[int, List[str]] = {}
        for t, token in resolve_tempo_primo(timed, fallback=first_word):
            at = _first_at_or_after(onsets, t)
            if at is not None:
                group.setdefault(at, []).append(token)
        for n in notes:
            out[str(n.id)] = (canonical(group.get(n.start.t, ())), canonical(_note_tokens(n)))
    if not out:
        raise MusicXMLError("empty score (no notes)")
    return out


_UNIT_QUARTERS = {"w": 4.0, "h": 2.0, "q": 1.0, "e": 0.5, "s": 0.25, "whole": 4.0, "half": 2.0,
                  "quarter": 1.0, "eighth": 0.5, "16th": 0.25}


def qpm_of_tempo(bpm: float, unit) -> float:
    """A partitura ``Tempo`` (beats per minute of ``unit``; MusicXML ``<sound tempo>`` has no unit and
    is in quarter notes per minute) -> quarter notes per minute. Dotted units (``q.``) count 1.5x."""
    if not unit:
        return float(bpm)
    base = str(unit).rstrip(".")
    dots = len(str(unit)) - len(base)
    quarters = _UNIT_QUARTERS.get(base, 1.0) * (2.0 - 0.5 ** dots)
    return float(bpm) * quarters


def _qpm_of_parts(parts, pt) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for part in parts:
        changes = sorted((t.start.t, qpm_of_tempo(t.bpm, t.unit)) for t in part.iter_all(pt.score.Tempo))
        times = [t for t, _ in changes]
        for n in part.iter_all(pt.score.GenericNote, include_subclasses=True):
            i = bisect.bisect_right(times, n.start.t) - 1
            out[str(n.id)] = changes[i][1] if i >= 0 else V.DEFAULT_QPM
    return out


def _first_at_or_after(sorted_times: List[int], t: int) -> Optional[int]:
    i = bisect.bisect_left(sorted_times, t)
    return sorted_times[i] if i < len(sorted_times) else None


# ----------------------------------------------------------------------------------------- cache
def load_markings(path: str, cache_dir: Optional[str] = None) -> Dict[str, Marks]:
    """:func:`parse_markings` through the on-disk cache (:func:`load_xml_info`)."""
    return load_xml_info(path, cache_dir).marks


def load_xml_info(path: str, cache_dir: Optional[str] = None) -> XmlInfo:
    """:func:`parse_xml_info` through an on-disk JSON cache keyed by the file's content hash."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise MusicXMLError(f"cannot read: {e.strerror}") from None
    key = hashlib.sha1(CACHE_VERSION.encode() + data).hexdigest()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = cache / "markings" / f"{key}.json"
    if entry.is_file():
        try:
            raw = json.loads(entry.read_text())
            return XmlInfo({k: (tuple(g), tuple(n)) for k, (g, n) in raw["marks"].items()},
                           {k: float(v) for k, v in raw["qpm"].items()})
        except (ValueError, OSError, KeyError, TypeError):
            pass  # a broken cache entry is rebuilt
    info = parse_xml_info(path)
    _write_atomic(entry, json.dumps({"marks": {k: [list(g), list(n)] for k, (g, n) in info.marks.items()},
                                     "qpm": info.qpm}))
    return info


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation only


def for_anchor(by_id: Dict, anchor: str):
    """The entry of a match anchor: the id itself, else without its repeat suffix (``n6-2`` -> ``n6``);
    None when neither is there."""
    got = by_id.get(anchor)
    if got is None:
        base, sep, suffix = anchor.rpartition("-")
        if sep and suffix.isdigit():
            got = by_id.get(base)
    return got


def marks_for_anchor(marks: Dict[str, Marks], anchor: str) -> Marks:
    """Markings of a match anchor (:func:`for_anchor`); none when the id is unknown."""
    got = for_anchor(marks, anchor)
    return got if got is not None else ((), ())


def find_score_xml(match_path: str) -> Optional[Path]:
    """The MusicXML of a match file: (n)ASAP ``xml_score.musicxml`` beside it, or Vienna 4x22
    ``../musicxml/<piece>.musicxml`` (piece = the file stem without ``_pNN``)."""
    p = Path(match_path)
    beside = p.parent / "xml_score.musicxml"
    if beside.is_file():
        return beside
    piece = p.stem.rpartition("_")[0] or p.stem
    for cand in (p.parent.parent / "musicxml" / f"{piece}.musicxml", p.parent / f"{piece}.musicxml"):
        if cand.is_file():
            return cand
    return None


def xml_info_of_match(match_path: str, cache_dir: Optional[str] = None) -> Tuple[Optional[XmlInfo], Optional[str]]:
    """(markings and notated tempo of a match file's MusicXML, None), or (None, reason) when there is no
    readable MusicXML (:func:`find_score_xml`, :func:`load_xml_info`); the caller then goes on without
    markings and with the default notated tempo (``vocab.DEFAULT_QPM``)."""
    xml = find_score_xml(match_path)
    if xml is None:
        return None, "no MusicXML beside it"
    try:
        return load_xml_info(str(xml), cache_dir), None
    except MusicXMLError as e:
        return None, f"{xml}: {e}"
