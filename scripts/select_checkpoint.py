#!/usr/bin/env python3
"""Choose the training checkpoint by how it plays whole validation pieces free-running (issue 23, item 3).

    python scripts/select_checkpoint.py CKPT_DIR --tokens TOKDIR [--data DATA_BIN] [--split valid]
        [--max-pieces 4] [--per-piece 1] [--max-bars B] [--seed 0] [--tb DIR] [--watch --done-file F]

For every interval or epoch checkpoint of a fairseq save directory (``checkpoint_E_U.pt``,
``checkpoint<E>.pt``) not yet scored, renders the first ``--max-pieces`` pieces of the tokenized split
(``--per-piece`` performances each, whole unless ``--max-bars``) free-running with ``instruct-render``'s
defaults (``museformer.eval_split.evaluate_split``: the same score tokens the model was trained on) and
measures against their human performances: the four Pianist Transformer JS distances and their mean
(``overall_js``), per-note ``velocity_r`` and ``beat_tempo_r``, and ``length_ratio`` (the median over
performances of rendered / human duration). The combined score, higher is better::

    combined = velocity_r + beat_tempo_r - overall_js - |log2 length_ratio|

(an undefined r counts 0). Each checkpoint's figures go to ``CKPT_DIR/freerun_scores.json`` and to
tensorboard (``--tb``; tags ``freerun/*``, step = the checkpoint's num_updates); the best checkpoint so
far is copied to ``CKPT_DIR/checkpoint_best_freerun.pt`` (fairseq deletes old interval checkpoints, so
the copy is made when a checkpoint is scored). ``--watch`` keeps polling until ``--done-file`` exists
(``scripts/train_nasap.sh`` touches it when training ends), then scores what is left and stops.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCORES = "freerun_scores.json"
BEST = "checkpoint_best_freerun.pt"
_INTERVAL = re.compile(r"checkpoint_(\d+)_(\d+)\.pt$")
_EPOCH = re.compile(r"checkpoint(\d+)\.pt$")
TAGS = ("overall_js", "velocity_js", "duration_js", "ioi_js", "pedal_js", "velocity_r", "beat_tempo_r",
        "length_ratio", "combined")


def checkpoints(ckpt_dir: Path) -> List[Path]:
    """The interval and epoch checkpoints of a save directory, oldest first."""
    found = [p for p in ckpt_dir.glob("checkpoint*.pt") if _INTERVAL.search(p.name) or _EPOCH.search(p.name)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def combined_score(m: Dict[str, float]) -> float:
    """velocity_r + beat_tempo_r - overall_js - |log2 length_ratio| (an undefined r counts 0)."""
    def r(k):
        v = m.get(k, float("nan"))
        return v if np.isfinite(v) else 0.0

    ratio = m.get("length_ratio", float("nan"))
    off = abs(math.log2(ratio)) if ratio and np.isfinite(ratio) and ratio > 0 else 1.0
    return r("velocity_r") + r("beat_tempo_r") - m["overall_js"] - off


def length_ratio(midi_dir: Path, n: int) -> float:
    """Median over performances of the rendered duration over the human one (``model-i.mid`` against
    ``human-i.mid``, as ``evaluate_split`` writes them)."""
    from instruct_tokenizer.metrics import midi_features

    ratios = []
    for i in range(n):
        model, human = midi_dir / f"model-{i}.mid", midi_dir / f"human-{i}.mid"
        if model.is_file() and human.is_file():
            h = midi_features(str(human)).end_ms
            if h > 0:
                ratios.append(midi_features(str(model)).end_ms / h)
    return float(np.median(ratios)) if ratios else float("nan")


def num_updates(path: Path) -> int:
    """The checkpoint's update count (fairseq's ``optimizer_history[-1]["num_updates"]``)."""
    from fairseq import checkpoint_utils

    import museformer  # noqa: F401  registers the task: fairseq's upgrade of the args looks it up by name

    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    return int(state["optimizer_history"][-1]["num_updates"])


def score_checkpoint(path: Path, a: argparse.Namespace) -> Dict[str, float]:
    """Free-running figures of one checkpoint on the validation pieces (module docstring)."""
    from museformer.eval_split import evaluate_split
    from museformer.render import Renderer, Sampling

    renderer = Renderer.from_checkpoint(str(path), a.data)
    with tempfile.TemporaryDirectory(prefix="freerun-") as out:
        res = evaluate_split(a.tokens, renderer, out, split=a.split, sampling=Sampling(seed=a.seed),
                             max_pieces=a.max_pieces, per_piece=a.per_piece, max_bars=a.max_bars, markings=False,
                             report=lambda line: print(f"select_checkpoint: {line}", flush=True))
        m = res["model"]
        figures = {k: float(m[k]) for k in TAGS if k in m}
        figures["length_ratio"] = length_ratio(Path(out) / "midi", int(m["performances"]))
        figures["performances"] = int(m["performances"])
    figures["combined"] = combined_score(figures)
    return figures


def load_scores(ckpt_dir: Path) -> dict:
    f = ckpt_dir / SCORES
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except ValueError:
            print(f"select_checkpoint: warning: {f}: unreadable, scoring afresh", file=sys.stderr)
    return {"checkpoints": {}, "best": None}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _copy_best(src: Path, ckpt_dir: Path) -> None:
    tmp = ckpt_dir / (BEST + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, ckpt_dir / BEST)


def score_new(ckpt_dir: Path, a: argparse.Namespace, writer=None) -> int:
    """Score every checkpoint not yet in the scores file; returns how many were scored."""
    scores = load_scores(ckpt_dir)
    done = scores["checkpoints"]
    scored = 0
    for path in checkpoints(ckpt_dir):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if path.name in done and done[path.name].get("mtime") == mtime:
            continue  # scored (a file of that name from an earlier run is scored again)
        try:
            step = num_updates(path)
            figures = score_checkpoint(path, a)
        except FileNotFoundError:  # fairseq removed an old interval checkpoint meanwhile
            continue
        except Exception as e:  # a checkpoint still being written, or one that cannot render
            print(f"select_checkpoint: skipped {path}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            continue
        figures["num_updates"] = step
        figures["mtime"] = mtime
        done[path.name] = figures
        scored += 1
        if writer is not None:
            for k in TAGS:
                if k in figures and np.isfinite(figures[k]):
                    writer.add_scalar(f"freerun/{k}", figures[k], step)
            writer.flush()
        best = max(done, key=lambda k: done[k]["combined"])
        if best == path.name:
            _copy_best(path, ckpt_dir)
        scores["best"] = best
        _atomic_write(ckpt_dir / SCORES, json.dumps(scores, indent=1, sort_keys=True) + "\n")
        print(f"select_checkpoint: {path.name} (update {step}): " + ", ".join(
            f"{k} {figures[k]:.3f}" for k in TAGS if k in figures) + f"; best so far {scores['best']}", flush=True)
    return scored


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt_dir", help="fairseq --save-dir")
    p.add_argument("--tokens", required=True, help="instruct-tokenize build directory (manifest.jsonl, train.perf)")
    p.add_argument("--data", default=None, help="fairseq data dir with dict.*.txt (default: the checkpoint's)")
    p.add_argument("--split", default="valid", help="tokenized split to render (default valid)")
    p.add_argument("--max-pieces", type=int, default=4,
                   help="pieces rendered, spread across composers (one per composer in turn)")
    p.add_argument("--per-piece", type=int, default=1, help="performances of each piece compared")
    p.add_argument("--max-bars", type=int, default=None, help="only the first B bars (default: whole pieces)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--tb", default=None, help="tensorboard log dir (default CKPT_DIR/../tb/freerun)")
    p.add_argument("--watch", action="store_true", help="keep scoring new checkpoints until --done-file exists")
    p.add_argument("--done-file", default=None, help="with --watch: stop (after a last pass) once this file exists")
    p.add_argument("--poll", type=float, default=60.0, help="with --watch: seconds between looks")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    ckpt_dir = Path(a.ckpt_dir)
    if not ckpt_dir.is_dir():
        print(f"select_checkpoint: error: {ckpt_dir}: no such directory", file=sys.stderr)
        return 1
    if not (Path(a.tokens) / "manifest.jsonl").is_file():
        print(f"select_checkpoint: error: {a.tokens}: no manifest.jsonl (an instruct-tokenize build)", file=sys.stderr)
        return 1
    if a.watch and not a.done_file:
        print("select_checkpoint: error: --watch needs --done-file", file=sys.stderr)
        return 2
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(a.tb or str(ckpt_dir.parent / "tb" / "freerun"))
    try:
        while True:
            finished = not a.watch or Path(a.done_file).exists()
            score_new(ckpt_dir, a, writer)
            if finished:
                break
            time.sleep(a.poll)
    finally:
        writer.close()
    scores = load_scores(ckpt_dir)
    if scores["best"]:
        print(f"select_checkpoint: best by free-running results: {scores['best']} -> {ckpt_dir / BEST}")
    else:
        print(f"select_checkpoint: no checkpoint scored in {ckpt_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
