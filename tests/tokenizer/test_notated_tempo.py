"""Notated tempo (``QPM`` bar tokens): from score MIDI set-tempo events and MusicXML ``<sound tempo>``,
in every bar header, adding no score time and no performance slots; markings dropout; render-time
detection of the score features a model was trained with."""
from types import SimpleNamespace

import miditoolkit
import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.build import BuildConfig, Source, drops_markings
from instruct_tokenizer.encode import encode_match, score_file_to_tokens, split_bars
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.match import load_match
from instruct_tokenizer.musicxml import load_xml_info
from instruct_tokenizer.score import score_timeline

MATCH = VIENNA / "match" / "Chopin_op10_no3_p01.match"
XML = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"


def _score_midi(path, tempi):
    """Eight 4/4 bars of quarter notes; ``tempi``: (bar, quarter notes per minute) set-tempo events."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    inst = miditoolkit.Instrument(program=0)
    inst.notes = [miditoolkit.Note(velocity=64, pitch=60 + k % 12, start=480 * k, end=480 * (k + 1))
                  for k in range(32)]
    midi.instruments = [inst]
    midi.time_signature_changes = [miditoolkit.TimeSignature(4, 4, 0)]
    midi.tempo_changes = [miditoolkit.TempoChange(qpm, 4 * 480 * bar) for bar, qpm in tempi]
    midi.dump(str(path))
    return path


def _bar_qpm(tokens):
    _, bars = split_bars(tokens)
    return [[t for t in bar if token_type(t) == V.QPM] for bar in bars]


@pytest.mark.parametrize("qpm,expected", [(120, 120), (119.0, 120), (232, 227), (1000, 381), (5, 21),
                                          (0, 120), (float("nan"), 120)])
def test_quantise_qpm_nearest_in_log_tempo(qpm, expected):
    assert V.quantise_qpm(qpm) == expected


def test_score_midi_tempo_in_every_bar_header(tmp_path):
    path = _score_midi(tmp_path / "score.mid", [(0, 90), (3, 150)])
    with_qpm = score_file_to_tokens(str(path), notated_tempo=True)
    plain = score_file_to_tokens(str(path))
    assert _bar_qpm(with_qpm) == [["QPM_90"]] * 3 + [["QPM_151"]] * 5
    assert [t for t in with_qpm if token_type(t) != V.QPM] == plain
    assert target_slots(with_qpm) == target_slots(plain)  # no performance slots
    a, b = score_timeline(with_qpm), score_timeline(plain)
    np.testing.assert_array_equal(a.group_q, b.group_q)  # no score time


def test_score_midi_without_tempo_is_default(tmp_path):
    path = _score_midi(tmp_path / "score.mid", [])
    assert {t for bar in _bar_qpm(score_file_to_tokens(str(path), notated_tempo=True)) for t in bar} == {"QPM_120"}


def test_match_with_xml_tempo_changes_only_the_score_headers(tmp_path):
    info = load_xml_info(str(XML), str(tmp_path))
    mf = load_match(str(MATCH))
    plain, with_qpm = encode_match(mf), encode_match(mf, qpm=info.qpm)
    per_bar = _bar_qpm(with_qpm.score)
    assert all(len(b) == 1 for b in per_bar)
    assert {b[0] for b in per_bar} <= {V.tok(V.QPM, v) for v in V.QPM_VALUES}
    assert [t for t in with_qpm.score if token_type(t) != V.QPM] == plain.score
    assert with_qpm.perf == plain.perf


def test_match_xml_and_musicxml_paths_agree_on_the_first_bar(tmp_path):
    """The training path (match anchors -> XML note ids) and the rendering path (the XML itself) read
    the same notated tempo."""
    info = load_xml_info(str(XML), str(tmp_path))
    train = _bar_qpm(encode_match(load_match(str(MATCH)), qpm=info.qpm).score)
    render = _bar_qpm(score_file_to_tokens(str(XML), notated_tempo=True))
    assert train[0] == render[0]


def test_markings_dropout_is_seeded_by_file_and_keeps_its_share():
    cfg = BuildConfig(markings_dropout=0.5, seed=3)
    sources = [Source(path=f"/x/piece{k}/p{k}.match", composer="c", title=f"t{k}", performer="p")
               for k in range(2000)]
    drops = [drops_markings(s, cfg) for s in sources]
    assert drops == [drops_markings(s, cfg) for s in sources]  # a rebuild drops the same files
    assert 0.45 < np.mean(drops) < 0.55
    assert not any(drops_markings(s, BuildConfig(markings_dropout=0.0)) for s in sources)


def _renderer_with_counts(counts):
    from fairseq.data import Dictionary

    from museformer.render import Renderer

    d = Dictionary()
    for t in V.dictionary_tokens():
        d.add_symbol(t, n=counts.get(V.parse(t)[0], 0))
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    return Renderer([], task, SimpleNamespace())


def test_renderer_reads_score_features_from_dictionary_counts():
    old = _renderer_with_counts({"ITempo": 5})
    assert old.score_features == {"instruct": True, "markings": False, "notated_tempo": False,
                                  "marking_state": False, "after_fermata": False}
    new = _renderer_with_counts({"ITempo": 5, "QPM": 7, "Dyn": 2})
    assert new.score_features == {"instruct": True, "markings": True, "notated_tempo": True,
                                  "marking_state": False, "after_fermata": False}


def test_build_drops_markings_in_train_only_and_writes_qpm(tmp_path):
    from instruct_tokenizer.build import build

    cfg = BuildConfig(split=(0.7, 0.3, 0.0), seed=0, xml_markings=True, markings_dropout=1.0,
                      notated_tempo=True, progress=False, cache_dir=str(tmp_path / "cache"))
    build([str(VIENNA / "match")], str(tmp_path / "tok"), cfg)
    marking_types = set(V.GROUP_MARKING_TYPES + V.NOTE_MARKING_TYPES)
    for split, has_marks in (("train", False), ("valid", True)):
        lines = (tmp_path / "tok" / f"{split}.score").read_text().splitlines()
        assert lines
        assert all(" QPM_" in line for line in lines)
        assert any(token_type(t) in marking_types for line in lines for t in line.split()) == has_marks


def _one_bar_xml(direction: str) -> str:
    """A 6/8 bar of two dotted quarters (ids n1, n2), with ``direction`` (MusicXML) before the first note."""
    note = ('<note id="n{}"><pitch><step>C</step><octave>4</octave></pitch><duration>3</duration><type>quarter</type>'
            "<dot/></note>")
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            '<part-name>Piano</part-name></score-part></part-list><part id="P1"><measure number="1"><attributes>'
            "<divisions>2</divisions><time><beats>6</beats><beat-type>8</beat-type></time></attributes>"
            f"{direction}{note.format(1)}{note.format(2)}</measure></part></score-partwise>")


def _metronome(unit: str, dots: int, per_minute: str, sound: str = "") -> str:
    return (f'<direction><direction-type><metronome><beat-unit>{unit}</beat-unit>{"<beat-unit-dot/>" * dots}'
            f"<per-minute>{per_minute}</per-minute></metronome></direction-type>{sound}</direction>")


@pytest.mark.parametrize("direction, qpm", [
    (_metronome("quarter", 1, "60"), 90),  # a printed dotted-quarter mark alone (partitura ignores it)
    (_metronome("half", 0, "c. 40"), 80),  # the first number of free text
    (_metronome("quarter", 1, "60", '<sound tempo="101"/>'), 101),  # the playback tempo beside it wins
    ("<direction><direction-type><metronome><beat-unit>quarter</beat-unit><beat-unit>eighth</beat-unit>"
     "</metronome></direction-type></direction>", None),  # a metric modulation states no tempo
])
def test_a_printed_metronome_mark_is_the_notated_tempo(tmp_path, direction, qpm):
    import zipfile

    from instruct_tokenizer.markings_baseline import xml_qpm
    from instruct_tokenizer.tempo_infer import apply_notated_tempo

    xml = tmp_path / "score.musicxml"
    xml.write_text(_one_bar_xml(direction))
    mxl = tmp_path / "score.mxl"  # the same, compressed
    with zipfile.ZipFile(mxl, "w") as z:
        z.writestr("META-INF/container.xml", '<container><rootfiles><rootfile full-path="s.xml"/></rootfiles>'
                                             "</container>")
        z.writestr("s.xml", xml.read_text())
    for path in (xml, mxl):
        tokens = score_file_to_tokens(str(path), notated_tempo=True)
        estimate = apply_notated_tempo(tokens)[1]
        if qpm is None:
            assert estimate.source != "mark" and _bar_qpm(tokens) == [[V.tok(V.QPM, int(V.DEFAULT_QPM))]]
        else:
            assert (estimate.source, estimate.qpm) == ("mark", qpm) and _bar_qpm(tokens) == [[V.tok(V.QPM, qpm)]]
    assert set(load_xml_info(str(xml), cache_dir=str(tmp_path / "cache")).qpm.values()) == {qpm or V.DEFAULT_QPM}
    assert xml_qpm(str(xml)) == qpm


@pytest.mark.parametrize("text, value", [
    ("Allegro", "fast"), ("Allegretto", "moderate"), ("Andantino", "moderate"), ("Larghetto", "slow"),
    ("Allegro con brio ed appassionato", "fast"), ("Lento, ma non troppo 1)", "slow"), ("Presto (", "fast"),
    ("Langsam", "slow"), ("Nicht schnell", "moderate"), ("Sehr rasch", "fast"), ("Lent et douloureux", "slow"),
    ("Modéré", "moderate"), ("Assez vif", "fast"), ("Slowly", "slow"), ("not too fast", "moderate"),
    ("Vivacissimamente", "fast"), ("Prestissimo", "fast"),
    ("Violento", "other"), ("Tempo di Minuetto", "other"), ("attacca subito l'Allegro", "other"), ("dolce", "other"),
])
def test_tempo_words_in_italian_german_french_and_english(text, value):
    from instruct_tokenizer.musicxml import tempo_word_value

    assert tempo_word_value(text) == value


@pytest.mark.parametrize("text, word", [("Allegro con brio ed appassionata", "fast"),  # partitura: plain Words
                                        ("Langsam", "slow"), ("Allegro molto", "fast"),  # ... its tempo direction
                                        ("con espressione", None)])
def test_a_tempo_text_partitura_leaves_as_words_is_a_tempo_word(tmp_path, text, word):
    from instruct_tokenizer.tempo_infer import apply_notated_tempo

    xml = tmp_path / "score.musicxml"
    xml.write_text(_one_bar_xml(f"<direction><direction-type><words>{text}</words></direction-type></direction>"))
    tokens = score_file_to_tokens(str(xml), notated_tempo=True, markings=True)
    words = [t for t in tokens if token_type(t) == V.TEMPO_WORD]
    estimate = apply_notated_tempo(tokens)[1]
    if word is None:
        assert words == [] and estimate.source == "content"
    else:
        assert words == [V.tok(V.TEMPO_WORD, word)] and estimate.source == "words"


@pytest.mark.parametrize("text, value", [
    ("Tempo I", "tempo primo"), ("tempo primo", "tempo primo"), ("Primo tempo", "tempo primo"),
    ("a tempo (come prima)", "tempo primo"), ("Tempo 1", "tempo primo"), ("Wie vorher", "tempo primo"),
    ("Im ersten Zeitmaß", "tempo primo"), ("Wie am Anfang", "tempo primo"), ("1er mouvement", "tempo primo"),
    ("I. Tempo", "tempo primo"), ("a tempo", "atempo"), ("in tempo", "atempo"), ("Doppio movimento", None),
])
def test_a_return_to_the_first_tempo_is_told_from_a_tempo(text, value):
    from instruct_tokenizer.musicxml import tempo_reset_value

    assert tempo_reset_value(text) == value


def _bars_xml(directions, lengths=(2, 2, 2, 2), cycle=None) -> str:
    """4/4 bars of four notes (ids n0, n1, ...; a scale over three octaves, starting again every ``cycle``
    notes when given) of ``lengths`` (eighths; four quarters by default), ``directions[k]`` (a words text
    or None) before bar k's first note."""
    types = {1: "eighth", 2: "quarter", 3: "quarter", 4: "half", 6: "half"}
    note = ('<note id="n{}"><pitch><step>{}</step><octave>{}</octave></pitch><duration>{}</duration>'
            "<type>{}</type>{}</note>")
    bars = []
    for k, text in enumerate(directions):
        head = ("<attributes><divisions>2</divisions><time><beats>4</beats><beat-type>4</beat-type></time>"
                "</attributes>") if k == 0 else ""
        words = f"<direction><direction-type><words>{text}</words></direction-type></direction>" if text else ""
        steps = [(4 * k + i) % cycle if cycle else 4 * k + i for i in range(4)]
        notes = "".join(note.format(4 * k + i, "CDEFGAB"[j % 7], 3 + j // 7 % 3, lengths[i], types[lengths[i]],
                                    "<dot/>" if lengths[i] in (3, 6) else "") for i, j in enumerate(steps))
        bars.append(f'<measure number="{k + 1}">{head}{words}{notes}</measure>')
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            '<part-name>Piano</part-name></score-part></part-list><part id="P1">' + "".join(bars)
            + "</part></score-partwise>")


