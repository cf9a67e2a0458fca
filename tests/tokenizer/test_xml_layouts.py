"""MusicXML layouts that notation programs write and (n)ASAP's files do not: a piano score as one part per
hand, repeats whose endings partitura cannot follow, and parts whose repeats disagree."""
from __future__ import annotations

import logging

import pytest

from instruct_tokenizer.encode import score_file_to_tokens
from instruct_tokenizer.scorefile import load_score

HEAD = ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list>{parts}</part-list>')
ATTRIBUTES = ("<attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time>"
              "{staves}</attributes>")


def _notes(steps: str, octave: int, staff: int = 0) -> str:
    tag = f"<staff>{staff}</staff>" if staff else ""
    return "".join(f"<note><pitch><step>{s}</step><octave>{octave}</octave></pitch><duration>1</duration>"
                   f"<voice>1</voice><type>quarter</type>{tag}</note>" for s in steps)


def _one_part_two_staves() -> str:
    bar = (ATTRIBUTES.format(staves="<staves>2</staves>") + _notes("CDEF", 5, staff=1)
           + "<backup><duration>4</duration></backup>" + _notes("CDEF", 3, staff=2))
    return (HEAD.format(parts='<score-part id="P1"><part-name>Piano</part-name></score-part>')
            + f'<part id="P1"><measure number="1">{bar}</measure></part></score-partwise>')


def _one_part_per_hand() -> str:
    parts = ('<score-part id="P1"><part-name>Right</part-name></score-part>'
             '<score-part id="P2"><part-name>Left</part-name></score-part>')
    right = f'<part id="P1"><measure number="1">{ATTRIBUTES.format(staves="")}{_notes("CDEF", 5)}</measure></part>'
    left = f'<part id="P2"><measure number="1">{ATTRIBUTES.format(staves="")}{_notes("CDEF", 3)}</measure></part>'
    return HEAD.format(parts=parts) + right + left + "</score-partwise>"


def test_a_piano_score_written_as_one_part_per_hand_keeps_its_hands_apart(tmp_path):
    per_hand, grand = tmp_path / "per_hand.musicxml", tmp_path / "grand.musicxml"
    per_hand.write_text(_one_part_per_hand())
    grand.write_text(_one_part_two_staves())
    score = load_score(str(per_hand))
    assert {int(p): int(s) for p, s in zip(score.pitch, score.staff)} == {
        72: 1, 74: 1, 76: 1, 77: 1, 48: 2, 50: 2, 52: 2, 53: 2}
    assert score_file_to_tokens(str(per_hand), instruct=False) == score_file_to_tokens(str(grand), instruct=False)


def _repeated_with_ending(stop_number: str) -> str:
    """Bar 1, then bar 2 under a first ending with a backward repeat, then bar 3 under a second ending:
    played 1 2 1 3. ``stop_number`` "": the first ending's stop has an empty number and no start (as
    Finale's Dolet exports write it: music21's corpus, Mozart's K458)."""
    bar1 = ('<measure number="1">' + ATTRIBUTES.format(staves="") + _notes("CDEF", 4) + "</measure>")
    start = '<barline location="left"><ending number="1" type="start"/></barline>' if stop_number else ""
    bar2 = (f'<measure number="2">{start}'
            + _notes("GABG", 4) + f'<barline location="right"><bar-style>light-heavy</bar-style>'
            f'<ending number="{stop_number}" type="stop"/><repeat direction="backward"/></barline></measure>')
    bar3 = ('<measure number="3"><barline location="left"><ending number="2" type="start"/></barline>'
            + _notes("CCCC", 5) + '<barline location="right"><ending number="2" type="discontinue"/></barline>'
            "</measure>")
    return (HEAD.format(parts='<score-part id="P1"><part-name>Piano</part-name></score-part>')
            + f'<part id="P1">{bar1}{bar2}{bar3}</part></score-partwise>')


def test_repeats_partitura_cannot_unfold_are_read_as_written_with_a_warning(tmp_path, caplog):
    good, bad = tmp_path / "good.musicxml", tmp_path / "bad.musicxml"
    good.write_text(_repeated_with_ending("1"))
    bad.write_text(_repeated_with_ending(""))  # as Finale's Dolet exports write an ending's stop
    assert len(load_score(str(good)).pitch) == 16  # 1 2 1 3
    with caplog.at_level(logging.WARNING, logger="instruct_tokenizer.scorefile"):
        as_written = load_score(str(bad))
    assert len(as_written.pitch) == 12  # 1 2 3: each bar once
    assert any(str(bad) in r.getMessage() and "repeats could not be unfolded" in r.getMessage()
               for r in caplog.records)


