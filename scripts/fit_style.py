#!/usr/bin/env python
"""What each ``--style`` level means, read off the training pianists: the offsets the plans take for it.

The instruct prefix (``ITempo_fast``, ``IDyn_loud``, ...) labels each training performance by corpus
tertiles (``instruct_tokenizer.build.instruct_values``); the network reads it, but the plans that steer the
decoder (tempo, velocity, articulation: ``museformer.render.Renderer.plans_of``) read only the score, so a
style changed almost nothing once they were on (docs/experiments.md section 43). The corpus tertiles mostly
rank the pieces (a loud piece's pianists are all "loud"), so the levels here are read within each piece: a
level asks for what the lowest or highest third of a piece's pianists do against its median pianist. Each
training performance of a piece with three or more is measured against that piece's median performance:

- tempo: the log of its mean beat period (s per quarter, ``fit_tempo.human_qpm``) less the piece's median
  (slow: the third with the longest periods);
- rubato: the log of its beat-tempo curve's standard deviation (``metrics.per_note_features``' ``beat_tempo``)
  over the piece's median;
- dynamics: its mean MIDI velocity less the piece's median;
- range: the log of its velocity standard deviation over the piece's median;
- articulation: its mean log2 articulation less the piece's median.

A level's offset is the median over every piece's third at that end (``mid``: 0). Written to
``instruct_tokenizer/data/style_levels.json`` (``--write``), which ``instruct_tokenizer.style_levels`` reads:

    python scripts/fit_style.py outputs/nasap_p/tok [--write]
"""
import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from fit_tempo import human_qpm, performances  # noqa: E402
from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.metrics import per_note_features  # noqa: E402
from instruct_tokenizer.style_levels import MEASURES, STYLE_LEVELS_PATH  # noqa: E402


def measures(score: list, perf: list) -> dict:
    """One whole performance's five measures (module docstring), before the piece's median is taken off."""
    f = per_note_features(score, perf)
    return {"tempo": -math.log(human_qpm(score, perf) / 60.0),  # ln s per quarter
            "rubato": float(np.nanstd(f["beat_tempo"])), "dynamics": float(np.nanmean(f["velocity"])),
            "range": float(np.nanstd(f["velocity"])), "articulation": float(np.nanmean(f["articulation"]))}


def relative(values: list, kind: str) -> np.ndarray:
    """A piece's performances' ``kind`` measure against the piece's median: a difference, or a log ratio
    for the spreads (rubato, range)."""
    v = np.asarray(values, np.float64)
    if MEASURES[kind] == "log_ratio":
        return np.log(v / np.median(v))
    return v - np.median(v)


def fit(items: dict, progress=None) -> dict:
    """{style key: {level: offset}} and the counts, from ``fit_tempo.performances``' items: per piece with three
    performances or more, each measure's lowest and highest thirds of its performances against the piece's
    median (:func:`relative`); the low level's offset is the median over every piece's lowest third, the
    high level's over the highest thirds (``mid`` 0). ``progress``: wraps the items' iteration (tqdm)."""
    by_piece = defaultdict(list)
    for key, score, perf in (progress or (lambda x: x))(list(items.values())):
        m = measures(score, perf)
        if all(math.isfinite(x) for x in m.values()):
            by_piece[key].append(m)
    offsets, counts = {}, {}
    for kind, type_ in V.STYLE_KEYS.items():
        low, high = [], []
        for runs in by_piece.values():
            if len(runs) < 3:
                continue
            rel = np.sort(relative([m[kind] for m in runs], kind))
            third = len(rel) // 3
            low += rel[:third].tolist()
            high += rel[len(rel) - third:].tolist()
        lo_name, mid_name, hi_name = V.INSTRUCT_LEVELS[type_]
        offsets[kind] = {lo_name: round(float(np.median(low)), 4), mid_name: 0.0,
                         hi_name: round(float(np.median(high)), 4)}
        counts[kind] = {lo_name: len(low), hi_name: len(high)}
    if "tempo" in offsets:  # slow: a longer beat period (ln s per quarter); the tertiles rank the periods
        lo_name, _, hi_name = V.INSTRUCT_LEVELS[V.STYLE_KEYS["tempo"]]
        offsets["tempo"][lo_name], offsets["tempo"][hi_name] = offsets["tempo"][hi_name], offsets["tempo"][lo_name]
        counts["tempo"][lo_name], counts["tempo"][hi_name] = counts["tempo"][hi_name], counts["tempo"][lo_name]
    return {"offsets": offsets, "counts": counts, "pieces": sum(len(r) >= 3 for r in by_piece.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="an instruct-tokenize build with --instruct (its train split)")
    ap.add_argument("--write", action="store_true", help=f"write {STYLE_LEVELS_PATH.relative_to(REPO)}")
    a = ap.parse_args()
    from tqdm import tqdm

    items = performances(a.tokens, "train")
    fitted = fit(items, progress=lambda x: tqdm(x, desc="performances", unit="perf"))
    for kind, levels in fitted["offsets"].items():
        print(f"{kind} ({MEASURES[kind]}): " + ", ".join(f"{lv} {v:+.3f}" for lv, v in levels.items())
              + f" ({fitted['counts'][kind]} performances)")
    if a.write:
        doc = {"offsets": fitted["offsets"], "counts": fitted["counts"],
               "meta": {"fitted_on": f"the train split of {a.tokens}, {fitted['pieces']} pieces with three "
                                     "performances or more: the median of each piece's lowest / highest third "
                                     "against the piece's median performance",
                        "units": {k: ("ln ratio" if v == "log_ratio" else v) for k, v in MEASURES.items()},
                        "by": "scripts/fit_style.py"}}
        STYLE_LEVELS_PATH.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {STYLE_LEVELS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