@pytest.mark.parametrize("reset, word_in_last_bar, last_bar_class", [
    ("Tempo I", "fast", "fast"),  # partitura: a tempo reset; the first tempo again
    ("Primo tempo", "fast", "fast"),  # partitura: plain words
    ("Im ersten Zeitmaß", "fast", "fast"),  # German, plain words
    ("a tempo", "atempo", "slow"),  # after the ritardando: ends the ramp, the Lento stays
    ("Im Tempo", "atempo", "slow"),  # German, plain words
    ("Au mouvement", "atempo", "slow"),  # French, plain words
    ("Doppio movimento", None, "slow"),  # a change partitura calls a reset: no token
])
def test_tempo_primo_returns_to_the_first_tempo_word(tmp_path, reset, word_in_last_bar, last_bar_class):
    from instruct_tokenizer.tempo_infer import bar_tempo_words

    xml = tmp_path / "score.musicxml"
    xml.write_text(_bars_xml(["Allegro", None, "Lento", "rit.", reset, None]))
    tokens = score_file_to_tokens(str(xml), notated_tempo=True, markings=True)
    _, bars = split_bars(tokens)
    in_bar5 = [t.partition("_")[2] for t in bars[4] if token_type(t) == V.TEMPO_WORD]
    assert in_bar5 == ([word_in_last_bar] if word_in_last_bar else [])
    assert bar_tempo_words(tokens) == ["fast", "fast", "slow", "slow", last_bar_class, last_bar_class]