def _two_repeated_halves_per_hand(left_first_bar: str) -> str:
    """One part per hand, four bars, ||: 1 2 :||: 3 4 :||, each hand's repeats on its own bar lines; the
    left hand's first bar holds ``left_first_bar``'s quarters (three: a short bar, as a writer may leave)."""
    def hand(pid: str, octave: int, first: str) -> str:
        return (f'<part id="{pid}"><measure number="1">{ATTRIBUTES.format(staves="")}{_notes(first, octave)}'
                f'</measure><measure number="2">{_notes("GABG", octave)}<barline location="right">'
                '<repeat direction="backward"/></barline></measure><measure number="3"><barline location="left">'
                f'<repeat direction="forward"/></barline>{_notes("CCCC", octave)}</measure><measure number="4">'
                f'{_notes("DDDD", octave)}<barline location="right"><repeat direction="backward"/></barline>'
                '</measure></part>')
    parts = ('<score-part id="P1"><part-name>Right</part-name></score-part>'
             '<score-part id="P2"><part-name>Left</part-name></score-part>')
    return HEAD.format(parts=parts) + hand("P1", 5, "CDEF") + hand("P2", 3, left_first_bar) + "</score-partwise>"


def test_repeats_of_parts_whose_bars_disagree_unfold_once(tmp_path, caplog):
    """Every part carries its own repeats; where one part's bar is short its copies fall off the first
    part's bar lines, and partitura unfolded the overlapping copies into each other (182 notes here, 62,866
    from 1,946 in a Haydn quartet movement). The first part's repeats are unfolded, once, with a warning
    naming the file; parts whose bars agree unfold as before, without one."""
    even, short = tmp_path / "even.musicxml", tmp_path / "short.musicxml"
    even.write_text(_two_repeated_halves_per_hand("CDEF"))
    short.write_text(_two_repeated_halves_per_hand("CDE"))
    with caplog.at_level(logging.WARNING, logger="instruct_tokenizer.scorefile"):
        assert len(load_score(str(even)).pitch) == 64  # 2 hands x 16 notes, each half twice
        assert not caplog.records
        # the right hand 32; the left's notes within the first part's spans [0, 8) and [8, 16) quarters,
        # each twice: 8 (C D E, G A B G, C) and 7 (C C C, D D D D)
        assert len(load_score(str(short)).pitch) == 32 + 2 * 8 + 2 * 7
    assert [r.getMessage() for r in caplog.records] == [
        f"{short}: 2 repeat(s) of its other parts fall off the first part's bar lines (bars of unequal length "
        "across parts); the first part's repeats unfolded"]


@pytest.mark.parametrize("stop_number", ["1", ""])
def test_unfold_repeats_off_reads_each_bar_once(tmp_path, stop_number):
    path = tmp_path / "score.musicxml"
    path.write_text(_repeated_with_ending(stop_number))
    assert len(load_score(str(path), unfold_repeats=False).pitch) == 12


def _with_heading(heading: str, words: str = "") -> str:
    """One 4/4 bar of quarters under ``heading`` (MusicXML header elements), ``words`` (a direction's text)
    before its first note."""
    direction = f"<direction><direction-type><words>{words}</words></direction-type></direction>" if words else ""
    bar = '<measure number="1">' + ATTRIBUTES.format(staves="") + direction + _notes("CDEF", 4) + "</measure>"
    return (HEAD.format(parts='<score-part id="P1"><part-name>Piano</part-name></score-part>')
            .replace("<part-list>", heading + "<part-list>")
            + f'<part id="P1">{bar}</part></score-partwise>')


