"""Tempo out of (n)ASAP: the released model on Vienna 4x22's Mozart K331/1 and Schubert D783/15 (not among
(n)ASAP's pieces, 22 pianists each), from the MusicXML markings, against every pianist: the rendering's
tempo level over the pianist's (performed quarters per minute, time-weighted) and the beat-tempo r
(``metrics.beat_log_tempo`` per note, Pearson) and the tempo spread (the standard deviation of the
rendering's beat tempo over the pianist's, ``metrics.tempo_spread``), per seed, with and without the
notated-tempo estimate; and the same figures for each pianist against every other pianist (the row
"pianist against pianist": what one human performance scores where the rendering stands).

The score tokens are those of the match files (as ``instruct-eval`` uses them, so that every pianist's
notes line up with the rendering's), the instruct prefix all "mid"; the notated tempo is the MusicXML's
mark where it states one, else ``instruct_tokenizer.tempo_infer``'s estimate, or 120 (``--no-estimate``,
what the renderer did before).

    python scripts/vienna_tempo.py outputs/tempo_fit/vienna --seeds 0 1 2 [--plot curves.png]
(the folder: ``instruct-tokenize build ../shared/datasets/vienna4x22/match --split 1,0,0 --max-tokens 4096
--overlap-bars 0 --instruct --notated-tempo --xml-markings``)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from fit_tempo import human_qpm  # noqa: E402
from instruct_tokenizer.encode import style_prefix  # noqa: E402
from instruct_tokenizer.metrics import pearson, per_note_features, tempo_spread  # noqa: E402
from instruct_tokenizer.score import score_timeline  # noqa: E402
from instruct_tokenizer.tempo_infer import notated_tempo, with_qpm  # noqa: E402

PIECES = ("Mozart_K331_1st-mov", "Schubert_D783_no15")


def pianists(tok_dir: Path) -> dict:
    """piece title -> [(performer, score tokens without the prefix, perf tokens)] (whole performances)."""
    rows = [json.loads(x) for x in (tok_dir / "manifest.jsonl").read_text().splitlines()]
    score = (tok_dir / "train.score").read_text().splitlines()
    perf = (tok_dir / "train.perf").read_text().splitlines()
    by_source: dict = {}
    for m in rows:
        if m["title"] not in PIECES or m.get("augment"):
            continue
        s, p = score[m["line"]].split()[len(m["prefix"]):], perf[m["line"]].split()
        title, performer, old_s, old_p = by_source.get(m["source"], (m["title"], m["performer"], [], []))
        by_source[m["source"]] = (title, performer, old_s + s, old_p + p)
    out = defaultdict(list)
    for title, performer, s, p in by_source.values():
        out[title].append((performer, s, p))
    return out


def pianist_features(perfs: list) -> list:
    """Per pianist (performer, score tokens, perf tokens): (score tokens, ``per_note_features``, tempo level
    in quarter notes per minute), read once per piece."""
    return [(s, per_note_features(s, p), human_qpm(s, p)) for _, s, p in perfs]


def against(mine: dict, mine_qpm: float, others: list) -> tuple:
    """One performance's ``per_note_features`` and tempo level against each of ``others``
    (:func:`pianist_features` of the same score notes): (tempo levels, beat-tempo r's, tempo spreads)."""
    return (np.array([mine_qpm / q for _, _, q in others]),
            np.array([pearson(mine["beat_tempo"], theirs["beat_tempo"]) for _, theirs, _ in others]),
            np.array([tempo_spread(mine, theirs) for _, theirs, _ in others]))


def pianist_against_pianist(feats: list) -> tuple:
    """Each pianist (:func:`pianist_features`) against every other one of the same score notes, as a
    rendering is measured (:func:`against`): (tempo levels, beat-tempo r's, tempo spreads) over the ordered
    pairs."""
    pairs = [against(mine, q_i, [f for j, f in enumerate(feats) if j != i and f[0] == s_i])
             for i, (s_i, mine, q_i) in enumerate(feats)]
    return tuple(np.concatenate([p[k] for p in pairs]) if pairs else np.array([]) for k in range(3))


def centred_beat_tempo(features: dict) -> np.ndarray:
    """(N,) a performance's beat tempo per note (``per_note_features``' ``beat_tempo``, log s per quarter)
    less its mean over the notes: its curve, its level left out."""
    curve = np.asarray(features["beat_tempo"], np.float64)
    return curve - np.nanmean(curve)


def plot_curves(path: Path, pieces: list) -> None:
    """One panel per piece (title, score tokens, the pianists' ``per_note_features``, the rendering's): the
    pianists' mean beat-tempo curve with one standard deviation either side and the rendering's, each
    centred on its own mean, over the score position in quarters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pieces), 1, figsize=(13, 3.4 * len(pieces)), squeeze=False)
    for ax, (title, score, theirs, mine) in zip(axes[:, 0], pieces):
        tl = score_timeline(score)
        x = tl.group_q[tl.note_group]  # (N,) each note's score onset, quarters
        curves = np.array([centred_beat_tempo(f) for f in theirs])  # (P, N)
        with warnings.catch_warnings():  # a note no pianist has a beat tempo for stays NaN (a gap in the line)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sd = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        ax.fill_between(x, mean - sd, mean + sd, color="0.85", step="post", label="pianists: one sd")
        ax.step(x, mean, "k", lw=1.1, where="post", label=f"pianists' mean ({len(theirs)})")
        ax.step(x, centred_beat_tempo(mine), "r", lw=0.9, where="post",
                label=f"rendering (beat tempo r against the mean {pearson(centred_beat_tempo(mine), mean):.2f})")
        ax.set_title(title)
        ax.set_ylabel("log beat period over its mean\n(up: slower)")
        ax.legend(fontsize=8, loc="upper left")
    axes[-1, 0].set_xlabel("score position (quarters)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def row(title: str, n: int, tempo: str, seed: str, lv: np.ndarray, r: np.ndarray, sp: np.ndarray) -> str:
    return (f"| {title} ({n} pianists) | {tempo} | {seed} | {np.median(lv):.2f} ({lv.min():.2f}-{lv.max():.2f}) | "
            f"{np.nanmean(r):.3f} ({np.nanmin(r):.2f} to {np.nanmax(r):.2f}) | {np.nanmedian(sp):.2f} "
            f"({np.nanmin(sp):.2f}-{np.nanmax(sp):.2f}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="the Vienna 4x22 build (all performances in train)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-estimate", action="store_true", help="120 where the score states no tempo")
    ap.add_argument("--checkpoint", default=None, help="a model file (default: the released model)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="write a PNG of each piece's beat-tempo curve: the pianists' mean and spread, and the "
                         "rendering of the first seed")
    from museformer import Renderer, Sampling
    from museformer.decoding.config import DecodeConfig

    DecodeConfig.add_args(ap)  # every decoding rule's flag at instruct-render's default
    a = ap.parse_args()
    renderer = Renderer.load(checkpoint=a.checkpoint, decode=DecodeConfig.from_args(a), threads=1)
    print("| piece | notated tempo | seed | level / pianist: median (range) | beat-tempo r: mean (range) "
          "| tempo spread / pianist: median (range) |")
    print("|---|---|---|---|---|---|")
    plotted = []
    for title, perfs in pianists(a.tokens).items():
        _, score, _ = perfs[0]
        est = notated_tempo(score, override=120.0 if a.no_estimate and notated_tempo(score).source != "mark" else None)
        given = with_qpm(score, est.qpm)  # what the model reads (a relative model's tempo is relative to it)
        tokens = style_prefix({}) + given
        # a pianist whose match gives other score notes is not comparable note by note
        same = [f for f in pianist_features(perfs) if f[0] == score]
        print(row(title, len(same), "their own", "pianist against pianist", *pianist_against_pianist(same)), flush=True)
        for seed in a.seeds:
            body = renderer.render_tokens(tokens, Sampling(seed=seed), progress=False)
            mine_q = human_qpm(given, body)
            mine = per_note_features(given, body)
            print(row(title, len(same), f"{est.qpm:.0f} ({est.source})", str(seed), *against(mine, mine_q, same)),
                  flush=True)
            if seed == a.seeds[0]:
                plotted.append((f"{title}, seed {seed}", given, [f for _, f, _ in same], mine))
    if a.plot:
        plot_curves(a.plot, plotted)
        print(f"wrote {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
