"""The notated tempo for every score: the mark where one is stated, else the fitted estimate from the
tempo word, the meter and the content; --qpm overrides; the reason says which."""
import math
import sys
from pathlib import Path

import pytest

from instruct_tokenizer import tempo_infer as T
from instruct_tokenizer import vocab as V

Q = V.GRID  # positions per quarter note
REPO = Path(__file__).resolve().parents[2]


PITCHES = (48, 55, 60, 64, 67, 72, 76, 79)  # a C major arpeggio over two and a half octaves


def score(word=None, ts="4/4", dur=12, qpm=None, bars=4, per_bar=4, pitches=PITCHES, chord=1, bass=None):
    """A tiny score token stream: ``per_bar`` onsets of ``dur`` (``Q`` per quarter) in every bar, each
    onset ``chord`` notes taken in turn from ``pitches``; ``bass``: a bass note of that pitch held through
    each bar from its first onset (a piano texture, within the range of the pieces the estimate is
    fitted on: its notes' lengths vary and it spans more than three octaves)."""
    toks = []
    n = 0
    for b in range(bars):
        toks += ["Bar_None"] + ([f"TimeSig_{ts}"] if b == 0 else []) + ([f"QPM_{qpm}"] if qpm else [])
        for k in range(per_bar):
            toks += [f"Pos_{k * dur}"] + ([f"TempoWord_{word}"] if word and b == 0 and k == 0 else [])
            if bass is not None and k == 0:
                toks += [f"Pitch_{bass}", f"Dur_{per_bar * dur}", "Staff_2"]
            for _ in range(chord):
                toks += [f"Pitch_{pitches[n % len(pitches)]}", f"Dur_{dur}", "Staff_1"]
                n += 1
    return toks


def test_a_metronome_mark_wins():
    est = T.notated_tempo(score(word="fast", qpm=66))
    assert (est.qpm, est.source) == (66.0, "mark") and "metronome mark" in est.reason


def test_the_default_120_is_no_mark():
    assert T.stated_qpm(score(qpm=120)) is None
    assert T.notated_tempo(score(qpm=120)).source == "content"


def test_override_and_its_check():
    assert T.notated_tempo(score(qpm=66), override=90).qpm == 90.0
    with pytest.raises(ValueError, match="--qpm"):
        T.notated_tempo(score(), override=-3)


