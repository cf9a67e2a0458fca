#!/usr/bin/env python
"""GPU check of the attention backends (needs CUDA; the CPU test suite covers the rest).

1. Agreement with the dense reference on the GPU, in float32: forward logits and every parameter's
   gradient of ``bar`` and of the compiled ``flex`` path (FlexAttention's backward runs only on GPU, so
   the CPU tests cannot check it). Error is ``|a - b| / |a|`` (Frobenius norms) over valid positions.
2. Half precision: an fp16 model (as fairseq's ``--fp16`` runs it) gives finite loss and gradients and
   stays near the float32 logits.
3. Throughput of one training step (forward + backward, fp16, full-size ``museformer_s2p`` layers on the
   synthetic bar corpus) per backend, in target tokens per second: median of timed steps after warm-up
   (which includes FlexAttention's compilation). Printed as a table; ``--json`` writes the figures.

Usage: PYTHONPATH=.:tests/model python scripts/gpu/gpu_check.py [--json OUT.json]
       [--throughput-only] [--impls dense,bar,flex] [--shapes 1k,8k]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "model")]

from helpers import batch, make_dict, make_model, random_pair  # noqa: E402

DEV = "cuda"
SHIPPED = dict(align_source=True, grammar="museformer.synthetic_grammar", style_embed=True)  # train_nasap.sh's flags
FULL = dict(**SHIPPED, encoder_layers=6, decoder_layers=6, encoder_embed_dim=512, encoder_ffn_embed_dim=2048,
            encoder_attention_heads=8, decoder_attention_heads=8, fine_bars="0,1,2,4,8,12,16,24,32",
            encoder_fine_window=2, cross_window=2)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius |a - b| / |a| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def pairs_of(n_bars: int, n_seq: int, seed: int, max_notes: int = 12):
    rng = np.random.default_rng(seed)
    d = make_dict()
    return d, [random_pair(d, n_bars, rng, max_notes) for _ in range(n_seq)]


def agreement(impl: str, seed: int) -> dict:
    """float32 forward and gradient error of ``impl`` against ``dense`` on fresh random sequences."""
    d, pairs = pairs_of(48, 3, seed)
    ref, _ = make_model("dense", seed=seed, **FULL)
    fast, _ = make_model(impl, seed=seed, **FULL)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.to(DEV), fast.to(DEV)
    src, lens, prev = (t.to(DEV) for t in batch(d, pairs))
    valid = prev.ne(d.pad())
    outs = []
    for m in (ref, fast):
        out = m(src, lens, prev)[0]
        out[valid].logsumexp(-1).sum().backward()
        outs.append(out[valid].detach())
    # key-projection biases have a gradient of exactly zero in exact arithmetic (softmax is shift-invariant):
    # only rounding is left there, so relative error is taken where a gradient is not negligible
    grads = [(pa.grad, pb.grad) for pa, pb in zip(ref.parameters(), fast.parameters()) if pa.grad is not None]
    scale = max(float(ga.norm()) for ga, _ in grads)
    grad_err = max(rel_err(ga, gb) for ga, gb in grads if float(ga.norm()) > 1e-4 * scale)
    missing = [n for n, p in fast.named_parameters() if p.grad is None]
    return {"impl": impl, "tokens": int(valid.sum()), "forward_rel_err": rel_err(*outs),
            "max_grad_rel_err": grad_err, "params_without_grad": missing}


def half_precision(impl: str, seed: int) -> dict:
    d, pairs = pairs_of(32, 4, seed)
    model, _ = make_model(impl, seed=seed, **FULL)
    model = model.to(DEV)
    src, lens, prev = (t.to(DEV) for t in batch(d, pairs))
    valid = prev.ne(d.pad())
    with torch.no_grad():
        ref = model(src, lens, prev)[0][valid]
    model = model.half()
    out = model(src, lens, prev)[0]
    loss = torch.nn.functional.cross_entropy(out.float()[valid], prev[valid])
    loss.backward()
    finite = bool(torch.isfinite(loss)) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                 if p.grad is not None)
    return {"impl": impl, "finite": finite, "rel_err_vs_fp32": rel_err(ref, out.detach()[valid])}


def throughput(impl: str, n_bars: int, n_seq: int, steps: int = 6) -> dict:
    """fp16 training steps per second on ``n_seq`` sequences of ``n_bars`` bars (~7.5 tokens a bar)."""
    d, pairs = pairs_of(n_bars, n_seq, 7)
    model, _ = make_model(impl, **FULL)
    model = model.to(DEV).half().train()
    src, lens, prev = (t.to(DEV) for t in batch(d, pairs))
    valid = prev.ne(d.pad())
    tokens = int(valid.sum())
    times, warmup = [], 0.0
    try:
        for i in range(steps + 2):
            sync()
            t0 = time.perf_counter()
            out = model(src, lens, prev)[0]
            torch.nn.functional.cross_entropy(out.float()[valid], prev[valid]).backward()
            sync()
            if i >= 2:  # the first two steps compile (flex) and warm the allocator
                times.append(time.perf_counter() - t0)
            else:
                warmup += time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"impl": impl, "tokens": tokens, "seq_len": prev.shape[1], "batch": n_seq, "tok_per_s": None,
                "note": "out of memory"}
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return {"impl": impl, "tokens": tokens, "seq_len": prev.shape[1], "batch": n_seq, "step_s": med,
            "tok_per_s": tokens / med, "peak_gib": peak, "warmup_s": warmup}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--cpu-dry-run", action="store_true", help="check this script on CPU (bar only, small sizes)")
    p.add_argument("--throughput-only", action="store_true",
                   help="skip the agreement and half-precision checks (time the backends only)")
    p.add_argument("--impls", default="dense,bar,flex", help="backends to time, comma-separated")
    p.add_argument("--shapes", default="1k,8k", help="segment sizes to time: 1k (16 x ~1,085 tokens, training), "
                   "8k (2 x ~8,300 tokens, whole pieces)")
    args = p.parse_args()
    global DEV, FULL
    if args.cpu_dry_run:
        DEV, FULL = "cpu", dict(SHIPPED)
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: error: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    report = {"device": name, "torch": torch.__version__, "agreement": [], "half": [], "throughput": []}
    impls = ("bar",) if args.cpu_dry_run else ("bar", "flex")
    sizes = {"1k": (136, 16), "8k": (1100, 2)}
    unknown = [i for i in args.impls.split(",") if i not in ("dense",) + impls] + \
        [k for k in args.shapes.split(",") if k not in sizes]
    if unknown:
        p.error(f"--impls/--shapes: unknown {', '.join(unknown)} (impls: dense,{','.join(impls)}; shapes: 1k,8k)")
    shapes = ((12, 2),) if args.cpu_dry_run else tuple(sizes[k] for k in args.shapes.split(","))
    timed = args.impls.split(",")
    for impl in () if args.throughput_only else impls:
        for seed in (1, 2):
            r = agreement(impl, seed)
            report["agreement"].append(r)
            print("agreement", r, flush=True)
        r = half_precision(impl, 3)
        report["half"].append(r)
        print("half", r, flush=True)
    for n_bars, n_seq in shapes:  # ~1k-token segments (training) and ~8k-token pieces
        for impl in timed:
            r = throughput(impl, n_bars, n_seq)
            report["throughput"].append(r)
            print("throughput", r, flush=True)
            if args.json:  # after every row: a run stopped at its time limit keeps what it measured
                Path(args.json).write_text(json.dumps(report, indent=1))
    print("\n| backend | seq len x batch | target tok/s (fp16 fwd+bwd) | step ms | peak GiB |")
    print("|---|---|---|---|---|")
    for r in report["throughput"]:
        tps = f"{r['tok_per_s']:,.0f}" if r["tok_per_s"] else r["note"]
        ms = f"{1000 * r['step_s']:.1f}" if r.get("step_s") else "-"
        print(f"| {r['impl']} | {r['seq_len']} x {r['batch']} | {tps} | {ms} | {r.get('peak_gib', 0):.1f} |")
    ok = all(r["forward_rel_err"] < 1e-3 and r["max_grad_rel_err"] < 1e-2 and not r["params_without_grad"]
             for r in report["agreement"]) and all(h["finite"] and h["rel_err_vs_fp32"] < 2e-2 for h in report["half"])
    print("gpu_check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
