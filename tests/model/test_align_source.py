"""--align-source: every decoder position reads the encoder output at its slot's score token."""
import numpy as np
import pytest
import torch

from helpers import batch, dense_bar_gap, incremental_gap, make_dict, make_model, random_pair
from instruct_tokenizer import grammar as G
from museformer.model import SlotAnchors
from museformer.synthetic_grammar import target_slots as synthetic_slots

SYNTHETIC = "museformer.synthetic_grammar"
# one bar with one onset group of two notes, in the tokenizer's own grammar
SCORE = ["Bar_None", "Pos_0", "Pitch_60", "Dur_8", "Staff_0", "Pitch_64", "Dur_8", "Staff_0"]


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(2)
    d = make_dict()
    return [random_pair(d, n_bars, rng) for n_bars in (9, 12, 4)]


def _aligned(impl="dense", seed=0):
    model, d = make_model(impl, seed=seed, align_source=True, grammar=SYNTHETIC)
    torch.nn.init.normal_(model.decoder.align.weight, std=0.2)  # as after training: not the zero start
    return model, d


def test_anchors_of_the_tokenizer_grammar():
    """Bar -> its Bar token, the group's 5 slots -> Pos, each note's 3 slots -> its Pitch, EOS -> last."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for tok in SCORE:
        d.add_symbol(tok)
    ids = torch.tensor([[d.pad()] + [d.index(t) for t in SCORE] + [d.eos()]])  # left-padded by one
    anchors = SlotAnchors(d, G.target_slots)(ids, ids.ne(d.pad()))[0].tolist()
    assert len(anchors) == len(G.target_slots(SCORE)) + 1
    group = len(G.GROUP_SLOTS)
    assert anchors == [1] + [2] * group + [3] * 3 + [6] * 3 + [9]


def test_anchors_point_at_the_slot_s_own_note(pairs):
    """Synthetic grammar: the anchor of every V slot is the P token at the same note index."""
    d = make_dict()
    src, lens, _ = batch(d, pairs)
    anchors = SlotAnchors(d, synthetic_slots)(src, src.ne(d.pad()))
    for row, (s, _) in enumerate(pairs):
        slots = synthetic_slots(s)
        picked = [d[int(src[row, a])] for a in anchors[row, : len(slots)]]
        want = [t for t in s if t == "Bar_None" or t.startswith("P_")]
        assert picked == want


def test_zero_start_and_warm_start_from_a_model_without_it(pairs):
    plain, d = make_model("dense", seed=3)
    aligned, _ = make_model("dense", seed=4, align_source=True, grammar=SYNTHETIC)
    assert torch.count_nonzero(aligned.decoder.align.weight) == 0
    state = plain.state_dict()
    aligned.upgrade_state_dict(state)
    aligned.load_state_dict(state)
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    assert (plain(src, lens, prev)[0] - aligned(src, lens, prev)[0])[valid].abs().max() < 1e-5


def test_incremental_decoding_equals_teacher_forcing(pairs):
    model, d = _aligned()
    assert incremental_gap(model, d, pairs) < 1e-4


def test_dense_and_bar_agree_and_the_projection_learns(pairs):
    a, d = _aligned("dense")
    b, _ = make_model("bar", align_source=True, grammar=SYNTHETIC)
    assert dense_bar_gap(a, b, d, pairs) < 1e-4
    assert a.decoder.align.weight.grad.abs().sum() > 0


def test_reorder_encoder_out_moves_the_anchors(pairs):
    model, d = _aligned()
    src, lens, _ = batch(d, pairs)
    enc = model.encoder(src, lens)
    order = torch.tensor([2, 0, 1])
    assert torch.equal(model.encoder.reorder_encoder_out(enc, order)["anchors"], enc["anchors"][order])


def test_decoder_input_dropout_keeps_bars_and_only_acts_in_training(pairs):
    model, d = make_model("dense", decoder_input_dropout=0.5)
    _, _, prev = batch(d, pairs)
    assert torch.equal(model.decoder.drop_inputs(prev), prev)  # eval mode: unchanged
    model.train()
    torch.manual_seed(0)
    dropped = model.decoder.drop_inputs(prev)
    changed = dropped.ne(prev)
    assert changed.any() and dropped[changed].eq(d.unk()).all()
    structural = prev.eq(d.index("Bar_None")) | prev.eq(d.pad()) | prev.eq(d.eos())
    assert not changed[structural].any()
    share = changed.sum().item() / (~structural).sum().item()
    assert 0.3 < share < 0.7


def test_decoder_input_dropout_flag_is_checked():
    with pytest.raises(ValueError, match="--decoder-input-dropout"):
        make_model("dense", decoder_input_dropout=1.0)
