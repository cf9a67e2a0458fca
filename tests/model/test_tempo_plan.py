"""The tempo plan (``museformer.tempo_plan``): features of a score's onset groups, the network, its fit and
its storage."""
import io

import numpy as np
import pytest
import torch

from instruct_tokenizer import vocab as V
from museformer.tempo_plan import (FEATURE_NAMES, N_FEATURES, PlanNet, TempoPlan, TempoPlanEnsemble, TempoPlanError,
                                   centred_mse, fit, fit_spread, normalised_mse, group_features, tempo_plan_from_state)


def _score(bars=6, fermata_bar=None, qpm_change_bar=None, word=None):
    """4/4 bars of four quarter-note onsets (C4 and E4 on the first beat), QPM 60 then 120 from
    ``qpm_change_bar``; a fermata on the last onset of ``fermata_bar``."""
    out = []
    for b in range(bars):
        out.append(V.BAR_TOKEN)
        if b == 0:
            out.append(V.tok(V.TIME_SIG, "4/4"))
        out.append(V.tok(V.QPM, 120 if qpm_change_bar is not None and b >= qpm_change_bar else 60))
        for beat in range(4):
            out.append(V.tok(V.POS, beat * V.GRID))
            if word and b == 0 and beat == 0:
                out.append(V.tok(V.TEMPO_WORD, word))
            pitches = (60, 64) if beat == 0 else (67,)
            for p in pitches:
                out += [V.tok(V.PITCH, p), V.tok(V.DUR, V.GRID), V.tok(V.STAFF, 1)]
            if fermata_bar == b and beat == 3:
                out.append(V.tok(V.MARK, "fermata"))
    return out


def _col(name):
    return FEATURE_NAMES.index(name)


def test_features_of_a_small_score():
    f = group_features(_score(bars=6, fermata_bar=2, qpm_change_bar=3, word="rit"))
    assert f.shape == (24, N_FEATURES) and f.dtype == np.float32 and np.isfinite(f).all()
    notated = f[:, _col("notated_log_period")]
    assert np.allclose(notated.mean(), 0.0, atol=1e-6)  # centred on the piece
    assert np.allclose(notated[:12] - notated[12:].mean(), np.log(2.0), atol=1e-5)  # 60 then 120 per minute
    assert f[11, _col("fermata")] == 1 and f[12, _col("after_fermata")] == 1 and f[:, _col("fermata")].sum() == 1
    assert np.all(np.diff(f[:, _col("position")]) > 0)
    assert f[0, _col("notes")] == 1.0 and f[1, _col("notes")] == 0.0  # log2 of 2 notes, then of 1
    assert f[0, _col("word_rit")] == 1 and f[:4, _col("mode_rit")].all() and not f[4:, _col("mode_rit")].any()
    assert f[:, _col("bar_start")].sum() == 6
    assert f[11, _col("log_q_to_qpm_change")] > 0 and f[12, _col("log_q_to_qpm_change")] == 0
    plain = group_features(_score(bars=6))
    assert not plain[:, _col("has_markings")].any() and f[:, _col("has_markings")].all()


def test_a_score_without_notes_is_a_plan_error():
    with pytest.raises(TempoPlanError, match="no notes"):
        group_features([V.BAR_TOKEN, V.tok(V.TIME_SIG, "4/4")])


def test_prediction_is_centred_and_padding_does_not_leak():
    torch.manual_seed(0)
    net = PlanNet(channels=8, levels=3).eval()
    a, b = torch.randn(1, N_FEATURES, 30), torch.randn(1, N_FEATURES, 50)
    with torch.no_grad():
        alone = net(a, torch.ones(1, 30, dtype=torch.bool))
    assert abs(float(alone.mean())) < 1e-6
    batch = torch.zeros(2, N_FEATURES, 50)  # (B, F, G)
    batch[0, :, :30], batch[1] = a[0], b[0]
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, :30], mask[1] = True, True
    both = net(batch, mask)
    assert torch.allclose(both[0, :30], alone[0], atol=1e-5) and both[0, 30:].eq(0).all()
    assert torch.allclose(both[1], net(b, torch.ones(1, 50, dtype=torch.bool))[0], atol=1e-5)


