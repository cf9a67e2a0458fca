"""MusicXML files whose notes carry no ``id`` (most notation programs write none; (n)ASAP's files have them).

Markings and notated tempi are keyed by note id; before ``musicxml.with_note_ids`` every note of such a
file took the last note's markings (its tempo words, dynamics and slurs lost, or the final fermata on
every note) and a grace note stopped partitura's ``note_array``.
"""
from __future__ import annotations

from collections import Counter

import pytest

from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import score_file_to_tokens
from instruct_tokenizer.scorefile import load_score
from instruct_tokenizer.tempo_infer import notated_tempo


def _note(step: str, octave: int, *, ident: str = "", notations: str = "", grace: bool = False) -> str:
    attr = f' id="{ident}"' if ident else ""
    if grace:
        return (f"<note{attr}><grace/><pitch><step>{step}</step><octave>{octave}</octave></pitch>"
                "<voice>1</voice><type>eighth</type></note>")
    body = f"<notations>{notations}</notations>" if notations else ""
    return (f"<note{attr}><pitch><step>{step}</step><octave>{octave}</octave></pitch><duration>1</duration>"
            f"<voice>1</voice><type>quarter</type>{body}</note>")


def _direction(inner: str) -> str:
    return f"<direction><direction-type>{inner}</direction-type></direction>"


def _score_xml(with_ids: bool) -> str:
    """Two 4/4 bars: Adagio and p at the start, a slur over the first two quarters, a staccato third
    quarter, a grace note before the fourth; f at bar 2 and a fermata on its last quarter."""
    ids = iter(f"n{k}" for k in range(100))

    def note(*args, **kwargs) -> str:
        return _note(*args, ident=next(ids) if with_ids else "", **kwargs)

    bar1 = (_direction("<words>Adagio</words>") + _direction("<dynamics><p/></dynamics>")
            + note("C", 4, notations='<slur type="start" number="1"/>')
            + note("D", 4, notations='<slur type="stop" number="1"/>')
            + note("E", 4, notations="<articulations><staccato/></articulations>")
            + note("G", 4, grace=True) + note("F", 4))
    bar2 = (_direction("<dynamics><f/></dynamics>") + note("G", 4) + note("A", 4) + note("B", 4)
            + note("C", 5, notations="<fermata/>"))
    head = ("<attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time>"
            "</attributes>")
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list>'
            '<score-part id="P1"><part-name>Piano</part-name></score-part></part-list><part id="P1">'
            f'<measure number="1">{head}{bar1}</measure><measure number="2">{bar2}</measure>'
            "</part></score-partwise>")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCT_TOKENIZER_CACHE", str(tmp_path / "cache"))


def _write(tmp_path, name: str, with_ids: bool) -> str:
    path = tmp_path / name
    path.write_text(_score_xml(with_ids))
    return str(path)


def test_a_score_without_note_ids_keeps_each_notes_markings(tmp_path, cache):
    score = load_score(_write(tmp_path, "no_ids.musicxml", with_ids=False), markings=True)
    assert len(score.pitch) == 9 and int(score.grace.sum()) == 1  # the grace note read, not a failure
    by_pitch = {int(p): marks for p, marks, g in zip(score.pitch, score.marks, score.grace) if not g}
    group_c4, note_c4 = by_pitch[60]
    assert V.tok(V.TEMPO_WORD, "slow") in group_c4 and V.tok(V.DYN, "p") in group_c4
    assert V.tok(V.SLUR, "start") in note_c4 and V.tok(V.SLUR, "end") in by_pitch[62][1]
    assert by_pitch[64][1] == (V.tok(V.MARK, "staccato"),)
    assert V.tok(V.DYN, "f") in by_pitch[67][0]  # bar 2's first note
    assert by_pitch[65] == ((), ())  # a note without markings takes none of its neighbours'
    fermatas = [int(p) for p, (_, note) in zip(score.pitch, score.marks) if V.tok(V.MARK, "fermata") in note]
    assert fermatas == [72]  # the last note's, on no other


def test_the_same_score_with_and_without_ids_gives_the_same_tokens(tmp_path, cache):
    with_ids = score_file_to_tokens(_write(tmp_path, "ids.musicxml", True), markings=True, instruct=False)
    without = score_file_to_tokens(_write(tmp_path, "no_ids.musicxml", False), markings=True, instruct=False)
    assert without == with_ids
    counts = Counter(without)
    assert counts[V.tok(V.MARK, "fermata")] == 1 and counts[V.tok(V.TEMPO_WORD, "slow")] == 1


def test_a_score_without_note_ids_gets_its_tempo_from_its_words(tmp_path, cache):
    tokens = score_file_to_tokens(_write(tmp_path, "no_ids.musicxml", False), markings=True, instruct=False,
                                  notated_tempo=True)
    assert notated_tempo(tokens).source == "words"


def test_given_ids_are_the_same_on_every_read(tmp_path):
    import partitura as pt

    from instruct_tokenizer.musicxml import load_partitura

    path = _write(tmp_path, "no_ids.musicxml", False)
    reads = [[n.id for n in load_partitura(path).parts[0].iter_all(pt.score.GenericNote, include_subclasses=True)]
             for _ in range(2)]
    assert reads[0] == reads[1] and len(set(reads[0])) == len(reads[0]) == 9
    assert all(i.startswith("auto-p0-n") for i in reads[0])


def test_notes_that_share_an_id_keep_their_own_markings(tmp_path, cache):
    """Two notes written with the same id (a converter numbering each part from n1): the second gets its own."""
    xml = _score_xml(with_ids=True).replace('id="n2"', 'id="n0"')  # E4 (staccato) now shares C4's id (slur start)
    path = tmp_path / "dup.musicxml"
    path.write_text(xml)
    score = load_score(str(path), markings=True)
    by_pitch = {int(p): marks for p, marks, g in zip(score.pitch, score.marks, score.grace) if not g}
    assert by_pitch[64][1] == (V.tok(V.MARK, "staccato"),)
    assert V.tok(V.SLUR, "start") in by_pitch[60][1] and V.tok(V.MARK, "staccato") not in by_pitch[60][1]
