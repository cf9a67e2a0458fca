#!/usr/bin/env python
"""Roundtrip fidelity on every match file: tokenize -> decode -> compare with the human notes.

Prints one table per dataset (median over files of each figure, plus the worst file), e.g.
    python scripts/roundtrip_report.py ../shared/datasets/vienna4x22/match ../shared/datasets/nasap
"""
import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instruct_tokenizer.match import MatchParseError, load_match  # noqa: E402
from instruct_tokenizer.roundtrip import roundtrip_errors  # noqa: E402

COLS = ["onset_median_ms", "onset_p99_ms", "onset_start_ms", "onset_end_ms", "velocity_max",
        "duration_ratio_median", "pedal_within_20ms", "pedal_max_err_ms", "soft_within_20ms", "soft_max_err_ms"]
HIGHER_IS_BETTER = {"pedal_within_20ms", "soft_within_20ms"}


def one(path):
    try:
        return str(path), roundtrip_errors(load_match(str(path)))
    except (MatchParseError, ValueError) as e:
        return str(path), str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="+", help="directories of match files")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    for src in a.src:
        files = sorted(Path(src).rglob("*.match"))
        with Pool(a.workers) as pool:
            res = list(tqdm(pool.imap(one, files, chunksize=4), total=len(files), desc=Path(src).name))
        ok = [r for _, r in res if isinstance(r, dict)]
        bad = [(p, r) for p, r in res if not isinstance(r, dict)]
        print(f"\n## {src}: {len(ok)} files ({sum(r['notes'] for r in ok):.0f} notes), {len(bad)} unreadable")
        for p, r in bad:
            print(f"skipped {p}: {r}")
        print("| figure | median over files | worst file | goal |")
        print("|---|---|---|---|")
        goals = {"onset_median_ms": "<= 3", "onset_p99_ms": "<= 20", "onset_start_ms": "", "onset_end_ms":
                 "<= start", "velocity_max": "<= 1 (half a bin)", "duration_ratio_median": "<= 0.05",
                 "pedal_within_20ms": "1.0", "pedal_max_err_ms": "<= 20", "soft_within_20ms": "1.0",
                 "soft_max_err_ms": "<= 20"}
        for c in COLS:
            v = np.array([r[c] for r in ok])
            worst = v.min() if c in HIGHER_IS_BETTER else v.max()
            print(f"| {c} | {np.median(v):.3f} | {worst:.3f} | {goals[c]} |")
        drift = np.array([r["onset_end_ms"] - r["onset_start_ms"] for r in ok])
        print(f"end - start onset error: median {np.median(drift):+.3f} ms, files with end > start + 1 ms: "
              f"{int((drift > 1).sum())}/{len(ok)}")
        pooled_share = np.sum([r["pedal_within_20ms"] * r["pedal_changes"] for r in ok]) / max(
            np.sum([r["pedal_changes"] for r in ok]), 1)
        print(f"pedal changes within 20 ms, pooled: {pooled_share:.4f}")
        soft_share = np.sum([r["soft_within_20ms"] * r["soft_changes"] for r in ok]) / max(
            np.sum([r["soft_changes"] for r in ok]), 1)
        print(f"soft pedal changes within 20 ms, pooled: {soft_share:.4f} "
              f"({np.sum([r['soft_changes'] for r in ok]):.0f} changes)")
        on = np.array([r["onset_median_ms"] for r in ok])
        print(f"files with onset median > 3 ms: {int((on > 3).sum())}; onset p99 > 20 ms: "
              f"{int((np.array([r['onset_p99_ms'] for r in ok]) > 20).sum())}")


if __name__ == "__main__":
    main()
