"""The velocity plan (``museformer.velocity_plan``): per-note features, the network, its fit and storage."""
import io

import numpy as np
import pytest
import torch

from instruct_tokenizer import vocab as V
from museformer.tempo_plan import N_FEATURES, TempoPlanError, group_features
from museformer.velocity_plan import (N_NOTE_FEATURES, NOTE_FEATURE_NAMES, VelocityNet, VelocityPlan, fit_level,
                                      fit_velocity, note_features)


def _col(name):
    return NOTE_FEATURE_NAMES.index(name)


def _score():
    """One 4/4 bar: a C3-E4-G4 chord with an accent on G4, a cresc. from beat 2 (D5 on staff 1 and a grace C3
    on staff 2 with a slur start), C4 on beat 3, D4 with sf on beat 4 (a sforzando does not close the wedge)."""
    return [V.BAR_TOKEN, V.tok(V.TIME_SIG, "4/4"),
            V.tok(V.POS, 0), *[x for p in (48, 64, 67) for x in (V.tok(V.PITCH, p), V.tok(V.DUR, 24), V.tok(V.STAFF, 1))],
            V.tok(V.MARK, "accent"),
            V.tok(V.POS, 24), V.tok(V.WEDGE, "cresc"), V.tok(V.PITCH, 74), V.tok(V.DUR, 12), V.tok(V.STAFF, 1),
            V.tok(V.PITCH, 48), V.tok(V.DUR, 0), V.tok(V.STAFF, 2), V.tok(V.SLUR, "start"),
            V.tok(V.POS, 48), V.tok(V.PITCH, 60), V.tok(V.DUR, 24), V.tok(V.STAFF, 1),
            V.tok(V.POS, 72), V.tok(V.DYN, "sf"), V.tok(V.PITCH, 62), V.tok(V.DUR, 24), V.tok(V.STAFF, 1)]


def test_note_features_of_a_small_score():
    f = note_features(_score())
    assert f.shape == (7, N_NOTE_FEATURES) and np.isfinite(f).all()
    assert f[:3, _col("top")].tolist() == [0, 0, 1] and f[:3, _col("bottom")].tolist() == [1, 0, 0]
    assert f[2, _col("accent")] == 1 and f[:, _col("accent")].sum() == 1
    assert f[4, _col("staff")] == 1 and f[4, _col("grace")] == 1 and f[4, _col("slur_start")] == 1
    assert f[:3, _col("cresc_open")].sum() == 0 and f[3:, _col("cresc_open")].all()
    assert f[6, _col("sf")] == 1 and f[:6, _col("sf")].sum() == 0


def test_a_score_without_notes_is_an_error():
    with pytest.raises(TempoPlanError):
        note_features([V.BAR_TOKEN])


