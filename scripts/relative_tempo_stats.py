#!/usr/bin/env python
"""The figures behind the relative tempo encoding (``--relative-tempo``, docs/tokens.md, Relative tempo).

For every match file (notated tempo from the MusicXML beside it, through the parsed-XML cache; 120 where
the score states none), encoded with the relative encoding, prints:
- the spread of the tempo level (log2 of the performance's typical beat period over the notated one,
  in 1/24-octave steps), for scores that state a tempo and for those that do not, and the share of
  performances outside the ``TempoLevel`` range;
- the distribution of the ``TempoRel`` steps chosen (percentiles, share at the range ends), of the raw
  steps before quantisation (share beyond candidate ranges), beside the absolute ``Tempo`` bins (share
  at their range ends);
- the level definitions compared: score-time-weighted median (used), plain median over onset groups,
  total time over total notated time, by the median |TempoRel| they leave;
- whether timing (``Time``) and key-down (``Art``) scale with tempo: the slope of log(median |Time|)
  on log(typical beat period) across performances (0: milliseconds are the right unit, 1: beats), and
  of log(key-down / notated) on log(beat period) across and within performances (1: relative to the
  beat period, as ``Art`` is), and the spread of ``Art``'s log ratio within a performance against the
  local beat period (now) and against notated period x level.

``--inferred-tempo``: scores that state no tempo get the notated tempo ``instruct-render`` gives them
(``tempo_infer.notated_tempo`` of their score tokens with the MusicXML's tempo words) instead of 120. That
estimate was fitted on the (n)ASAP training pieces, so on (n)ASAP its figures are optimistic.

    nice python scripts/relative_tempo_stats.py ../shared/datasets/nasap --workers 2
"""
from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.decode import decode_performance  # noqa: E402
from instruct_tokenizer.encode import (_group_reference, encode_match, grid_targets,  # noqa: E402
                                       group_notated_period_s, match_score_notes, nominal_q, tempo_level_log2)
from instruct_tokenizer.grammar import states_tempo, token_type  # noqa: E402
from instruct_tokenizer.match import MatchParseError, load_match  # noqa: E402
from instruct_tokenizer.musicxml import xml_info_of_match  # noqa: E402
from instruct_tokenizer.score import score_timeline, score_tokens  # noqa: E402
from instruct_tokenizer.tempo_infer import notated_tempo  # noqa: E402

STEP = 1.0 / V.REL_STEPS_PER_OCTAVE  # octaves per step


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    o = np.argsort(x, kind="stable")
    cum = np.cumsum(w[o])
    return float(x[o][int(np.searchsorted(cum, 0.5 * cum[-1]))])


def _inferred(mf, info) -> dict:
    """The notated tempo by note id that a rendering would use: the mark where the score states one, else
    the estimate from the score tokens with the MusicXML's tempo words (``tempo_infer``)."""
    qpm = info.qpm if info is not None else {}
    notes, _ = match_score_notes(mf, info.marks if info is not None else None, qpm)
    est = notated_tempo(score_tokens(notes))
    if est.source == "mark":
        return qpm
    return {a: est.qpm for a in mf.anchor} if not qpm else {k: est.qpm for k in qpm}