def test_shipped_model_orders_the_tempo_words():
    """Same content, same meter: Adagio-like < Andante-like < Allegro-like."""
    slow, moderate, fast = (T.notated_tempo(score(word=w, dur=Q // 4, per_bar=16, bass=28))
                            for w in ("slow", "moderate", "fast"))
    assert slow.source == moderate.source == fast.source == "words"
    assert slow.qpm < moderate.qpm < fast.qpm
    assert "tempo word in force over most of the score (slow)" in slow.reason


def test_the_word_over_most_of_the_score_sets_the_tempo():
    """A Grave of two bars before an Allegro of ten is an Allegro (the first word's class would make it
    a Grave); a pickup before the first word is played in it; a tie goes to the first word."""
    intro_then_allegro = score(word="slow", bars=2) + score(word="fast", bars=10)
    assert T.first_tempo_word(intro_then_allegro) == "slow"
    assert T.dominant_tempo_word(intro_then_allegro) == "fast"
    features = T.score_features(intro_then_allegro)
    assert (features["word_fast"], features["word_slow"]) == (1.0, 0.0)
    assert T.dominant_tempo_word(score(word="slow", bars=10) + score(word="fast", bars=2)) == "slow"
    assert T.dominant_tempo_word(score(word="moderate", bars=3) + score(word="fast", bars=3)) == "moderate"
    pickup = ["Bar_None", "TimeSig_4/4", "Pos_72", "Pitch_60", "Dur_24", "Staff_1"] + score(word="slow", bars=1)
    assert T.group_tempo_words(pickup) == ["slow"] * 5
    assert T.dominant_tempo_word(score()) is None and T.group_tempo_words(score(bars=1)) == [None] * 4


def test_the_beat_unit_of_the_meter_counts():
    """An Allegro in 2/2 (half-note beats) is faster in quarters than one in 4/4; 6/8 is compound with
    an eighth-note unit."""
    common = T.notated_tempo(score(word="fast", ts="4/4", dur=Q // 4, per_bar=16, bass=28)).qpm
    assert T.notated_tempo(score(word="fast", ts="2/2", dur=Q // 4, per_bar=16, bass=28)).qpm > common
    f68 = T.score_features(score(ts="6/8", dur=6, per_bar=6))
    assert (f68["compound"], f68["log2_beat_unit_q"]) == (1.0, -1.0)
    assert T.score_features(score(ts="3/4"))["compound"] == 0.0


def test_without_words_the_content_decides():
    """No words (a score MIDI): denser notes -> a slower quarter, within the clamped range. (A melody in
    quarter notes over a held bass, sparser than any training piece, is estimated at the 300 clamp by
    this line and the one before it: the limit the model card names.)"""
    eighths = T.notated_tempo(score(dur=Q // 2, per_bar=8, bass=28))
    sixteenths = T.notated_tempo(score(dur=Q // 4, per_bar=16, bass=28))
    assert eighths.source == sixteenths.source == "content" and "no metronome mark or tempo word" in eighths.reason
    assert sixteenths.qpm < eighths.qpm
    assert all(T.QPM_RANGE[0] < e.qpm < T.QPM_RANGE[1] for e in (eighths, sixteenths))  # not clamped


def test_content_features_on_a_constructed_score():
    """Onset gaps in quarters (25th percentile), notes per onset and the pitch span in semitones."""
    mixed = score(dur=Q // 2, per_bar=8, bars=3) + score(dur=Q, per_bar=4, bars=12)  # 24 of 71 gaps: eighths
    f = T.score_features(mixed)
    assert (f["log2_p25_ioi_q"], f["log2_median_ioi_q"]) == (-1.0, 0.0)
    chords = T.score_features(score(chord=3, pitches=(60, 64, 67, 72)))
    assert chords["log2_notes_per_onset"] == math.log2(3)
    assert chords["log2_pitch_range"] == math.log2(72 - 60)
    assert T.score_features(score(pitches=(60,)))["log2_pitch_range"] == 0.0


def test_shipped_content_model_reads_texture_and_range():
    """Without words: the same rhythm in block chords reads slower than as a single line; the same line
    spread over a wider range reads faster (the virtuoso figure)."""
    line = T.notated_tempo(score(dur=Q // 2, per_bar=8, bass=28))
    chords = T.notated_tempo(score(dur=Q // 2, per_bar=8, chord=4, bass=28))
    narrow = T.notated_tempo(score(dur=Q // 2, per_bar=8, pitches=(60, 62, 64, 65, 67), bass=45))
    assert chords.qpm < line.qpm and narrow.qpm < line.qpm
    assert all(T.QPM_RANGE[0] < e.qpm < T.QPM_RANGE[1] for e in (line, chords, narrow))


def test_with_qpm_scales_every_tempo_change():
    toks = ["Bar_None", "QPM_120", "Pos_0", "Bar_None", "QPM_60", "Pos_0"]
    out = T.with_qpm(toks, 80)
    assert [t for t in out if t.startswith("QPM_")] == ["QPM_80", "QPM_40"]
    assert T.with_qpm(["Bar_None", "Pos_0"], 80) == ["Bar_None", "Pos_0"]


def test_fit_recovers_a_known_line():
    import numpy as np

    rng = np.random.default_rng(0)
    n = max(len(T.FEATURES), len(T.CONTENT_FEATURES))
    rows = np.column_stack([np.ones(200), rng.normal(size=(200, n - 1))])
    coef = rng.normal(size=n)
    got = T.fit(rows, rows @ coef, ridge=0.0)
    assert np.allclose(got, coef)
    model = T.TempoModel({"words": dict(zip(T.FEATURES, coef)), "content": dict(zip(T.CONTENT_FEATURES, coef))})
    assert math.isclose(model.coef["words"][0], coef[0])
    with pytest.raises(ValueError, match="missing coefficients"):
        T.TempoModel({"words": {}})


def test_huber_fit_resists_outliers_and_standardising_keeps_raw_coefficients():
    """A tenth of the targets off by a factor of 4 (2 in log2): least squares is pulled, Huber much less;
    with no ridge, standardising the features changes nothing in the raw coefficients."""
    import numpy as np

    rng = np.random.default_rng(1)
    rows = np.column_stack([np.ones(300), rng.normal(size=300), 10 * rng.normal(size=300)])
    coef = np.array([7.0, -1.0, 0.05])
    target = rows @ coef + 0.05 * rng.normal(size=300)
    target[::10] += 2.0
    squares = T.fit(rows, target, ridge=0.0)
    huber = T.fit(rows, target, ridge=0.0, huber_delta=0.1)
    assert np.abs(huber - coef).max() < np.abs(squares - coef).max() / 4
    assert np.allclose(T.fit(rows, target, ridge=0.0, standardize=True), squares)


def test_apply_notated_tempo_keeps_a_mark_and_sets_the_estimate_elsewhere():
    marked = score(word="slow", qpm=66)
    assert T.apply_notated_tempo(marked) == (marked, T.notated_tempo(marked))
    unmarked = score(word="fast", qpm=120)
    tokens, est = T.apply_notated_tempo(unmarked)
    assert est.source == "words" and tokens == T.with_qpm(unmarked, est.qpm)
    assert {t for t in tokens if t.startswith("QPM_")} != {"QPM_120"}
    assert T.apply_notated_tempo(unmarked, override=90)[0] == T.with_qpm(unmarked, 90)


def test_a_model_file_reads_the_feature_names_it_was_fitted_on(tmp_path):
    """A tempo_model.json fitted on the words line's older feature set (until 2026-12-05: compound and
    the median onset gap, no texture or range) still loads and predicts its own line; unknown names fail."""
    old_words = {"bias": 7.0, "word_slow": -0.5, "compound": 0.25, "log2_median_ioi_q": 0.5}
    content = dict(zip(T.CONTENT_FEATURES, [6.0] + [0.0] * (len(T.CONTENT_FEATURES) - 1)))
    path = tmp_path / "tempo_model.json"
    T.TempoModel({"words": old_words, "content": content}).save(path)
    model = T.TempoModel.load(path)
    f = T.score_features(score(word="slow", ts="6/8", dur=Q // 2, per_bar=6))  # median gap: an eighth
    assert model.names["words"] == tuple(old_words)
    assert math.isclose(model.predict(f), 2 ** (7.0 - 0.5 + 0.25 + 0.5 * -1), rel_tol=1e-9)
    with pytest.raises(ValueError, match="unknown features onsets_per_bar"):
        T.TempoModel({"words": {"bias": 7.0, "onsets_per_bar": 1.0}, "content": content})


def test_shipped_words_model_reads_the_texture_too():
    """With the same tempo word: the same rhythm in block chords reads slower than a single line."""
    line = T.notated_tempo(score(word="slow", dur=Q // 2, per_bar=8))
    chords = T.notated_tempo(score(word="slow", dur=Q // 2, per_bar=8, chord=4))
    assert line.source == chords.source == "words" and chords.qpm < line.qpm


def qpm_values(tokens):
    return [int(t.partition("_")[2]) for t in tokens if t.startswith("QPM_")]


def test_each_tempo_section_gets_its_own_estimate():
    """No mark, a Grave of two bars, an Allegro of ten, the Grave again for two: three sections, each bar's
    QPM its section's estimate (read on its own bars with its own word), the Grave slower; the whole
    score's tempo lies between; the reason names the sections; --qpm sets the first and keeps the ratio."""
    piece = score(word="slow", bars=2, qpm=120) + score(word="fast", bars=10, qpm=120) + score(word="slow", bars=2, qpm=120)
    sections = T.section_tempi(piece)
    assert [(s.first_bar, s.n_bars, s.word) for s in sections] == [(0, 2, "slow"), (2, 10, "fast"), (12, 2, "slow")]
    alone = T.notated_tempo(score(word="slow", bars=2)).qpm
    assert sections[0].qpm == pytest.approx(alone) and sections[0].qpm < sections[1].qpm
    tokens, est = T.apply_notated_tempo(piece)
    assert est.source == "words" and "per section" in est.reason and "bars 3-12 fast" in est.reason
    assert sections[0].qpm < est.qpm < sections[1].qpm
    bars = qpm_values(tokens)
    assert len(bars) == 14 and bars[:2] == [V.quantise_qpm(sections[0].qpm)] * 2
    assert bars[2:12] == [V.quantise_qpm(sections[1].qpm)] * 10 and bars[12] < bars[11]
    override_tokens, override = T.apply_notated_tempo(piece, override=40)
    assert override.source == "override" and qpm_values(override_tokens)[0] == V.quantise_qpm(40)
    ratio = sections[1].qpm / sections[0].qpm
    assert qpm_values(override_tokens)[2] == V.quantise_qpm(40 * ratio)


def test_one_class_of_tempo_word_is_one_section_and_a_mark_wins():
    """An Allegro, then Presto (both fast): one estimate for the whole score, as before sections; a mark
    anywhere keeps the score's own tempi."""
    one_class = score(word="fast", bars=3, qpm=120) + score(word="fast", bars=3, qpm=120)
    est = T.notated_tempo(one_class)
    assert est.bar_qpm is None and len(T.tempo_sections(one_class)) == 1
    assert T.notated_tempo(score(word="slow", bars=2, qpm=60) + score(word="fast", bars=4, qpm=60)).source == "mark"
    assert T.tempo_sections(score()) == []


def test_bar_slices_carry_the_meter():
    """Each bar's tokens alone, with the meter in force (a slice read alone keeps its beat unit)."""
    toks = ["IDyn_mid", "Bar_None", "TimeSig_6/8", "QPM_120", "Pos_0", "Bar_None", "QPM_120", "Pos_0",
            "Bar_None", "TimeSig_2/4", "QPM_120", "Pos_0"]
    assert T.bar_slices(toks) == [["Bar_None", "TimeSig_6/8", "QPM_120", "Pos_0"],
                                  ["Bar_None", "TimeSig_6/8", "QPM_120", "Pos_0"],
                                  ["Bar_None", "TimeSig_2/4", "QPM_120", "Pos_0"]]


def lengths_score(durations, onset_step=Q // 2, bars=4):
    """Onsets every ``onset_step`` grid steps (eighths), each one note whose length cycles through
    ``durations`` (grid steps): the same rhythm with other written lengths."""
    per_bar = 4 * Q // onset_step
    toks, n = [], 0
    for b in range(bars):
        toks += ["Bar_None"] + (["TimeSig_4/4"] if b == 0 else [])
        for k in range(per_bar):
            toks += [f"Pos_{k * onset_step}", f"Pitch_{PITCHES[n % len(PITCHES)]}",
                     f"Dur_{durations[n % len(durations)]}", "Staff_1"]
            n += 1
    return toks


def test_length_spread_reads_how_varied_the_written_lengths_are():
    """The standard deviation of log2 notated length, octaves: 0 for even notes, 1 for half quarters and
    half sixteenths; grace notes (length 0) are left out."""
    assert T.score_features(lengths_score([Q // 2]))["length_spread"] == 0.0
    assert T.score_features(lengths_score([Q, Q // 4]))["length_spread"] == pytest.approx(1.0)
    with_grace = ["Bar_None", "TimeSig_4/4", "Pos_0", "Pitch_59", "Dur_0", "Staff_1"] + lengths_score([Q, Q // 4])[2:]
    assert T.score_features(with_grace)["length_spread"] == pytest.approx(1.0)
    assert T.length_spread_octaves([]) == 0.0 and T.length_spread_octaves([Q / Q]) == 0.0


def test_shipped_lines_read_a_wide_spread_of_lengths_as_slower():
    """The same onsets every eighth, written as even eighths (an Allegro's running figure) or as long
    notes among 32nds (an Adagio's ornamented line): the shipped content and words lines estimate the
    second slower (their coefficient on ``length_spread`` is negative)."""
    even, mixed = lengths_score([Q // 2]), lengths_score([Q * 2, Q // 8, Q // 8, Q])
    assert T.notated_tempo(mixed).qpm < T.notated_tempo(even).qpm
    assert "written lengths spread over 0.00 octaves" in T.notated_tempo(even).reason
    word = ["TempoWord_moderate"]
    with_word = [even[:3] + word + even[3:], mixed[:3] + word + mixed[3:]]
    est_even, est_mixed = (T.notated_tempo(s) for s in with_word)
    assert est_even.source == est_mixed.source == "words" and est_mixed.qpm < est_even.qpm


def test_a_feature_beyond_the_training_range_is_read_at_its_edge(tmp_path):
    """A line stored with ranges reads a feature outside them at the nearer edge (a straight line has no
    support there); the same line without ranges extrapolates; the ranges survive save and load, and a
    range that is not (low, high) of one of the line's features fails."""
    content = dict(zip(T.CONTENT_FEATURES, [6.0] + [0.0] * (len(T.CONTENT_FEATURES) - 1)))
    content["log2_groups_per_q"] = -1.0
    words = dict(zip(T.FEATURES, [6.0] + [0.0] * (len(T.FEATURES) - 1)))
    ranges = {"content": {"log2_groups_per_q": [0.0, 3.0]}}
    bounded = T.TempoModel({"words": words, "content": content}, ranges=ranges)
    free = T.TempoModel({"words": words, "content": content})
    sparse = T.score_features(score(dur=4 * Q, per_bar=1, chord=3))  # whole-note triads: a quarter onset per quarter
    assert math.isclose(sparse["log2_groups_per_q"], -2.0)
    assert math.isclose(free.predict(sparse), 2 ** 8.0)  # 256 quarters per minute, extrapolated
    assert math.isclose(bounded.predict(sparse), 2 ** 6.0)  # read at the edge: 0
    assert bounded.within_range(sparse)[1] == ["log2_groups_per_q"]
    dense = T.score_features(score(dur=Q // 4, per_bar=16))  # four onsets per quarter: inside
    assert bounded.within_range(dense)[1] == [] and bounded.predict(dense) == free.predict(dense)
    path = tmp_path / "tempo_model.json"
    bounded.save(path)
    assert T.TempoModel.load(path).predict(sparse) == bounded.predict(sparse)
    with pytest.raises(ValueError, match="range of log2_groups_per_q"):
        T.TempoModel({"words": words, "content": content}, ranges={"content": {"log2_groups_per_q": [3.0, 0.0]}})
    with pytest.raises(ValueError, match="range of onsets_per_bar"):
        T.TempoModel({"words": words, "content": content}, ranges={"content": {"onsets_per_bar": [0.0, 1.0]}})


def test_shipped_model_keeps_sparse_chords_off_the_ceiling():
    """Whole-note triads, no tempo word: four times sparser than any training piece. Its content read at
    the edge of the training range, the shipped content line gives a tempo inside its clamp, not the 300
    ceiling it extrapolated to; the reason names the features read at their edge. Each line stores the
    ranges of ``BOUNDED_FEATURES``, not of the pitch range."""
    model = T.default_model()
    for kind, names in T.MODELS.items():
        assert set(model.ranges[kind]) == set(T.BOUNDED_FEATURES) <= set(names)
        assert "log2_pitch_range" in names and "log2_pitch_range" not in model.ranges[kind]
    est = T.notated_tempo(score(dur=4 * Q, per_bar=1, chord=3, pitches=(48, 52, 55, 60, 64, 67, 72, 76, 79)))
    assert est.source == "content" and est.qpm < 0.8 * T.QPM_RANGE[1]
    edges = est.reason.partition("written lengths spread over 0.00 octaves; ")[2]
    assert edges.startswith("onsets per quarter, ") and edges.endswith(
        "beyond the training pieces', read at their edge: a rough estimate, --qpm sets the tempo); "
        "no metronome mark or tempo word")
    free = T.TempoModel({k: dict(zip(model.names[k], model.coef[k])) for k in T.MODELS})
    sparse = T.score_features(score(dur=4 * Q, per_bar=1, chord=3, pitches=(48, 52, 55, 60, 64, 67, 72, 76, 79)))
    assert free.predict(sparse) == T.QPM_RANGE[1]