def _synthetic(n, seed):
    """Pieces whose velocity is 70 + 20 x (top note) - 10 x staff 2: a plan must learn it from the notes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = int(rng.integers(10, 30))
        note_group = np.sort(rng.integers(0, g, size=3 * g))
        notes = rng.normal(size=(len(note_group), N_NOTE_FEATURES)).astype(np.float32)
        notes[:, _col("top")] = rng.random(len(notes)) < 0.4
        notes[:, _col("staff")] = rng.random(len(notes)) < 0.5
        vel = 70 + 20 * notes[:, _col("top")] - 10 * notes[:, _col("staff")]
        vel[::7] = np.nan  # notes not played
        out.append({"features": rng.normal(size=(g, N_FEATURES)).astype(np.float32), "notes": notes,
                    "note_group": note_group, "velocity": vel})
    return out


def test_fit_learns_a_planted_rule_and_survives_the_safe_loader():
    train, valid = _synthetic(48, 0), _synthetic(6, 1)
    plan = fit_velocity(train, valid, epochs=40, lr=1e-2, seed=0, batch=8, channels=16, levels=2, dropout=0.0)
    p = valid[0]
    pred = plan.predict_features(p["features"], p["notes"], p["note_group"])
    ok = np.isfinite(p["velocity"])
    assert np.corrcoef(pred[ok], p["velocity"][ok])[0, 1] > 0.9
    assert np.abs(pred[ok] - p["velocity"][ok]).mean() < 5.0  # the level too, not only the shape
    assert 0.8 < plan.spread < 1.3  # a near-perfect fit is not shrunk, so it is hardly stretched
    wide = plan.predict_features(p["features"], p["notes"], p["note_group"], spread=2 * plan.spread)
    assert np.allclose(wide - wide.mean(), 2 * (pred - pred.mean()), atol=1e-4) and wide.mean() == pytest.approx(pred.mean())
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    again = VelocityPlan.from_state(torch.load(buf, weights_only=True))
    assert again.level == pytest.approx(plan.level) and 0.0 <= plan.level[1] <= 1.0
    assert np.allclose(again.predict_features(p["features"], p["notes"], p["note_group"]), pred, atol=1e-5)


def test_predict_reads_a_score():
    torch.manual_seed(0)
    plan = VelocityPlan(VelocityNet(channels=8, levels=2).eval(), np.zeros(N_FEATURES), np.ones(N_FEATURES),
                        np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES))
    v = plan.predict(_score())
    assert v.shape == (7,) and ((v >= 1) & (v <= 127)).all()
    assert group_features(_score()).shape[0] == 4


class _LevelOnly:
    """A stand-in plan whose network predicts, per piece, a given mean velocity (fit_level reads only that)."""

    TARGET = "velocity"

    def __init__(self, means):
        self.means = iter(means)

    def predict_features(self, groups, notes, note_group, spread=None, level=None, length_offsets=None):
        assert level == (0.0, 1.0) and length_offsets == ()  # fit_level reads the network's own level
        return np.full(len(notes), next(self.means))


def test_fit_level_removes_the_bias_and_shrinks_an_unreliable_level():
    rng = np.random.default_rng(0)
    human = rng.normal(66.0, 6.0, size=200)  # the pianists' mean velocity per piece
    network = human - 3.0 + rng.normal(0.0, 6.0, size=200)  # 3 too soft, and half its spread is noise
    pieces = [{"features": None, "notes": np.zeros((4, 1)), "note_group": None, "velocity": np.full(4, h)} for h in human]
    a, b = fit_level(_LevelOnly(network), pieces)
    assert 0.35 < b < 0.65  # cov / var = 36 / 72
    calibrated = a + b * network
    assert abs(calibrated.mean() - human.mean()) < 1e-6 and abs((network - human).mean() + 3.0) < 1.5
    assert np.mean((calibrated - human) ** 2) < 0.8 * np.mean((network - human) ** 2)
    assert fit_level(_LevelOnly([60.0, 70.0]), pieces[:2]) == (0.0, 1.0)  # too few pieces: the identity
    flat = [{**p, "velocity": np.full(4, 66.0)} for p in pieces[:10]]
    assert fit_level(_LevelOnly(np.linspace(50, 80, 10)), flat) == pytest.approx((66.0, 0.0))  # never amplified


@pytest.mark.parametrize("argv, flag", [(["--what", "velocity", "--members", "2"], "--members"),
                                        (["--what", "tempo", "--calibrate", "--members", "3", "--into", "x.pt"],
                                         "--calibrate"),
                                        (["--what", "velocity", "--calibrate"], "--calibrate"),
                                        (["--what", "tempo", "--spread", "0"], "--spread"),
                                        (["--what", "timing", "--timing-min-ms", "-1"], "--timing-min-ms"),
                                        (["--what", "velocity", "--loss", "normalised"], "--loss"),
                                        (["--what", "velocity", "--cross-fit", "3"], "--cross-fit"),
                                        (["--what", "articulation", "--cross-fit", "1"], "--cross-fit"),
                                        (["--what", "velocity", "--plain-offsets", "score-midi"], "--plain-offsets"),
                                        (["--what", "tempo", "--tempo-note-features"], "--tempo-note-features"),
                                        (["--what", "articulation", "--plain-offsets-only", "--into", "x.pt"],
                                         "--plain-offsets-only"),
                                        (["--what", "articulation", "--plain-offsets-only", "--plain-offsets",
                                          "score-midi"], "--plain-offsets-only"),
                                        (["--what", "articulation", "--calibrate", "--tempo-note-features", "--into",
                                          "x.pt"], "--tempo-note-features")])
def test_fit_plan_rejects_flags_that_do_not_go_together(argv, flag, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from scripts.fit_plan import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)] + argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_articulation_plan_learns_a_planted_rule_in_log2():
    """Pieces whose notes are held 2 ** -2 of their length where marked staccato, else 2 ** -0.5: the
    articulation plan (same network, its own unit and range) learns it, and survives the safe loader."""
    from museformer.velocity_plan import ArticulationPlan, fit_articulation

    def pieces(n, seed):
        out = _synthetic(n, seed)
        for p in out:
            p["notes"][:, _col("staccato")] = np.random.default_rng(seed).random(len(p["notes"])) < 0.3
            p["articulation"] = np.where(p["notes"][:, _col("staccato")] > 0, -2.0, -0.5)
            p["articulation"][np.isnan(p.pop("velocity"))] = np.nan
        return out

    train, valid = pieces(48, 0), pieces(6, 1)
    plan = fit_articulation(train, valid, epochs=40, lr=1e-2, seed=0, batch=8, channels=16, levels=2, dropout=0.0)
    assert isinstance(plan, ArticulationPlan)
    p = valid[0]
    pred = plan.predict_features(p["features"], p["notes"], p["note_group"])
    ok = np.isfinite(p["articulation"])
    assert np.abs(pred[ok] - p["articulation"][ok]).mean() < 0.2 and pred.min() >= V.ART_MIN
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    again = ArticulationPlan.from_state(torch.load(buf, weights_only=True))
    assert np.allclose(again.predict_features(p["features"], p["notes"], p["note_group"]), pred, atol=1e-5)


def test_the_timing_plan_learns_grace_notes_before_the_beat_unstretched():
    """Pieces whose grace notes come 120 ms before their group's grid and whose top notes 15 ms: the timing
    plan (same network, ms) learns it, keeps spread 1 (not stretched to the pianists' spread) and survives
    the safe loader; its predictions stay within +- TIMING_CLIP_MS."""
    from museformer.velocity_plan import TIMING_CLIP_MS, TimingPlan, fit_timing

    def pieces(n, seed):
        out = _synthetic(n, seed)
        rng = np.random.default_rng(seed)
        for p in out:
            grace = rng.random(len(p["notes"])) < 0.2
            p["notes"][:, _col("grace")] = grace
            p["timing"] = np.where(grace, -120.0, 0.0) - 15.0 * p["notes"][:, _col("top")]
            p["timing"][np.isnan(p.pop("velocity"))] = np.nan
        return out

    train, valid = pieces(48, 0), pieces(6, 1)
    plan = fit_timing(train, valid, epochs=40, lr=1e-2, seed=0, batch=8, channels=16, levels=2, dropout=0.0)
    assert isinstance(plan, TimingPlan) and plan.spread == 1.0
    p = valid[0]
    pred = plan.predict_features(p["features"], p["notes"], p["note_group"])
    ok = np.isfinite(p["timing"])
    grace = p["notes"][:, _col("grace")] > 0
    assert np.abs(pred[ok] - p["timing"][ok]).mean() < 12.0 and np.abs(pred).max() <= TIMING_CLIP_MS
    assert pred[grace].mean() < -90.0 and -40.0 < pred[~grace].mean() < 10.0
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    again = TimingPlan.from_state(torch.load(buf, weights_only=True))
    assert np.allclose(again.predict_features(p["features"], p["notes"], p["note_group"]), pred, atol=1e-4)
    every = plan.predict(_score())  # min_ms 0: every note planned
    assert np.isfinite(every).all() and len(every) == 7
    plan.min_ms = float(np.median(np.abs(every)))
    some = TimingPlan.from_state(plan.state()).predict(_score())  # min_ms stored with the plan
    assert np.array_equal(np.isnan(some), np.abs(every) < plan.min_ms) and 0 < np.isnan(some).sum() < 7
    assert np.allclose(some[np.isfinite(some)], every[np.abs(every) >= plan.min_ms], atol=1e-4)


def _with_lengths(notes, durations_q):
    """The note features with their ``log_dur`` column set to the given notated lengths (quarters)."""
    out = notes.copy()
    out[:, _col("log_dur")] = np.log2(np.clip(durations_q, 1 / 24, 16))
    return out


class _Shifted:
    """A stand-in articulation plan: the pianist's value minus a planted offset per notated-length class."""

    TARGET = "articulation"

    def __init__(self, planted):
        self.planted = np.asarray(planted)

    def predict_features(self, groups, notes, note_group, spread=None, level=None, length_offsets=None):
        from museformer.velocity_plan import length_class

        assert length_offsets == ()  # the fit reads the plan without its own offsets
        return notes[:, -1] - self.planted[length_class(notes)]  # the last column holds the pianist's value here


def test_length_classes_and_offsets_fitted_per_notated_length():
    from museformer.velocity_plan import LENGTH_EDGES_Q, fit_length_offsets, length_class

    durations = np.array([0.0, 0.25, 1 / 6, 1 / 3, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 12.0])
    notes = _with_lengths(np.zeros((len(durations), N_NOTE_FEATURES), np.float32), durations)
    assert length_class(notes).tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5]  # grace notes: shortest
    assert len(LENGTH_EDGES_Q) == 5
    rng = np.random.default_rng(0)
    planted = np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.6])
    pieces = []
    for _ in range(20):
        d = rng.choice([0.25, 0.5, 1.0, 2.0, 4.0], size=60)  # no note longer than a whole note
        human = rng.normal(-1.0, 1.0, size=60)
        human[::9] = np.nan  # notes not played
        notes = _with_lengths(np.zeros((60, N_NOTE_FEATURES), np.float32), d)
        notes[:, -1] = np.nan_to_num(human)
        pieces.append({"features": None, "notes": notes, "note_group": None, "articulation": human})
    offsets = fit_length_offsets(_Shifted(planted), pieces)
    assert np.allclose(offsets[:5], planted[:5]) and offsets[5] == 0.0  # too few notes: no offset
    # out-of-fold pairs pool their notes with the validation pieces': a whole-note class reaches 100 notes
    longer = [{**p, "notes": _with_lengths(p["notes"], np.full(60, 8.0))} for p in pieces[:2]]
    other = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -0.3])
    pooled = fit_length_offsets(_Shifted(planted), pieces, out_of_fold=[(_Shifted(other), longer)])
    assert np.allclose(pooled[:5], planted[:5]) and pooled[5] == pytest.approx(-0.3)
    assert fit_length_offsets(_Shifted(planted), pieces[:1], out_of_fold=[(_Shifted(planted), pieces[1:])]) == \
        pytest.approx(offsets)  # the same notes, split between the sources: the same offsets


