"""--train-rows: a fine-tune of some token types' embedding rows, every other parameter frozen."""
import numpy as np
import pytest
import torch

from helpers import FakeTask, batch, encode, make_args, make_dict, make_model, random_pair
from museformer.model import MuseformerS2PModel


def _train_step(model, d, seed=0):
    """One Adam step (no weight decay) on a random batch; returns the model's parameters before it."""
    rng = np.random.default_rng(seed)
    pairs = [random_pair(d, 5, rng) for _ in range(3)]
    src, lengths, prev = batch(d, pairs)
    target = torch.full_like(prev, d.pad())  # (B, T): the next token of every position
    for i, (_, t) in enumerate(pairs):
        target[i, :len(t) + 1] = encode(d, t)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    logits, _ = model(src, lengths, prev)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=d.pad())
    loss.backward()
    opt.step()
    return before


def test_only_the_rows_of_the_types_move():
    model, d = make_model(train_rows="V")
    rows = [i for i, s in enumerate(d.symbols) if s.startswith("V_")]
    others = [i for i in range(len(d)) if i not in rows]
    before = _train_step(model, d)
    after = dict(model.named_parameters())
    table = "encoder.embed.tokens.weight"
    assert model.decoder.out.weight is after[table]  # one shared table
    assert not torch.equal(after[table][rows], before[table][rows])  # the V rows trained
    assert torch.equal(after[table][others], before[table][others])  # every other row bit for bit
    moved = [n for n, p in after.items() if n != table and not torch.equal(p, before[n])]
    assert moved == []  # every other parameter frozen


def test_without_the_flag_everything_trains():
    model, d = make_model()
    before = _train_step(model, d)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "decoder.layers.0.ffn.fc1.weight" in moved and "encoder.embed.tokens.weight" in moved


@pytest.mark.parametrize("kw, flag", [(dict(train_rows="Nope"), "--train-rows"),
                                      (dict(train_rows="V", weight_decay=0.01), "--weight-decay"),
                                      (dict(train_rows="V", share_all_embeddings=False), "--share-all-embeddings")])
def test_bad_combinations_are_refused_naming_the_flag(kw, flag):
    with pytest.raises(ValueError, match=flag):
        MuseformerS2PModel.build_model(make_args(**kw), FakeTask(make_dict()))
