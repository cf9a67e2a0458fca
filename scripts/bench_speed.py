#!/usr/bin/env python
"""Render speed, old path against new, in one run (issue 26).

One score (default: the Pianist Transformer test set's piece 8, ``score/8.mid``, 2,163 notes): renders it
with fairseq's ``SequenceGenerator`` (``--generator fairseq``, the old thread setting) and with the lean
sampling loop (``museformer.sampler``) at 1 and 2 torch threads, interleaved (``--repeats`` rounds of
old, lean 1 thread, lean 2 threads, ...) so that other work on the machine slows them alike, the same
seed each time. Prints per run: wall seconds, CPU seconds of this process (user + system, every
thread), notes/s (the performance MIDI's notes over wall seconds), real-time factor (render seconds /
seconds of music), decoder steps per note, and whether the tokens equal the old path's (they must:
same seed, same draws).

``--baseline-commit SHA`` also renders the score with the code of an earlier commit (``git archive`` into a
temporary folder, run in a subprocess, between the rounds): the speed before this work, and the same
tokens check. ``--all``: the 23 benchmark pieces, the old path one piece at a time against the lean path
with their segments batched across pieces (``render_many``, ``--batch``), total time and real-time
factor.

    python scripts/bench_speed.py [--score MIDI] [--repeats 1] [--threads 1,2] [--old-threads 1]
                                  [--baseline-commit 5f51525] [--all [--pieces 0,1,...] [--skip-old]
                                  [--lean-one-at-a-time] [--batch 16]] [--json FILE]
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH = REPO.parent / "shared" / "benchmarks" / "pianist_transformer_testset"
if not BENCH.is_dir():  # a worktree beside the main checkout
    BENCH = Path("/work/shared/benchmarks/pianist_transformer_testset")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def counting_steps(decoder, counter: Dict[str, int]):
    """Count the decoder's network steps (calls, and rows: a batch of B rows is B row-steps)."""
    step = decoder.step

    def counted(tok, *args, **kwargs):
        counter["calls"] += 1
        counter["rows"] += int(tok.shape[0])
        return step(tok, *args, **kwargs)

    decoder.step = counted
    try:
        yield counter
    finally:
        del decoder.step  # the class's method again


def music(score_tokens: Sequence[str], perf_tokens: Sequence[str]):
    """(notes, seconds of music) of a performance: its MIDI's notes, last release in seconds."""
    from instruct_tokenizer.decode import tokens_to_midi

    midi = tokens_to_midi(score_tokens, perf_tokens)
    notes = [n for inst in midi.instruments for n in inst.notes]
    end = max(n.end for n in notes)
    return len(notes), float(midi.get_tick_to_time_mapping()[end])


def timed(fn):
    """(result, wall seconds, CPU seconds)."""
    w0, c0 = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w0, cpu_seconds() - c0