def test_piece_folds_keep_a_pieces_performances_together():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from scripts.fit_plan import piece_folds

    examples = [{"row": {"composer": c, "title": f"t{t}", "source": f"{c}{t}{k}"}}
                for c in "ABC" for t in range(5) for k in range(1 + t % 3)]
    folds = piece_folds(examples, 3, seed=0)
    assert sorted(e["row"]["source"] for f in folds for e in f) == sorted(e["row"]["source"] for e in examples)
    pieces = [{(e["row"]["composer"], e["row"]["title"]) for e in f} for f in folds]
    assert all(not (a & b) for i, a in enumerate(pieces) for b in pieces[i + 1:])  # no piece in two folds
    assert [len(p) for p in pieces] == [5, 5, 5]  # the 15 pieces dealt round
    assert piece_folds(examples, 3, seed=0) == folds and piece_folds(examples, 3, seed=1) != folds


def test_the_offsets_add_per_class_and_survive_the_safe_loader():
    from museformer.velocity_plan import ArticulationPlan

    torch.manual_seed(0)
    plan = ArticulationPlan(VelocityNet(channels=8, levels=2).eval(), np.zeros(N_FEATURES), np.ones(N_FEATURES),
                            np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES))
    p = _synthetic(1, 3)[0]
    p["notes"] = _with_lengths(p["notes"], np.random.default_rng(3).choice([0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
                                                                          size=len(p["notes"])))
    plain = plan.predict_features(p["features"], p["notes"], p["note_group"])
    plan.length_offsets = (0.1, -0.2, 0.3, 0.4, -0.5, 0.6)
    shifted = plan.predict_features(p["features"], p["notes"], p["note_group"])
    from museformer.velocity_plan import length_class

    assert np.allclose(shifted - plain, np.asarray(plan.length_offsets)[length_class(p["notes"])])
    plan.max_key_down_s = 7.5
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = ArticulationPlan.from_state(state)
    assert again.length_offsets == pytest.approx(plan.length_offsets) and again.max_key_down_s == 7.5
    del state["length_offsets"], state["max_key_down_s"]  # a file written before them: none
    old = ArticulationPlan.from_state(state)
    assert old.length_offsets == () and old.max_key_down_s == 0


def test_no_note_is_planned_longer_than_the_key_down_bound():
    """_score() has no QPM: the default 120, 0.5 s a quarter. Bound 0.25 s: a quarter note at most 2 ** -1
    of its length, the eighth (D5) 2 ** 0, the grace note unbounded; bound 0: none."""
    from museformer.velocity_plan import ArticulationPlan, fit_max_key_down

    plan = ArticulationPlan(VelocityNet(channels=8, levels=2).eval(), np.zeros(N_FEATURES), np.ones(N_FEATURES),
                            np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES), max_key_down_s=0.25)
    held = np.full(7, 1.5)  # every note planned 2 ** 1.5 its notated length
    assert plan.bounded(held, _score()).tolist() == [-1.0, -1.0, -1.0, 0.0, 1.5, -1.0, -1.0]
    # the tempo plan's curve: twice as slow from the second onset group on, so those notes one lower
    slower = np.log(np.array([1.0, 2.0, 2.0, 2.0]))
    assert plan.bounded(held, _score(), slower).tolist() == pytest.approx([-1.0, -1.0, -1.0, -1.0, 1.5, -2.0, -2.0])
    plan.max_key_down_s = 0.0
    assert plan.bounded(held, _score()).tolist() == held.tolist()
    plan.max_key_down_s = 1e-4  # never under the Art range's floor
    assert plan.bounded(held, _score()).min() == V.ART_MIN
    pieces = [{"key_down_s": np.array([0.1, 0.2, np.nan, 0.3])}, {"key_down_s": np.linspace(0.0, 9.0, 10)}, {}]
    assert fit_max_key_down(pieces, quantile=1.0) == 9.0 and fit_max_key_down([{}]) == 0.0
    assert fit_max_key_down(pieces, quantile=0.5) == pytest.approx(np.median([0.1, 0.2, 0.3, *np.linspace(0, 9, 10)]))


