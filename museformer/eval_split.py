"""Evaluate a model on a tokenized split (e.g. ``test``) against its human performances and baselines.

Rows: the model; ``deadpan`` (notated durations at 120 BPM, velocity 64, no pedal); ``markings``
(velocity from the notated dynamics, tempo from the tempo words, for performances whose piece has a
MusicXML: :mod:`instruct_tokenizer.markings_baseline`); ``training mean`` (every feature at its
training-set mean/median); ``human`` (another performance of the same piece: the realistic ceiling).
``per_piece`` keeps the first N performances of each piece and ``max_bars`` the first B bars of each
(every row and the human reference alike), to bound the cost of the model rendering. Per-note Pearson r is computed note by note through the score (every row renders
the same score tokens as the human performance it is compared with); distribution metrics pool all
notes (docs/evaluation.md). Writes results.md, results.json, histograms.png and per-piece curve plots.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from instruct_tokenizer import vocab as V
from instruct_tokenizer.decode import decode_performance, performance_to_midi
from instruct_tokenizer.encode import encode_match, nominal_q, split_bars, style_prefix
from instruct_tokenizer.grammar import target_slots
from instruct_tokenizer.match import MatchParseError, load_match
from instruct_tokenizer.metrics import (PER_NOTE, compare, fmt, per_note_features, per_note_r, pooled_histograms,
                                        tempo_spread)
from instruct_tokenizer.metrics import key_down_summary, length_s, length_summary, midi_features
from instruct_tokenizer.score import plain_view, score_timeline
from instruct_tokenizer.tempo_infer import apply_notated_tempo


class SplitSourceError(Exception):
    """A file of the build that cannot be used: a match file of the split that cannot be read (moved,
    deleted, unreadable) or a ``train.perf`` without performance tokens; the message names the file and
    the reason."""


def constant_perf(score_tokens: Sequence[str], tempo_bin: int, vel: int, art: float,
                  level: Optional[int] = None) -> List[str]:
    """A performance with one tempo, one velocity, timing 0, one articulation and no pedal. ``level``: the
    relative tempo encoding, ``TempoLevel_level`` first and ``TempoRel_tempo_bin`` at every onset (one
    tempo relative to the notated one); None: ``Tempo_tempo_bin`` (absolute)."""
    fill = {V.BAR: V.BAR_TOKEN, V.TEMPO: V.tok(V.TEMPO, tempo_bin), V.SUS: V.tok(V.SUS, V.NONE),
            V.SOFT: V.tok(V.SOFT, V.NONE), V.VEL: V.vel_tokens(np.array([vel]))[0], V.TIME: V.tok(V.TIME, 0),
            V.ART: V.tok(V.ART, V.fmt_art(V.quantise_art(art))), V.TEMPO_REL: V.tok(V.TEMPO_REL, tempo_bin),
            V.TEMPO_LEVEL: V.tok(V.TEMPO_LEVEL, level)}
    return [fill[s] for s in target_slots(score_tokens, relative=level is not None)]


def training_means(tok_dir: Path) -> Dict[str, Optional[float]]:
    """Median tempo bin, mean velocity and median articulation over train.perf; for a build with the
    relative tempo encoding, the median ``TempoRel`` step as ``tempo_bin`` and the median ``TempoLevel``
    as ``level`` (None for an absolute build)."""
    tempo, rel, level, vel, art = Counter(), Counter(), Counter(), [], []
    with open(tok_dir / "train.perf") as f:
        for line in f:
            for t in line.split():
                type_, value = t.partition("_")[::2]
                if type_ == V.TEMPO:
                    tempo[int(value)] += 1
                elif type_ == V.TEMPO_REL:
                    rel[int(value)] += 1
                elif type_ == V.TEMPO_LEVEL:
                    level[int(value)] += 1
                elif type_ == V.VEL and value != V.DELETED:
                    vel.append(V.vel_value(int(value)))
                elif type_ == V.ART:
                    art.append(float(value))
    bins = sorted((rel or tempo).elements())
    levels = sorted(level.elements())
    if not bins or not vel or not art:
        raise SplitSourceError(f"{tok_dir / 'train.perf'}: no training performance tokens (the training-mean "
                               f"baseline needs them)")
    return {"tempo_bin": bins[len(bins) // 2], "level": levels[len(levels) // 2] if levels else None,
            "velocity": float(np.mean(vel)), "art": float(np.median(art))}


def test_performances(tok_dir: Path, split: str) -> List[dict]:
    rows = [json.loads(x) for x in (tok_dir / "manifest.jsonl").read_text().splitlines()]
    seen, out = set(), []
    for r in rows:
        if r["split"] == split and not r["augment"] and r["source"] not in seen:
            seen.add(r["source"])
            out.append(r)
    return out


def plot_curves(path: Path, title: str, curves: Dict[str, Dict[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for name, f in curves.items():
        q = f["score_q"]
        ax1.plot(q, 60.0 / np.exp(f["beat_tempo"]), label=name, lw=1)
        ax2.plot(q, f["velocity"], ".", ms=2, label=name)
    ax1.set_ylabel("beat tempo (quarter BPM)")
    ax2.set_ylabel("velocity")
    ax2.set_xlabel("score position (quarters)")
    ax1.set_title(title)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def first_bars(tokens: Sequence[str], max_bars: Optional[int]) -> List[str]:
    """The tokens before the first bar and the first ``max_bars`` bars (all when None or 0)."""
    if not max_bars:
        return list(tokens)
    prefix, bars = split_bars(tokens)
    return prefix + [t for b in bars[:max_bars] for t in b]


def spread_pieces(pieces: Sequence[Tuple[str, str]], n: int) -> List[Tuple[str, str]]:
    """``n`` of the (composer, title) ``pieces`` taken across composers: the first piece (by title) of
    every composer (by name), then the second of each, and so on. The first ``n`` by name would be one
    composer's (in (n)ASAP's validation split the first 10 are 7 Bach preludes and fugues: a checkpoint
    chosen on them was chosen for Bach)."""
    by_composer: Dict[str, List[str]] = {}
    for composer, title in sorted(set(pieces)):
        by_composer.setdefault(composer, []).append(title)
    out: List[Tuple[str, str]] = []
    for rank in range(max((len(t) for t in by_composer.values()), default=0)):
        out += [(c, titles[rank]) for c, titles in by_composer.items() if rank < len(titles)]
    return out[:n]


def select_performances(perfs: List[dict], max_pieces: Optional[int] = None,
                        per_piece: Optional[int] = None) -> List[dict]:
    """The performances of ``max_pieces`` pieces spread across composers (:func:`spread_pieces`), at
    most ``per_piece`` of each (in manifest order)."""
    if max_pieces:
        keep = set(spread_pieces([(p["composer"], p["title"]) for p in perfs], max_pieces))
        perfs = [p for p in perfs if (p["composer"], p["title"]) in keep]
    if per_piece:
        count: Counter = Counter()
        out = []
        for p in perfs:
            key = (p["composer"], p["title"])
            if count[key] < per_piece:
                count[key] += 1
                out.append(p)
        perfs = out
    return perfs


def xml_score_info(source: str, features: Dict[str, bool], report=print):
    """(marks, qpm) for a match file, as ``instruct-tokenize build`` adds them to the score tokens of a
    model trained with MusicXML markings / notated tempo (``features``: ``Renderer.score_features``);
    (None, None) for a model trained without them. No readable MusicXML beside the match file: no
    markings and the default notated tempo, as in the build (reported on one line)."""
    from instruct_tokenizer.musicxml import xml_info_of_match

    want_marks, want_qpm = features.get("markings", False), features.get("notated_tempo", False)
    if not (want_marks or want_qpm):
        return None, None
    info, reason = xml_info_of_match(source)
    if reason:
        report(f"{source}: {reason}: scored without markings (notated tempo: the default)")
    marks = info.marks if (info is not None and want_marks) else None
    qpm = (info.qpm if info is not None else {}) if want_qpm else None
    return marks, qpm


def model_score(score_tokens: List[str], features: Dict[str, bool]) -> List[str]:
    """Score tokens of a match file as the build gives them to a model with ``features``: with the
    marking-state tokens when it was trained with ``--marking-state`` (``After_fermata`` among them
    when its dictionary has it)."""
    from instruct_tokenizer.score import with_marking_state

    if not features.get("marking_state"):
        return score_tokens
    return with_marking_state(score_tokens, after_fermata=bool(features.get("after_fermata")))


def markings_rows(human, max_bars: Optional[int] = None, report=print) -> Dict[int, List[str]]:
    """{performance index: markings performance tokens} for the performances whose piece has a MusicXML
    (found beside the match file); a MusicXML that cannot be read is reported on one line and left out."""
    from instruct_tokenizer.markings_baseline import MarkingsError, xml_markings_perf
    from instruct_tokenizer.musicxml import find_score_xml

    out: Dict[int, List[str]] = {}
    cache: Dict[str, object] = {}
    for i, (p, s, _) in enumerate(human):
        xml = find_score_xml(p["source"])
        if xml is None or cache.get(str(xml)) == "bad":
            continue
        try:
            _, perf = xml_markings_perf(str(xml), p["source"])
        except MarkingsError as e:
            report(f"markings: skipped {e}")
            cache[str(xml)] = "bad"
            continue
        perf = first_bars(perf, max_bars)
        if len(target_slots(s)) == len(perf):
            out[i] = perf
        else:
            report(f"markings: skipped {xml}: its notes do not match {p['source']}")
    return out


def evaluate_split(tok_dir: str, renderer, out_dir: str, split: str = "test", sampling=None,
                   max_pieces: Optional[int] = None, per_piece: Optional[int] = None,
                   max_bars: Optional[int] = None, markings: bool = True, plain: Optional[str] = None,
                   report=print) -> Dict[str, Dict[str, float]]:
    from museformer.render import Sampling

    tok, out = Path(tok_dir), Path(out_dir)
    perfs = select_performances(test_performances(tok, split), max_pieces, per_piece)
    means = training_means(tok)
    # the score tokens the model was trained on: markings and notated tempo from the MusicXML when it
    # was trained with them, the instruct prefix (every level "mid") when it was trained with one
    features = getattr(renderer, "score_features", {"instruct": True})

    def with_tempo(score: List[str]) -> List[str]:  # a score without a mark: the tempo instruct-render would infer
        return apply_notated_tempo(score)[0] if features.get("notated_tempo") else score

    human, notated = [], []  # (performance, the model's score, the pianist's tokens); the notated score
    for p in perfs:
        marks, qpm = xml_score_info(p["source"], features, report)
        try:
            enc = encode_match(load_match(p["source"]), marks=marks, qpm=qpm)
        except MatchParseError as e:
            raise SplitSourceError(f"{p['source']}: {e} (the build's manifest.jsonl names it: is the corpus "
                                   f"where the build was made?)") from None
        read = model_score(enc.score, features)
        as_read = with_tempo(read)
        # the model's input: without markings, as score.plain_view's view ``plain`` gives it (its tempo mark kept)
        score = with_tempo(plain_view(read, plain)) if plain else as_read
        human.append((p, first_bars(score, max_bars), first_bars(enc.perf, max_bars)))
        notated.append(first_bars(as_read, max_bars))  # the lengths the pianist's tokens are relative to
    prefix = style_prefix({}) if features.get("instruct", True) else []
    scores = [prefix + s for _, s, _ in human]
    (out / "midi").mkdir(parents=True, exist_ok=True)
    rendered = renderer.render_many(scores, sampling or Sampling())
    rows: Dict[str, Dict[int, List[str]]] = {
        "model": dict(enumerate(rendered)),
        "deadpan": {i: constant_perf(s, V.quantise_tempo(0.5), 64, 0.0) for i, s in enumerate(scores)}}
    if markings and not plain:
        marked = markings_rows(human, max_bars, report)
        if marked:
            rows["markings"] = marked
    rows["training mean"] = {i: constant_perf(s, means["tempo_bin"], int(means["velocity"]), means["art"],
                                              means.get("level")) for i, s in enumerate(scores)}
    human_feats = [per_note_features(n, pf) for n, (_, _, pf) in zip(notated, human)]
    human_midi = [performance_to_midi(decode_performance(n, pf)) for n, (_, _, pf) in zip(notated, human)]
    results: Dict[str, Dict[str, float]] = {}
    r_by_row: Dict[str, Dict[str, Dict[int, float]]] = {}
    human_notes = [_features_of(m, out / "midi" / f"human-{i}.mid") for i, m in enumerate(human_midi)]
    ref_hist = pooled_histograms(human_notes)
    for name, perf_rows in rows.items():
        r_by_row[name] = by_perf = defaultdict(dict)  # {feature: {performance: r}}
        feats, length_ratios = [], []
        for i, pf in perf_rows.items():
            p, s, _ = human[i]
            mine = features_on_notated(s, pf, notated[i])
            for k, v in per_note_r(mine, human_feats[i]).items():
                by_perf[k][i] = v
            by_perf["tempo_spread"][i] = tempo_spread(mine, human_feats[i])
            midi = performance_to_midi(decode_performance(s, pf))
            feats.append(_features_of(midi, out / "midi" / f"{name.replace(' ', '_')}-{i}.mid"))
            length_ratios.append(length_s(feats[-1]) / length_s(human_notes[i]))  # over its own pianist's
        rs = {k: list(v.values()) for k, v in by_perf.items()}
        results[name] = {**compare(pooled_histograms(feats), ref_hist), **{k: nanmean(v) for k, v in rs.items()},
                         **defined_counts(rs), **key_down_summary(feats), **length_summary(length_ratios),
                         "performances": len(perf_rows)}
    if "markings" in r_by_row:
        results["model, where markings has r"] = paired_r(r_by_row["model"], r_by_row["markings"])
    results["human"] = {**_human_ceiling(human, human_feats, out), **key_down_summary(human_notes)}
    for j in range(0, len(human), max(1, len(human) // 4)):
        p, s, _ = human[j]
        curves = {"human": human_feats[j]}
        curves.update({name: features_on_notated(s, rows[name][j], notated[j])
                       for name in ("model", "markings", "deadpan") if name in rows and j in rows[name]})
        plot_curves(out / f"curves-{j}.png", f"{p['composer']} {p['title']} ({p['performer']})", curves)
    return results


def features_on_notated(score: Sequence[str], perf: Sequence[str], notated: Sequence[str]) -> Dict[str, np.ndarray]:
    """``per_note_features`` of a performance of ``score`` with its articulation (log2 key-down over the
    notated length at the local tempo) on the lengths of ``notated``, the same notes as the pianist's
    tokens read them: a score MIDI view (``--plain-scores score-midi``) writes staccato notes shorter, and
    a key-down is compared with the pianist's over the same notated length."""
    feats = per_note_features(score, perf)
    if list(score) == list(notated):  # the notated score itself (no plain view)
        return feats
    given, written = score_timeline(score).note_dur_q, score_timeline(notated).note_dur_q
    if not np.array_equal(given, written):
        nominal = np.vectorize(nominal_q, otypes=[float])
        feats["articulation"] = feats["articulation"] + np.log2(nominal(given) / nominal(written))
    return feats


