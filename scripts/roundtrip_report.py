#!/usr/bin/env python
"""Roundtrip fidelity on every match file: tokenize -> decode -> compare with the human notes.

Prints one table per dataset (median over files of each figure, plus the worst file), the files over
the bounds, the pedal changes pooled (the audible ones, up to the moment the piano falls silent, and the
silent ones after it: ``roundtrip.sound_end_s``), and with ``--diagnose`` the cause of every note and pedal change off by more than 20 ms:
    python scripts/roundtrip_report.py ../shared/datasets/vienna4x22/match ../shared/datasets/nasap --diagnose

``--relative-tempo`` measures the relative tempo encoding (``instruct-tokenize build --notated-tempo
--relative-tempo``): each file's notated tempo comes from the MusicXML beside it (through the parsed-XML
cache; 120 where there is none or it states none). Each file is read as the build encodes it: its stranded
notes left out (``match.without_stranded``; until 2026-12-07 not, and op. 57/i's performances, whose runs a
writer's overflowed backups put 661 quarters into their measures, had an onset p99 up to 277 ms).

Causes (notes): ``time_range`` the note is more than the Time range (2 s) from its group's grid;
``grace``; ``tempo_limit`` its group's tempo token is at the end of its range (``Tempo``: 0.08 or 8 s per
quarter; ``TempoRel``: its first or last step);
``other``. Pedal changes: ``before_first_note`` (before the first group's grid: offsets are >= 0);
``after_last_note`` (beyond the last group's grid + the largest pedal bin, 6 s); ``long_gap`` (more
than 6 s after the last grid time before it); ``slots_full`` (the rest: more changes than slots).
"""
import argparse
import sys
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.match import MatchParseError, load_match, without_stranded  # noqa: E402
from instruct_tokenizer.roundtrip import roundtrip_errors, sound_end_s  # noqa: E402

TOL_MS = 20.0


def diagnose(mf, qpm=None, relative_tempo: bool = False) -> dict:
    """Counts per cause of the notes and pedal changes that roundtrip off by more than 20 ms."""
    from collections import Counter

    from instruct_tokenizer.decode import decode_performance
    from instruct_tokenizer.encode import encode_match, pedal_changes

    enc = encode_match(mf, qpm=qpm, relative_tempo=relative_tempo)
    perf = decode_performance(enc.score, enc.perf)
    o = enc.order
    played = mf.played[o] & perf.played
    true_on = mf.onset_s[o] - enc.shift_s
    err = np.abs(perf.onset_s - true_on) * 1000.0
    g = perf.timeline.note_group
    grid = perf.group_grid_s
    dev_ms = (true_on - grid[g]) * 1000.0
    at_limit = _at_tempo_limit(enc.perf, perf)[g]
    c = Counter()
    c["notes_outliers_dropped"] = int((mf.played[o] & ~perf.played).sum())
    for i in np.nonzero(played & (err > TOL_MS))[0]:
        if abs(dev_ms[i]) > V._TIME_CENTERS_MS[-1]:
            c["notes_time_range"] += 1
        elif mf.grace[o][i]:
            c["notes_grace"] += 1
        elif at_limit[i]:
            c["notes_tempo_limit"] += 1
        else:
            c["notes_other"] += 1
    max_s = V.PEDAL_MAX_MS / 1000.0
    end_s = sound_end_s(mf) - enc.shift_s
    for kind, events, dec in (("sus", mf.sustain, perf.sustain), ("soft", mf.soft, perf.soft)):
        true_t = np.array(pedal_changes(events)) - enc.shift_s
        true_t = true_t[true_t <= end_s + 1e-9]  # the audible changes
        dec_t = np.sort(np.array([t for t, _ in dec]))
        for t in true_t:
            near = np.min(np.abs(dec_t - t)) if len(dec_t) else np.inf
            if near * 1000.0 <= TOL_MS + 1e-9:
                continue
            k = int(np.searchsorted(grid, t, side="right")) - 1
            if k < 0:
                c[f"{kind}_before_first_note"] += 1
            elif k == len(grid) - 1 and t - grid[k] > max_s:
                c[f"{kind}_after_last_note"] += 1
            elif t - grid[k] > max_s:
                c[f"{kind}_long_gap"] += 1
            else:
                c[f"{kind}_slots_full"] += 1
    return dict(c)

def _at_tempo_limit(perf_tokens, perf) -> np.ndarray:
    """Per onset group: its tempo token is at the end of its range (Tempo bin 0 or the last; TempoRel's
    first or last step)."""
    ends = {V.tok(V.TEMPO, 0), V.tok(V.TEMPO, V.TEMPO_BINS - 1), V.tok(V.TEMPO_REL, V.TEMPO_REL_STEPS[0]),
            V.tok(V.TEMPO_REL, V.TEMPO_REL_STEPS[-1])}
    tempo = [t for t in perf_tokens if V.parse(t)[0] in (V.TEMPO, V.TEMPO_REL)]
    return np.array([t in ends for t in tempo], bool) if tempo else np.zeros(perf.timeline.n_groups, bool)