def test_a_score_without_markings_takes_the_plain_spread():
    from instruct_tokenizer.score import score_timeline, without_markings

    torch.manual_seed(0)
    plan = VelocityPlan(VelocityNet(channels=8, levels=2).eval(), np.zeros(N_FEATURES), np.ones(N_FEATURES),
                        np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES), spread=1.5, spread_plain=3.0)
    for tokens, spread in ((_score(), 1.5), (without_markings(_score()), 3.0)):
        expected = plan.predict_features(group_features(tokens), note_features(tokens),
                                         score_timeline(tokens).note_group, spread=spread)
        assert np.allclose(plan.predict(tokens), expected)
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    assert VelocityPlan.from_state(torch.load(buf, weights_only=True)).spread_plain == 3.0


def test_a_score_without_markings_takes_the_plain_offsets():
    """An articulation plan with offsets for plain scores adds them (with the plain spread) to a score
    without markings and its own offsets to a marked one; without plain offsets both take its own; a file
    written before them loads with none."""
    from instruct_tokenizer.score import score_timeline, without_markings
    from museformer.velocity_plan import ArticulationPlan, length_class

    torch.manual_seed(0)
    plan = ArticulationPlan(VelocityNet(channels=8, levels=2).eval(), np.zeros(N_FEATURES), np.ones(N_FEATURES),
                            np.zeros(N_NOTE_FEATURES), np.ones(N_NOTE_FEATURES), spread=1.5, spread_plain=2.0,
                            length_offsets=(0.1,) * 6)
    marked, plain = _score(), without_markings(_score())

    def bare(tokens, spread):
        return plan.predict_features(group_features(tokens), note_features(tokens), score_timeline(tokens).note_group,
                                     spread=spread, length_offsets=())

    assert np.allclose(plan.predict(plain) - bare(plain, 2.0), 0.1)  # no plain offsets: the marked ones
    plan.length_offsets_plain = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert np.allclose(plan.predict(marked) - bare(marked, 1.5), 0.1)
    classes = length_class(note_features(plain))
    assert len(set(classes.tolist())) >= 2  # the grace note, the eighth, the quarters
    assert np.allclose(plan.predict(plain) - bare(plain, 2.0), np.asarray(plan.length_offsets_plain)[classes])
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert ArticulationPlan.from_state(state).length_offsets_plain == pytest.approx(plan.length_offsets_plain)
    del state["length_offsets_plain"]
    assert ArticulationPlan.from_state(state).length_offsets_plain == ()


