"""The relative tempo encoding (``--relative-tempo``): a ``TempoLevel`` token once per segment (the same in
every segment of a performance) and a ``TempoRel`` token per onset group, relative to the score's notated
tempo (``QPM``) x the level; lossless within the absolute encoding's roundtrip bounds; its grammar."""
import json
import math
import subprocess
import sys

import miditoolkit
import numpy as np
import pytest

from conftest import REPO, VIENNA, stderr_of
from instruct_tokenizer import grammar as G
from instruct_tokenizer import vocab as V
from instruct_tokenizer.build import BuildConfig, build
from instruct_tokenizer.cli import main as tokenize_main
from instruct_tokenizer.decode import decode_performance, tokens_to_midi
from instruct_tokenizer.encode import encode_match, rebase_tempo_level, segment, stitch
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer.match import load_match
from instruct_tokenizer.musicxml import xml_info_of_match
from instruct_tokenizer.roundtrip import roundtrip_errors

# one file of each Vienna piece: a score with a metronome mark and ones without (the level absorbs it)
FILES = [VIENNA / "match" / f"{p}_p01.match" for p in ("Chopin_op10_no3", "Chopin_op38", "Mozart_K331_1st-mov",
                                                       "Schubert_D783_no15")]
# (n)ASAP: a piece with a stated tempo, one without (120), a long one with fermatas, a 24/16 prelude
NASAP_FILES = ["Bach/Prelude/bwv_860/Ko04M.match", "Beethoven/Piano_Sonatas/7-1/Lee_E01.match",
               "Chopin/Ballades/1/Ali01.match", "Mozart/Piano_Sonatas/11-3/Stahievitch02.match"]


def _qpm(path):
    info, warning = xml_info_of_match(str(path))
    assert info is not None, warning
    return info.qpm


def _types(tokens):
    return [token_type(t) for t in tokens]


def _assert_within_bounds(err):
    """Today's roundtrip bounds (scripts/roundtrip_report.py, docs/tokens.md, Known limits)."""
    assert err["onset_p99_ms"] <= 20.0 and err["onset_median_ms"] <= 3.0
    assert err["onset_end_ms"] <= err["onset_start_ms"] + 1.0  # no drift
    assert err["velocity_max"] <= 1 and err["duration_ratio_median"] <= 0.05
    assert err["pedal_within_20ms"] == 1.0 and err["soft_within_20ms"] == 1.0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_vienna_roundtrip_is_lossless(path):
    mf, qpm = load_match(str(path)), _qpm(path)
    rel = roundtrip_errors(mf, qpm, relative_tempo=True)
    _assert_within_bounds(rel)
    assert rel["notes"] == roundtrip_errors(mf)["notes"]  # the same notes played (no extra outliers)


@pytest.mark.parametrize("name", NASAP_FILES)
def test_nasap_roundtrip_is_lossless(nasap, name):
    path = nasap / name
    _assert_within_bounds(roundtrip_errors(load_match(str(path)), _qpm(path), relative_tempo=True))


def test_stream_shape_and_decoded_periods():
    """A TempoLevel first, then the absolute stream's shape with TempoRel for Tempo; the decoded beat
    periods are notated period x level x ratio and follow the performance as the absolute ones do."""
    path = FILES[2]
    mf, qpm = load_match(str(path)), _qpm(path)
    rel, ab = encode_match(mf, qpm=qpm, relative_tempo=True), encode_match(mf, qpm=qpm)
    assert rel.score == ab.score  # the score side is the same
    assert token_type(rel.perf[0]) == V.TEMPO_LEVEL and token_type(ab.perf[0]) == V.BAR
    assert [V.TEMPO if t == V.TEMPO_REL else t for t in _types(rel.perf[1:])] == _types(ab.perf)
    assert _types(rel.perf) == target_slots(rel.score, relative=True)
    assert _types(ab.perf) == target_slots(ab.score)
    p_rel = decode_performance(rel.score, rel.perf).group_period_s
    p_ab = decode_performance(ab.score, ab.perf).group_period_s
    assert np.median(np.abs(np.log2(p_rel / p_ab))) < 0.05  # within a bin or two of each other