def one(job):
    """Per-file figures, or the reason it was left out."""
    path, inferred = job
    try:
        mf = load_match(path)
        info, _ = xml_info_of_match(path)
        stated = info.qpm if info is not None else {}
        states = states_tempo(score_tokens(match_score_notes(mf, None, stated)[0]))
        qpm = _inferred(mf, info) if inferred else stated
        notes, order = match_score_notes(mf, None, qpm)
        score = score_tokens(notes)
        tl = score_timeline(score)
        notated = group_notated_period_s(score, tl)
        target = grid_targets(tl, _group_reference(tl, mf.onset_s[order], mf.played[order], notes.grace))
        level = tempo_level_log2(tl, target, notated)
        dq = np.maximum(np.diff(tl.group_q), 1.0 / V.GRID)
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log2(np.maximum(np.diff(target) / dq, 1e-3) / notated[1:])
        ok = np.isfinite(x)
        x, w = x[ok], dq[ok]
        total = float(np.log2((np.sum(np.diff(target)[ok]) / np.sum(w * notated[1:][ok]))))
        levels = {"weighted": level, "median": float(np.median(x)), "total": total}
        rel_left = {k: float(np.median(np.abs(x - v))) / STEP for k, v in levels.items()}
        enc = encode_match(mf, qpm=qpm, relative_tempo=True)
        absolute = encode_match(mf, qpm=qpm)
        rel_steps = np.array([int(V.parse(t)[1]) for t in enc.perf if token_type(t) == V.TEMPO_REL])
        abs_bins = np.array([int(V.parse(t)[1]) for t in absolute.perf if token_type(t) == V.TEMPO])
        # timing and key-down against tempo (the decoded performance: grid, periods, played notes)
        perf = decode_performance(enc.score, enc.perf)
        o = enc.order
        played = perf.played & mf.played[o]
        g = perf.timeline.note_group
        true_on = mf.onset_s[o] - enc.shift_s
        dev_ms = np.abs(true_on - perf.group_grid_s[g])[played] * 1000.0
        period_local = perf.group_period_s[g][played]
        key_down = (mf.offset_s[o] - mf.onset_s[o])[played]
        nominal = np.array([nominal_q(d) for d in perf.timeline.note_dur_q])[played]
        art_log = np.log2(np.maximum(key_down, 1e-3) / nominal)  # log2(seconds per notated quarter held)
        typical = float(np.median(notated)) * 2.0 ** level  # s per quarter
        scale = (notated * 2.0 ** (V.quantise_tempo_level(level) / V.REL_STEPS_PER_OCTAVE))[g][played]
        art_spread = {"local": _iqr(art_log - np.log2(period_local)), "level": _iqr(art_log - np.log2(scale))}
        raw_steps = (x - V.quantise_tempo_level(level) * STEP) / STEP  # before quantisation and clamping
        return {"path": path, "level": level, "levels": levels, "rel_left": rel_left, "states": states,
                "rel_steps": rel_steps, "raw_steps": raw_steps, "abs_bins": abs_bins, "typical_s": typical,
                "time_mad_ms": float(np.median(dev_ms)), "art_log_median": float(np.median(art_log)),
                "art_spread": art_spread, "within": _within_slope(art_log, np.log2(period_local)),
                "time_within": _within_slope(np.log2(np.maximum(dev_ms, 0.5)), np.log2(period_local))}
    except (MatchParseError, ValueError) as e:
        return {"path": path, "error": str(e)}


def _iqr(x: np.ndarray) -> float:
    """Interquartile range (the spread of a performance's values, robust to a few wild notes)."""
    q = np.percentile(x[np.isfinite(x)], [25, 75])
    return float(q[1] - q[0])


