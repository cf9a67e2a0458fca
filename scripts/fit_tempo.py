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

Both lines are chosen on the training pieces only: each one's loss (least squares or Huber) and ridge
by leave-one-piece-out cross-validation (the mean over pieces of the error above; the words line over the
pieces that have a tempo word); the test pieces, the benchmark and Vienna are reported, never tuned on.
Each row is reported for 120 (the mark, else 120), the lines shipped until 2026-12-04 and until
2026-12-07 (``OLD_*``, ``PREVIOUS_*``, refitted here by their own recipes: their content lines on the
notated lengths, without the lengths' spread) and the new ones. Every content row reads the scores as a
notation program's score MIDI export gives them (``without_markings``), the content line's input.

Its last line: the test and validation pieces whose tempo words change class (``tempo_infer.tempo_sections``),
marks dropped, per section against the pianists' tempo of that section: one tempo for the whole score
against each section's own (``tempo_infer.section_tempi``); ``scripts/section_tempo.py`` renders them.

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


def without_marks(score: list) -> list:
    """The score tokens with every metronome mark dropped (``QPM`` 120 in every bar), its words kept: a
    MusicXML that says Adagio but states no tempo."""
    return [V.tok(V.QPM, int(V.DEFAULT_QPM)) if t.startswith(V.QPM + "_") else t for t in score]


def without_markings(score: list) -> list:
    """What a notation program's score MIDI export of the same score gives when it states no tempo: no
    marking tokens, staccato notes written short (``score.as_score_midi``; until 2026-12-07 the notated
    lengths, ``score.without_markings``, which no such file has), the default QPM."""
    from instruct_tokenizer.score import as_score_midi

    return without_marks(as_score_midi(score))


def notated_lengths(score: list) -> list:
    """The score without marking tokens at its notated lengths (``score.without_markings``) and the
    default QPM: the view the content line was fitted on until 2026-12-07."""
    from instruct_tokenizer.score import without_markings as no_marks

    return without_marks(no_marks(score))


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
OLD_WORDS = Recipe(("bias", "word_slow", "word_moderate", "word_fast", "log2_beat_unit_q", "compound",
                    "log2_median_ioi_q", "log2_groups_per_q", "short_share"),
                   ridge=1.0)  # the words model shipped until 2026-12-05
_NO_SPREAD = tuple(n for n in T.CONTENT_FEATURES if n != "length_spread")
PREVIOUS_CONTENT = Recipe(_NO_SPREAD, ridge=1.0, huber_delta=0.05, standardize=True)  # shipped until 2026-12-07,
# fitted on the notated lengths (``notated_lengths``)
PREVIOUS_WORDS = Recipe(("bias",) + tuple(f"word_{c}" for c in T.WORD_CLASSES) + _NO_SPREAD[1:], ridge=3.0,
                        standardize=True)  # shipped until 2026-12-07


def fit_recipe(recipe: "Recipe", feats: list, log2_human: np.ndarray) -> np.ndarray:
    rows = np.stack([T.feature_row(f, recipe.names) for f in feats])
    return T.fit(rows, log2_human, ridge=recipe.ridge, huber_delta=recipe.huber_delta,
                 standardize=recipe.standardize)


def predict_qpm(recipe: "Recipe", coef: np.ndarray, features: dict, ranges: Optional[dict] = None) -> float:
    """Quarter notes per minute, clamped to ``T.QPM_RANGE`` as ``TempoModel.predict`` does; ``ranges``
    (``T.feature_ranges``): each feature read within them first, as the shipped model does."""
    if ranges:
        features = T.within(features, ranges)
    qpm = 2.0 ** float(T.feature_row(features, recipe.names) @ coef)
    return min(max(qpm, T.QPM_RANGE[0]), T.QPM_RANGE[1])


def cv_errors(recipe: "Recipe", feats: list, log2_human: np.ndarray, only: Optional[np.ndarray] = None,
              fit_feats: Optional[list] = None, within_range: bool = False) -> np.ndarray:
    """|log2(estimate / human)| of each training piece (of those where ``only`` is true, if given), from a
    fit on all the other pieces; ``fit_feats``: the features the fit reads where they differ from the
    held-out piece's (another view of the same pieces); ``within_range``: the held-out piece's features
    read within the other pieces' range, as the shipped model reads a score (since 2026-12-07)."""
    fit_feats = feats if fit_feats is None else fit_feats
    out = []
    for i in range(len(feats)):
        if only is not None and not only[i]:
            continue
        keep = np.arange(len(feats)) != i
        others = [f for f, k in zip(fit_feats, keep) if k]
        coef = fit_recipe(recipe, others, log2_human[keep])
        ranges = T.feature_ranges(others, recipe.names) if within_range else None
        out.append(abs(math.log2(predict_qpm(recipe, coef, feats[i], ranges)) - log2_human[i]))
    return np.array(out)


def select_recipe(kind: str, feats: list, log2_human: np.ndarray, ridges: list, deltas: list,
                  only: Optional[np.ndarray] = None) -> tuple:
    """The (recipe, its cross-validation errors) of ``kind``'s line (``T.MODELS``) of least mean error
    over the grid, the errors over the pieces where ``only`` is true (all if None); prints the grid."""
    best = None
    for ridge in ridges:
        for delta in deltas:
            recipe = Recipe(T.MODELS[kind], ridge=ridge, huber_delta=delta or None, standardize=True)
            e = cv_errors(recipe, feats, log2_human, only)
            print(f"cv {kind} ridge {ridge:g}, {'Huber ' + format(delta, 'g') if delta else 'least squares'}: "
                  f"median {np.median(e):.3f}, mean {np.mean(e):.3f}")
            if best is None or np.mean(e) < np.mean(best[1]):
                best = (recipe, e)
    return best


def section_pieces(tok_dir: Path, split: str) -> dict:
    """piece key -> (score tokens with the metronome marks dropped, QPM 120 everywhere; the tempo
    sections of ``tempo_infer.tempo_sections``; the median human tempo of each section, quarter notes per
    minute, over the piece's performances of that same score) for the pieces whose tempo words change
    class (two sections or more)."""
    from instruct_tokenizer.score import score_timeline

    perfs: dict = defaultdict(list)
    scores: dict = {}
    for key, score, perf in performances(tok_dir, split).values():
        scores.setdefault(key, score)
        if score == scores[key]:
            perfs[key].append(perf)
    out = {}
    for key, score in scores.items():
        unmarked = without_marks(score)
        sections = T.tempo_sections(unmarked)
        if len(sections) < 2:
            continue
        group_bar = score_timeline(score).group_bar
        gaps, _ = tempo_slot_gaps(score)
        tempo_gaps = np.array([g for g in gaps if g == g])  # (G,) quarters, one per onset group
        counted = tempo_gaps > 0
        periods = [np.array([beat_period_s(t) for t, g in zip(perf, gaps) if g == g])  # (G,) s per quarter
                   for perf in perfs[key]]
        human = []
        for sec in sections:
            keep = counted & (group_bar >= sec.first_bar) & (group_bar < sec.first_bar + sec.n_bars)
            quarters = float(tempo_gaps[keep].sum())
            seconds = [float((tempo_gaps * p)[keep].sum()) for p in periods]
            qpms = [60.0 * quarters / secs for secs in seconds if secs > 0]
            human.append(float(np.median(qpms)) if qpms else float("nan"))
        out[key] = (unmarked, sections, human)
    return out


def section_errors(items: dict, model: "T.TempoModel") -> tuple:
    """|log2(estimate / human)| of every tempo section with a human tempo: (one tempo for the whole score
    from the words line, as before sections; each section's own ``section_tempi`` estimate)."""
    whole, own = [], []
    for unmarked, _, human in items.values():
        one = model.predict(T.score_features(unmarked))
        for sec, h in zip(T.section_tempi(unmarked, model), human):
            if h == h:
                whole.append(abs(math.log2(one / h)))
                own.append(abs(math.log2(sec.qpm / h)))
    return np.array(whole), np.array(own)


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


def content_views(items: dict, drop_markings: bool, drop_marks: bool = False) -> list:
    """(features, log2 human qpm, stated mark or None, words model applies) per piece; ``drop_markings``:
    as a score MIDI gives it (no marks, no words), ``drop_marks``: its metronome marks dropped, words kept."""
    out = []
    for score, human in items.values():
        s = without_markings(score) if drop_markings else without_marks(score) if drop_marks else score
        f = T.score_features(s)
        out.append((f, math.log2(human), T.stated_qpm(s), T.TempoModel.kind(f) == "words"))
    return out


def policy_errors(views: list, content_qpm, words_qpm) -> np.ndarray:
    """instruct-render's policy: the mark, else ``words_qpm`` where there is a word (when given), else
    ``content_qpm``."""
    out = []
    for f, log2_human, mark, has_word in views:
        use_words = has_word and words_qpm is not None
        qpm = mark if mark is not None else words_qpm(f) if use_words else content_qpm(f)
        out.append(abs(math.log2(qpm) - log2_human))
    return np.array(out)


def cell(e: np.ndarray) -> str:
    return f"{np.median(e):.3f} ({np.mean(e):.3f})" if len(e) else "-"


def comparison(rows: dict, models: dict) -> str:
    """Markdown: per row, median (mean) |log2| for each model, a (words, content) pair of qpm functions
    (words None: 120's column, the mark else 120, words or not)."""
    lines = ["| row | pieces | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for name, (views, policy) in rows.items():
        cells: list = []
        for words, content in models.values():
            if policy:
                e = policy_errors(views, content, words)
            else:
                e = np.array([abs(math.log2(content(f)) - h) for f, h, _, _ in views])
            cells.append(cell(e))
        lines.append(f"| {name} | {len(views)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="the (n)ASAP build: train to fit, test to report")
    ap.add_argument("--vienna", type=Path, default=None, help="a Vienna 4x22 build (all in train) to report on")
    ap.add_argument("--cv-ridges", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0],
                    help="the ridge penalties (standardised features) both lines choose from")
    ap.add_argument("--cv-huber-deltas", type=float, nargs="+", default=[0.0, 0.05, 0.15, 0.25, 0.5],
                    help="the Huber thresholds (log2 units) both lines choose from; 0: least squares")
    ap.add_argument("--write", action="store_true", help="write instruct_tokenizer/data/tempo_model.json")
    a = ap.parse_args()
    train, test = pieces(a.tokens, "train"), pieces(a.tokens, "test")
    target = np.log2([h for _, h in train.values()])
    words_feats = [T.score_features(s) for s, _ in train.values()]
    content_feats = [T.score_features(without_markings(s)) for s, _ in train.values()]
    has_word = np.array([T.TempoModel.kind(f) == "words" for f in words_feats])
    content, cv_content = select_recipe("content", content_feats, target, a.cv_ridges, a.cv_huber_deltas)
    words, cv_words = select_recipe("words", words_feats, target, a.cv_ridges, a.cv_huber_deltas, has_word)
    notated_feats = [T.score_features(notated_lengths(s)) for s, _ in train.values()]
    cv_old_content = cv_errors(OLD_CONTENT, content_feats, target, fit_feats=notated_feats)
    cv_old_words = cv_errors(OLD_WORDS, words_feats, target, has_word)
    cv_previous_content = cv_errors(PREVIOUS_CONTENT, content_feats, target, fit_feats=notated_feats)
    cv_previous_words = cv_errors(PREVIOUS_WORDS, words_feats, target, has_word)
    fitted = {r: fit_recipe(r, f, target) for r, f in ((OLD_CONTENT, notated_feats), (OLD_WORDS, words_feats),
                                                       (PREVIOUS_CONTENT, notated_feats),
                                                       (PREVIOUS_WORDS, words_feats),
                                                       (content, content_feats), (words, words_feats))}
    coef = {"words": dict(zip(words.names, fitted[words].tolist())),
            "content": dict(zip(content.names, fitted[content].tolist()))}
    ranges = {"words": T.feature_ranges(words_feats, words.names),
              "content": T.feature_ranges(content_feats, content.names)}
    cv_content_within = cv_errors(content, content_feats, target, within_range=True)
    cv_words_within = cv_errors(words, words_feats, target, has_word, within_range=True)

    def loss(r: Recipe) -> str:
        return f"{'Huber ' + format(r.huber_delta, 'g') + ' (log2)' if r.huber_delta else 'least squares'}, ridge {r.ridge:g}"

    model = T.TempoModel(coef, {"fitted_on": f"{len(train)} training pieces of {a.tokens} (content: as a notation "
                                             f"program's score MIDI export gives them, no markings, staccato "
                                             f"notes written short)",
                                "ridge": {"words": words.ridge, "content": content.ridge},
                                "loss": {"words": loss(words), "content": loss(content)},
                                "chosen_by": "leave-one-piece-out cross-validation (words: over the pieces with a "
                                             "tempo word), ridge on standardised features",
                                "target": "log2 median human quarter notes per minute",
                                "ranges": "each bounded feature's (tempo_infer.BOUNDED_FEATURES) lowest and "
                                          "highest value over the training pieces its line was fitted on; a "
                                          "score's feature outside is read at the edge"}, ranges)
    print("coefficients:", json.dumps({k: {n: round(v, 3) for n, v in c.items()} for k, c in coef.items()}))
    print(f"chosen content line: {loss(content)}; words line: {loss(words)}")

    def qpm_of(recipe: Recipe, within: Optional[dict] = None):
        return lambda f: predict_qpm(recipe, fitted[recipe], f, within)

    models = {"120": (None, lambda f: V.DEFAULT_QPM),
              "until 2026-12-04": (qpm_of(OLD_WORDS), qpm_of(OLD_CONTENT)),
              "until 2026-12-07": (qpm_of(PREVIOUS_WORDS), qpm_of(PREVIOUS_CONTENT)),
              "new, features as given": (qpm_of(words), qpm_of(content)),
              "new": (qpm_of(words, ranges["words"]), qpm_of(content, ranges["content"]))}
    rows = {"(n)ASAP test, MusicXML (mark, else words, else content)": (content_views(test, False), True),
            "(n)ASAP test, MusicXML, a tempo word and no mark: words": (
                [v for v in content_views(test, False) if v[2] is None and v[3]], True),
            "(n)ASAP test, as score MIDI (marks and words dropped): content": (content_views(test, True), False)}
    valid = pieces(a.tokens, "valid")
    for name, items in (("test", test), ("validation", valid)):
        words_only = [v for v in content_views(items, False, drop_marks=True) if v[3]]
        rows[f"(n)ASAP {name}, MusicXML with a tempo word, its marks dropped: words"] = (words_only, True)
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
            print(f"Vienna {title}, marks dropped: human median {human:.1f} qpm, content line until 2026-12-07 "
                  f"{models['until 2026-12-07'][1](f):.1f}, new {models['new'][1](f):.1f}, default 120")
        for (_, title), item in vienna.items():
            for dropped in (False, True):
                rows[f"Vienna {title}, {'marks dropped' if dropped else 'MusicXML'}"] = (
                    content_views({title: item}, dropped), not dropped)
    lines = comparison(rows, models).splitlines()
    cv_rows = [f"| (n)ASAP train, leave-one-piece-out CV: content | {len(target)} | " + " | ".join(
        cell(e) for e in (np.abs(target - math.log2(V.DEFAULT_QPM)), cv_old_content, cv_previous_content,
                          cv_content, cv_content_within)) + " |",
        f"| (n)ASAP train, leave-one-piece-out CV: words (the pieces with one) | {int(has_word.sum())} | " + " | ".join(
        cell(e) for e in (np.abs(target[has_word] - math.log2(V.DEFAULT_QPM)), cv_old_words,
                          cv_previous_words, cv_words, cv_words_within)) + " |"]
    print("median (mean) over pieces of |log2(estimate / median human tempo)|")
    print("\n".join(lines[:2] + cv_rows + lines[2:]))
    held_out = {**section_pieces(a.tokens, "test"), **section_pieces(a.tokens, "valid")}
    if held_out:
        whole, own = section_errors(held_out, model)
        print(f"tempo sections of the {len(held_out)} (n)ASAP test and validation pieces whose tempo words change "
              f"class, marks dropped ({len(own)} sections): median (mean) |log2(estimate / the pianists' tempo "
              f"of the section)|: one tempo for the score {cell(whole)}, each section its own {cell(own)}")
    if a.write:
        model.save()
        print(f"wrote {T.MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