BASELINE_SCRIPT = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {tree!r})
from museformer.render import Renderer, Sampling
r = Renderer.from_checkpoint({checkpoint!r})
r.threads = {threads}
toks = r.score_tokens({score!r})
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
w0, c0 = time.perf_counter(), cpu()
perf = r.render_tokens(toks, Sampling(seed={seed}), progress=False)
print(json.dumps({{"wall": time.perf_counter() - w0, "cpu": cpu() - c0, "tokens": perf}}))
"""


def run_baseline(commit: str, checkpoint: str, score: str, seed: int, threads: int, repo: str = str(REPO)) -> dict:
    """Render ``score`` with the code of ``commit`` (of the git checkout ``repo``) in a subprocess:
    {wall, cpu, tokens}."""
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tree:
        archive = subprocess.run(["git", "-C", repo, "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        code = BASELINE_SCRIPT.format(tree=tree, checkpoint=checkpoint, score=score, seed=seed, threads=threads)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree)
        if proc.returncode != 0:
            raise RuntimeError(f"baseline {commit} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def one_score(renderer, args) -> dict:
    from museformer import native
    from museformer.render import Sampling

    score = renderer.score_tokens(args.score)
    decoder = renderer.models[0].decoder
    configs = [("old: fairseq SequenceGenerator", "fairseq", args.old_threads, True)]
    configs += [(f"new: lean loop, {t} thread{'s' if t > 1 else ''}", "lean", t, True) for t in args.threads]
    if native.load() is not None and not args.no_python_step:  # the same loop with the Python step, for its share
        configs.append((f"new: lean loop, Python step, {args.threads[0]} thread{'s' if args.threads[0] > 1 else ''}",
                        "lean", args.threads[0], False))
    results: Dict[str, List[dict]] = {name: [] for name, _, _, _ in configs}
    reference = None
    notes = seconds = None
    print(f"{args.score}: {sum(t.startswith('Pitch_') for t in score)} score notes, {len(score)} score tokens, "
          f"seed {args.seed}; {args.repeats} round(s), interleaved")
    for rnd in range(args.repeats):
        for name, generator, threads, native_steps in configs:
            renderer.threads = threads
            decoder.native_steps = native.active = native_steps  # the Python row: the rules' arithmetic too
            counter = {"calls": 0, "rows": 0}
            with counting_steps(decoder, counter):
                perf, wall, cpu = timed(lambda: renderer.render_tokens(
                    score, Sampling(seed=args.seed, generator=generator), progress=False))
            if reference is None:
                reference = perf
                notes, seconds = music(score, perf)
            row = {"wall": wall, "cpu": cpu, "steps": counter["rows"], "calls": counter["calls"],
                   "same": perf == reference, "tokens": len(perf)}
            results[name].append(row)
            print(f"  round {rnd + 1} {name:34s} {wall:7.1f} s wall {cpu:7.1f} s CPU  "
                  f"{notes / wall:6.1f} notes/s  RTF {wall / seconds:.3f}  "
                  f"tokens {'identical' if row['same'] else 'DIFFERENT'}", flush=True)
        decoder.native_steps = native.active = True
        if args.baseline_commit:  # every round, between the others
            b = run_baseline(args.baseline_commit, args.checkpoint, args.score, args.seed, args.old_threads, args.git)
            same = b["tokens"] == reference
            results.setdefault(f"before: commit {args.baseline_commit}", []).append(
                {"wall": b["wall"], "cpu": b["cpu"], "steps": None, "calls": None, "same": same,
                 "tokens": len(b["tokens"])})
            print(f"  round {rnd + 1} {'before: commit ' + args.baseline_commit:34s} {b['wall']:7.1f} s wall "
                  f"{b['cpu']:7.1f} s CPU  {notes / b['wall']:6.1f} notes/s  RTF {b['wall'] / seconds:.3f}  "
                  f"tokens {'identical' if same else 'DIFFERENT'}", flush=True)
    old = min(r["wall"] for r in results[configs[0][0]])
    before = results.get(f"before: commit {args.baseline_commit}")
    before = min(r["wall"] for r in before) if before else None
    print(f"\n{notes} notes, {seconds:.0f} s of music, {len(reference)} performance tokens "
          f"({len(reference) / notes:.2f} per note)")
    print("| path | wall s | CPU s | notes/s | RTF | steps/note | speed-up (wall) | vs before | tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        best = min(rows, key=lambda r: r["wall"])
        steps = f"{best['steps'] / notes:.2f}" if best["steps"] else "-"
        vs_before = f"{before / best['wall']:.2f}x" if before else "-"
        print(f"| {name} | {best['wall']:.1f} | {best['cpu']:.1f} | {notes / best['wall']:.1f} | "
              f"{best['wall'] / seconds:.3f} | {steps} | {old / best['wall']:.2f}x | "
              f"{vs_before} | "
              f"{'identical' if all(r['same'] for r in rows) else 'DIFFERENT'} |")
    print("(best of the rounds; steps/note: decoder row-steps, the overlap bars re-decoded included, per MIDI note)")
    identical = all(r["same"] for rows in results.values() for r in rows)
    print(f"tokens identical across paths: {identical}")
    return {"notes": notes, "music_seconds": seconds, "results": results, "identical": identical}


def all_pieces(renderer, args) -> dict:
    from tqdm import tqdm

    from museformer.render import Sampling

    pieces = [int(p["index"]) for p in csv.DictReader(open(BENCH / "pieces.csv"))]
    if args.pieces:
        pieces = [int(x) for x in args.pieces.split(",")]
    scores = [renderer.score_tokens(str(BENCH / "score" / f"{k}.mid")) for k in pieces]
    decoder = renderer.models[0].decoder
    out = {}
    print(f"\n{len(pieces)} benchmark pieces, {sum(t.startswith('Pitch_') for s in scores for t in s)} score notes")
    runs = [] if args.skip_batched else [
        (f"new: lean, batched, {t} thread{'s' if t > 1 else ''}", "lean", t, True) for t in args.threads]
    if not args.skip_old:
        runs.insert(0, ("old: fairseq, one piece at a time", "fairseq", args.old_threads, False))
    if args.lean_one_at_a_time:
        runs.append(("new: lean, one piece at a time", "lean", args.threads[0], False))
    perfs = {}
    for name, generator, threads, batched in runs:
        renderer.threads = threads
        sampling = Sampling(seed=args.seed, generator=generator)
        counter = {"calls": 0, "rows": 0}
        with counting_steps(decoder, counter):
            if batched:
                got, wall, cpu = timed(lambda: renderer.render_many(scores, sampling, batch_size=args.batch))
            else:
                got, wall, cpu = [], 0.0, 0.0
                for s in tqdm(scores, desc=name, unit="piece"):
                    p, w, c = timed(lambda: renderer.render_tokens(s, sampling, progress=False))
                    got.append(p)
                    wall, cpu = wall + w, cpu + c
        perfs[name] = got
        notes_secs = [music(s, p) for s, p in zip(scores, got)]
        notes, seconds = sum(n for n, _ in notes_secs), sum(x for _, x in notes_secs)
        out[name] = {"wall": wall, "cpu": cpu, "notes": notes, "music_seconds": seconds,
                     "steps_per_note": counter["rows"] / notes, "threads": threads}
        print(f"  {name:36s} {wall:7.1f} s wall {cpu:7.1f} s CPU  {notes / wall:6.1f} notes/s  "
              f"RTF {wall / seconds:.3f}  steps/note {counter['rows'] / notes:.2f}", flush=True)
    names = list(out)
    print(f"\n| {len(pieces)} pieces ({out[names[0]]['notes']} notes, {out[names[0]]['music_seconds']:.0f} s of music) "
          "| threads | wall s | CPU s | notes/s | RTF | steps/note |")
    print("|---|---|---|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['threads']} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['notes'] / r['wall']:.1f} | "
              f"{r['wall'] / r['music_seconds']:.3f} | {r['steps_per_note']:.2f} |")
    if len(names) > 1:
        best = min(names[1:], key=lambda k: out[k]["wall"])
        print(f"speed-up (wall) of {best} over {names[0]}: {out[names[0]]['wall'] / out[best]['wall']:.2f}x")
    if "new: lean, one piece at a time" in perfs and "old: fairseq, one piece at a time" in perfs:
        same = perfs["new: lean, one piece at a time"] == perfs["old: fairseq, one piece at a time"]
        print(f"one piece at a time, lean vs fairseq: tokens {'identical' if same else 'DIFFERENT'}")
    print("(batched pieces draw other random numbers than alone: their tokens differ from one-at-a-time's)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "instruct-museformer.pt"))
    ap.add_argument("--score", default=str(BENCH / "score" / "8.mid"), help="the one score (default: piece 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of the one-score runs")
    ap.add_argument("--threads", default="1,2",
                    help="torch thread counts of the lean path, comma-separated (--all: its batched runs; the first "
                         "for --lean-one-at-a-time)")
    ap.add_argument("--old-threads", type=int, default=1, help="torch threads of the old path (its default: 1)")
    ap.add_argument("--baseline-commit", default=None,
                    help="also render the one score with this commit's code (subprocess), e.g. 5f51525, the "
                         "last commit before the speed work")
    ap.add_argument("--git", default=str(REPO), help="the git checkout --baseline-commit is taken from")
    ap.add_argument("--skip-one", action="store_true", help="skip the one-score comparison")
    ap.add_argument("--no-python-step", action="store_true",
                    help="no lean row with the Python decoder step (museformer.native off) beside the C++ one")
    ap.add_argument("--all", action="store_true", help="the 23 benchmark pieces: old one at a time, new batched")
    ap.add_argument("--pieces", default=None, help="with --all: only these piece indices, comma-separated")
    ap.add_argument("--batch", type=int, default=16, help="with --all: segments generated together (lean)")
    ap.add_argument("--skip-old", action="store_true", help="with --all: the lean path only")
    ap.add_argument("--skip-batched", action="store_true", help="with --all: no lean batched run")
    ap.add_argument("--lean-one-at-a-time", action="store_true",
                    help="with --all: also the lean path one piece at a time (token identity with the old)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    args.threads = [int(x) for x in args.threads.split(",")]

    import torch

    from museformer.render import Renderer

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available, checkpoint {args.checkpoint}")
    renderer = Renderer.from_checkpoint(args.checkpoint)  # instruct-render's default decoding rules
    figures = {}
    if not args.skip_one:
        figures["one"] = one_score(renderer, args)
    if args.all:
        figures["all"] = all_pieces(renderer, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