def test_level_is_relative_to_the_notated_tempo_whatever_its_source():
    """Halving every notated tempo (however it was found) doubles the notated beat period: the level drops
    by exactly one octave (24 steps), every TempoRel token and every decoded time stay the same."""
    path = FILES[0]
    mf = load_match(str(path))
    ids = _qpm(path).keys()
    at_120 = encode_match(mf, qpm={k: 120.0 for k in ids}, relative_tempo=True)
    at_60 = encode_match(mf, qpm={k: 60.0 for k in ids}, relative_tempo=True)
    k120, k60 = (int(V.parse(e.perf[0])[1]) for e in (at_120, at_60))
    assert k60 == k120 - 24
    assert at_60.perf[1:] == at_120.perf[1:]
    a, b = decode_performance(at_120.score, at_120.perf), decode_performance(at_60.score, at_60.perf)
    np.testing.assert_allclose(a.onset_s[a.played], b.onset_s[b.played], atol=1e-9)


def test_tempo_slot_helpers_agree_with_decode():
    """The pure helpers the decoding rules use (the slot's notated scale from ``tempo_slot_gaps``, the
    level from ``tempo_level_factor``, ``relative_beat_period_s``) give the beat period decode gives."""
    path = FILES[1]
    enc = encode_match(load_match(str(path)), qpm=_qpm(path), relative_tempo=True)
    gaps, scales = G.tempo_slot_gaps(enc.score, relative=True)
    level = G.tempo_level_factor(enc.perf[0])
    periods = [G.relative_beat_period_s(t, s, level) for t, s in zip(enc.perf, scales) if s == s]
    assert G.tempo_level_factor(enc.perf[1]) is None and G.relative_beat_period_s(enc.perf[0], 1.0, 1.0) is None
    np.testing.assert_allclose(periods, decode_performance(enc.score, enc.perf).group_period_s, rtol=1e-12)
    assert np.isnan(gaps[0]) and np.isnan(scales[0])  # the TempoLevel slot has no gap
    ab_gaps, ab_scales = G.tempo_slot_gaps(enc.score)
    assert [g for g in gaps if g == g] == [g for g in ab_gaps if g == g]
    assert [s for s in scales if s == s] == [s for s in ab_scales if s == s]


def test_target_slots_for_both_encodings():
    score = "ITempo_mid Bar_None QPM_60 Pos_0 Pitch_60 Dur_24 Staff_1 Pitch_64 Dur_24 Staff_1 Bar_None QPM_60".split()
    assert target_slots(score) == ["Bar", "Tempo", "Sus", "Sus", "Sus", "Soft"] + ["Vel", "Time", "Art"] * 2 + ["Bar"]
    assert target_slots(score, relative=True) == (["TempoLevel", "Bar", "TempoRel", "Sus", "Sus", "Sus", "Soft"]
                                                  + ["Vel", "Time", "Art"] * 2 + ["Bar"])
    fermata = "Bar_None Pos_0 Pitch_60 Dur_24 Staff_1 Mark_fermata Pos_24 Pitch_62 Dur_24 Staff_1".split()
    rel = G.fermata_slots(fermata, relative=True)
    assert len(rel) == len(target_slots(fermata, relative=True)) and sum(rel) == 2
    assert [s for s, f in zip(target_slots(fermata, relative=True), rel) if f] == ["TempoRel", "TempoRel"]
    nominal = G.art_nominal_q(score, relative=True)
    assert [x for x in nominal if x == x] == [1.0, 1.0]
    assert target_slots(score, relative=True)[nominal.index(1.0)] == "Art"


def test_tokens_are_strings_built_and_parsed_in_one_place():
    """Every relative token is Type_Value, parses back to its step, and decodes to its factor."""
    for k in V.TEMPO_LEVEL_STEPS:
        t = V.tok(V.TEMPO_LEVEL, k)
        assert V.parse(t) == (V.TEMPO_LEVEL, str(k)) and G.tempo_level_factor(t) == pytest.approx(2 ** (k / 24))
    for j in V.TEMPO_REL_STEPS:
        t = V.tok(V.TEMPO_REL, j)
        assert V.parse(t) == (V.TEMPO_REL, str(j)) and G.tempo_ratio(t) == pytest.approx(2 ** (j / 24))
        assert G.token_value(t) == j  # ordinal: the expected value (TempoRel=mean) is meaningful
    assert G.relative_beat_period_s("TempoRel_24", 0.5, 1.0) == pytest.approx(2.0)  # ratio 2 at 60 qpm
    assert V.quantise_tempo_level(5.0) == V.TEMPO_LEVEL_STEPS[-1]  # clamped
    assert V.quantise_tempo_level(float("nan")) == 0


