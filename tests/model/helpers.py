"""A tiny model on a synthetic bar-structured dictionary, built without any data files."""
import argparse

import numpy as np
import torch
from fairseq.data import Dictionary

from museformer.model import MuseformerS2PModel, museformer_s2p_tiny

SRC_TYPES = ["P"]
TGT_TYPES = ["V"]


def make_dict():
    d = Dictionary()
    d.add_symbol("Bar_None")
    for i in range(8):
        d.add_symbol(f"P_{i}")
        d.add_symbol(f"V_{i}")
    for i in range(3):
        d.add_symbol(f"S_{i}")  # prefix (style) tokens, before the first bar
    return d


class FakeTask:
    def __init__(self, d):
        self.source_dictionary = self.target_dictionary = d


def make_args(impl="dense", **kw):
    values = dict(attention_impl=impl, encoder_layers=2, decoder_layers=2, encoder_embed_dim=32,
                  encoder_ffn_embed_dim=64, encoder_attention_heads=4, decoder_attention_heads=4,
                  dropout=0.0, fine_bars="0,1,2,4", encoder_fine_window=1, cross_window=1,
                  share_all_embeddings=True)
    values.update(kw)
    args = argparse.Namespace(**values)
    museformer_s2p_tiny(args)
    return args


def make_model(impl="dense", seed=0, **kw):
    torch.manual_seed(seed)
    d = make_dict()
    model = MuseformerS2PModel.build_model(make_args(impl, **kw), FakeTask(d))
    model.eval()
    return model, d


def random_pair(d, n_bars, rng, max_notes=4):
    """Source: Bar then P_x per note; target: Bar then V_x per note (same bars)."""
    src, tgt = [], []
    for _ in range(n_bars):
        n = int(rng.integers(1, max_notes + 1))
        src.append("Bar_None")
        tgt.append("Bar_None")
        for _ in range(n):
            src.append(f"P_{rng.integers(0, 8)}")
            tgt.append(f"V_{rng.integers(0, 8)}")
    return src, tgt


def synthetic_target_slots(score_tokens):
    return ["Bar" if t == "Bar_None" else "V" for t in score_tokens if t == "Bar_None" or t.startswith("P_")]


def token_type(tok):
    return tok.partition("_")[0]


def encode(d, toks):
    return torch.tensor([d.index(t) for t in toks] + [d.eos()])


def batch(d, pairs):
    """Left-padded sources, right-padded prev_output_tokens (EOS first), like fairseq's collater."""
    srcs = [encode(d, s) for s, _ in pairs]
    tgts = [encode(d, t) for _, t in pairs]
    s_len = max(len(s) for s in srcs)
    t_len = max(len(t) for t in tgts)
    src = torch.full((len(pairs), s_len), d.pad())
    prev = torch.full((len(pairs), t_len), d.pad())
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src[i, s_len - len(s):] = s
        prev[i, 0] = d.eos()
        prev[i, 1:len(t)] = t[:-1]
    return src, torch.tensor([len(s) for s in srcs]), prev


def incremental_logits(model, src, lens, prev):
    """(B, T, V) logits of step-by-step incremental decoding along ``prev`` (one step per position)."""
    enc = model.encoder(src, lens)
    state, steps = {}, []
    for t in range(1, prev.shape[1] + 1):
        steps.append(model.decoder(prev[:, :t], enc, incremental_state=state)[0][:, -1])
    return torch.stack(steps, 1)


def incremental_gap(model, d, pairs) -> float:
    """Largest |incremental - teacher-forced| logit over the valid target positions of ``pairs``."""
    src, lens, prev = batch(d, pairs)
    forced = model(src, lens, prev)[0]
    inc = incremental_logits(model, src, lens, prev)
    return float((inc - forced)[prev.ne(d.pad())].abs().max())


def dense_bar_gap(a, b, d, pairs) -> float:
    """Largest |a - b| teacher-forced logit over the valid target positions (``b`` gets ``a``'s weights
    first); then backpropagates ``a``'s summed log-partition, so callers can check its gradients."""
    b.load_state_dict(a.state_dict())
    src, lens, prev = batch(d, pairs)
    valid = prev.ne(d.pad())
    oa, ob = a(src, lens, prev)[0], b(src, lens, prev)[0]
    oa[valid].logsumexp(-1).sum().backward()
    return float((oa - ob)[valid].abs().max())


def tiny_with_rules():
    """A tiny random model (align-source on, the synthetic grammar), four score rows of 2 to 9 bars and the
    grammar's decoding rules: (model, dictionary, pairs, rules), for the generation tests."""
    import numpy as np

    from museformer.decoding import DecodeConfig, DecodeRules

    grammar = "museformer.synthetic_grammar"
    model, d = make_model("dense", seed=1, align_source=True, grammar=grammar)
    torch.nn.init.normal_(model.decoder.align.weight, std=0.2)
    rng = np.random.default_rng(5)
    pairs = [random_pair(d, n_bars, rng) for n_bars in (9, 2, 5, 7)]
    return model, d, pairs, DecodeRules.build(DecodeConfig.defaults("task"), d, d, grammar)



def training_sample(d, seed=0, n_pairs=3, n_bars=4):
    """A fairseq training sample (net_input, right-padded target with EOS, ntokens) of random pairs."""
    rng = np.random.default_rng(seed)
    pairs = [random_pair(d, n_bars, rng) for _ in range(n_pairs)]
    src, lengths, prev = batch(d, pairs)
    target = torch.full_like(prev, d.pad())  # (B, T)
    for i, (_, t) in enumerate(pairs):
        target[i, :len(t) + 1] = encode(d, t)
    return {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": target, "ntokens": int(target.ne(d.pad()).sum())}
