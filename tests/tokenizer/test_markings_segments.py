"""MusicXML markings (cached), segment/stitch helpers, per-note decoded arrays, soft pedal, dict order."""
import time

import numpy as np
import pytest

from conftest import VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import performed_notes
from instruct_tokenizer.encode import encode_match, score_file_to_tokens, segment, stitch
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.match import load_match
from instruct_tokenizer.musicxml import (MusicXMLError, find_score_xml, load_markings, marks_for_anchor,
                                         parse_markings)
from instruct_tokenizer.roundtrip import roundtrip_errors
from instruct_tokenizer.score import score_timeline

MATCH = VIENNA / "match" / "Chopin_op10_no3_p01.match"
XML = VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"
NASAP_REPEATS = "Beethoven/Piano_Sonatas/11-3/MaximovI05.match"  # under the (n)ASAP root
BAD = VIENNA.parents[1] / "tests" / "bad_inputs"
MARK_TYPES = set(V.GROUP_MARKING_TYPES + V.NOTE_MARKING_TYPES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xmlcache")


@pytest.fixture(scope="module")
def marks(cache):
    return load_markings(str(XML), str(cache))


def test_markings_in_score_stream_add_no_performance_slots(marks):
    mf = load_match(str(MATCH))
    plain, marked = encode_match(mf), encode_match(mf, marks=marks)
    types = {token_type(t) for t in marked.score}
    assert {"Dyn", "Wedge", "TempoWord", "Mark", "Slur"} <= types
    assert [t for t in marked.score if token_type(t) not in MARK_TYPES] == plain.score
    assert marked.perf == plain.perf and target_slots(marked.score) == target_slots(plain.score)
    assert set(marked.score) <= set(V.score_vocabulary())


def test_markings_cache_is_reused(cache, marks):
    entries = list((cache / "markings").glob("*.json"))
    assert len(entries) == 1
    t = time.perf_counter()
    again = load_markings(str(XML), str(cache))
    assert time.perf_counter() - t < 0.5 and again == marks


def test_repeat_suffix_maps_to_xml_note():
    marks = {"n6": (("Dyn_p",), ("Mark_accent",))}
    assert marks_for_anchor(marks, "n6-2") == marks["n6"]
    assert marks_for_anchor(marks, "n7-1") == ((), ())


def test_nasap_repeat_anchors_find_their_markings(nasap, cache):
    xml = find_score_xml(str(nasap / NASAP_REPEATS))
    marks = load_markings(str(xml), str(cache))
    mf = load_match(str(nasap / NASAP_REPEATS))
    assert any(a.endswith("-2") for a in mf.anchor)
    missing = [a for a in mf.anchor if marks_for_anchor(marks, a) == ((), ()) and a.rpartition("-")[0] not in marks
               and a not in marks]
    assert len(missing) <= 0.01 * len(mf.anchor)
    enc = encode_match(mf, marks=marks)
    assert [token_type(t) for t in enc.perf] == target_slots(enc.score)


@pytest.mark.parametrize("name", ["xxe.musicxml", "bomb.musicxml"])
def test_hostile_xml_markings_fail_cleanly(name, cache):
    try:
        marks = parse_markings(str(BAD / name))
    except MusicXMLError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert "root:" not in repr(marks)  # parsed inertly: no local file was read


def test_score_file_with_markings_parses(marks):
    tokens = score_file_to_tokens(str(XML), markings=True)
    assert any(token_type(t) == "Dyn" for t in tokens)
    assert score_timeline(tokens).n_notes == score_timeline(score_file_to_tokens(str(XML))).n_notes


@pytest.mark.parametrize("budget,overlap", [(300, 0), (500, 2), (10**6, 2)])
def test_segment_then_stitch_is_identity(budget, overlap):
    enc = encode_match(load_match(str(MATCH)), prefix=["IDyn_loud"])
    segs = segment(enc.score, enc.perf, budget, overlap)
    assert segs[0].bar_start == 0 and segs[-1].bar_end == enc.score.count(V.BAR_TOKEN)
    for s in segs:
        assert s.score[0] == "IDyn_loud" and s.score[1] == V.BAR_TOKEN and s.perf[0] == V.BAR_TOKEN
        assert s.score.count(V.BAR_TOKEN) == s.perf.count(V.BAR_TOKEN) == s.bar_end - s.bar_start
        assert [token_type(t) for t in s.perf] == target_slots(s.score)
        assert max(len(s.score), len(s.perf)) < budget or s.bar_end - s.bar_start == 1
    for a, b in zip(segs, segs[1:]):
        assert b.bar_start == a.bar_end - overlap
    assert stitch([(s.bar_start, s.bar_end, s.perf) for s in segs]) == enc.perf


def test_stitch_rejects_a_gap():
    with pytest.raises(ValueError):
        stitch([(0, 1, ["Bar_None"]), (2, 3, ["Bar_None"])])


def test_performed_notes_arrays():
    mf = load_match(str(MATCH))
    enc = encode_match(mf)
    got = performed_notes(enc.score, enc.perf)
    played = mf.played[enc.order]
    assert np.array_equal(got["note_index"], np.nonzero(played)[0])
    assert np.array_equal(got["pitch"], mf.pitch[enc.order][played])
    err = np.abs(got["onset_s"] - (mf.onset_s[enc.order][played] - enc.shift_s))
    assert np.median(err) < 0.003 and np.all(got["offset_s"] > got["onset_s"])


@pytest.mark.parametrize("path", sorted((VIENNA / "match").glob("*.match"))[:4], ids=lambda p: p.name)
def test_soft_pedal_roundtrip(path):
    err = roundtrip_errors(load_match(str(path)))
    assert err["soft_within_20ms"] == 1.0 and err["soft_max_err_ms"] <= 20.0
    assert err["pedal_within_20ms"] == 1.0 and err["pedal_max_err_ms"] <= 20.0


def test_dict_order_keeps_markings_after_performance_tokens():
    order = V.dictionary_tokens()
    assert set(order) == set(V.score_vocabulary()) | set(V.perf_vocabulary())
    first_mark = min(order.index(t) for t in V.marking_tokens())
    first_release_perf = (set(V.perf_vocabulary()) - set(V.perf_extension_tokens()) - set(V.perf_fine_tokens())
                          - set(V.relative_tempo_tokens()))
    assert first_mark > max(order.index(t) for t in first_release_perf)


def test_build_with_xml_markings(tmp_path, cache):
    from instruct_tokenizer.build import BuildConfig, build

    files = [str(p) for p in sorted((VIENNA / "match").glob("Chopin_op10_no3_p0*.match"))[:2]]
    (tmp_path / "orphan").mkdir()
    orphan = tmp_path / "orphan" / "Lonely_piece_p01.match"
    orphan.write_bytes(MATCH.read_bytes())  # same notes: a duplicate, and no MusicXML beside it
    report = build(files + [str(orphan)], str(tmp_path / "out"),
                   BuildConfig(split=(1, 0, 0), workers=1, progress=False, xml_markings=True,
                               cache_dir=str(cache)))
    assert sum(report.built.values()) == 2
    lines = (tmp_path / "out" / "train.score").read_text().split()
    assert "Dyn_mf" in lines or any(t.startswith("Dyn_") for t in lines)
    vocab = [ln.split()[0] for ln in (tmp_path / "out" / "dict.txt").read_text().splitlines()]
    assert vocab[:len(V.dictionary_tokens())] == V.dictionary_tokens()
    assert [p for p, _ in report.skipped] == [str(orphan)]  # duplicate of p01 by note checksum
