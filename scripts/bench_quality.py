#!/usr/bin/env python
"""Side-by-side quality benchmark on Pianist Transformer's own test set (23 ASAP pieces).

In one run: renders ``score/{i}.mid`` (and, where the (n)ASAP copy has it, the same piece's
``xml_score.musicxml``) with our checkpoint, then computes Pianist Transformer's distribution metrics for
ours, ``pianist_transformer/``, deadpan (``score/`` as is) and human even-k vs odd-k, all against
``human/``. Writes results.md, results.json, histograms.png (human vs ours vs Pianist Transformer) and
curves.png, and prints the render real-time factor (render seconds / music seconds) and, for ours,
Pianist Transformer and the human performances, the tempo level (each piece's length over its median
human length) and the median key-down time.

Baseline rows beside them: ``training mean`` (the score MIDI's tokens with every group at the median
training tempo bin, every note at the mean training velocity and the median training articulation, from
``--tokens``' train.perf; no pedal) and ``markings`` (:mod:`instruct_tokenizer.markings_baseline` on the
piece's (n)ASAP ``xml_score.musicxml``). Where (n)ASAP match files align a piece's performances, per-note
velocity r and beat-tempo r of the markings baseline against each of them (the match file's score
tokens with the XML's markings, so note i is the human's note i) are added, averaged over performances.
``--baselines-only`` skips the model.

    python scripts/bench_quality.py [--checkpoint CKPT] [--out outputs/bench_quality] [--baselines-only]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instruct_tokenizer.decode import tokens_to_midi  # noqa: E402
from instruct_tokenizer.encode import score_file_to_tokens  # noqa: E402
from instruct_tokenizer.metrics import key_down_summary, length_s, length_summary, midi_features  # noqa: E402
from museformer.decoding import DecodeConfig  # noqa: E402
from museformer.evaluate import evaluate_sets, read_set, write_outputs  # noqa: E402

BENCH = REPO.parent / "shared" / "benchmarks" / "pianist_transformer_testset"
NASAP = REPO.parent / "shared" / "datasets" / "nasap"


# The benchmark README's table: row -> (velocity, duration, IOI, pedal JS, overall JS, overall intersection)
README_ROWS = {
    "Pianist Transformer": (0.128, 0.200, 0.154, 0.142, 0.156, 0.853),
    "deadpan (score/ as is)": (0.765, 0.682, 0.780, 0.465, 0.673, 0.307),
    "human, even k vs odd k": (0.018, 0.021, 0.015, 0.017, 0.018, 0.985),  # first published as 0.030: corrected
}


def benchmark(bench: Path = BENCH) -> dict:
    """The reference rows, measured in one run: Pianist Transformer and deadpan against all human
    files, and human even k against odd k."""
    human_paths = sorted((bench / "human").glob("*.mid"))
    human = read_set(human_paths)
    rows = {"Pianist Transformer": read_set(sorted((bench / "pianist_transformer").glob("*.mid"))),
            "deadpan (score/ as is)": read_set(sorted((bench / "score").glob("*.mid")))}
    results = evaluate_sets(rows, human)
    k = [int(re.match(r"\d+-(\d+)", p.name).group(1)) for p in human_paths]
    even = [f for f, kk in zip(human, k) if kk % 2 == 0]
    odd = [f for f, kk in zip(human, k) if kk % 2 == 1]
    results["human, even k vs odd k"] = evaluate_sets({"odd": odd}, even)["odd"]
    return results


def render_dir(renderer, scores: dict, out: Path, sampling, batch: int, reuse: bool = False) -> Optional[float]:
    """Render {index: score tokens} into out/{index}.mid; returns render seconds. The pieces' segments
    are generated together, ``batch`` at a time (``Renderer.render_many``); ``batch`` 0: one piece at a
    time (``render_tokens``, each piece from the seed: the tokens instruct-render gives it alone).
    ``reuse``: when out/ already holds every {index}.mid (an earlier run of the same checkpoint and
    seed), keep them and return None (no render time measured)."""
    if reuse and all((out / f"{k}.mid").is_file() for k in scores):
        print(f"reusing the renderings in {out} (render time not measured in this run)")
        return None
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    keys = sorted(scores)
    if batch > 0:
        perfs = renderer.render_many([scores[k] for k in keys], sampling, batch_size=batch)
    else:
        from tqdm import tqdm

        perfs = [renderer.render_tokens(scores[k], sampling, progress=False)
                 for k in tqdm(keys, desc="render", unit="piece")]
    seconds = time.time() - t0
    valid = sum(structurally_valid(scores[k], perf) for k, perf in zip(keys, perfs))
    print(f"structural validity {valid}/{len(keys)} in {out.name}: the grammar's slot for every token "
          f"(one performance event per score note, the same bars)")
    for k, perf in zip(keys, perfs):
        tokens_to_midi(scores[k], perf, str(out / f"{k}.mid"))
    return seconds


def structurally_valid(score_tokens, perf_tokens) -> bool:
    """Whether a rendering has exactly the token types the performance grammar asks for, slot by slot."""
    from instruct_tokenizer.grammar import target_slots, token_type

    return [token_type(t) for t in perf_tokens] == target_slots(score_tokens)


def opening(tokens, max_tokens: int):
    """The prefix and the first bars whose score and performance lengths stay within max_tokens."""
    from instruct_tokenizer.grammar import target_slots
    from museformer.render import split_bars

    if max_tokens <= 0:
        return tokens
    prefix, bars = split_bars(tokens)
    kept, used = [], 0
    for b in bars:
        used += max(len(b), len(target_slots(b)))
        if kept and used > max_tokens:
            break
        kept.append(b)
    return prefix + [t for b in kept for t in b]


def baseline_rows(pieces, out: Path, tok_dir: Path, report=print) -> dict:
    """MIDI paths of the training-mean and markings baselines, written under out/."""
    from museformer.eval_split import constant_perf, training_means
    from instruct_tokenizer.markings_baseline import MarkingsError, xml_markings_perf

    rows = {}
    if (tok_dir / "train.perf").is_file():
        means = training_means(tok_dir)
        report(f"training means from {tok_dir}: tempo bin {means['tempo_bin']}, velocity {means['velocity']:.1f}, "
               f"articulation {means['art']:.2f}")
        d = out / "training_mean_midi"
        d.mkdir(parents=True, exist_ok=True)
        for p in pieces:
            score = score_file_to_tokens(str(BENCH / "score" / f"{p['index']}.mid"), instruct=False)
            perf = constant_perf(score, means["tempo_bin"], int(means["velocity"]), means["art"], means.get("level"))
            tokens_to_midi(score, perf, str(d / f"{p['index']}.mid"))
        rows["training mean"] = sorted(d.glob("*.mid"))
    else:
        report(f"training mean: skipped, {tok_dir / 'train.perf'} not found")
    d = out / "markings_midi"
    d.mkdir(parents=True, exist_ok=True)
    for p in pieces:
        xml = NASAP / p["asap_folder"] / "xml_score.musicxml"
        try:
            score, perf = xml_markings_perf(str(xml))
        except MarkingsError as e:
            report(f"markings: skipped {e}")
            continue
        tokens_to_midi(score, perf, str(d / f"{p['index']}.mid"))
    made = sorted(d.glob("*.mid"))
    if made:
        rows["markings"] = made
    return rows


def per_note_inputs(pieces, features, max_bars: int, report=print) -> list:
    """(match path, XML path, score tokens, human performance tokens) for every (n)ASAP performance of the
    benchmark pieces with a match file, cut to the first ``max_bars`` bars; the score carries the
    markings and notated tempo a model with ``features`` (``Renderer.score_features``) was trained on."""
    from instruct_tokenizer.encode import encode_match
    from instruct_tokenizer.match import load_match
    from museformer.eval_split import first_bars, model_score, xml_score_info

    out = []
    for p in pieces:
        folder = NASAP / p["asap_folder"]
        for m in sorted(folder.glob("*.match")):
            try:
                marks, qpm = xml_score_info(str(m), features, report)
                enc = encode_match(load_match(str(m)), marks=marks, qpm=qpm)
            except Exception as e:  # noqa: BLE001 - a match file the tokenizer rejects is named and skipped
                report(f"per note: skipped {m}: {e}")
                continue
            out.append((m, folder / "xml_score.musicxml", first_bars(model_score(enc.score, features), max_bars),
                        first_bars(enc.perf, max_bars)))
    return out


def per_note_table(inputs, max_bars: int, renderer=None, sampling=None, report=print) -> dict:
    """Per-note velocity r, beat-tempo r and onset-tempo r against each human performance
    (``per_note_inputs``), for the markings baseline and, with a renderer, ours (rendered from the same
    score tokens, instruct levels "mid"): {row: {velocity_r, beat_tempo_r, log_tempo_r, their counts,
    performances}}."""
    from instruct_tokenizer.encode import style_prefix
    from instruct_tokenizer.markings_baseline import MarkingsError, xml_markings_perf
    from instruct_tokenizer.metrics import per_note_features, per_note_r
    from museformer.eval_split import defined_counts, first_bars, nanmean, paired_r

    rows = {"markings": {}}
    bad_xml = set()
    for i, (m, xml, score, _) in enumerate(inputs):
        if xml in bad_xml:
            continue
        try:
            rows["markings"][i] = first_bars(xml_markings_perf(str(xml), str(m))[1], max_bars)
        except MarkingsError as e:
            report(f"markings per note: skipped {e}")
            bad_xml.add(xml)
    if renderer is not None:
        prefix = style_prefix({}) if renderer.score_features["instruct"] else []
        rendered = renderer.render_many([prefix + score for _, _, score, _ in inputs], sampling, batch_size=24)
        rows["ours"] = dict(enumerate(rendered))
    out, by_perf = {}, {}
    for name, perfs in rows.items():
        by_perf[name] = {"velocity_r": {}, "beat_tempo_r": {}, "log_tempo_r": {}}  # {feature: {performance: r}}
        for i, perf in perfs.items():
            _, _, score, human = inputs[i]
            r = per_note_r(per_note_features(score, perf), per_note_features(score, human))
            for k in by_perf[name]:
                by_perf[name][k][i] = r[k]
        rs = {k: list(v.values()) for k, v in by_perf[name].items()}
        # mean over the performances where r is defined (no variance: n/a, left out), and their count
        out[name] = {"performances": len(perfs), **{k: nanmean(v) for k, v in rs.items()}, **defined_counts(rs)}
    if "ours" in by_perf:  # ours on exactly the performances where markings has an r
        out["ours, where markings has r"] = {"performances": len(rows["markings"]),
                                             **paired_r(by_perf["ours"], by_perf["markings"])}
    return out


def music_seconds(paths, cache: Optional[dict] = None) -> float:
    return float(sum((f.onset_ms + f.duration_ms).max() / 1000.0 for f in read_set(paths, cache=cache)))


def timing_summary(rows: dict, human_paths: list, cache: Optional[dict] = None) -> dict:
    """Tempo level and key-down per row of one file per piece (``{i}.mid``): each piece's length over
    the median length of its human performances (``{i}-{k}.mid``; ``metrics.length_summary``: min, median,
    max over pieces and how many pieces last more than 1.5 times their human length either way) and
    ``metrics.key_down_summary`` (the median key-down time, the shares held under 20 ms and over 500 ms);
    the human row pools every performance (its ratios are each performance's length over its piece's
    median). ``cache``: ``read_set``'s, so that files the metrics already read are not read again."""
    human = {}
    for path, f in zip(human_paths, read_set(human_paths, cache=cache)):
        human.setdefault(int(path.name.split("-")[0]), []).append(f)
    median_len = {i: float(np.median([length_s(f) for f in runs])) for i, runs in human.items()}

    def summary(ratios, feats) -> dict:
        return {**length_summary(ratios), **key_down_summary(feats)}

    out = {"human": summary([length_s(f) / median_len[i] for i, runs in human.items() for f in runs],
                            [f for runs in human.values() for f in runs])}
    for name, paths in rows.items():
        paths = [p for p in paths if p.stem.isdigit() and int(p.stem) in median_len]
        timed = {int(p.stem): f for p, f in zip(paths, read_set(paths, cache=cache))}
        if timed:
            out[name] = summary([length_s(f) / median_len[i] for i, f in timed.items()], list(timed.values()))
    return out


