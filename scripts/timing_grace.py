#!/usr/bin/env python
"""Where the timing plan acts: grace notes and rolled chords, with the plan on and off (docs/experiments.md
section 44). Renders the first performance of each piece of a split whole, twice with the same seed
(``--timing-plan`` at instruct-render's default, and 0), and prints per row: the grace notes' mean onset
against their onset group's grid (ms) and the share played at least 10 ms before it, the notes the plan
acts on (the released plan's ``min_ms``) with their mean |onset - plan| (ms), and the per-note timing r
against the pianist (``instruct-eval``'s). Usage:

    python scripts/timing_grace.py outputs/nasap_p/tok --split test --seed 0
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instruct_tokenizer.encode import encode_match, style_prefix  # noqa: E402
from instruct_tokenizer.match import load_match  # noqa: E402
from instruct_tokenizer.metrics import pearson, per_note_features  # noqa: E402
from instruct_tokenizer.score import score_timeline  # noqa: E402
from instruct_tokenizer.tempo_infer import apply_notated_tempo  # noqa: E402
from museformer.eval_split import (features_on_notated, model_score, select_performances,  # noqa: E402
                                   test_performances, xml_score_info)
from museformer.render import Renderer, Sampling  # noqa: E402

BEFORE_MS = -10.0  # a grace note this much before its group's grid or more is played before the beat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="an instruct-tokenize build (its manifest names the performances)")
    ap.add_argument("--split", default="test", help="the split (default test)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    a = ap.parse_args(argv)
    on = Renderer.load()
    if on.timing_planner is None:
        print("timing_grace: the released checkpoint holds no timing plan", file=sys.stderr)
        return 1
    off = Renderer.load(decode=dataclasses.replace(on.decode, timing_plan=0.0))
    items = []
    for p in select_performances(test_performances(a.tokens, a.split), None, 1):
        marks, qpm = xml_score_info(p["source"], on.score_features, lambda *_: None)
        enc = encode_match(load_match(p["source"]), marks=marks, qpm=qpm)
        items.append((apply_notated_tempo(model_score(enc.score, on.score_features))[0], enc.perf))
    prefix = style_prefix({})
    rows = {"human": [pf for _, pf in items]}
    for name, renderer in (("plan on", on), ("plan off", off)):
        rows[name] = renderer.render_many([prefix + s for s, _ in items], Sampling(seed=a.seed))
    human = [per_note_features(s, pf)["timing"] for (s, _), pf in zip(items, rows["human"])]
    planned = [on.timing_planner.predict(s) for s, _ in items]
    grace = [score_timeline(s).note_dur_q == 0 for s, _ in items]
    print(f"{len(items)} performances of the {a.split} split, {int(sum(g.sum() for g in grace))} grace notes, "
          f"{int(sum(np.isfinite(v).sum() for v in planned))} notes planned (|plan| >= "
          f"{on.timing_planner.min_ms:g} ms)")
    for name, perfs in rows.items():
        t = human if name == "human" else [features_on_notated(s, pf, s)["timing"] for (s, _), pf in zip(items, perfs)]
        g = np.concatenate([x[m] for x, m in zip(t, grace)])
        g = g[np.isfinite(g)]
        plan_err = np.concatenate([np.abs(x - v)[np.isfinite(v) & np.isfinite(x)] for x, v in zip(t, planned)])
        rs = [pearson(x, h) for x, h in zip(t, human)] if name != "human" else []
        print(f"{name:9s} grace mean {g.mean():7.1f} ms, before the beat {100 * np.mean(g <= BEFORE_MS):5.1f} %; "
              f"planned notes |onset - plan| median {np.median(plan_err):5.1f} ms"
              + (f"; timing r {np.nanmean(rs):.3f}" if rs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