def test_fit_length_offsets_reads_the_plans_with_the_spread_given():
    from museformer.velocity_plan import fit_length_offsets

    class Spy:
        TARGET = "articulation"
        seen = []

        def predict_features(self, groups, notes, note_group, spread=None, level=None, length_offsets=None):
            self.seen.append((spread, length_offsets))
            return np.zeros(len(notes))

    p = _synthetic(1, 4)[0]
    p["articulation"] = np.ones(len(p["notes"]))
    offsets = fit_length_offsets(Spy(), [p], min_notes=1, spread=2.5)
    assert Spy.seen == [(2.5, ())] and set(offsets) <= {0.0, 1.0} and 1.0 in offsets


def test_out_of_fold_plans_never_read_the_pieces_they_were_fitted_on():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from scripts.fit_plan import out_of_fold_plans

    fitted = []

    class _Plan(_LevelOnly):
        TARGET = "articulation"

        def __init__(self, seen):
            super().__init__([0.0] * 100)
            self.seen, self.spread = seen, 1.0

    def fit_kind(train, valid, **kw):
        fitted.append(kw)
        return _Plan({p["source"] for p in train})

    def version(source):
        return {"source": source, "features": None, "notes": np.zeros((4, 1)), "note_group": None,
                "articulation": np.zeros(4)}

    examples = [{"row": {"composer": "C", "title": f"t{t}", "source": f"t{t}-{k}"},
                 "marked": version(f"t{t}-{k}"), "plain": version(f"t{t}-{k}")} for t in range(9) for k in range(2)]
    main_plan = _Plan(set())
    main_plan.spread = 1.6
    pairs = out_of_fold_plans(main_plan, examples, [], 3, fit_kind, ("source", "features", "notes", "note_group",
                                                                       "articulation"), epochs=2, seed=0)
    assert len(pairs) == 3 and all(kw == {"epochs": 2, "seed": 0} for kw in fitted)
    unseen = [p["source"] for _, fold in pairs for p in fold]
    assert sorted(unseen) == sorted(e["row"]["source"] for e in examples)  # every training piece read once
    for plan, fold in pairs:
        assert plan.spread == 1.6 and not plan.seen & {p["source"] for p in fold}
        assert len(plan.seen) == 12  # the other two folds' performances (both score versions, one set)