def test_hand_made_stream_decodes_to_notated_times_level_times_ratio(tmp_path):
    """Two quarter notes at QPM 60: level +1 octave and TempoRel_0 give a 2 s beat period: the second note
    starts 2 s after the first; the token file decodes to MIDI through the CLI as well."""
    score = "Bar_None QPM_60 Pos_0 Pitch_60 Dur_24 Staff_1 Pos_24 Pitch_62 Dur_24 Staff_1".split()
    group = ["Sus_None"] * 3 + ["Soft_None"] + ["Vel_32", "Time_0", "Art_0.00"]
    perf = ["TempoLevel_24", "Bar_None", "TempoRel_0"] + group + ["TempoRel_0"] + group
    got = decode_performance(score, perf)
    np.testing.assert_allclose(np.diff(got.onset_s), [2.0])
    np.testing.assert_allclose(got.offset_s - got.onset_s, [2.0, 2.0])
    (tmp_path / "s.txt").write_text(" ".join(score) + "\n")
    (tmp_path / "p.txt").write_text(" ".join(perf) + "\n")
    code, err = stderr_of(tokenize_main, ["decode", "--score-tokens", tmp_path / "s.txt", "--perf-tokens",
                                          tmp_path / "p.txt", "-o", tmp_path / "out.mid"])
    assert code == 0, err
    with pytest.raises(ValueError, match="expected TempoRel"):
        tokens_to_midi(score, ["TempoLevel_0", "Bar_None", "Tempo_80"] + group + ["TempoRel_0"] + group)


def test_segments_carry_the_level_and_stitch_back():
    path = FILES[1]
    enc = encode_match(load_match(str(path)), qpm=_qpm(path), relative_tempo=True)
    segs = segment(enc.score, enc.perf, max_tokens=400, overlap_bars=2)
    assert len(segs) > 3
    assert all(s.perf[0] == enc.perf[0] and _types(s.perf) == target_slots(s.score, relative=True) for s in segs)
    assert all(max(len(s.score), len(s.perf)) <= 399 or s.bar_end - s.bar_start == 1 for s in segs)
    assert stitch([(s.bar_start, s.bar_end, s.perf) for s in segs]) == enc.perf
    other = [(s.bar_start, s.bar_end, s.perf) for s in segs]
    other[1] = (other[1][0], other[1][1], ["TempoLevel_3"] + other[1][2][1:])
    with pytest.raises(ValueError, match="starts with TempoLevel_3"):
        stitch(other)


def test_build_level_is_constant_across_a_performances_segments(tmp_path):
    cfg = BuildConfig(split=(1.0, 0.0, 0.0), max_tokens=500, progress=False, notated_tempo=True,
                      relative_tempo=True)
    build([str(p) for p in FILES[:2]], str(tmp_path / "tok"), cfg)
    perf = (tmp_path / "tok" / "train.perf").read_text().splitlines()
    score = (tmp_path / "tok" / "train.score").read_text().splitlines()
    rows = [json.loads(x) for x in (tmp_path / "tok" / "manifest.jsonl").read_text().splitlines()]
    levels = {}
    for row in rows:
        line = perf[row["line"]].split()
        assert _types(line) == target_slots(score[row["line"]].split(), relative=True)
        assert max(len(line), len(score[row["line"]].split())) <= 499 or row["bar_end"] - row["bar_start"] == 1
        assert row["perf_prefix"] == line[:1]
        levels.setdefault(row["source"], set()).add(line[0])
    assert len(levels) == 2 and all(len(v) == 1 for v in levels.values())
    assert sum(r["source"] == str(FILES[1]) for r in rows) > 3  # several segments
    whole = encode_match(load_match(str(FILES[1])), qpm=_qpm(FILES[1]), relative_tempo=True)
    assert levels[str(FILES[1])] == {whole.perf[0]}
    counts = dict(x.split() for x in (tmp_path / "tok" / "dict.txt").read_text().splitlines())
    assert G.relative_tempo({t: int(n) for t, n in counts.items()})
    assert int(counts[whole.perf[0]]) >= sum(r["source"] == str(FILES[1]) for r in rows)
    assert sum(int(counts[V.tok(V.TEMPO, b)]) for b in range(V.TEMPO_BINS)) == 0  # no absolute Tempo