def _within_slope(y: np.ndarray, x: np.ndarray) -> float:
    """Least-squares slope of y on x within one performance (nan with no spread)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 10 or np.std(x[ok]) < 1e-9:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def pct(values, qs=(1, 5, 25, 50, 75, 95, 99)) -> str:
    return " ".join(f"p{q} {v:+.1f}" for q, v in zip(qs, np.percentile(values, qs)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="+", help="directories of match files")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--inferred-tempo", action="store_true",
                    help="a score without a metronome mark gets tempo_infer's estimate instead of 120")
    a = ap.parse_args()
    files = [(str(f), a.inferred_tempo) for src in a.src for f in sorted(Path(src).rglob("*.match"))]
    with Pool(a.workers) as pool:
        res = list(tqdm(pool.imap(one, files, chunksize=4), total=len(files), desc="files"))
    ok = [r for r in res if "error" not in r]
    print(f"{len(ok)} performances, {len(res) - len(ok)} left out")
    for r in res:
        if "error" in r:
            print(f"  left out {r['path']}: {r['error']}")
    lv = np.array([r["level"] for r in ok]) / STEP
    states = np.array([r["states"] for r in ok])
    print("\n## tempo level (1/24-octave steps; + = slower than notated)")
    for name, sel in (("all", np.ones(len(ok), bool)), ("score states a tempo", states),
                      ("no tempo stated", ~states)):
        if sel.any():
            beyond = [int((np.abs(lv[sel]) > k + 0.5).sum()) for k in (48, 72)]
            print(f"{name}: n={sel.sum()}, {pct(lv[sel])}, min {lv[sel].min():+.1f} max {lv[sel].max():+.1f}, "
                  f"beyond +-48: {beyond[0]}, beyond +-72: {beyond[1]}")
    lo, hi = V.TEMPO_LEVEL_STEPS[0], V.TEMPO_LEVEL_STEPS[-1]
    print(f"TempoLevel range {lo}..{hi}: clamped {int(((lv < lo - 0.5) | (lv > hi + 0.5)).sum())} of {len(lv)}")
    print("\n## level definitions: median |log2 ratio - level| over onset groups (steps), median over files")
    for k in ("weighted", "median", "total"):
        left = np.array([r["rel_left"][k] for r in ok])
        diff = np.array([r["levels"][k] - r["level"] for r in ok]) / STEP
        print(f"{k}: {np.median(left):.2f} steps left; differs from the used level by {pct(diff, (5, 50, 95))}")
    rel = np.concatenate([r["rel_steps"] for r in ok])
    ab = np.concatenate([r["abs_bins"] for r in ok])
    print(f"\n## TempoRel steps chosen ({len(rel)} onset groups): {pct(rel, (0.01, 0.1, 1, 50, 99, 99.9, 99.99))}")
    lo, hi = V.TEMPO_REL_STEPS[0], V.TEMPO_REL_STEPS[-1]
    print(f"min {rel.min()} max {rel.max()}; range {lo}..{hi}: at its ends {np.mean(rel == lo):.5f} (low) and "
          f"{np.mean(rel == hi):.5f} (high)")
    raw = np.concatenate([r["raw_steps"] for r in ok])
    print(f"the raw steps (target gap over notated gap x notated period x level, before the error feedback): "
          f"{pct(raw, (0.01, 0.1, 1, 50, 99, 99.9, 99.99))}")
    for lo_, hi_ in ((-72, 96), (-96, 120), (-120, 144), (-144, 168)):
        print(f"  share of raw steps beyond {lo_}..{hi_}: {np.mean((raw < lo_ - 0.5) | (raw > hi_ + 0.5)):.5f} "
              f"(low {int((raw < lo_ - 0.5).sum())}, high {int((raw > hi_ + 0.5).sum())})")
    print(f"absolute Tempo bins: at 0 (0.08 s) {np.mean(ab == 0):.5f}, at {V.TEMPO_BINS - 1} (8 s) "
          f"{np.mean(ab == V.TEMPO_BINS - 1):.5f}; |step - 0| median: TempoRel {np.median(np.abs(rel)):.1f}")
    typical = np.log2([r["typical_s"] for r in ok])
    mad = np.log2([r["time_mad_ms"] for r in ok])
    art = np.array([r["art_log_median"] for r in ok])
    print("\n## timing and key-down against tempo (slopes of log2 on log2 typical beat period)")
    print(f"median |Time| (ms) across performances: slope {np.polyfit(typical, mad, 1)[0]:+.2f} "
          f"(0: ms is the unit, 1: beats); r {np.corrcoef(typical, mad)[0, 1]:+.2f}")
    tw = np.array([r["time_within"] for r in ok])
    print(f"|Time| on local beat period within performances: median slope {np.nanmedian(tw):+.2f}")
    print(f"key-down / notated (s per quarter) across performances: slope {np.polyfit(typical, art, 1)[0]:+.2f} "
          f"(1: relative to the beat period, as Art is)")
    within = np.array([r["within"] for r in ok])
    print(f"key-down / notated on local beat period within performances: median slope {np.nanmedian(within):+.2f}")
    for k, name in (("local", "the local beat period (Art now)"), ("level", "notated period x level")):
        spread = np.array([r["art_spread"][k] for r in ok])
        print(f"log2 key-down / (notated x {name}): interquartile range within a performance, median over "
              f"files {np.median(spread):.3f} octaves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
