#!/usr/bin/env python
"""Attention time and peak memory per backend at growing lengths (decoder self-attention, Museformer
scheme, 40-token bars, one summary per bar, 8 heads x 64 dims), fwd+bwd, with fairseq's
MultiheadAttention (full causal attention) as the baseline, all in one run. ``flex`` is compiled
FlexAttention, forward only on CPU (torch has no CPU backward for it). Each (size, backend) runs in its
own subprocess so that the peak RSS column is that backend's own peak.

    python scripts/bench_attention.py --sizes 1024,4096,8192,16384 --backends fairseq_mha,dense,bar,flex
"""
import argparse
import argparse as _ap
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from museformer.backends import bar_attend, dense_attend  # noqa: E402
from museformer.barplan import build_bar_plan  # noqa: E402
from museformer.embeddings import Layout, self_mask  # noqa: E402

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
    grad = name not in ("flex", "dense_fwd")  # CPU FlexAttention is forward only; dense_fwd: its baseline
    q, k, v = (torch.randn(1, H, n, D, requires_grad=grad) for _ in range(3))
    if name == "flex":
        from museformer.flex_backend import build_flex_plan, flex_attend

    def step():
        if name in ("dense", "dense_fwd"):
            out = dense_attend(q, k, v, self_mask(lay, "decoder", ARGS))
        elif name == "bar":
            out = bar_attend(q, k, v, build_bar_plan(lay, "decoder", ARGS))
        elif name == "flex":
            out = flex_attend(q, k, v, build_flex_plan(lay, "decoder", ARGS))
        else:  # fairseq MultiheadAttention, full causal
            x = q.transpose(1, 2).reshape(1, n, H * D).transpose(0, 1)  # (T, B, C)
            mask = torch.triu(torch.full((n, n), float("-inf")), 1)
            out = MHA(x, x, x, attn_mask=mask, need_weights=False)[0]
        if out.requires_grad:
            out.sum().backward()

    return timed(step)


def estimate_gib(name, t):
    """Rough peak memory (GiB) of the full-attention baselines, so the bench never invokes the OOM killer:
    fairseq MHA keeps ~3 (H, T, T) float32 tensors; dense measured ~16 bytes per mask element on CPU."""
    if name == "fairseq_mha":
        return 3 * H * t * t * 4 / 2**30
    if name in ("dense", "dense_fwd"):
        return 16 * t * t / 2**30
    return 0.0


def available_gib():
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def one(spec):
    """Child process: time one backend at one size, print 'seconds peak_rss_gib'."""
    global MHA
    from fairseq.modules import MultiheadAttention

    t, name = spec.split(":")
    MHA = MultiheadAttention(H * D, H, self_attention=True)
    sec = run_backend(name, int(t))
    print(f"RESULT {sec} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,8192,16384")
    ap.add_argument("--backends", default="fairseq_mha,dense,bar,dense_fwd,flex")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per (size, backend) before giving up")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        return one(a.one)
    results = {}
    print("| tokens | backend | time s | peak RSS GiB | dense / this (same fwd or fwd+bwd) |")
    print("|---|---|---|---|---|")
    for t in [int(x) for x in a.sizes.split(",")]:
        for name in a.backends.split(","):
            need = estimate_gib(name, t)
            if need > 0.8 * available_gib():
                print(f"| {t} | {name} | skipped: needs ~{need:.0f} GiB, {available_gib():.0f} GiB free | | |",
                      flush=True)
                continue
            try:
                p = subprocess.run([sys.executable, __file__, "--one", f"{t}:{name}"], capture_output=True,
                                   text=True, timeout=a.timeout)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT")]
                if not line:
                    tail = (p.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
                    print(f"| {t} | {name} | failed: {tail[:70]} | | |", flush=True)
                    continue
            except subprocess.TimeoutExpired:
                print(f"| {t} | {name} | over {a.timeout} s | | |", flush=True)
                continue
            sec, rss = (float(x) for x in line[0].split()[1:])
            results[(t, name)] = sec
            base = "dense_fwd" if name in ("flex", "dense_fwd") else "dense"
            ratio = results.get((t, base), float("nan")) / sec
            kind = "fwd" if name in ("flex", "dense_fwd") else "fwd+bwd"
            print(f"| {t} | {name} ({kind}) | {sec:.3f} | {rss:.2f} | {ratio:.2f}x |", flush=True)
    sizes = sorted({t for t, _ in results})
    for lo, hi in zip(sizes, sizes[1:]):
        if (lo, "bar") in results and (hi, "bar") in results:
            print(f"bar time({hi})/time({lo}) = {results[(hi, 'bar')] / results[(lo, 'bar')]:.2f}")


if __name__ == "__main__":
    main()