def test_absolute_encoding_unchanged_by_the_relative_one():
    """The absolute stream, dictionary order of every older token and the absolute grammar are untouched."""
    enc = encode_match(load_match(str(FILES[0])))
    assert _types(enc.perf)[0] == V.BAR and V.TEMPO_LEVEL not in _types(enc.perf)
    toks = V.dictionary_tokens()
    assert toks[-len(V.relative_tempo_tokens()):] == V.relative_tempo_tokens()
    assert not G.relative_tempo({"Tempo_3": 10, "TempoRel_0": 0})


def test_cli_relative_tempo_needs_notated_tempo(tmp_path):
    code, err = stderr_of(tokenize_main, ["build", str(FILES[0]), "--out", str(tmp_path / "o"), "--relative-tempo",
                                          "--no-progress"])
    assert code == 2 and err.strip().count("\n") == 0 and "--relative-tempo needs --notated-tempo" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="relative_tempo needs notated_tempo"):
        build([str(FILES[0])], str(tmp_path / "o"), BuildConfig(relative_tempo=True, progress=False))
    assert not (tmp_path / "o").exists()


def test_rebase_to_another_level_keeps_every_beat_period():
    path = FILES[3]
    enc = encode_match(load_match(str(path)), qpm=_qpm(path), relative_tempo=True)
    k = int(V.parse(enc.perf[0])[1])
    steps = [int(V.parse(t)[1]) for t in enc.perf if token_type(t) == V.TEMPO_REL]
    shift = 10 if max(steps) + 10 <= V.TEMPO_REL_STEPS[-1] else -10
    rebased = rebase_tempo_level(enc.perf, V.tok(V.TEMPO_LEVEL, k - shift))
    assert rebased[0] == V.tok(V.TEMPO_LEVEL, k - shift) and rebased != enc.perf
    np.testing.assert_allclose(decode_performance(enc.score, rebased).group_period_s,
                               decode_performance(enc.score, enc.perf).group_period_s, rtol=1e-12)
    absolute = encode_match(load_match(str(path))).perf
    assert rebase_tempo_level(absolute, "TempoLevel_3") == absolute