@pytest.mark.parametrize("heading, word", [
    ("<movement-title>II. Adagio</movement-title>", "slow"),
    ('<credit page="1"><credit-type>subtitle</credit-type><credit-words>Second movement, Poco adagio'
     "</credit-words></credit>", "slow"),
    ('<credit page="1"><credit-words>Rondo. Allegro</credit-words></credit>', "fast"),
    ("<work><work-title>Andante favori</work-title></work>", "moderate"),
    ('<credit page="1"><credit-type>composer</credit-type><credit-words>Lento Allegro</credit-words></credit>', None),
    ("<movement-title>Menuetto</movement-title>", None),
])
def test_a_tempo_word_in_the_headings_is_the_scores_where_the_music_states_none(tmp_path, heading, word):
    from instruct_tokenizer import vocab as V
    from instruct_tokenizer.tempo_infer import notated_tempo

    path = tmp_path / "heading.musicxml"
    path.write_text(_with_heading(heading))
    tokens = score_file_to_tokens(str(path), markings=True, instruct=False, notated_tempo=True)
    words = [t for t in tokens if t.startswith(V.TEMPO_WORD + "_")]
    assert words == ([V.tok(V.TEMPO_WORD, word)] if word else [])
    assert notated_tempo(tokens).source == ("words" if word else "content")


def test_the_musics_own_tempo_word_wins_over_the_headings(tmp_path):
    from instruct_tokenizer import vocab as V

    path = tmp_path / "both.musicxml"
    path.write_text(_with_heading("<movement-title>Allegro</movement-title>", words="Adagio"))
    tokens = score_file_to_tokens(str(path), markings=True, instruct=False)
    assert [t for t in tokens if t.startswith(V.TEMPO_WORD + "_")] == [V.tok(V.TEMPO_WORD, "slow")]


def _overflowing_moves(back: int, forward: int) -> str:
    """Bar 1: four quarters in the right hand, then a backup of ``back`` quarters, an invisible quarter and
    a forward of ``forward`` quarters before the left hand's half note; bar 2: a whole note. A writer that
    does not clamp at the bar's start means the half note 4 - back + 1 + forward quarters in."""
    hidden = ('<note print-object="no"><pitch><step>G</step><octave>4</octave></pitch><duration>1</duration>'
              '<voice>2</voice><type>quarter</type><staff>1</staff></note>')
    half = ('<note><pitch><step>C</step><octave>3</octave></pitch><duration>2</duration><voice>5</voice>'
            '<type>half</type><staff>2</staff></note>')
    whole = ('<note><pitch><step>C</step><octave>4</octave></pitch><duration>4</duration><voice>1</voice>'
             '<type>whole</type><staff>1</staff></note>')
    bar1 = (ATTRIBUTES.format(staves="<staves>2</staves>") + _notes("CDEF", 5, staff=1)
            + f"<backup><duration>{back}</duration></backup>{hidden}<forward><duration>{forward}</duration>"
            f"</forward>{half}")
    return (HEAD.format(parts='<score-part id="P1"><part-name>Piano</part-name></score-part>')
            + f'<part id="P1"><measure number="1">{bar1}</measure><measure number="2">{whole}</measure></part>'
            "</score-partwise>")


@pytest.mark.parametrize("back, forward, half_at", [(100004, 100001, 2), (5, 1, 2)])
def test_a_writers_overflowing_backup_and_forward_are_read_as_it_counts(tmp_path, back, forward, half_at):
    """(n)ASAP's op. 57/i: a backup of hundreds of quarters past the bar's start and a forward that undoes
    it put the left hand where the writer's unclamped arithmetic does (partitura alone: 100,001 quarters
    on, the score that long). A backup only a little too long is left to partitura (clamped at the
    bar's start), its forward as written."""
    from instruct_tokenizer.score import score_timeline

    path = tmp_path / "moves.musicxml"
    path.write_text(_overflowing_moves(back, forward))
    tl = score_timeline(score_file_to_tokens(str(path), instruct=False))
    assert tl.n_bars == 2
    onset_of = {int(p): float(tl.group_q[g]) for p, g in zip(tl.note_pitch, tl.note_group)}
    assert onset_of[48] == half_at and onset_of[60] == 4.0


def test_op57s_musicxml_has_its_264_bars(nasap, tmp_path, monkeypatch):
    """(n)ASAP's MusicXML of op. 57/i, whose twelve overflowing backup and forward pairs partitura alone reads
    as 2,285 quarters in 316 bars."""
    from instruct_tokenizer.score import score_timeline

    monkeypatch.setenv("INSTRUCT_TOKENIZER_CACHE", str(tmp_path))
    path = nasap / "Beethoven" / "Piano_Sonatas" / "23-1" / "xml_score.musicxml"
    tl = score_timeline(score_file_to_tokens(str(path), instruct=False))
    assert tl.n_bars == 264 and tl.group_q[-1] == 1567.5
