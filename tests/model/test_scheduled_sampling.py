"""--criterion museformer_scheduled_sampling: decoder inputs mixed with the model's own type-constrained
samples from a first pass, at a rate ramped over the run's first updates."""
import pytest
import torch

from helpers import FakeTask, make_model, training_sample
from museformer import scheduled_sampling as S
from museformer.task import MuseformerS2PTask


def _criterion(d, rate=0.25, ramp=0, temperature=1.0):
    return S.ScheduledSamplingCriterion(FakeTask(d), False, 0.05, rate, ramp, temperature)


def test_the_inputs_are_the_targets_shifted_right():
    """What mix_inputs relies on: input t + 1 is target t (fairseq's layout) wherever target t is a token
    (not the closing EOS, whose next input is padding, nor padding)."""
    _, d = make_model()
    sample = training_sample(d)
    prev, target = sample["net_input"]["prev_output_tokens"], sample["target"]
    real = target[:, :-1].ne(d.pad()) & target[:, :-1].ne(d.eos())
    assert torch.equal(prev[:, 1:][real], target[:, :-1][real])


def test_samples_keep_the_gold_tokens_type():
    _, d = make_model()
    types = S.symbol_types(d)
    target = torch.tensor([[d.index("V_3"), d.index("Bar_None"), d.index("P_1")]])  # (1, 3)
    logits = torch.zeros(1, 3, len(d))
    logits[..., d.index("S_2")] = 50.0  # another type: unconstrained, it would win every draw
    for _ in range(20):
        drawn = S.sample_within_type(logits, target, types)
        assert [d[i].partition("_")[0] for i in drawn[0].tolist()] == ["V", "Bar", "P"]


def test_a_confident_model_is_sampled_at_its_mode_and_temperature_sharpens():
    _, d = make_model()
    types = S.symbol_types(d)
    target = torch.full((1, 200), d.index("V_0"))
    logits = torch.zeros(1, 200, len(d))
    logits[..., d.index("V_5")] = 3.0
    warm = S.sample_within_type(logits, target, types, temperature=1.0)
    cold = S.sample_within_type(logits, target, types, temperature=0.05)
    assert (cold == d.index("V_5")).all()
    assert 0.3 < (warm == d.index("V_5")).float().mean() < 1.0  # e^3 / (e^3 + 7): about 0.74


def test_mix_inputs_moves_each_sample_one_step_right():
    prev = torch.tensor([[2, 10, 11, 12, 13]])
    sampled = torch.tensor([[20, 21, 22, 23, 24]])
    replace = torch.tensor([[True, False, True, False, True]])
    mixed = S.mix_inputs(prev, sampled, replace)
    assert mixed.tolist() == [[2, 20, 11, 22, 13]]  # the last position's sample has no next input
    assert S.mix_inputs(prev, sampled, torch.zeros_like(replace)).tolist() == prev.tolist()


def test_bar_tokens_and_specials_are_never_replaceable():
    _, d = make_model()
    ok = S.replaceable_symbols(d)
    assert not ok[d.index("Bar_None")] and not ok[d.eos()] and not ok[d.pad()] and not ok[d.bos()]
    assert ok[d.index("V_0")] and ok[d.index("P_7")]


def test_the_rate_ramps_linearly():
    assert S.ramped_rate(0.3, 100, 0) == 0.0
    assert S.ramped_rate(0.3, 100, 50) == pytest.approx(0.15)
    assert S.ramped_rate(0.3, 100, 500) == pytest.approx(0.3)
    assert S.ramped_rate(0.3, 0, 0) == pytest.approx(0.3)


def test_rate_zero_and_evaluation_are_plain_teacher_forcing():
    model, d = make_model()
    sample = training_sample(d)
    plain, _ = _criterion(d).compute_loss(model, model(**sample["net_input"]), sample)
    model.train()  # dropout is 0 in the helpers' model: the passes are deterministic
    off = _criterion(d, rate=0.0)
    loss, _, log = off(model, sample)
    assert float(loss) == pytest.approx(float(plain), rel=1e-6) and log["ss_changed"] == 0
    model.eval()  # validation: no mixing whatever the rate
    loss, _, log = _criterion(d, rate=1.0)(model, sample)
    assert float(loss) == pytest.approx(float(plain), rel=1e-6) and log["ss_changed"] == 0


def test_rate_one_feeds_the_models_own_samples_but_keeps_the_bars():
    model, d = make_model()
    model.train()
    crit = _criterion(d, rate=1.0)
    sample = training_sample(d)
    torch.manual_seed(0)
    mixed, changed, replaceable = crit.mixed_net_input(model, sample)
    prev, new = sample["net_input"]["prev_output_tokens"], mixed["prev_output_tokens"]
    bars = prev.eq(d.index("Bar_None")) | prev.eq(d.pad()) | prev.eq(d.eos())
    assert torch.equal(new[bars], prev[bars])
    assert all(d[i].startswith("V_") for i in new[~bars].tolist())
    assert changed == int(new.ne(prev).sum()) and 0 < changed <= replaceable
    loss, _, log = crit(model, sample)
    plain, _ = crit.compute_loss(model, model(**sample["net_input"]), sample)
    assert float(loss) != pytest.approx(float(plain), rel=1e-6)


class _Optimizer:
    def backward(self, loss):
        loss.backward()


def test_the_task_tells_the_criterion_the_update_number():
    model, d = make_model()
    crit = _criterion(d, rate=0.4, ramp=100)
    task = object.__new__(MuseformerS2PTask)  # train_step reads nothing of the task's own state
    task.train_step(training_sample(d), model, crit, _Optimizer(), update_num=25)
    assert crit.num_updates == 25 and crit.rate() == pytest.approx(0.1)


@pytest.mark.parametrize("kw, flag", [(dict(rate=1.5), "--ss-rate"), (dict(ramp=-1), "--ss-ramp-updates"),
                                      (dict(temperature=0.0), "--ss-temperature")])
def test_bad_settings_are_refused_naming_the_flag(kw, flag):
    _, d = make_model()
    with pytest.raises(ValueError, match=flag):
        _criterion(d, **kw)