def _qpm(path: str, relative_tempo: bool):
    """The notated tempo by XML note id for the relative encoding (empty without a MusicXML), else None."""
    if not relative_tempo:
        return None
    from instruct_tokenizer.musicxml import xml_info_of_match

    info, _ = xml_info_of_match(path)
    return info.qpm if info is not None else {}


COLS = ["onset_median_ms", "onset_p99_ms", "onset_start_ms", "onset_end_ms", "velocity_max",
        "duration_ratio_median", "pedal_within_20ms", "pedal_max_err_ms", "soft_within_20ms", "soft_max_err_ms"]
HIGHER_IS_BETTER = {"pedal_within_20ms", "soft_within_20ms"}


def one(path, relative_tempo: bool = False):
    try:
        qpm = _qpm(str(path), relative_tempo)
        return str(path), roundtrip_errors(without_stranded(load_match(str(path))), qpm, relative_tempo)
    except (MatchParseError, ValueError) as e:
        return str(path), str(e)


def one_diag(path, relative_tempo: bool = False):
    try:
        mf = without_stranded(load_match(str(path)))
        qpm = _qpm(str(path), relative_tempo)
        r = roundtrip_errors(mf, qpm, relative_tempo)
        r["causes"] = diagnose(mf, qpm, relative_tempo)
        return str(path), r
    except (MatchParseError, ValueError) as e:
        return str(path), str(e)


def print_pooled_pedal(ok, name: str, label: str) -> None:
    """Pooled share within 20 ms of the audible changes, of the silent ones, and of all."""
    n_aud = np.sum([r[f"{name}_changes"] for r in ok])
    hit_aud = np.sum([r[f"{name}_within_20ms"] * r[f"{name}_changes"] for r in ok])
    n_sil = np.sum([r[f"{name}_silent_changes"] for r in ok])
    hit_sil = np.sum([r[f"{name}_silent_within_20ms"] * r[f"{name}_silent_changes"] for r in ok])
    files_sil = sum(r[f"{name}_silent_changes"] > 0 for r in ok)
    print(f"{label} changes within 20 ms, pooled: audible {hit_aud / max(n_aud, 1):.4f} ({n_aud:.0f} changes, "
          f"{n_aud - hit_aud:.0f} off); after the piano falls silent {hit_sil / max(n_sil, 1):.4f} ({n_sil:.0f} "
          f"changes in {files_sil} files); all {(hit_aud + hit_sil) / max(n_aud + n_sil, 1):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="+", help="directories of match files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--diagnose", action="store_true", help="count the causes of errors over 20 ms")
    ap.add_argument("--list", type=int, default=15, help="files over the bounds to list (worst first)")
    ap.add_argument("--relative-tempo", action="store_true",
                    help="the relative tempo encoding (TempoLevel + TempoRel, relative to the MusicXML's "
                         "notated tempo)")
    a = ap.parse_args()
    work = partial(one_diag if a.diagnose else one, relative_tempo=a.relative_tempo)
    for src in a.src:
        files = sorted(Path(src).rglob("*.match"))
        with Pool(a.workers) as pool:
            res = list(tqdm(pool.imap(work, files, chunksize=4), total=len(files), desc=Path(src).name))
        ok = [r for _, r in res if isinstance(r, dict)]
        bad = [(p, r) for p, r in res if not isinstance(r, dict)]
        kind = "relative" if a.relative_tempo else "absolute"
        print(f"\n## {src} ({kind} tempo): {len(ok)} files ({sum(r['notes'] for r in ok):.0f} notes), "
              f"{len(bad)} unreadable")
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
        late = [(p, r) for p, r in res if isinstance(r, dict) and r["onset_end_ms"] > r["onset_start_ms"] + 1]
        for p, r in late[:a.list]:
            print(f"  end {r['onset_end_ms']:.2f} ms > start {r['onset_start_ms']:.2f} ms + 1  {p}")
        for name, label in (("pedal", "sustain"), ("soft", "soft")):
            print_pooled_pedal(ok, name, label)
        on = np.array([r["onset_median_ms"] for r in ok])
        print(f"files with onset median > 3 ms: {int((on > 3).sum())}; onset p99 > 20 ms: "
              f"{int((np.array([r['onset_p99_ms'] for r in ok]) > 20).sum())}")
        if ok and "outliers" in ok[0]:
            n_out = np.array([r["outliers"] for r in ok])
            print(f"alignment outliers encoded as not played: {int(n_out.sum())} notes in "
                  f"{int((n_out > 0).sum())} files")
        over = sorted(((p, r) for p, r in res if isinstance(r, dict) and r["onset_p99_ms"] > 20),
                      key=lambda x: -x[1]["onset_p99_ms"])
        for p, r in over[:a.list]:
            print(f"  p99 {r['onset_p99_ms']:8.1f} ms  median {r['onset_median_ms']:.2f} ms  {p}")
        if a.diagnose:
            from collections import Counter

            total, files_with = Counter(), Counter()
            for r in ok:
                total.update(r["causes"])
                files_with.update({k: 1 for k, v in r["causes"].items() if v})
            print("causes of errors over 20 ms (count, files):")
            for k in sorted(total):
                print(f"  {k}: {total[k]} ({files_with[k]} files)")


if __name__ == "__main__":
    main()