def test_bars_before_a_late_first_mark_get_an_estimate_not_120(tmp_path):
    from instruct_tokenizer.tempo_infer import OPENING_BARS, apply_notated_tempo, notated_tempo

    assert OPENING_BARS <= 5
    tokens = score_file_to_tokens(str(_score_midi(tmp_path / "late.mid", [(5, 160)])), notated_tempo=True)
    assert _bar_qpm(tokens)[:5] == [["QPM_120"]] * 5  # as read: the first five bars state nothing
    opening = notated_tempo([t if t != "QPM_160" else "QPM_120" for t in tokens]).qpm  # those bars alone
    applied, estimate = apply_notated_tempo(tokens)
    assert estimate.source == "mark" and "bars 1-5 before it state none" in estimate.reason
    per_bar = [bar[0] for bar in _bar_qpm(applied)]
    assert per_bar[5:] == ["QPM_160"] * 3 and len(set(per_bar[:5])) == 1 and per_bar[0] != "QPM_120"
    assert abs(float(per_bar[0].partition("_")[2]) / opening - 1) < 0.1  # the content estimate of the same notes
    # --qpm sets the first bar and keeps the ratio to the later mark
    first = float(per_bar[0].partition("_")[2])
    scaled = [float(bar[0].partition("_")[2]) for bar in _bar_qpm(apply_notated_tempo(tokens, override=60.0)[0])]
    assert abs(scaled[0] - 60.0) <= 1.0 and abs(scaled[-1] / scaled[0] - 160.0 / first) < 0.05


