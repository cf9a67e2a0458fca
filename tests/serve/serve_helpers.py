"""Shared by the serve tests: a short score MIDI and the released model, loaded once per process."""
import functools
from pathlib import Path

from museformer.render import DEFAULT_CHECKPOINT


def write_short_score(path: Path, bars: int = 6) -> Path:
    """A 4/4 score MIDI of ``bars`` bars at 90 quarters per minute: a left-hand note and a right-hand
    two-note chord on every beat, a held unison in bar 1 (two notes of one pitch at one onset, struck
    once), so every group has notes and the unison rule shows in the note count."""
    import miditoolkit

    tpq = 480
    midi = miditoolkit.MidiFile(ticks_per_beat=tpq)
    midi.tempo_changes = [miditoolkit.TempoChange(90.0, 0)]
    midi.time_signature_changes = [miditoolkit.TimeSignature(4, 4, 0)]
    right, left = miditoolkit.Instrument(0, name="right"), miditoolkit.Instrument(0, name="left")
    for beat in range(bars * 4):
        start, end = beat * tpq, (beat + 1) * tpq
        root = 60 + (beat * 2) % 12
        right.notes += [miditoolkit.Note(70, root, start, end), miditoolkit.Note(70, root + 4, start, end)]
        left.notes.append(miditoolkit.Note(60, 48 + (beat % 4) * 2, start, end))
    left.notes.append(miditoolkit.Note(60, 48, 0, 2 * tpq))  # unison with the first left-hand note
    midi.instruments = [right, left]
    midi.dump(str(path))
    return path


def released_renderer(**rules):
    """The released model with these decoding rules (``Renderer.from_checkpoint`` keywords), loaded once."""
    return _load(tuple(sorted(rules.items())))


@functools.lru_cache(maxsize=4)
def _load(rules):
    from museformer.render import Renderer

    return Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), **dict(rules))


def cached_loader(checkpoint, data=None, **rules):
    """A ``Studio`` loader that shares the renderers of :func:`released_renderer` across tests."""
    assert checkpoint == str(DEFAULT_CHECKPOINT) and data is None
    return released_renderer(**rules)
