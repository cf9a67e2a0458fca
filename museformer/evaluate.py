"""``instruct-eval``: how human is a set of rendered performances? (definitions: docs/evaluation.md)

    instruct-eval PRED_DIR REF_DIR [--baseline NAME=DIR ...] [--out DIR]

Pools the distribution metrics of every ``*.mid`` under PRED_DIR (and of each baseline directory)
against every ``*.mid`` under REF_DIR (the human performances), and writes ``results.md``,
``results.json`` and ``histograms.png``. Pure music code: no torch, no fairseq.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from instruct_tokenizer.metrics import FEATURES, MidiReadError, NoteFeatures, compare, fmt, midi_features, pooled_histograms

COLUMNS = [f"{f}_js" for f in FEATURES] + ["overall_js", "overall_inter"]


def read_set(paths: Sequence[Path], report=print) -> List[NoteFeatures]:
    """Features of every readable file; unreadable ones are reported on one line each and skipped."""
    out = []
    for p in paths:
        try:
            out.append(midi_features(str(p)))
        except MidiReadError as e:
            report(f"skipped {p}: {e}")
    return out


def evaluate_sets(rows: Dict[str, List[NoteFeatures]], human: List[NoteFeatures]) -> Dict[str, Dict]:
    """Distribution metrics of each row against the pooled human set (+ the histograms for plots)."""
    ref = pooled_histograms(human)
    results = {"human": {"histograms": ref, "files": len(human)}}
    for name, feats in rows.items():
        if not feats:
            continue
        hist = pooled_histograms(feats)
        results[name] = {"metrics": compare(hist, ref), "histograms": hist, "files": len(feats)}
    return results


def markdown_table(results: Dict[str, Dict], extra: Optional[Dict[str, Dict[str, float]]] = None) -> str:
    """One row per method: JS distance per feature, overall JS, overall intersection (+ extra columns)."""
    extra_cols = sorted({c for v in (extra or {}).values() for c in v})
    head = ["method vs human"] + [c.replace("_js", " JS").replace("_inter", " intersection") for c in COLUMNS]
    head += extra_cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        if "metrics" not in res:
            continue
        cells = [fmt(res["metrics"][c]) for c in COLUMNS]
        cells += [fmt((extra or {}).get(name, {}).get(c)) for c in extra_cols]
        lines.append(f"| {name} ({res['files']} files) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_histograms(results: Dict[str, Dict], path: Path, rows: Optional[Sequence[str]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    names = ["human"] + [n for n in (rows or results) if n != "human" and n in results]
    for ax, feat in zip(axes, FEATURES):
        for name in names:
            ax.plot(results[name]["histograms"][feat], label=name, lw=1.5 if name == "human" else 1.0)
        ax.set_title(feat)
        ax.set_xlabel({"velocity": "MIDI velocity", "duration": "bin (2 ms)", "ioi": "ms", "pedal": "pattern"}[feat])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Dict[str, Dict], out: Path, extra=None, title: str = "") -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, extra)
    (out / "results.md").write_text((f"# {title}\n\n" if title else "") + table)
    serial = {k: {"files": v["files"], **({"metrics": v["metrics"]} if "metrics" in v else {}),
                  **({"extra": extra[k]} if extra and k in extra else {})} for k, v in results.items()}
    (out / "results.json").write_text(json.dumps(serial, indent=2) + "\n")
    plot_histograms(results, out / "histograms.png")
    return table


def midi_files(path: str) -> List[Path]:
    p = Path(path)
    return sorted(p.rglob("*.mid")) + sorted(p.rglob("*.midi")) if p.is_dir() else [p]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="instruct-eval", description=__doc__.splitlines()[0])
    ap.add_argument("pred", nargs="?", help="directory (or file) of rendered MIDI")
    ap.add_argument("ref", nargs="?", help="directory of human performance MIDI")
    ap.add_argument("--tokens", default=None, metavar="DIR",
                    help="evaluate on a split of this instruct-tokenize build instead (needs --checkpoint)")
    ap.add_argument("--split", default="test", help="split of --tokens to evaluate")
    ap.add_argument("--checkpoint", default=None, help="model checkpoint for --tokens")
    ap.add_argument("--data", default=None, help="fairseq data dir (dictionaries) for --checkpoint")
    ap.add_argument("--max-pieces", type=int, default=None, help="evaluate at most this many pieces")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--name", default="model", help="row name of PRED")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=DIR",
                    help="more rows, e.g. deadpan=score_midis/ (repeatable)")
    ap.add_argument("--out", default="outputs/eval", help="output directory")
    a = ap.parse_args(argv)
    if a.tokens:
        return eval_tokens(a)
    if not (a.pred and a.ref):
        ap.error("PRED and REF are required (or --tokens DIR --checkpoint CKPT)")
    sets = {a.name: a.pred}
    for item in a.baseline:
        name, sep, path = item.partition("=")
        if not sep:
            print(f"instruct-eval: error: --baseline {item!r}: expected NAME=DIR", file=sys.stderr)
            return 2
        sets[name] = path
    for name, path in list(sets.items()) + [("reference", a.ref)]:
        if not midi_files(path):
            print(f"instruct-eval: error: {path}: no MIDI files", file=sys.stderr)
            return 1
    human = read_set(midi_files(a.ref))
    rows = {name: read_set(midi_files(path)) for name, path in sets.items()}
    if not human:
        print(f"instruct-eval: error: {a.ref}: no readable MIDI files", file=sys.stderr)
        return 1
    results = evaluate_sets(rows, human)
    print(write_outputs(results, Path(a.out), title="Distribution metrics vs human"))
    print(f"wrote {a.out}/results.md, results.json, histograms.png")
    return 0


def eval_tokens(a: argparse.Namespace) -> int:
    from museformer.eval_split import evaluate_split, markdown
    from museformer.render import Renderer, RenderError, Sampling

    try:
        renderer = Renderer.from_checkpoint(a.checkpoint, a.data)
    except RenderError as e:
        print(f"instruct-eval: error: {e}", file=sys.stderr)
        return 1
    results = evaluate_split(a.tokens, renderer, a.out, a.split, Sampling(seed=a.seed), a.max_pieces)
    out = Path(a.out)
    table = markdown(results)
    (out / "results.md").write_text(f"# {a.split} split of {a.tokens}\n\n" + table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"wrote {out}/results.md, results.json, curves-*.png, midi/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