def plot_curves(path: Path, files: dict) -> None:
    """Velocity and local tempo (notes per second, 2 s windows) over normalised time for one piece."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for name, p in files.items():
        f = midi_features(str(p))
        order = np.argsort(f.onset_ms)
        on = f.onset_ms[order] / 1000.0
        x = on / on.max()
        a1.plot(x, np.convolve(f.velocity[order], np.ones(15) / 15, mode="same"), label=name, lw=1)
        rate = [np.sum((on > t - 1) & (on <= t + 1)) / 2.0 for t in on]
        a2.plot(x, rate, label=name, lw=1)
    a1.set_ylabel("velocity (15-note mean)")
    a2.set_ylabel("notes per second")
    a2.set_xlabel("normalised time")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "instruct-museformer.pt"))
    ap.add_argument("--data", default=None, help="fairseq data dir with dictionaries (training checkpoints)")
    ap.add_argument("--tokens", default=str(REPO / "outputs" / "nasap" / "tok"),
                    help="instruct-tokenize build whose train.perf gives the training-mean baseline")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench_quality"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=24,
                    help="segments of different pieces generated together (0: one piece at a time)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads while decoding (default 1: measured fastest, scripts/bench_speed.py)")
    ap.add_argument("--generator", default="lean", choices=["lean", "fairseq"],
                    help="sampling loop: lean (museformer.sampler) or fairseq's SequenceGenerator (slower)")
    ap.add_argument("--topp", type=float, default=1.0, help="nucleus sampling p (instruct-render's default 1.0)")
    DecodeConfig.add_args(ap, profile="render")  # our renderings' decoding rules, as instruct-render's
    ap.add_argument("--no-xml", action="store_true", help="skip the MusicXML-input row")
    ap.add_argument("--baselines-only", action="store_true",
                    help="no model: Pianist Transformer, deadpan, training mean, markings and human only")
    ap.add_argument("--no-per-note", action="store_true", help="skip the per-note r (ours and markings, match files)")
    ap.add_argument("--per-note-bars", type=int, default=16,
                    help="per-note r on the first B bars of every (n)ASAP performance of the 23 pieces")
    ap.add_argument("--reuse-renders", action="store_true",
                    help="keep renderings already in --out (same checkpoint and seed) instead of rendering again")
    ap.add_argument("--max-tokens-per-piece", type=int, default=0,
                    help="render only the opening bars of each piece up to this many tokens (0: whole pieces)")
    a = ap.parse_args()
    out = Path(a.out)
    if not NASAP.is_dir() and not (a.no_xml and a.no_per_note):
        sys.exit(f"bench_quality: error: {NASAP}: (n)ASAP not found, needed for the MusicXML row and the "
                 "per-note r (../shared/datasets/unpack makes it; or pass --no-xml --no-per-note)")
    pieces = list(csv.DictReader(open(BENCH / "pieces.csv")))
    rows, meta, secs = {}, {}, None
    features: dict = {}  # read_set's cache: each MIDI file is read once
    renderer = sampling = None
    if not a.baselines_only:
        from museformer.render import Renderer, Sampling

        renderer = Renderer.from_checkpoint(a.checkpoint, a.data, decode=DecodeConfig.from_args(a))
        renderer.threads = max(1, a.threads)
        sampling = Sampling(seed=a.seed, topp=a.topp, generator=a.generator)
        scores = {int(p["index"]): opening(renderer.score_tokens(str(BENCH / "score" / f"{p['index']}.mid")),
                                           a.max_tokens_per_piece) for p in pieces}
        secs = render_dir(renderer, scores, out / "ours_midi", sampling, a.batch, a.reuse_renders)
        ours = sorted((out / "ours_midi").glob("*.mid"))
        if secs is not None:
            rtf = secs / music_seconds(ours, features)
            print(f"rendered 23 score MIDIs in {secs:.0f} s: real-time factor {rtf:.2f} (render s / music s)")
            meta["render"] = {"seconds": secs, "real_time_factor": rtf, "checkpoint": a.checkpoint}
        rows["ours (score MIDI)"] = read_set(ours, cache=features)
        if not a.no_xml:
            xml = {int(p["index"]): NASAP / p["asap_folder"] / "xml_score.musicxml" for p in pieces}
            xml_scores = {}
            for k, path in xml.items():
                if path.exists():
                    try:
                        xml_scores[k] = opening(renderer.score_tokens(str(path)), a.max_tokens_per_piece)
                    except Exception as e:  # noqa: BLE001 - a score partitura cannot read is skipped, named
                        print(f"skipped {path}: {e}")
            if xml_scores:
                render_dir(renderer, xml_scores, out / "ours_xml", sampling, a.batch, a.reuse_renders)
                rows[f"ours (MusicXML, {len(xml_scores)} pieces)"] = read_set(sorted((out / "ours_xml").glob("*.mid")),
                                                                            cache=features)
    human_paths = sorted((BENCH / "human").glob("*.mid"))
    rows["Pianist Transformer"] = read_set(sorted((BENCH / "pianist_transformer").glob("*.mid")), cache=features)
    rows["deadpan (score MIDI)"] = read_set(sorted((BENCH / "score").glob("*.mid")))
    rows.update({name: read_set(paths) for name, paths in baseline_rows(pieces, out, Path(a.tokens)).items()})
    human = read_set(human_paths, cache=features)
    results = evaluate_sets(rows, human)
    k = [int(re.match(r"\d+-(\d+)", p.name).group(1)) for p in human_paths]
    even = [f for f, kk in zip(human, k) if kk % 2 == 0]
    odd = [f for f, kk in zip(human, k) if kk % 2 == 1]
    ceiling = evaluate_sets({"human odd k": odd}, even)["human odd k"]
    results["human odd k vs even k"] = ceiling
    extra = None
    if not a.no_per_note:
        features = renderer.score_features if renderer is not None else {}
        inputs = per_note_inputs(pieces, features, a.per_note_bars)
        per_note = per_note_table(inputs, a.per_note_bars, renderer, sampling)
        meta["per_note"] = {"bars": a.per_note_bars, **per_note}
        extra = {}
        for row, prefix in (("markings", "markings"), ("ours", "ours (MusicXML")):
            name = next((n for n in results if n.startswith(prefix)), None)
            if name and row in per_note:
                extra[name] = {k: per_note[row][k] for k in ("velocity_r", "beat_tempo_r", "log_tempo_r")}
                print(f"{row} per-note r over {per_note[row]['performances']} (n)ASAP performances, first "
                      f"{a.per_note_bars} bars: velocity {per_note[row]['velocity_r']:.3f}, beat tempo "
                      f"{per_note[row]['beat_tempo_r']:.3f}, onset tempo {per_note[row]['log_tempo_r']:.3f}")
        paired = per_note.get("ours, where markings has r")
        if paired:
            print(f"ours on the performances where markings has an r: velocity {paired['velocity_r']:.3f} "
                  f"({paired['velocity_r_n']}), beat tempo {paired['beat_tempo_r']:.3f} "
                  f"({paired['beat_tempo_r_n']}), onset tempo {paired['log_tempo_r']:.3f} ({paired['log_tempo_r_n']})")
    timed = {"Pianist Transformer": sorted((BENCH / "pianist_transformer").glob("*.mid"))}
    if not a.baselines_only and not a.max_tokens_per_piece:  # an opening's length says nothing of the tempo level
        timed["ours (score MIDI)"] = sorted((out / "ours_midi").glob("*.mid"))
        if any(n.startswith("ours (MusicXML") for n in rows):
            timed["ours (MusicXML)"] = sorted((out / "ours_xml").glob("*.mid"))
    meta["timing"] = timing_summary(timed, human_paths, features)
    for name, t in meta["timing"].items():
        print(f"{name}: length / median human length {t['length_ratio_min']:.2f} to {t['length_ratio_max']:.2f} "
              f"(median {t['length_ratio_median']:.2f}); median key-down {t['key_down_median_ms']:.0f} ms; "
              f"notes under 20 ms {100 * t['under_20ms_share']:.2f} %, over 500 ms "
              f"{100 * t['held_over_500ms_share']:.1f} %; pieces beyond 1.5 times either way {t['beyond_1_5x']}")
    plot_rows = [n for n in results if n.startswith(("ours", "markings", "training mean"))] + ["Pianist Transformer"]
    table = write_outputs(results, out, extra=extra, plot_rows=plot_rows, meta=meta,
                          title="Pianist Transformer test set: distribution metrics vs human")
    if not a.baselines_only:
        plot_curves(out / "curves.png", {"human": BENCH / "human" / "0-0.mid", "ours": out / "ours_midi" / "0.mid",
                                         "Pianist Transformer": BENCH / "pianist_transformer" / "0.mid"})
    print(table)
    print(f"wrote {out}/results.md, results.json, histograms.png" + ("" if a.baselines_only else ", curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