def test_centred_mse_ignores_the_level():
    target = torch.tensor([[0.0, 1.0, 2.0, float("nan")]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert float(centred_mse(target.nan_to_num(0.0) + 5.0, target, mask)) < 1e-9
    assert float(centred_mse(torch.zeros(1, 4), target, mask)) == pytest.approx(2 / 3)


def test_normalised_mse_weighs_each_performance_the_same_and_keeps_the_scale():
    nan = float("nan")
    steady = torch.tensor([[0.0, 0.1, 0.2, nan]])  # variance 2/300 (log units)
    rubato = torch.tensor([[0.0, 1.0, 2.0, nan]])  # variance 2/3
    mask = torch.ones(1, 4, dtype=torch.bool)
    flat = torch.zeros(1, 4)
    # a flat curve misses each curve by its own variance: the same loss for both, up to the floor
    assert float(normalised_mse(flat, steady, mask, floor=0.0)) == pytest.approx(1.0)
    assert float(normalised_mse(flat, rubato, mask, floor=0.0)) == pytest.approx(1.0)
    assert float(centred_mse(flat, rubato, mask)) == pytest.approx(100 * float(centred_mse(flat, steady, mask)))
    assert float(normalised_mse(flat, steady, mask)) == pytest.approx((2 / 300) / (2 / 300 + 0.002))
    # the level is not its business; twice the curve is not as good as the curve (unlike 1 - r)
    assert float(normalised_mse(rubato.nan_to_num(0.0) + 3.0, rubato, mask)) < 1e-9
    assert float(normalised_mse(2 * rubato.nan_to_num(0.0), rubato, mask, floor=0.0)) == pytest.approx(1.0)
    both = torch.cat([steady, torch.tensor([[1.0, nan, nan, 2.0]])])  # the second row: two groups, left out
    assert float(normalised_mse(torch.zeros(2, 4), both, torch.ones(2, 4, dtype=torch.bool), floor=0.0)) == \
        pytest.approx(1.0)


def _synthetic(n, seed):
    """Pieces whose tempo slows by 0.5 (log) at fermatas and follows the notated tempo: a plan must
    learn both from the features."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = rng.normal(size=(int(rng.integers(20, 60)), N_FEATURES)).astype(np.float32)
        f[:, _col("fermata")] = rng.random(len(f)) < 0.1
        out.append({"features": f, "target": 0.5 * f[:, _col("fermata")] + 0.3 * f[:, _col("notated_log_period")]})
    return out


def test_fit_learns_a_planted_curve_and_survives_the_safe_loader():
    train, valid = _synthetic(64, 0), _synthetic(8, 1)
    plan = fit(train, valid, epochs=30, lr=3e-3, seed=0, channels=16, levels=2, dropout=0.0)
    r = [np.corrcoef(plan.predict_features(p["features"]), p["target"])[0, 1] for p in valid]
    assert np.mean(r) > 0.9, r
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    again = TempoPlan.from_state(torch.load(buf, weights_only=True))
    x = valid[0]["features"]
    assert np.allclose(again.predict_features(x), plan.predict_features(x), atol=1e-6)
    state = plan.state()
    state["feature_names"] = state["feature_names"][:-1]
    with pytest.raises(TempoPlanError, match="other features"):
        TempoPlan.from_state(state)


def test_fit_with_the_normalised_loss_learns_the_curve_and_rejects_an_unknown_loss():
    train, valid = _synthetic(64, 0), _synthetic(8, 1)
    plan = fit(train, valid, epochs=30, lr=3e-3, seed=0, channels=16, levels=2, dropout=0.0, loss="normalised")
    r = [np.corrcoef(plan.predict_features(p["features"]), p["target"])[0, 1] for p in valid]
    assert np.mean(r) > 0.9, r
    with pytest.raises(TempoPlanError, match="unknown tempo plan loss"):
        fit(train, valid, epochs=1, loss="huber")


def _plan(seed):
    torch.manual_seed(seed)
    return TempoPlan(PlanNet(channels=8, levels=2), np.zeros(N_FEATURES, np.float32), np.ones(N_FEATURES, np.float32))


def test_an_ensemble_predicts_its_members_mean_and_survives_the_safe_loader():
    members = [_plan(s) for s in (0, 1, 2)]
    ensemble = TempoPlanEnsemble(members)
    tokens = _score(bars=6, fermata_bar=2, qpm_change_bar=3)
    each = np.stack([m.predict(tokens) for m in members])  # (3, G)
    assert not np.allclose(each[0], each[1])  # the members differ, so the mean is not any one of them
    assert np.allclose(ensemble.predict(tokens), each.mean(0))
    buf = io.BytesIO()
    torch.save(ensemble.state(), buf)
    buf.seek(0)
    again = tempo_plan_from_state(torch.load(buf, weights_only=True))
    assert isinstance(again, TempoPlanEnsemble) and len(again.members) == 3
    assert np.allclose(again.predict(tokens), each.mean(0), atol=1e-6)
    single = tempo_plan_from_state(members[0].state())
    assert isinstance(single, TempoPlan) and np.allclose(single.predict(tokens), each[0], atol=1e-6)
    with pytest.raises(TempoPlanError, match="at least one"):
        TempoPlanEnsemble([])


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_fit_spread_stretches_a_shrunk_curve_back_and_the_files_keep_it(kind):
    plan = _plan(0) if kind == "single" else TempoPlanEnsemble([_plan(s) for s in (0, 1)])
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(12):  # pianists whose curves are 1.7 x the plan's, and a few groups without a tempo
        f = rng.normal(size=(int(rng.integers(20, 50)), N_FEATURES)).astype(np.float32)
        target = 1.7 * plan.predict_features(f, spread=1.0)
        target[rng.random(len(f)) < 0.1] = np.nan
        pieces.append({"features": f, "target": target})
    plan.spread = fit_spread(plan, pieces)
    assert plan.spread == pytest.approx(1.7, rel=1e-3)
    x = pieces[0]["features"]
    wide, narrow = plan.predict_features(x), plan.predict_features(x, spread=1.0)
    assert np.allclose(wide - wide.mean(), 1.7 * (narrow - narrow.mean()))  # the shape, stretched
    quarters = 2.0 ** x[:, FEATURE_NAMES.index("log_ioi_next")]
    # the piece's length at the notated tempo is kept
    assert np.sum(quarters * np.exp(wide)) == pytest.approx(np.sum(quarters * np.exp(narrow)), rel=1e-9)
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    again = tempo_plan_from_state(torch.load(buf, weights_only=True))
    assert again.spread == pytest.approx(plan.spread)
    assert np.allclose(again.predict_features(x), plan.predict_features(x), atol=1e-5)
    assert fit_spread(plan, [{"features": x[:2], "target": np.array([0.1, np.nan])}]) == 1.0  # nothing to read


@pytest.mark.parametrize("kind", ["single", "ensemble"])
def test_a_score_without_markings_takes_the_plain_spread_and_the_files_keep_it(kind):
    from instruct_tokenizer.score import has_markings, without_markings

    plan = _plan(0) if kind == "single" else TempoPlanEnsemble([_plan(s) for s in (0, 1)])
    marked = _score(bars=6, fermata_bar=2, word="rit")
    plain = without_markings(marked)
    assert has_markings(marked) and not has_markings(plain)
    assert [t for t in marked if t not in plain] == [V.tok(V.TEMPO_WORD, "rit"), V.tok(V.MARK, "fermata")]
    plan.spread, plan.spread_plain = 1.5, 2.5
    assert np.allclose(plan.predict(marked), plan.predict_features(group_features(marked), spread=1.5))
    assert np.allclose(plan.predict(plain), plan.predict_features(group_features(plain), spread=2.5))
    buf = io.BytesIO()
    torch.save(plan.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert tempo_plan_from_state(state).spread_plain == 2.5
    assert np.allclose(tempo_plan_from_state(state).predict(plain), plan.predict(plain), atol=1e-6)
    if kind == "single":
        del state["spread_plain"]  # a file written before it: the same spread for every score
    else:
        state["spread_plain"] = 0.0  # none stored
    again = tempo_plan_from_state(state)
    assert again.spread_plain is None
    assert np.allclose(again.predict(plain), plan.predict_features(group_features(plain), spread=1.5), atol=1e-6)


def _phrased_score():
    """Two 4/4 bars of quarter notes (bass C3 on each first beat): a slur over the first three beats of bar 1,
    then a quarter rest on beat 4; a crescendo hairpin over bar 2."""
    out = [V.BAR_TOKEN, V.tok(V.TIME_SIG, "4/4"), V.tok(V.QPM, 60)]
    for beat in range(3):
        out.append(V.tok(V.POS, beat * V.GRID))
        out += [V.tok(V.PITCH, 67), V.tok(V.DUR, V.GRID), V.tok(V.STAFF, 1)]
        if beat in (0, 2):
            out.append(V.tok(V.SLUR, "start" if beat == 0 else "end"))
        if beat == 0:
            out += [V.tok(V.PITCH, 48), V.tok(V.DUR, V.GRID), V.tok(V.STAFF, 2)]
    out += [V.BAR_TOKEN, V.tok(V.QPM, 60)]
    for beat in range(4):
        out.append(V.tok(V.POS, beat * V.GRID))
        if beat == 0:
            out.append(V.tok(V.WEDGE, "cresc"))
        if beat == 3:
            out.append(V.tok(V.WEDGE, "end"))
        out += [V.tok(V.PITCH, 67 + beat), V.tok(V.DUR, V.GRID), V.tok(V.STAFF, 1)]
    return out


def test_phrase_features_read_rests_slurs_the_bass_and_hairpins():
    from museformer.tempo_plan import PHRASE_FEATURE_NAMES, TEMPO_FEATURE_NAMES

    tokens = _phrased_score()
    base = group_features(tokens)
    f = group_features(tokens, TEMPO_FEATURE_NAMES)
    assert f.shape == (7, len(TEMPO_FEATURE_NAMES)) and np.array_equal(f[:, :N_FEATURES], base)
    ph = {name: f[:, N_FEATURES + i] for i, name in enumerate(PHRASE_FEATURE_NAMES)}
    assert np.allclose(ph["log_rest_after"], [0, 0, 1, 0, 0, 0, 0])  # log2(1 + the quarter rest) after beat 3
    assert ph["slur_start"].tolist() == [1, 0, 0, 0, 0, 0, 0] and ph["slur_end"].tolist() == [0, 0, 1, 0, 0, 0, 0]
    # the slur's end (and the rest) on the third onset: 2 and 1 quarters before it, 0 at it; after it 2, 3, 4, 5
    assert np.allclose(ph["log_q_to_phrase_end"][:3] * 4, np.log2([3, 2, 1]))
    assert np.allclose(ph["log_q_from_phrase_end"][3:] * 4, np.log2([1 + 2, 1 + 3, 1 + 4, 1 + 5]))
    assert ph["bass_pitch"][0] == pytest.approx((48 - 64) / 24) and ph["bass_pitch"][1] == pytest.approx(3 / 24)
    assert ph["wedge_cresc"].tolist() == [0, 0, 0, 1, 1, 1, 1] and not ph["wedge_dim"].any()
    with pytest.raises(TempoPlanError, match="unknown plan features"):
        group_features(tokens, FEATURE_NAMES + ("tempo_from_the_future",))


def test_a_plan_reads_the_features_it_was_fitted_on_and_keeps_them_in_its_file():
    from museformer.tempo_plan import TEMPO_FEATURE_NAMES

    torch.manual_seed(0)
    n = len(TEMPO_FEATURE_NAMES)
    plan = TempoPlan(PlanNet(n_features=n, channels=8, levels=2), np.zeros(n, np.float32), np.ones(n, np.float32),
                     feature_names=TEMPO_FEATURE_NAMES)
    tokens = _phrased_score()
    assert np.allclose(plan.predict(tokens), plan.predict_features(group_features(tokens, TEMPO_FEATURE_NAMES)))
    buf = io.BytesIO()
    torch.save(TempoPlanEnsemble([plan]).state(), buf)
    buf.seek(0)
    again = tempo_plan_from_state(torch.load(buf, weights_only=True))
    assert again.feature_names == TEMPO_FEATURE_NAMES and np.allclose(again.predict(tokens), plan.predict(tokens))
    with pytest.raises(TempoPlanError, match="different features"):
        TempoPlanEnsemble([plan, _plan(1)])
    pieces = [{"features": group_features(tokens), "target": np.linspace(-0.1, 0.1, 7)}]
    with pytest.raises(TempoPlanError, match="feature columns"):
        fit(pieces, pieces, epochs=1, feature_names=TEMPO_FEATURE_NAMES)


def test_the_decoder_gets_the_curve_over_each_bars_notated_tempo_counted_once():
    """factors_over_notated: a plan's curve is relative to the piece's mean and already holds the notated
    tempo changes (it reads them); over each bar's notated period the decoder must get it less the bar's
    own offset, so that notated period x e^factor is the curve over the piece's mean notated period. A score
    at one tempo gets the curve unchanged."""
    from museformer.tempo_plan import factors_over_notated

    plan = _plan(0)
    steady = _score(bars=6)
    assert np.allclose(factors_over_notated(plan, steady), plan.predict(steady))
    changing = _score(bars=6, qpm_change_bar=3)  # QPM 60 for three bars, then 120
    factors, curve = factors_over_notated(plan, changing), plan.predict(changing)
    notated = np.log(np.where(np.arange(len(curve)) < 12, 1.0, 0.5))  # (G,) log s per quarter of each group's bar
    assert np.allclose(notated + factors, notated.mean() + curve, atol=1e-6)
    assert np.allclose(curve - factors, group_features(changing)[:, _col("notated_log_period")])


def _beats_score(onsets_q, qpm=(60,)):
    """4/4 bars with one C4 at each onset (quarters from the start), QPM per bar from ``qpm`` (the last
    value holds on)."""
    out, bar = [], -1
    for q in onsets_q:
        while int(q // 4) > bar:
            bar += 1
            out.append(V.BAR_TOKEN)
            if bar == 0:
                out.append(V.tok(V.TIME_SIG, "4/4"))
            out.append(V.tok(V.QPM, qpm[min(bar, len(qpm) - 1)]))
        out += [V.tok(V.POS, int(round((q - 4 * bar) * V.GRID))), V.tok(V.PITCH, 60), V.tok(V.DUR, V.GRID // 2),
                V.tok(V.STAFF, 1)]
    return out


def _decoded_times(tokens, token_factors):
    """Per group, the time (s) at which a performance whose Tempo tokens play notated period x
    e^token_factors over the gap ending at each group reaches it (what decoding does with them)."""
    from instruct_tokenizer.score import bar_notated_period_s, score_timeline

    tl = score_timeline(tokens)
    token_period = bar_notated_period_s(tokens)[tl.group_bar] * np.exp(token_factors)  # (G,) s per quarter
    return np.concatenate([[0.0], np.cumsum(np.diff(tl.group_q) * token_period[1:])])


@pytest.mark.parametrize("onsets_q, qpm", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], (60,)),  # a group a beat (a waltz's bass and chords)
    ([0, 0.5, 1.5, 2, 3.5, 4, 5, 5.25, 5.5, 6, 8, 9], (60, 120, 90)),  # off-beat groups, a held beat, tempo changes
])
def test_tokens_centred_on_gap_factors_play_the_plan_s_beat_tempo(onsets_q, qpm):
    """The plan predicts each group's beat tempo (constant within a beat, as its targets are); decoding
    times the gap that ends at a group by that group's token. Centred on ``gap_factors``, the tokens reach
    every group when the plan's beat periods, laid end to end, do (a beat without a group keeps the beat
    before's), so that one group a beat plays the plan's beat tempo exactly; centred on the plan's own
    factors, such a score played each beat's tempo a beat early."""
    from instruct_tokenizer.metrics import beat_log_tempo
    from instruct_tokenizer.score import bar_notated_period_s, score_timeline
    from museformer.tempo_plan import gap_factors

    tokens = _beats_score(onsets_q, qpm)
    tl = score_timeline(tokens)
    q = tl.group_q
    beat_period = np.array([1.0, 1.0, 2.0, 1.0, 0.7, 1.3, 1.0, 1.0, 0.8, 1.0])  # s per quarter; beat 7 holds no group
    factors = np.log(beat_period[np.floor(q).astype(int)] / bar_notated_period_s(tokens)[tl.group_bar])
    plan_time = np.array([beat_period[: int(x)].sum() + (x - int(x)) * beat_period[int(x)] for x in q])
    assert np.allclose(_decoded_times(tokens, gap_factors(factors, tokens)), plan_time, atol=1e-9)
    if len(set(np.floor(q))) == len(q):  # a group a beat
        measured = slice(0, len(q) - 1)  # the last group's beat ends with the score: not measured
        played = beat_log_tempo(q, _decoded_times(tokens, gap_factors(factors, tokens)), q)
        assert np.allclose(played[measured], np.log(beat_period[: len(q) - 1]), atol=1e-9)
        early = beat_log_tempo(q, _decoded_times(tokens, factors), q)
        assert np.allclose(early[: len(q) - 2], np.log(beat_period[1: len(q) - 1]), atol=1e-9)
