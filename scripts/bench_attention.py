#!/usr/bin/env python
"""Attention time and peak memory per backend at growing lengths (decoder self-attention, Museformer
scheme, 40-token bars, one summary per bar, 8 heads x 64 dims), fwd+bwd, with fairseq's
MultiheadAttention (full causal attention) as the baseline, all in one run.

    python scripts/bench_attention.py --sizes 1024,4096,8192,16384
"""
import argparse
import argparse as _ap
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from museformer.backends import bar_attend, dense_attend  # noqa: E402
from museformer.barplan import build_bar_plan  # noqa: E402
from museformer.model import Layout, self_mask  # noqa: E402

H, D, BAR = 8, 64, 40
ARGS = _ap.Namespace(fine_bars_list=[0, 1, 2, 4, 8, 12, 16, 24, 32], encoder_fine_window=2, cross_window=2)


def layout(t):
    bar = (torch.arange(t) // BAR + 1).unsqueeze(0)
    return Layout(bar, torch.ones(1, t, dtype=torch.bool), 1)


def timed(fn, reps=2):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def run_backend(name, t):
    lay = layout(t)
    n = lay.bar.shape[1]
    q, k, v = (torch.randn(1, H, n, D, requires_grad=True) for _ in range(3))

    def step():
        if name == "dense":
            out = dense_attend(q, k, v, self_mask(lay, "decoder", ARGS))
        elif name == "bar":
            out = bar_attend(q, k, v, build_bar_plan(lay, "decoder", ARGS))
        else:  # fairseq MultiheadAttention, full causal
            x = q.transpose(1, 2).reshape(1, n, H * D).transpose(0, 1)
            mask = torch.triu(torch.full((n, n), float("-inf")), 1)
            out = MHA(x, x, x, attn_mask=mask, need_weights=False)[0]
        out.sum().backward()

    return timed(step)


def main():
    global MHA
    from fairseq.modules import MultiheadAttention

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,8192,16384")
    ap.add_argument("--backends", default="fairseq_mha,dense,bar")
    a = ap.parse_args()
    MHA = MultiheadAttention(H * D, H, self_attention=True)
    results = {}
    print("| tokens | backend | fwd+bwd s | peak RSS GiB | vs dense |")
    print("|---|---|---|---|---|")
    for t in [int(x) for x in a.sizes.split(",")]:
        for name in a.backends.split(","):
            try:
                sec = run_backend(name, t)
            except RuntimeError as e:  # out of memory
                print(f"| {t} | {name} | failed: {str(e).splitlines()[0][:60]} | | |")
                continue
            results[(t, name)] = sec
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            ratio = results.get((t, "dense"), float("nan")) / sec
            print(f"| {t} | {name} | {sec:.3f} | {rss:.1f} | {ratio:.2f}x |", flush=True)
    sizes = sorted({t for t, _ in results})
    if len(sizes) >= 2 and (sizes[-1], "bar") in results and (sizes[-2], "bar") in results:
        print(f"bar time({sizes[-1]})/time({sizes[-2]}) = {results[(sizes[-1], 'bar')] / results[(sizes[-2], 'bar')]:.2f}")


if __name__ == "__main__":
    main()