def test_the_plain_training_score_is_what_a_score_midi_gives():
    """fit_plan's plain version of a training performance with ``--plain-view score-midi``: the
    score with staccato notes written shorter; its articulation is the same key-down over that shorter
    notated length (log2 units: +1 for half as long); the marked version and every played quantity as
    with ``markings-dropped``."""
    import sys
    from pathlib import Path

    from conftest import VIENNA
    from instruct_tokenizer.score import score_timeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from fit_plan import performance_example

    row = {"split": "train", "source": str(VIENNA / "match" / "Mozart_K331_1st-mov_p01.match"),
           "composer": "Mozart", "title": "Mozart_K331_1st-mov", "performer": "p01", "augment": ""}
    midi, dropped = performance_example(row, plain_view="score-midi"), performance_example(row)
    assert "error" not in midi and "error" not in dropped
    for f in ("features", "notes", "articulation", "key_down_s"):
        assert np.array_equal(midi["marked"][f], dropped["marked"][f], equal_nan=True)
    assert np.array_equal(midi["plain"]["key_down_s"], dropped["plain"]["key_down_s"], equal_nan=True)
    short = score_timeline(midi["plain"]["score"]).note_dur_q
    full = score_timeline(dropped["plain"]["score"]).note_dur_q
    shorter = (short < full) & np.isfinite(dropped["plain"]["articulation"])
    before = dropped["plain"]["articulation"]
    unclipped = shorter & (before > V.ART_MIN) & (before + np.log2(full / np.maximum(short, 1e-9)) < V.ART_MAX)
    assert unclipped.sum() == 8  # the excerpt's 8 staccato notes, none at the Art bounds
    assert np.allclose(midi["plain"]["articulation"][unclipped] - dropped["plain"]["articulation"][unclipped],
                       np.log2(full[unclipped] / short[unclipped]))
    assert np.array_equal(midi["plain"]["articulation"][~shorter], dropped["plain"]["articulation"][~shorter],
                          equal_nan=True)


def _with_qpm(tokens, qpm):
    """``tokens`` with a QPM token in the first bar's header (quarter notes per minute)."""
    return [tokens[0], V.tok(V.QPM, qpm), *tokens[1:]]


