"""--criterion museformer_anchored_ce: label-smoothed cross-entropy plus KL to a reference model on the
target positions whose type is not free."""
import copy

import pytest
import torch

from helpers import FakeTask, make_model, training_sample
from museformer import criterion as C


def _criterion(monkeypatch, model, d, anchor, free="V", weight=1.0):
    monkeypatch.setattr(C, "load_anchor", lambda path, task: anchor)
    return C.AnchoredCrossEntropyCriterion(FakeTask(d), False, 0.05, "anchor.pt", weight, free)


def test_the_model_itself_as_anchor_adds_nothing(monkeypatch):
    model, d = make_model()
    crit = _criterion(monkeypatch, model, d, model, free="")
    sample = training_sample(d)
    loss, _, log = crit(model, sample)
    plain, _ = crit.compute_loss(model, model(**sample["net_input"]), sample)
    assert float(log["anchor_kl"]) == pytest.approx(0.0, abs=1e-5)
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)
    assert log["anchored"] == sample["ntokens"] - 3  # nothing free: every position but the 3 EOS anchored


def test_only_positions_of_anchored_types_count(monkeypatch):
    model, d = make_model(seed=0)
    anchor, _ = make_model(seed=1)  # another model: KL > 0 wherever anchored
    sample = training_sample(d)
    v_positions = sum(1 for i in sample["target"].flatten().tolist() if d[i].startswith("V_"))
    free_v = _criterion(monkeypatch, model, d, anchor, free="V")
    _, _, log = free_v(model, sample)
    assert log["anchored"] == sample["ntokens"] - v_positions - 3  # Bar tokens only (EOS is never anchored)
    assert float(log["anchor_kl"]) > 0
    all_free = _criterion(monkeypatch, model, d, anchor, free="V,Bar")
    loss, _, log = all_free(model, sample)
    plain, _ = all_free.compute_loss(model, model(**sample["net_input"]), sample)
    assert log["anchored"] == 0 and float(loss) == pytest.approx(float(plain), rel=1e-6)


def test_the_kl_pulls_the_model_towards_the_anchor(monkeypatch):
    model, d = make_model(seed=0)
    anchor = copy.deepcopy(model)
    torch.nn.init.normal_(anchor.decoder.layers[0].ffn.fc1.weight, std=0.5)  # a different reference
    crit = _criterion(monkeypatch, model, d, anchor, free="", weight=1.0)
    sample = training_sample(d)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # the KL is summed over about 45 positions
    kls = []
    for _ in range(5):
        loss, _, log = crit(model, sample)
        kls.append(float(log["anchor_kl"]))
        opt.zero_grad()
        (loss - crit.compute_loss(model, model(**sample["net_input"]), sample)[0]).backward()  # the KL alone
        opt.step()
    assert kls[-1] < kls[0]


def test_a_missing_anchor_is_refused(monkeypatch):
    _, d = make_model()
    with pytest.raises(ValueError, match="--anchor-model"):
        C.AnchoredCrossEntropyCriterion(FakeTask(d), False, 0.05, "", 1.0, "Tempo")