def test_generate_to_midi_joins_segments_that_drew_different_levels(tmp_path):
    """fairseq-generate draws a TempoLevel per line: scripts/generate_to_midi.py re-expresses the later
    segments at the first one's level, so segments of the human performance, each given its own level,
    stitch to the MIDI of the whole performance."""
    cfg = dict(split=(0.0, 0.0, 1.0), progress=False, notated_tempo=True, relative_tempo=True)
    build([str(FILES[1])], str(tmp_path / "seg"), BuildConfig(max_tokens=400, **cfg))
    build([str(FILES[1])], str(tmp_path / "whole"), BuildConfig(max_tokens=100000, **cfg))
    for name in ("seg", "whole"):
        perf = (tmp_path / name / "test.perf").read_text().splitlines()
        own = [rebase_tempo_level(p.split(), V.tok(V.TEMPO_LEVEL, int(V.parse(p.split()[0])[1]) + 3 * i))
               for i, p in enumerate(perf)]  # a different level on every line, the same beat periods
        (tmp_path / name / "gen.txt").write_text("".join(f"H-{i}\t-0.5\t{' '.join(p)}\n" for i, p in enumerate(own)))
        script = REPO / "scripts" / "generate_to_midi.py"
        proc = subprocess.run([sys.executable, str(script), tmp_path / name / "gen.txt", tmp_path / name,
                               "--split", "test", "--out", tmp_path / f"out-{name}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "seg" / "test.perf").read_text().splitlines()) > 3
    (seg,), (whole,) = (sorted((tmp_path / f"out-{n}").glob("*.mid")) for n in ("seg", "whole"))

    def notes(p):
        return [(n.pitch, n.start, n.end, n.velocity) for n in miditoolkit.MidiFile(str(p)).instruments[0].notes]

    got, want = notes(seg), notes(whole)
    assert len(got) == len(want)
    assert max(abs(a[1] - b[1]) for a, b in zip(got, want)) <= 1  # ticks (1/960 s): rounding only


def test_infer_tempo_build_gives_unmarked_scores_the_renderers_estimate(tmp_path):
    """``--infer-tempo``: Schubert D783 (no metronome mark) is built at tempo_infer's estimate from its own
    score tokens, the level re-expressed against it; Chopin op. 10/3 (a mark) is built as without the flag."""
    from instruct_tokenizer.tempo_infer import notated_tempo

    def built(infer):
        cfg = BuildConfig(split=(1.0, 0.0, 0.0), max_tokens=100000, progress=False, notated_tempo=True,
                          relative_tempo=True, xml_markings=True, infer_tempo=infer)
        out = tmp_path / f"tok{int(infer)}"
        build([str(FILES[0]), str(FILES[3])], str(out), cfg)
        rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        score = (out / "train.score").read_text().splitlines()
        perf = (out / "train.perf").read_text().splitlines()
        return {r["source"]: (score[r["line"]].split(), perf[r["line"]].split()) for r in rows}

    plain, inferred = built(False), built(True)
    assert plain[str(FILES[0])] == inferred[str(FILES[0])]  # a stated mark is kept
    score120, perf120 = plain[str(FILES[3])]
    score_est, perf_est = inferred[str(FILES[3])]
    estimate = notated_tempo(score120)
    assert estimate.source != "mark" and V.quantise_qpm(estimate.qpm) != 120  # a level shift to see (112 today)
    qpms = {t for t in score_est if t.startswith(V.QPM + "_")}
    assert qpms == {V.tok(V.QPM, V.quantise_qpm(estimate.qpm))}
    assert [t for t in score_est if not t.startswith(V.QPM + "_")] == \
        [t for t in score120 if not t.startswith(V.QPM + "_")]
    # the same performance: the level moves by the ratio of the notated tempi, and both streams decode
    # to the same performed times within today's roundtrip bounds (error feedback redistributes TempoRel)
    shift = int(perf_est[0].partition("_")[2]) - int(perf120[0].partition("_")[2])
    assert abs(shift - round(24 * np.log2(V.quantise_qpm(estimate.qpm) / 120))) <= 1
    a, b = decode_performance(score_est, perf_est), decode_performance(score120, perf120)
    assert np.percentile(np.abs(a.onset_s - b.onset_s), 99) * 1000 <= 20.0
    assert _types(perf_est) == _types(perf120)
    np.testing.assert_array_equal(a.velocity, b.velocity)


def test_a_build_gives_each_tempo_section_its_estimate():
    """``--infer-tempo`` on a score with tempo sections (``tempo_infer.section_tempi``): each XML note the
    performance's score holds takes its bar's tempo, a repeated note (``n2-1``, ``n2-2``) its first pass's;
    a note the performance lacks is left to the caller's single ratio."""
    from instruct_tokenizer.build import section_qpm_by_id

    qpm = {"n1": 120.0, "n2": 120.0, "n3": 120.0, "n9": 120.0}
    anchors = ["n1", "n2-1", "n3", "n2-2"]
    got = section_qpm_by_id(qpm, anchors, [0, 1, 2, 3], [40.0, 40.0, 180.0, 180.0])
    assert got == {"n1": 40.0, "n2": 40.0, "n3": 180.0}


def test_performed_qpm_reads_both_encodings():
    """scripts/fit_tempo.human_qpm (the tempo level of vienna_tempo.py and the tempo fit) on a relative
    stream: level +1 octave under QPM 60 is 30 quarter notes per minute, as decode plays it."""
    sys.path.insert(0, str(REPO / "scripts"))
    from fit_tempo import human_qpm

    score = "Bar_None QPM_60 Pos_0 Pitch_60 Dur_24 Staff_1 Pos_24 Pitch_62 Dur_24 Staff_1".split()
    group = ["Sus_None"] * 3 + ["Soft_None"] + ["Vel_32", "Time_0", "Art_0.00"]
    perf = ["TempoLevel_24", "Bar_None", "TempoRel_0"] + group + ["TempoRel_0"] + group
    assert human_qpm(score, perf) == pytest.approx(30.0)
    assert human_qpm(score, perf) == pytest.approx(60.0 / np.diff(decode_performance(score, perf).onset_s)[0])


def test_section_tempo_script_reads_each_sections_tempo():
    """scripts/section_tempo.py: a rendering at one steady tempo (level +1 octave under QPM 60: 30 quarter
    notes per minute) reads 30 in each section; a section of one onset group has none (NaN)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from section_tempo import rendered_section_qpm

    from instruct_tokenizer.tempo_infer import TempoSection

    bar = ["Bar_None", "QPM_60"] + [t for q in range(4) for t in (f"Pos_{24 * q}", "Pitch_60", "Dur_24", "Staff_1")]
    score = bar + bar + ["Bar_None", "QPM_60", "Pos_0", "Pitch_60", "Dur_24", "Staff_1"]
    group = ["Sus_None"] * 3 + ["Soft_None"] + ["Vel_32", "Time_0", "Art_0.00"]
    perf = ["TempoLevel_24"] + (["Bar_None"] + (["TempoRel_0"] + group) * 4) * 2 + ["Bar_None", "TempoRel_0"] + group
    sections = [TempoSection(0, 1, "slow", 4.0), TempoSection(1, 1, "fast", 4.0), TempoSection(2, 1, "slow", 1.0)]
    got = rendered_section_qpm(score, perf, sections)
    assert got[:2] == pytest.approx([30.0, 30.0]) and math.isnan(got[2])


def test_vienna_pianist_against_pianist_pairs_every_other_pianist():
    """scripts/vienna_tempo.py's human row: every ordered pair of pianists of the same score notes, as a
    rendering is measured against each. Two pianists who shape the beat alike at levels an octave apart
    and a third who shapes it the other way: levels 2 and 1/2 between the first two, beat tempo r +1
    between them and -1 against the third; a pianist of other score notes is not paired."""
    sys.path.insert(0, str(REPO / "scripts"))
    from vienna_tempo import pianist_against_pianist, pianist_features

    bar = ["Bar_None", "QPM_60"] + [t for q in range(4) for t in (f"Pos_{24 * q}", "Pitch_60", "Dur_24", "Staff_1")]
    score = bar * 2
    group = ["Sus_None"] * 3 + ["Soft_None"] + ["Vel_32", "Time_0", "Art_0.00"]

    def played(level: int, steps) -> list:
        """One onset group per step, four to a bar."""
        rel = iter(steps)
        return [f"TempoLevel_{level}"] + [t for _ in range(len(steps) // 4) for t in ["Bar_None"] + [
            x for _ in range(4) for x in [f"TempoRel_{next(rel)}"] + group]]

    shape = [0, 12, -12, 0, 6, 24, -6, 0]
    perfs = [("a", score, played(0, shape)), ("b", score, played(24, shape)),
             ("c", score, played(0, [-s for s in shape])), ("d", bar, played(0, shape[:4]))]
    levels, rs, spreads = pianist_against_pianist(pianist_features(perfs))
    assert len(levels) == len(rs) == len(spreads) == 6  # a, b, c: ordered pairs; d's notes differ
    # pairs in order (a, b), (a, c), (b, a), (b, c), (c, a), (c, b)
    assert (levels[0], levels[2]) == (pytest.approx(2.0, rel=1e-6), pytest.approx(0.5, rel=1e-6))
    assert np.round(rs, 6).tolist() == [1.0, -1.0, 1.0, -1.0, -1.0, -1.0]


def test_vienna_curves_centred_and_plotted(tmp_path):
    """scripts/vienna_tempo.py --plot: each curve is a performance's beat tempo less its own mean (two
    pianists an octave apart in level give the same curve), drawn as a PNG with one panel per piece."""
    sys.path.insert(0, str(REPO / "scripts"))
    from vienna_tempo import centred_beat_tempo, pianist_features, plot_curves

    score = ["Bar_None", "QPM_60"] + [t for q in range(4) for t in (f"Pos_{24 * q}", "Pitch_60", "Dur_24", "Staff_1")]
    group = ["Sus_None"] * 3 + ["Soft_None"] + ["Vel_32", "Time_0", "Art_0.00"]
    shape = [0, 12, -12, 0]

    def played(level: int) -> list:
        return [f"TempoLevel_{level}", "Bar_None"] + [x for s in shape for x in [f"TempoRel_{s}"] + group]

    (_, slow, _), (_, fast, _) = pianist_features([("a", score, played(24)), ("b", score, played(0))])
    assert np.nanmean(centred_beat_tempo(slow)) == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(centred_beat_tempo(slow), centred_beat_tempo(fast), equal_nan=True)
    assert np.nanstd(centred_beat_tempo(slow)) > 0.1
    out = tmp_path / "curves.png"
    plot_curves(out, [("drawn piece", score, [slow, fast], fast)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
