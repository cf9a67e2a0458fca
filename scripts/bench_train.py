#!/usr/bin/env python
"""Training throughput of museformer_s2p_tiny vs fairseq's ``transformer`` of the same size (same
synthetic bar-structured example, 40-token bars, one example per batch), and incremental-decoding
per-token latency at two positions, all in one run.

    python scripts/bench_train.py --sizes 1024,8192 --latency-at 1024,8192
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from fairseq.data import Dictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from museformer.model import MuseformerS2PModel, museformer_s2p_tiny  # noqa: E402

BAR = 40


class FakeTask:
    def __init__(self, d):
        self.source_dictionary = self.target_dictionary = d


def make_dict():
    d = Dictionary()
    d.add_symbol("Bar_None")
    for i in range(64):
        d.add_symbol(f"V_{i}")
    return d


def example(d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(d.nspecial + 1, len(d), (1, n), generator=g)
    toks[:, ::BAR] = d.index("Bar_None")
    toks[:, -1] = d.eos()
    return toks


def museformer(d, impl):
    args = argparse.Namespace(attention_impl=impl, share_all_embeddings=True, dropout=0.0)
    museformer_s2p_tiny(args)
    return MuseformerS2PModel.build_model(args, FakeTask(d))


def transformer(d, like):
    from fairseq.models.transformer import TransformerModel, base_architecture

    a = like.encoder.args
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    TransformerModel.add_args(parser)
    args = parser.parse_args([])
    vars(args).update(dict(
        encoder_layers=a.encoder_layers, decoder_layers=a.decoder_layers, encoder_embed_dim=a.encoder_embed_dim,
        decoder_embed_dim=a.decoder_embed_dim, encoder_ffn_embed_dim=a.encoder_ffn_embed_dim,
        decoder_ffn_embed_dim=a.decoder_ffn_embed_dim, encoder_attention_heads=a.encoder_attention_heads,
        decoder_attention_heads=a.decoder_attention_heads, share_all_embeddings=True, dropout=0.0,
        encoder_normalize_before=True, decoder_normalize_before=True, max_source_positions=1 << 16,
        max_target_positions=1 << 16, encoder_layers_to_keep=None, decoder_layers_to_keep=None))
    base_architecture(args)
    return TransformerModel.build_model(args, FakeTask(d))


def train_rate(model, d, n, reps):
    src = example(d, n, 0)
    tgt = example(d, n, 1)
    prev = torch.cat([tgt[:, -1:], tgt[:, :-1]], 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step():
        out = model(src, torch.tensor([n]), prev)[0]
        loss = torch.nn.functional.cross_entropy(out.view(-1, out.shape[-1]), tgt.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return n * reps / (time.perf_counter() - t)


@torch.no_grad()
def latency(model, d, positions, window=20):
    """Mean seconds per incremental step around each position (batch 1, greedy, cache kept)."""
    model.eval()
    n = max(positions) + window + 1
    src = example(d, n, 0)
    tgt = example(d, n, 1)
    prev = torch.cat([tgt[:, -1:], tgt[:, :-1]], 1)
    enc = model.encoder(src, torch.tensor([n]))
    state, out, t0 = {}, {}, None
    for t in range(1, n + 1):
        for p in positions:
            if t == p:
                t0 = time.perf_counter()
        model.decoder(prev[:, :t], enc, incremental_state=state)
        for p in positions:
            if t == p + window:
                out[p] = (time.perf_counter() - t0) / window
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,8192", help="tokens per example (source and target)")
    ap.add_argument("--impl", default="bar", help="museformer --attention-impl")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--transformer-max", type=int, default=16384,
                    help="largest size for the transformer baseline (its full attention is quadratic in memory)")
    ap.add_argument("--latency-at", default="1024,8192", help="positions for per-token latency ('' skips)")
    a = ap.parse_args()
    torch.manual_seed(0)
    d = make_dict()
    mf = museformer(d, a.impl)
    tf = transformer(d, mf)
    print(f"params: museformer_s2p_tiny {sum(p.numel() for p in mf.parameters())}, "
          f"transformer {sum(p.numel() for p in tf.parameters())}")
    print("| tokens/example | museformer tok/s | transformer tok/s | ratio |")
    print("|---|---|---|---|")
    for n in [int(x) for x in a.sizes.split(",") if x]:
        r_mf = train_rate(mf, d, n, a.reps)
        if n > a.transformer_max:
            print(f"| {n} | {r_mf:.0f} | not run (> --transformer-max) | |", flush=True)
            continue
        try:
            r_tf = train_rate(tf, d, n, a.reps)
        except RuntimeError as e:
            print(f"| {n} | {r_mf:.0f} | failed: {str(e)[:50]} | |")
            continue
        print(f"| {n} | {r_mf:.0f} | {r_tf:.0f} | {r_mf / r_tf:.2f}x |", flush=True)
    pos = [int(x) for x in a.latency_at.split(",") if x]
    if pos:
        torch.manual_seed(0)
        lat = latency(museformer(d, a.impl), d, pos)  # a fresh model (no optimizer state around)
        for p in pos:
            print(f"incremental latency at position {p}: {lat[p] * 1e3:.2f} ms/token")
        print(f"latency({pos[-1]}) / latency({pos[0]}) = {lat[pos[-1]] / lat[pos[0]]:.2f}")


if __name__ == "__main__":
    main()
