"""Fits the notated-tempo estimate (``instruct_tokenizer.tempo_infer``) on the training pieces of an
``instruct-tokenize build`` and reports its error on the test pieces, against the default 120 and the
metronome mark, as the median over pieces of |log2(estimate / median human tempo)| (1.0 = a factor of 2).

    instruct-tokenize build ../shared/datasets/nasap --out outputs/tempo_fit/tok --seed 1 --split 0.9,0.1,0 \
        --test-pieces ../shared/benchmarks/pianist_transformer_testset/pieces.csv --max-tokens 4096 \
        --overlap-bars 0 --instruct --notated-tempo --xml-markings
    instruct-tokenize build ../shared/datasets/vienna4x22 --out outputs/tempo_fit/vienna --split 1,0,0 \
        --max-tokens 4096 --overlap-bars 0 --instruct --notated-tempo --xml-markings
    python scripts/fit_tempo.py outputs/tempo_fit/tok --vienna outputs/tempo_fit/vienna --write

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
from pathlib import Path

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
    """What a score MIDI of the same score gives: no marking tokens, the default QPM."""
    marks = set(V.marking_tokens()) | set(V.marking_state_tokens()) | set(V.after_fermata_tokens())
    return [V.tok(V.QPM, int(V.DEFAULT_QPM)) if t.startswith(V.QPM + "_") else t for t in score if t not in marks]


def errors(items: dict, estimate) -> np.ndarray:
    """|log2(estimate / human)| per piece."""
    return np.array([abs(math.log2(estimate(score) / human)) for score, human in items.values()])


def row(name: str, e: np.ndarray) -> str:
    return (f"| {name} | {len(e)} | {np.median(e):.3f} | {np.mean(e):.3f} | {np.mean(e <= math.log2(1.25)):.2f} "
            f"| {np.max(e):.2f} |")


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


def table(sets: dict, model: T.TempoModel, constant: float) -> str:
    lines = ["| set, estimate | pieces | median abs log2 | mean | share within x1.25 | worst |",
             "|---|---|---|---|---|---|"]
    for name, items in sets.items():
        if not items:
            continue
        lines.append(row(f"{name}: default 120", errors(items, lambda s: V.DEFAULT_QPM)))
        lines.append(row(f"{name}: training median {constant:.0f}", errors(items, lambda s: constant)))
        marked = {k: v for k, v in items.items() if T.stated_qpm(v[0]) is not None}
        if marked:
            lines.append(row(f"{name}: metronome mark, where stated", errors(marked, T.stated_qpm)))
        lines.append(row(f"{name}: estimate from words + content (no mark)",
                         errors(items, lambda s: model.predict(T.score_features(s)))))
        lines.append(row(f"{name}: the old policy (mark, else 120)",
                         errors(items, lambda s: T.stated_qpm(s) or V.DEFAULT_QPM)))
        lines.append(row(f"{name}: instruct-render's policy (mark, else estimate)",
                         errors(items, lambda s: T.notated_tempo(s, model=model).qpm)))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="the (n)ASAP build: train to fit, test to report")
    ap.add_argument("--vienna", type=Path, default=None, help="a Vienna 4x22 build (all in train) to report on")
    ap.add_argument("--ridge", type=float, default=1.0, help="ridge penalty on every coefficient but the bias")
    ap.add_argument("--write", action="store_true", help="write instruct_tokenizer/data/tempo_model.json")
    a = ap.parse_args()
    train, test = pieces(a.tokens, "train"), pieces(a.tokens, "test")
    target = np.log2([h for _, h in train.values()])
    views = {"words": [T.score_features(s) for s, _ in train.values()],
             "content": [T.score_features(without_markings(s)) for s, _ in train.values()]}
    coef = {kind: dict(zip(names, T.fit(np.stack([T.feature_row(f, names) for f in views[kind]]), target,
                                        ridge=a.ridge).tolist()))
            for kind, names in T.MODELS.items()}
    model = T.TempoModel(coef, {"fitted_on": f"{len(train)} training pieces of {a.tokens} (content: their markings "
                                             f"dropped, as a score MIDI gives them)", "ridge": a.ridge,
                                "target": "log2 median human quarter notes per minute"})
    print("coefficients:", json.dumps({k: {n: round(v, 3) for n, v in c.items()} for k, c in coef.items()}))
    sets = {"(n)ASAP train (fit)": train,
            "(n)ASAP train, as score MIDI (markings dropped)": {k: (without_markings(s), h) for k, (s, h) in train.items()},
            "(n)ASAP test, MusicXML": test,
            "(n)ASAP test, as score MIDI (markings dropped)": {k: (without_markings(s), h) for k, (s, h) in test.items()},
            "benchmark score MIDI files": bench_score_midi(test) if BENCH.is_dir() else {}}
    if a.vienna:
        vienna = pieces(a.vienna, "train")
        sets["Vienna 4x22, MusicXML"] = vienna
        for (composer, title), (s, h) in vienna.items():
            est = T.notated_tempo(s, model=model)
            print(f"Vienna {title}: human median {h:.1f} qpm, estimate {est.qpm:.1f} ({est.source}), default 120")
    print(table(sets, model, float(2 ** np.median(target))))
    if a.write:
        model.save()
        print(f"wrote {T.MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