def test_a_mark_in_the_second_bar_holds_from_the_first(tmp_path):
    from instruct_tokenizer.tempo_infer import apply_notated_tempo

    tokens = score_file_to_tokens(str(_score_midi(tmp_path / "pickup.mid", [(1, 72)])), notated_tempo=True)
    mark = V.tok(V.QPM, V.quantise_qpm(72.0))
    applied, estimate = apply_notated_tempo(tokens)
    assert estimate.source == "mark" and V.tok(V.QPM, int(estimate.qpm)) == mark
    assert "from the first bar" in estimate.reason and _bar_qpm(applied) == [[mark]] * 8
    marked = score_file_to_tokens(str(_score_midi(tmp_path / "marked.mid", [(0, 72)])), notated_tempo=True)
    assert apply_notated_tempo(marked)[0] == marked  # a mark from bar 1: the tokens as read


def test_an_opening_before_a_late_mark_gets_its_tempo_sections(tmp_path):
    from instruct_tokenizer.tempo_infer import apply_notated_tempo

    xml = _bars_xml(["Allegro", None, None, None, "Adagio", None, None, None, None, None], lengths=(3, 1, 2, 2),
                    cycle=16)
    sound = '<direction><direction-type><words> </words></direction-type><sound tempo="80"/></direction>'
    path = tmp_path / "late.musicxml"
    path.write_text(xml.replace('<measure number="9">', '<measure number="9">' + sound))
    tokens = score_file_to_tokens(str(path), notated_tempo=True, markings=True)
    applied, estimate = apply_notated_tempo(tokens)
    assert estimate.source == "mark" and "estimated per section" in estimate.reason
    qpm = [float(bar[0].partition("_")[2]) for bar in _bar_qpm(applied)]
    mark = float(V.quantise_qpm(80.0))
    assert len(set(qpm[:4])) == 1 and len(set(qpm[4:8])) == 1 and qpm[8:] == [mark, mark]
    assert qpm[0] > 1.15 * qpm[4]  # the Allegro section estimated faster than the Adagio


def test_a_late_mark_after_rests_only_holds_from_the_start():
    from instruct_tokenizer.tempo_infer import apply_notated_tempo

    tokens = ["Bar_None", "TimeSig_4/4", "QPM_120"] + ["Bar_None", "QPM_120"] * 4 + [
        "Bar_None", "QPM_80", "Pos_0", "Pitch_60", "Dur_24", "Staff_1"]
    applied, estimate = apply_notated_tempo(tokens)
    assert estimate.source == "mark" and [t for t in applied if token_type(t) == V.QPM] == ["QPM_80"] * 6