def _features_of(midi, path: Path):
    midi.dump(str(path))
    return midi_features(str(path))


def paired_r(model: Dict[str, Dict[int, float]], baseline: Dict[str, Dict[int, float]]) -> Dict[str, float]:
    """The model's mean per-note r on exactly the performances where the baseline's r is defined
    (``{"velocity_r": {performance: r}, ...}`` each), so that the two means compare the same excerpts: the
    markings row has no r where its rendering is constant (no dynamics, or no tempo change)."""
    out: Dict[str, float] = {}
    for k, by_perf in baseline.items():
        if not k.endswith("_r"):  # the tempo spread is defined wherever the pianist's curve is
            continue
        keep = [i for i, v in by_perf.items() if np.isfinite(v)]
        out[k] = nanmean([model.get(k, {}).get(i, float("nan")) for i in keep])
        out[f"{k}_n"] = len(keep)
    return out


def nanmean(values) -> float:
    v = np.array([x for x in values if np.isfinite(x)])
    return float(v.mean()) if len(v) else float("nan")


def _human_ceiling(human, human_feats, out: Path) -> Dict[str, float]:
    """Per-note r between performances of the same piece with identical score tokens; distribution
    metrics of odd-indexed against even-indexed performances of each piece."""
    by_piece = defaultdict(list)
    for i, (p, s, _) in enumerate(human):
        by_piece[(p["composer"], p["title"])].append(i)
    rs = defaultdict(list)
    even, odd = [], []
    for idx in by_piece.values():
        for a, b in zip(idx, idx[1:]):
            if human[a][1] == human[b][1]:
                for k, v in per_note_r(human_feats[a], human_feats[b]).items():
                    rs[k].append(v)
                rs["tempo_spread"].append(tempo_spread(human_feats[a], human_feats[b]))
        for n, i in enumerate(idx):
            (even if n % 2 == 0 else odd).append(midi_features(str(out / "midi" / f"human-{i}.mid")))
    res = compare(pooled_histograms(odd), pooled_histograms(even)) if odd and even else {}
    return {**res, **{k: nanmean(v) for k, v in rs.items()}, **defined_counts(rs)}


