"""Fits the notated-tempo estimate (``instruct_tokenizer.tempo_infer``) on the training pieces of an
``instruct-tokenize build`` and reports its error on the test pieces, the benchmark and Vienna, against
the default 120 and the previous content model, as the median over pieces of |log2(estimate / median
human tempo)| (1.0 = a factor of 2).

    instruct-tokenize build ../shared/datasets/nasap --out outputs/tempo_fit/tok --seed 1 --split 0.9,0.1,0 \
        --test-pieces ../shared/benchmarks/pianist_transformer_testset/pieces.csv --max-tokens 4096 \
        --overlap-bars 0 --instruct --notated-tempo --xml-markings
    instruct-tokenize build ../shared/datasets/vienna4x22 --out outputs/tempo_fit/vienna --split 1,0,0 \
        --max-tokens 4096 --overlap-bars 0 --instruct --notated-tempo --xml-markings
    python scripts/fit_tempo.py outputs/tempo_fit/tok --vienna outputs/tempo_fit/vienna --write

The content model (no tempo words: a score MIDI) is chosen on the training pieces only: its loss (least
squares or Huber) and ridge by leave-one-piece-out cross-validation (the mean over pieces of the error
above); the test pieces, the benchmark and Vienna are reported, never tuned on. Each row is reported for
120, the previous content model (``OLD_CONTENT``, refitted here by its own recipe) and the new one.

The human tempo of a performance is its time-weighted beat period (performed seconds over notated
quarters, from its ``Tempo`` tokens), in quarter notes per minute; a piece's is the median over its
performances. Score MIDI rows use the benchmark's own score MIDI files (no words: content only).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instruct_tokenizer import tempo_infer as T  # noqa: E402
from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.grammar import beat_period_s, tempo_slot_gaps  # noqa: E402

BENCH = REPO.parent / "shared" / "benchmarks" / "pianist_transformer_testset"


def performances(tok_dir: Path, split: str) -> dict:
    """source path -> (piece key, whole score tokens without the prefix, whole performance tokens)."""
    rows = [json.loads(x) for x in (tok_dir / "manifest.jsonl").read_text().splitlines()]
    score = (tok_dir / f"{split}.score").read_text().splitlines()
    perf = (tok_dir / f"{split}.perf").read_text().splitlines()
    out: dict = {}
    for m in rows:
        if m["split"] != split or m.get("augment"):
            continue
        s = score[m["line"]].split()[len(m["prefix"]):]
        key = (m["composer"], m["title"])
        _, old_s, old_p = out.get(m["source"], (key, [], []))
        out[m["source"]] = (key, old_s + s, old_p + perf[m["line"]].split())
    return out


def human_qpm(score: list, perf: list) -> float:
    """Performed quarter notes per minute: notated quarters over performed seconds, from the tempo tokens
    (``Tempo``; or ``TempoLevel`` + ``TempoRel`` relative to the score's ``QPM``)."""
    from instruct_tokenizer.grammar import relative_beat_period_s, tempo_level_factor

    relative = bool(perf) and tempo_level_factor(perf[0]) is not None
    gaps, scales = tempo_slot_gaps(score, relative=relative)
    level = tempo_level_factor(perf[0]) if relative else None
    secs = quarters = 0.0
    for tok, gap, scale in zip(perf, gaps, scales):
        if gap == gap and gap > 0:
            secs += gap * (relative_beat_period_s(tok, scale, level) if relative else beat_period_s(tok))
            quarters += gap
    return 60.0 * quarters / secs if secs > 0 else float("nan")


def pieces(tok_dir: Path, split: str) -> dict:
    """piece key -> (score tokens of one performance, median human qpm over its performances)."""
    by_piece: dict = defaultdict(list)
    scores: dict = {}
    for key, score, perf in tqdm(performances(tok_dir, split).values(), desc=f"{tok_dir.name}/{split}", unit="perf"):
        q = human_qpm(score, perf)
        if q == q:
            by_piece[key].append(q)
            scores.setdefault(key, score)
    return {k: (scores[k], float(np.median(v))) for k, v in by_piece.items()}


def without_markings(score: list) -> list:
    """What a score MIDI of the same score gives when it states no tempo: no marking tokens
    (``score.without_markings``), the default QPM."""
    from instruct_tokenizer.score import without_markings as no_marks

    return [V.tok(V.QPM, int(V.DEFAULT_QPM)) if t.startswith(V.QPM + "_") else t for t in no_marks(score)]


@dataclass(frozen=True)
class Recipe:
    """How a line is fitted: its feature names, ridge, Huber threshold (log2 units; None: least squares)
    and whether the ridge applies to standardised features (``tempo_infer.fit``)."""

    names: tuple
    ridge: float
    huber_delta: Optional[float] = None
    standardize: bool = False


OLD_CONTENT = Recipe(("bias", "log2_beat_unit_q", "compound", "log2_median_ioi_q", "log2_groups_per_q",
                      "short_share"), ridge=1.0)  # the content model shipped until 2026-12-04


def fit_recipe(recipe: "Recipe", feats: list, log2_human: np.ndarray) -> np.ndarray:
    rows = np.stack([T.feature_row(f, recipe.names) for f in feats])
    return T.fit(rows, log2_human, ridge=recipe.ridge, huber_delta=recipe.huber_delta,
                 standardize=recipe.standardize)


def predict_qpm(recipe: "Recipe", coef: np.ndarray, features: dict) -> float:
    """Quarter notes per minute, clamped to ``T.QPM_RANGE`` as ``TempoModel.predict`` does."""
    qpm = 2.0 ** float(T.feature_row(features, recipe.names) @ coef)
    return min(max(qpm, T.QPM_RANGE[0]), T.QPM_RANGE[1])


def cv_errors(recipe: "Recipe", feats: list, log2_human: np.ndarray) -> np.ndarray:
    """|log2(estimate / human)| of each training piece, from a fit on all the other pieces."""
    out = []
    for i in range(len(feats)):
        keep = np.arange(len(feats)) != i
        coef = fit_recipe(recipe, [f for f, k in zip(feats, keep) if k], log2_human[keep])
        out.append(abs(math.log2(predict_qpm(recipe, coef, feats[i])) - log2_human[i]))
    return np.array(out)


def select_recipe(feats: list, log2_human: np.ndarray, ridges: list, deltas: list) -> tuple:
    """The (recipe, its cross-validation errors) of least mean error over the grid; prints the grid."""
    best = None
    for ridge in ridges:
        for delta in deltas:
            recipe = Recipe(T.CONTENT_FEATURES, ridge=ridge, huber_delta=delta or None, standardize=True)
            e = cv_errors(recipe, feats, log2_human)
            print(f"cv content ridge {ridge:g}, {'Huber ' + format(delta, 'g') if delta else 'least squares'}: "
                  f"median {np.median(e):.3f}, mean {np.mean(e):.3f}")
            if best is None or np.mean(e) < np.mean(best[1]):
                best = (recipe, e)
    return best


def bench_score_midi(test: dict) -> dict:
    """The benchmark's score MIDI files, with the human tempo of the same (n)ASAP piece from ``test``."""
    from instruct_tokenizer.encode import score_file_to_tokens

    out = {}
    human_by_title = {title: h for (_, title), (_, h) in test.items()}
    for p in csv.DictReader(open(BENCH / "pieces.csv")):
        title = p["asap_folder"].split("/", 1)[1].replace("/", "_")
        human = human_by_title.get(title)
        if human is None:
            continue
        toks = score_file_to_tokens(str(BENCH / "score" / f"{p['index']}.mid"), notated_tempo=True)
        out[p["index"]] = (toks, human)
    return out


def content_views(items: dict, drop_markings: bool) -> list:
    """(features, log2 human qpm, stated mark or None, words model applies) per piece."""
    out = []
    for score, human in items.values():
        s = without_markings(score) if drop_markings else score
        f = T.score_features(s)
        out.append((f, math.log2(human), T.stated_qpm(s), T.TempoModel.kind(f) == "words"))
    return out


def policy_errors(views: list, content_qpm, words_model: Optional[T.TempoModel]) -> np.ndarray:
    """instruct-render's policy: the mark, else the words model where there is a word (when given), else
    ``content_qpm``."""
    out = []
    for f, log2_human, mark, has_word in views:
        use_words = has_word and words_model is not None
        qpm = mark if mark is not None else words_model.predict(f) if use_words else content_qpm(f)
        out.append(abs(math.log2(qpm) - log2_human))
    return np.array(out)


def cell(e: np.ndarray) -> str:
    return f"{np.median(e):.3f} ({np.mean(e):.3f})" if len(e) else "-"


def comparison(rows: dict, models: dict, words_model: T.TempoModel) -> str:
    """Markdown: per row, median (mean) |log2| for each content model (the ``120`` column: mark, else 120,
    words or not)."""
    lines = ["| row | pieces | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for name, (views, policy) in rows.items():
        cells: list = []
        for label, predict in models.items():
            if policy:
                e = policy_errors(views, predict, None if label == "120" else words_model)
            else:
                e = np.array([abs(math.log2(predict(f)) - h) for f, h, _, _ in views])
            cells.append(cell(e))
        lines.append(f"| {name} | {len(views)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="the (n)ASAP build: train to fit, test to report")
    ap.add_argument("--vienna", type=Path, default=None, help="a Vienna 4x22 build (all in train) to report on")
    ap.add_argument("--ridge", type=float, default=1.0, help="the words model's ridge penalty (all but the bias)")
    ap.add_argument("--cv-ridges", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0],
                    help="the content model's ridge penalties to choose from (standardised features)")
    ap.add_argument("--cv-huber-deltas", type=float, nargs="+", default=[0.0, 0.05, 0.15, 0.25, 0.5],
                    help="the content model's Huber thresholds (log2 units) to choose from; 0: least squares")
    ap.add_argument("--write", action="store_true", help="write instruct_tokenizer/data/tempo_model.json")
    a = ap.parse_args()
    train, test = pieces(a.tokens, "train"), pieces(a.tokens, "test")
    target = np.log2([h for _, h in train.values()])
    words_feats = [T.score_features(s) for s, _ in train.values()]
    content_feats = [T.score_features(without_markings(s)) for s, _ in train.values()]
    recipe, cv_new = select_recipe(content_feats, target, a.cv_ridges, a.cv_huber_deltas)
    cv_old = cv_errors(OLD_CONTENT, content_feats, target)
    old_coef, new_coef = fit_recipe(OLD_CONTENT, content_feats, target), fit_recipe(recipe, content_feats, target)
    coef = {"words": dict(zip(T.FEATURES, fit_recipe(Recipe(T.FEATURES, ridge=a.ridge), words_feats, target).tolist())),
            "content": dict(zip(T.CONTENT_FEATURES, new_coef.tolist()))}
    loss = f"Huber {recipe.huber_delta:g} (log2)" if recipe.huber_delta else "least squares"
    model = T.TempoModel(coef, {"fitted_on": f"{len(train)} training pieces of {a.tokens} (content: their markings "
                                             f"dropped, as a score MIDI gives them)",
                                "ridge": {"words": a.ridge, "content": recipe.ridge},
                                "content_loss": f"{loss}, ridge on standardised features, chosen by "
                                                f"leave-one-piece-out cross-validation",
                                "target": "log2 median human quarter notes per minute"})
    print("coefficients:", json.dumps({k: {n: round(v, 3) for n, v in c.items()} for k, c in coef.items()}))
    print(f"chosen content model: {loss}, ridge {recipe.ridge:g}")
    models = {"120": lambda f: V.DEFAULT_QPM,
              "old content model": lambda f: predict_qpm(OLD_CONTENT, old_coef, f),
              "new content model": lambda f: predict_qpm(recipe, new_coef, f)}
    rows = {"(n)ASAP test, MusicXML (mark, else words, else content)": (content_views(test, False), True),
            "(n)ASAP test, as score MIDI (marks and words dropped): content": (content_views(test, True), False)}
    if BENCH.is_dir():
        bench = content_views(bench_score_midi(test), False)
        rows["benchmark score MIDI, all (mark, else content)"] = (bench, True)
        rows["benchmark score MIDI, no set-tempo mark: content"] = ([v for v in bench if v[2] is None], False)
    if a.vienna:
        vienna = pieces(a.vienna, "train")
        rows["Vienna 4x22, MusicXML (mark, else words, else content)"] = (content_views(vienna, False), True)
        rows["Vienna 4x22, marks and words dropped: content"] = (content_views(vienna, True), False)
        for (_, title), (score, human) in vienna.items():
            f = T.score_features(without_markings(score))
            print(f"Vienna {title}, marks dropped: human median {human:.1f} qpm, old content model "
                  f"{models['old content model'](f):.1f}, new {models['new content model'](f):.1f}, default 120")
        for (_, title), item in vienna.items():
            for dropped in (False, True):
                rows[f"Vienna {title}, {'marks dropped' if dropped else 'MusicXML'}"] = (
                    content_views({title: item}, dropped), not dropped)
    lines = comparison(rows, models, model).splitlines()
    cv_row = f"| (n)ASAP train, leave-one-piece-out CV: content | {len(target)} | " + " | ".join(
        cell(e) for e in (np.abs(target - math.log2(V.DEFAULT_QPM)), cv_old, cv_new)) + " |"
    print("median (mean) over pieces of |log2(estimate / median human tempo)|")
    print("\n".join(lines[:2] + [cv_row] + lines[2:]))
    if a.write:
        model.save()
        print(f"wrote {T.MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