def test_the_tempo_note_features_state_seconds_at_the_notated_tempo():
    from museformer.velocity_plan import NOTE_FEATURE_SETS, TEMPO_NOTE_FEATURE_NAMES

    names = NOTE_FEATURE_SETS[-1]
    assert names[: N_NOTE_FEATURES] == NOTE_FEATURE_NAMES and names[N_NOTE_FEATURES:] == TEMPO_NOTE_FEATURE_NAMES
    slow, fast = note_features(_with_qpm(_score(), 40), names), note_features(_with_qpm(_score(), 160), names)
    assert slow.shape == (7, N_NOTE_FEATURES + 2) and np.isfinite(slow).all()
    assert np.array_equal(slow[:, :N_NOTE_FEATURES], note_features(_score()))  # the base columns unchanged
    notated_s, period_s = slow[:, N_NOTE_FEATURES], slow[:, N_NOTE_FEATURES + 1]
    assert np.allclose(period_s, np.log2(1.5))  # 40 per minute: 1.5 s a quarter
    # quarters: 1.5 s; the eighth D5 0.75 s; the grace note as a 24th of a quarter
    assert np.allclose(notated_s, np.log2([1.5, 1.5, 1.5, 0.75, 1.5 / 24, 1.5, 1.5]), atol=1e-6)
    assert np.allclose(slow[:, N_NOTE_FEATURES:] - fast[:, N_NOTE_FEATURES:], 2.0, atol=1e-6)  # 4 times slower
    with pytest.raises(TempoPlanError, match="unknown note features"):
        note_features(_score(), NOTE_FEATURE_NAMES + ("log_period_s",))


def test_a_plan_reading_the_tempo_note_features_tells_a_slow_score_from_a_fast_one():
    """Pieces whose notes are held 2 ** -0.3 of their length when a quarter lasts over 0.75 s, else 2 ** -1:
    a plan on the base features cannot see it, one on the tempo note features learns it; it keeps its
    feature names through the safe loader, and a file whose network and names disagree is refused."""
    from museformer.velocity_plan import NOTE_FEATURE_SETS, ArticulationPlan, fit_articulation

    names = NOTE_FEATURE_SETS[-1]
    rng = np.random.default_rng(5)

    def pieces(n):
        out = []
        for _ in range(n):
            qpm = float(rng.choice([40, 60, 150, 200]))
            p = _synthetic(1, int(rng.integers(1 << 30)))[0]
            notes = np.zeros((len(p["notes"]), len(names)), np.float32)
            notes[:, :N_NOTE_FEATURES] = p["notes"]
            notes[:, -1] = np.log2(60.0 / qpm)
            notes[:, -2] = notes[:, -1] + notes[:, _col("log_dur")]
            art = np.where(60.0 / qpm > 0.75, -0.3, -1.0)
            out.append({**p, "notes": notes, "articulation": np.full(len(notes), art)})
        return out

    train, valid = pieces(40), pieces(8)
    plan = fit_articulation(train, valid, epochs=30, lr=1e-2, seed=0, batch=8, channels=16, levels=2, dropout=0.0,
                            note_feature_names=names)
    base = fit_articulation([{**p, "notes": p["notes"][:, :N_NOTE_FEATURES]} for p in train],
                            [{**p, "notes": p["notes"][:, :N_NOTE_FEATURES]} for p in valid],
                            epochs=30, lr=1e-2, seed=0, batch=8, channels=16, levels=2, dropout=0.0)

    def level_error(plan, cut):
        return np.mean([abs(plan.predict_features(p["features"], p["notes"][:, :cut], p["note_group"]).mean()
                            - p["articulation"].mean()) for p in valid])

    assert level_error(plan, len(names)) < 0.12 < 0.25 < level_error(base, N_NOTE_FEATURES)
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = ArticulationPlan.from_state(state)
    assert again.note_feature_names == names
    p = valid[0]
    assert np.allclose(again.predict_features(p["features"], p["notes"], p["note_group"]),
                       plan.predict_features(p["features"], p["notes"], p["note_group"]), atol=1e-5)
    state["note_feature_names"] = list(NOTE_FEATURE_NAMES)
    with pytest.raises(TempoPlanError, match="note features"):
        ArticulationPlan.from_state(state)
    with pytest.raises(TempoPlanError, match="note features"):
        fit_articulation(train, valid, note_feature_names=NOTE_FEATURE_NAMES)  # 22 columns, 20 named