def defined_counts(rs) -> Dict[str, int]:
    """How many performances (pairs for human) each mean per-note r averages: a row with no variance on
    a performance (e.g. a constant tempo) has no r there and is left out of the mean."""
    return {f"{k}_n": int(np.isfinite(np.array(v, dtype=float)).sum()) for k, v in rs.items()}


COLUMN_LABELS = {"beat_tempo_r": "beat tempo r", "log_tempo_r": "onset tempo r",
                 "tempo_spread": "tempo spread"}  # the beat tempo's standard deviation over the pianist's


def markdown(results: Dict[str, Dict[str, float]]) -> str:
    cols = [f"{k}_r" for k in PER_NOTE] + ["tempo_spread", "velocity_js", "duration_js", "ioi_js", "pedal_js",
                                           "overall_js"]
    lines = ["| row | " + " | ".join(COLUMN_LABELS.get(c, c.replace("_", " ")) for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        n = f" ({r['performances']})" if "performances" in r else ""
        lines.append(f"| {name}{n} | " + " | ".join(fmt(r.get(c, float("nan"))) for c in cols) + " |")
    return "\n".join(lines) + "\n\n" + timing_markdown(results)


def timing_markdown(results: Dict[str, Dict[str, float]]) -> str:
    """Key-down times and lengths per row (``metrics.key_down_summary``, ``metrics.length_summary``: each
    rendering's length over its own pianist's), the second table of results.md."""
    lines = ["| row | median key-down ms | under 20 ms | held over 500 ms | length / pianist's: median (min-max) "
             "| beyond 1.5x |", "|---" * 6 + "|"]
    for name, r in results.items():
        if "key_down_median_ms" not in r:
            continue
        length = (f"{r['length_ratio_median']:.2f} ({r['length_ratio_min']:.2f}-{r['length_ratio_max']:.2f})"
                  if "length_ratio_median" in r else "n/a")
        lines.append(f"| {name} | {r['key_down_median_ms']:.0f} | {100 * r['under_20ms_share']:.2f} % | "
                     f"{100 * r['held_over_500ms_share']:.2f} % | {length} | {r.get('beyond_1_5x', 'n/a')} |")
    return "\n".join(lines) + "\n"
