#!/usr/bin/env python
"""Fit the tempo, velocity, articulation or timing plan (``museformer.tempo_plan``, ``museformer.velocity_plan``) on a tokenized build and store it in a release file.

Reads the build's manifest (``instruct-tokenize build``: the performances of each split), encodes every
performance's score as ``instruct-render`` gives it to the model (MusicXML markings and notated tempo,
the estimate where the score states no mark) and, for training, once more without its markings (what a
score MIDI gives), and takes each onset group's human beat tempo (``--what tempo``), each note's
velocity (``--what velocity``) or each note's articulation, log2(key-down / notated at the local tempo)
(``--what articulation``) as the target. Trains on ``train``, keeps the epoch with the best mean
correlation on ``valid`` and reports, on ``valid`` and ``test``, the per-note r of the plan against each
performance (``instruct-eval``'s beat tempo, velocity or articulation r, with the plan as the whole
curve), beside the notated tempo with its changes (tempo). ``--into FILE`` adds the plan to a release
file (its ``tempo_plan``, ``velocity_plan`` or ``articulation_plan`` entry, written atomically; the
network's weights are untouched). Every plan's deviations are stretched by its spread, the median ratio of
the pianists' spread to the plan's on the training pieces (``--spread`` stores another), and by that
spread times the ratio of the plain scores' fit to the marked scores' for a score without markings
(``spread_plain``); ``--calibrate`` re-fits only that calibration (and the per-note plans' level, the
articulation plan's offsets per notated-length class and its key-down bound) of the plan already in
the file. Usage:

    python scripts/fit_plan.py outputs/nasap/tok --what tempo --members 3 --phrase-features --spread 1.75 --into checkpoints/instruct-museformer.pt
    python scripts/fit_plan.py outputs/nasap/tok --what velocity --into checkpoints/instruct-museformer.pt
    python scripts/fit_plan.py outputs/nasap/tok --what articulation --into checkpoints/instruct-museformer.pt

``--cross-fit K`` (articulation) fits the offsets per notated-length class on the training pieces too, each
read by one of K plans fitted without its fold (measured with 3 folds, not released: docs/experiments.md
section 22);
``--phrase-features`` (tempo) lets the tempo plan read where the score's phrases end as well (rests, slur
ends, the bass, hairpins: ``tempo_plan.PHRASE_FEATURE_NAMES``; the release's tempo plan: section 22);
``--plain-view score-midi`` makes each training score without markings what a notation program's score MIDI
gives (``score.as_score_midi``: staccato notes a half, staccatissimo a third of their length) instead of
the MusicXML's lengths with the markings dropped (measured for the tempo and articulation plans, not
released: section 23);
``--plain-offsets score-midi`` (articulation) gives a score without markings its own offsets per
notated-length class, fitted on the validation pieces as a score MIDI gives them, with the plain spread
(section 26); with ``--plain-offsets-only --into FILE`` only those offsets are fitted and stored, the rest of
the stored plan kept (measured in section 33, not released);
``--what timing`` fits the timing plan (each note's onset against its onset group's grid, ms: grace notes before
the beat, rolled chords; ``velocity_plan.TimingPlan``, not stretched), stored to plan only the notes it puts at least
``--timing-min-ms`` from the grid (section 44);
``--tempo-note-features`` (velocity, articulation) lets the plan read each note's notated length in seconds
at the notated tempo and that tempo (``velocity_plan.TEMPO_NOTE_FEATURE_NAMES``; measured for the
articulation plan, not released: section 27).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.decode import decode_performance  # noqa: E402
from instruct_tokenizer.metrics import beat_log_tempo, per_note_features  # noqa: E402
from instruct_tokenizer.score import PLAIN_VIEWS, plain_view as in_plain_view  # noqa: E402

TIMING_MIN_MS = 25.0  # --timing-min-ms: chosen on the validation renderings (docs/experiments.md section 44)
KINDS = ("marked", "plain")  # each training performance's score versions: with its markings, and without


def performance_example(row: dict, plain_view: str = "markings-dropped") -> dict:
    """One performance: per score version ("marked", "plain": `score.plain_view`) the plan's features, the
    human beat tempo per onset group (log s per quarter: the target) and per note (for the per-note r);
    {"error": ...} when the performance cannot be read. Both versions have the same notes in the same
    order; the plain version's articulation is the key-down over its own notated length (a staccato note
    written half as long: one log2 unit more)."""
    from instruct_tokenizer.encode import encode_match
    from instruct_tokenizer.match import load_match
    from instruct_tokenizer.score import score_timeline
    from instruct_tokenizer.tempo_infer import apply_notated_tempo
    from museformer.eval_split import xml_score_info
    from museformer.tempo_plan import N_FEATURES, TEMPO_FEATURE_NAMES, group_features
    from museformer.velocity_plan import NOTE_FEATURE_SETS, TIMING_CLIP_MS, note_features

    try:
        marks, qpm = xml_score_info(row["source"], {"markings": True, "notated_tempo": True}, report=lambda s: None)
        enc = encode_match(load_match(row["source"]), marks=marks, qpm=qpm)
        marked = apply_notated_tempo(enc.score)[0]
        perf = decode_performance(marked, enc.perf)
        tl = perf.timeline
        per_note = per_note_features(marked, enc.perf)
        played = {"target": beat_log_tempo(tl.group_q, perf.group_grid_s, tl.group_q),
                  "target_onset": np.log(perf.group_period_s),
                  "velocity": np.where(perf.played, perf.velocity, np.nan), "note_velocity": per_note["velocity"],
                  "key_down_s": np.where(perf.played, perf.offset_s - perf.onset_s, np.nan),
                  "note_group": tl.note_group, "note_beat": per_note["beat_tempo"],
                  "timing": np.clip(per_note["timing"], -TIMING_CLIP_MS, TIMING_CLIP_MS),  # ms, NaN: not played
                  "note_timing": per_note["timing"]}  # unclipped: what instruct-eval's timing r reads
        out = {"row": row}
        plain = apply_notated_tempo(in_plain_view(enc.score, plain_view))[0]  # no tempo word: the content estimate
        with np.errstate(divide="ignore", invalid="ignore"):  # grace notes: notated 0 in both
            shorter = np.log2(tl.note_dur_q / score_timeline(plain).note_dur_q)  # (N,) log2 notated / written
        shift = {"marked": 0.0, "plain": np.nan_to_num(shorter, nan=0.0, posinf=0.0, neginf=0.0)}
        for kind, score in zip(KINDS, (marked, plain)):
            articulation = per_note["articulation"] + shift[kind]
            every = group_features(score, TEMPO_FEATURE_NAMES)  # (G, F + phrase): the base columns first
            every_note = note_features(score, NOTE_FEATURE_SETS[-1])  # (N, Fn + tempo): the base columns first
            out[kind] = {**played, "features": every[:, :N_FEATURES], "all_features": every,
                         "notes": every_note[:, : len(NOTE_FEATURE_SETS[0])], "all_notes": every_note,
                         "articulation": np.clip(articulation, V.ART_MIN, V.ART_MAX),
                         "score": score}
        return out
    except Exception as e:  # noqa: BLE001  (any unreadable performance is left out with its reason)
        return {"row": row, "error": f"{type(e).__name__}: {e}"}


def use_note_features(examples: List[dict], names: Sequence[str]) -> List[dict]:
    """``examples`` with each score version's ``notes`` the first ``len(names)`` columns of its ``all_notes``
    (every note feature; ``names`` one of ``velocity_plan.NOTE_FEATURE_SETS``, which extend each other)."""
    for e in examples:
        for kind in KINDS:
            e[kind]["notes"] = e[kind]["all_notes"][:, : len(names)]
    return examples


def plain_validation(valid: List[dict], view: str, plain_view: str, fields: Sequence[str], workers: int,
                     note_names: Sequence[str]) -> List[dict]:
    """The validation performances' scores without markings in ``view`` (:data:`PLAIN_VIEWS`), as per-note
    plan pieces (``fields``, the note features ``note_names``): their ``plain`` version where it is that view
    already (``plain_view``), else read again in it."""
    if view != plain_view:
        with Pool(workers) as pool:
            valid = [e for e in pool.imap(partial(performance_example, plain_view=view), [e["row"] for e in valid],
                                          chunksize=4) if "error" not in e]
    return [{f: e["plain"][f] for f in fields} for e in use_note_features(valid, note_names)]


def plain_spread(plan, fit_spread, train: List[dict]) -> float:
    """The spread for a score without markings (``spread_plain``): the plan's spread times the ratio of the
    spread ``fit_spread`` finds on the plain training scores to the one on the marked (``train``
    alternates marked and plain versions of each performance, :data:`KINDS`)."""
    marked, plain = train[0::2], train[1::2]
    return float(plan.spread * fit_spread(plan, plain) / fit_spread(plan, marked))


def performances(tok_dir: Path) -> List[dict]:
    """The manifest's performances (first row of each source, no augmented copies)."""
    seen, out = set(), []
    for line in (tok_dir / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        if not r["augment"] and r["source"] not in seen:
            seen.add(r["source"])
            out.append(r)
    return out


def first_per_piece(examples: List[dict], n: int) -> List[dict]:
    """The first ``n`` performances of each piece (instruct-eval's ``--per-piece``)."""
    count: Counter = Counter()
    out = []
    for e in examples:
        key = (e["row"]["composer"], e["row"]["title"])
        if count[key] < n:
            count[key] += 1
            out.append(e)
    return out


def piece_folds(examples: List[dict], folds: int, seed: int) -> List[List[dict]]:
    """``examples`` in ``folds`` groups by piece (composer, title): a piece's performances share a fold; the
    pieces shuffled by ``seed``, then dealt round."""
    keys = sorted({(e["row"]["composer"], e["row"]["title"]) for e in examples})
    np.random.default_rng(seed).shuffle(keys)
    fold_of = {key: i % folds for i, key in enumerate(keys)}
    return [[e for e in examples if fold_of[(e["row"]["composer"], e["row"]["title"])] == k] for k in range(folds)]


def out_of_fold_plans(plan, train: List[dict], valid: List[dict], folds: int, fit_kind: Callable, fields: Sequence[str],
                      **fit_kw) -> List[tuple]:
    """(plan, pieces) per fold of the training performances (``train``: examples, :func:`piece_folds`): a plan
    fitted as ``plan`` was (``fit_kind``, same settings) on the other folds, with ``plan``'s spread and its
    own level fitted on the fold it did not see, and that fold's marked scores. What
    ``fit_length_offsets(out_of_fold=...)`` pools with the validation pieces: the offsets then rest on
    every training piece, each read by a network that did not see it (the validation pieces alone: 20
    pieces, the classes' bias moving by 0.1-0.4 log2 from piece to piece)."""
    from museformer.velocity_plan import fit_level

    out = []
    by_fold = piece_folds(train, folds, seed=fit_kw.get("seed", 0))
    for k, held_out in enumerate(by_fold):
        others = [e for j, fold in enumerate(by_fold) if j != k for e in fold]
        fold_train = [{f: e[kind][f] for f in fields} for e in others for kind in KINDS]
        unseen = [{f: e["marked"][f] for f in fields} for e in held_out]
        fold_plan = fit_kind(fold_train, valid, **fit_kw)
        fold_plan.spread = plan.spread
        fold_plan.level = fit_level(fold_plan, unseen)
        out.append((fold_plan, unseen))
    return out


def note_r(example: dict, kind: str, group_curve: np.ndarray) -> float:
    from museformer.tempo_plan import pearson

    v = example[kind]
    return pearson(group_curve[v["note_group"]], v["note_beat"])


def note_rows(plan, examples: List[dict]) -> Dict[str, float]:
    """Mean per-note r over the performances of a per-note plan (velocity: against instruct-eval's
    velocity; articulation: its articulation), from the marked and the plain scores, and its level's error
    (the plan's mean over a performance minus the pianist's: mean and mean absolute)."""
    from museformer.tempo_plan import pearson

    target = plan.TARGET
    per_note = {"velocity": "note_velocity", "timing": "note_timing"}.get(target, target)
    out: Dict[str, float] = {"performances": len(examples)}
    for kind in ("marked", "plain"):
        rs, level_errors = [], []
        for e in examples:
            v = e[kind]
            plain_offsets = getattr(plan, "length_offsets_plain", ()) if kind == "plain" else ()
            pred = plan.predict_features(v["features"], v["notes"], v["note_group"],
                                         length_offsets=plain_offsets or None)
            rs.append(pearson(pred, v[per_note]))
            human = v[target][np.isfinite(v[target])]
            level_errors.append(float(pred.mean() - human.mean()) if len(human) else float("nan"))
        out[f"plan_{kind}"] = float(np.nanmean(rs))
        out[f"level_bias_{kind}"] = float(np.nanmean(level_errors))  # the target's unit, plan's mean - pianist's
        out[f"level_mae_{kind}"] = float(np.nanmean(np.abs(level_errors)))
    return out


def report_rows(plan, examples: List[dict]) -> Dict[str, float]:
    """Mean per-note beat tempo r over the performances: the plan (marked and plain scores), the notated
    tempo with its changes (where it changes), and the plan on those same performances."""
    out: Dict[str, float] = {"performances": len(examples)}
    for kind in ("marked", "plain"):
        plan_r = [note_r(e, kind, plan.predict(e[kind]["score"])) for e in examples]
        notated_r = [note_r(e, kind, e[kind]["features"][:, 0].astype(float)) for e in examples]
        where = [i for i, v in enumerate(notated_r) if np.isfinite(v)]
        out[f"plan_{kind}"] = float(np.nanmean(plan_r))
        out[f"notated_{kind}"] = float(np.nanmean(notated_r)) if where else float("nan")
        out[f"plan_{kind}_where_notated"] = float(np.nanmean([plan_r[i] for i in where])) if where else float("nan")
        out["notated_n"] = len(where)
    return out


def stored_plan(path: str, entry: str):
    """The plan in a release file's ``entry`` (``tempo_plan``, ``velocity_plan``, ``articulation_plan``)."""
    from museformer.render import plan_models_of

    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(path, map_location="cpu", weights_only=True)
    return plan_models_of(state, path)[entry]


def store(plan, path: str, entry: str = "tempo_plan") -> int:
    """Add the plan to a release file (its ``entry``), atomically; the file's size in bytes."""
    import argparse as _argparse

    from scripts.release_checkpoint import save_released

    with torch.serialization.safe_globals([_argparse.Namespace]):
        state = torch.load(path, map_location="cpu", weights_only=True)
    state[entry] = plan.state()
    return save_released(state, path)


def store_plain_offsets(args: argparse.Namespace) -> int:
    """``--plain-offsets-only``: the stored articulation plan's offsets for a score without markings, fitted
    on the validation performances in the view ``args.plain_offsets`` with the stored plain spread; the rest
    of the plan (network, level, marked offsets, spreads, key-down bound) kept as stored."""
    from tqdm import tqdm

    from museformer.velocity_plan import fit_length_offsets

    plan = stored_plan(args.into, "articulation_plan")
    rows = [r for r in performances(Path(args.tokens)) if r["split"] == "valid"]
    with Pool(args.workers) as pool:
        examples = list(tqdm(pool.imap(partial(performance_example, plain_view=args.plain_offsets), rows),
                             total=len(rows), desc="validation performances", unit="file"))
    for e in examples:
        if "error" in e:
            print(f"fit_plan: skipped {e['row']['source']}: {e['error']}", file=sys.stderr)
    fields = ("features", "notes", "note_group", "articulation", "key_down_s")
    valid = [{f: e["plain"][f] for f in fields}
             for e in use_note_features([e for e in examples if "error" not in e], plan.note_feature_names)]
    plan.length_offsets_plain = fit_length_offsets(plan, valid, spread=plan.spread_plain)
    print(f"articulation plan: offsets for a score without markings ({args.plain_offsets} view of "
          f"{len(valid)} validation performances) {[round(x, 3) for x in plan.length_offsets_plain]}; the "
          f"marked scores' {[round(x, 3) for x in plan.length_offsets]} kept")
    size = store(plan, args.into, "articulation_plan")
    print(f"wrote the articulation plan into {args.into} ({size / 1e6:.2f} MB)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    from museformer.tempo_plan import FEATURE_NAMES, TEMPO_FEATURE_NAMES, TempoPlanEnsemble, fit
    from museformer.tempo_plan import fit_spread as fit_tempo_spread
    from museformer.velocity_plan import (NOTE_FEATURE_NAMES, NOTE_FEATURE_SETS, fit_articulation, fit_length_offsets,
                                          fit_spread, fit_timing, fit_velocity)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokens", help="an instruct-tokenize build folder (its manifest.jsonl names the performances)")
    p.add_argument("--into", help="a release file to store the plan in (its 'tempo_plan' or 'velocity_plan' entry)")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training performances (default 12)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate, decayed by a cosine (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch order seed (default 0)")
    p.add_argument("--members", type=int, default=1,
                   help="tempo only: fit this many plans (seeds SEED, SEED+1, ...) and store their mean "
                        "(museformer.tempo_plan.TempoPlanEnsemble); default 1")
    p.add_argument("--loss", choices=("mse", "normalised"), default="mse",
                   help="tempo only: what each member minimises: mse, the centred squared error summed over all "
                        "onset groups (long and rubato-rich performances weigh most; the release's plan), or "
                        "normalised, each performance's squared error over its pianist's tempo variance, "
                        "averaged over performances (each weighs the same, as in the beat tempo r; "
                        "docs/experiments.md section 46); default mse")
    p.add_argument("--workers", type=int, default=2, help="processes reading the performances (default 2)")
    p.add_argument("--what", choices=("tempo", "velocity", "articulation", "timing"), default="tempo",
                   help="the tempo plan (each onset group's beat tempo), the velocity plan (each note's velocity), "
                        "the articulation plan (each note's key-down time over its notated length at the local tempo) "
                        "or the timing plan (each note's onset against its onset group's grid, ms)")
    p.add_argument("--target", choices=("beat", "onset"), default="beat",
                   help="what the plan predicts per onset group: the beat's tempo (beat: instruct-eval's beat tempo, "
                        "smooth) or the group's own period (onset: what its Tempo token encodes); default beat")
    p.add_argument("--calibrate", action="store_true",
                   help="keep the network(s) of the plan already in --into and re-fit only its calibration: the spread "
                        "(training pieces; from marked and from plain scores) and, velocity and articulation, the "
                        "level (validation pieces); articulation: its offsets per notated-length class too "
                        "(validation pieces) and its key-down bound (training pieces)")
    p.add_argument("--spread", type=float,
                   help="store this spread (the plan's deviations are scaled by it) instead of the fitted one, the "
                        "median ratio of the pianists' spread to the plan's on the training pieces; the release's "
                        "tempo plan: chosen on validation renderings (docs/experiments.md section 20)")
    p.add_argument("--phrase-features", action="store_true",
                   help="tempo: read the phrase features too (museformer.tempo_plan.PHRASE_FEATURE_NAMES: rests and "
                        "slur ends, the distance to and from them, the bass, hairpins); default: the base features")
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="articulation: fit the offsets per notated-length class on the training pieces too, each read "
                        "by one of K more plans fitted on the other K-1 folds (by piece), pooled with the validation "
                        "pieces (K x the fit's time); 0: the validation pieces only (default)")
    p.add_argument("--plain-view", choices=PLAIN_VIEWS, default="markings-dropped",
                   help="what each training score without markings is: the MusicXML's lengths with the markings "
                        "dropped (markings-dropped: the release's plans; default) or as a notation program's score "
                        "MIDI gives it (score-midi: staccato notes a half, staccatissimo a third of their length)")
    p.add_argument("--plain-offsets", choices=(*PLAIN_VIEWS, "none"), default="none",
                   help="articulation: fit separate offsets per notated-length class for a score without markings, "
                        "on the validation pieces in this view (score-midi: as a notation program's score MIDI gives "
                        "them), with the plan's spread for such a score; none: such a score takes the marked scores' "
                        "offsets (default)")
    p.add_argument("--plain-offsets-only", action="store_true",
                   help="articulation, with --into and --plain-offsets VIEW: fit only the offsets for a score without "
                        "markings (validation pieces in VIEW, the stored plain spread) and keep everything else of the "
                        "stored plan (docs/experiments.md section 33)")
    p.add_argument("--tempo-note-features", action="store_true",
                   help="velocity or articulation: the plan reads what the notated tempo makes of each note too, its "
                        "notated length in seconds and the notated tempo at its bar (museformer.velocity_plan."
                        "TEMPO_NOTE_FEATURE_NAMES); default: lengths in quarters only (the base note features)")
    p.add_argument("--timing-min-ms", type=float, default=TIMING_MIN_MS, metavar="MS",
                   help="timing: store the plan so that it plans only the notes it puts at least MS from their onset "
                        "group's grid (grace notes, rolled chords), leaving the others to the network "
                        f"(velocity_plan.TimingPlan.min_ms; default {TIMING_MIN_MS:g}: docs/experiments.md section 44)")
    p.add_argument("--json", help="write the report here too")
    args = p.parse_args(argv)
    if args.members < 1 or (args.members > 1 and args.what != "tempo"):
        p.error("--members: a positive count, above 1 only with --what tempo")
    if args.calibrate and not args.into:
        p.error("--calibrate: only with --into FILE (the release file holding the plan)")
    if args.spread is not None and not args.spread > 0:
        p.error("--spread: a positive factor")
    if args.phrase_features and (args.what != "tempo" or args.calibrate):
        p.error("--phrase-features: only when fitting a tempo plan (--what tempo, no --calibrate)")
    if args.loss != "mse" and (args.what != "tempo" or args.calibrate):
        p.error("--loss: only when fitting a tempo plan (--what tempo, no --calibrate)")
    if args.cross_fit and (args.what != "articulation" or args.cross_fit < 2):
        p.error("--cross-fit: 2 folds or more, only with --what articulation")
    if args.plain_offsets != "none" and args.what != "articulation":
        p.error("--plain-offsets: only with --what articulation")
    if args.plain_offsets_only and not (args.what == "articulation" and args.into and args.plain_offsets != "none"):
        p.error("--plain-offsets-only: only with --what articulation, --into FILE and --plain-offsets VIEW")
    if args.plain_offsets_only:
        return store_plain_offsets(args)
    if args.tempo_note_features and (args.what == "tempo" or args.calibrate):
        p.error("--tempo-note-features: only when fitting a velocity or articulation plan (no --calibrate)")
    if args.timing_min_ms < 0:
        p.error("--timing-min-ms: 0 or more milliseconds")
    if args.calibrate and args.members > 1:
        p.error("--calibrate keeps the stored plan: no --members")
    torch.set_num_threads(max(1, args.workers))
    rows = performances(Path(args.tokens))
    with Pool(args.workers) as pool:
        examples = list(tqdm(pool.imap(partial(performance_example, plain_view=args.plain_view), rows, chunksize=4),
                             total=len(rows),
                             desc="performances", unit="file"))
    bad = [e for e in examples if "error" in e]
    for e in bad:
        print(f"fit_plan: skipped {e['row']['source']}: {e['error']}", file=sys.stderr)
    examples = [e for e in examples if "error" not in e]
    split = {s: [e for e in examples if e["row"]["split"] == s] for s in ("train", "valid", "test")}
    start = time.time()
    bar = tqdm(total=args.epochs * ((0 if args.calibrate else args.members) + args.cross_fit), desc="fit", unit="epoch")

    def progress(epoch: int, r: float) -> None:
        bar.set_postfix(valid_r=f"{r:.3f}")
        bar.update(1)

    if args.what == "tempo":
        key = "target" if args.target == "beat" else "target_onset"
        plan = stored_plan(args.into, "tempo_plan") if args.calibrate else None
        names = plan.feature_names if plan else TEMPO_FEATURE_NAMES if args.phrase_features else FEATURE_NAMES
        train = [{"features": e[k]["all_features"][:, :len(names)], "target": e[k][key]}
                 for e in split["train"] for k in KINDS]
        valid = [{"features": e["marked"]["all_features"][:, :len(names)], "target": e["marked"][key]}
                 for e in split["valid"]]
        if args.calibrate:
            members = getattr(plan, "members", [plan])
        else:
            members = [fit(train, valid, epochs=args.epochs, lr=args.lr, seed=args.seed + k, progress=progress,
                           feature_names=names, loss=args.loss) for k in range(args.members)]
            plan = members[0] if args.members == 1 else TempoPlanEnsemble(members)
        if args.spread is None:
            plan.spread = fit_tempo_spread(plan, train)
            print(f"tempo plan: fitted spread {plan.spread:.3f}", file=sys.stderr)
        else:
            plan.spread = args.spread
        plan.spread_plain = plain_spread(plan, fit_tempo_spread, train)
        rows = report_rows
    else:
        fields = ("features", "notes", "note_group", args.what, "key_down_s") + (
            ("note_timing",) if args.what == "timing" else ())
        plan = stored_plan(args.into, f"{args.what}_plan") if args.calibrate else None
        note_names = (plan.note_feature_names if plan else NOTE_FEATURE_SETS[-1] if args.tempo_note_features
                      else NOTE_FEATURE_NAMES)
        use_note_features(examples, note_names)
        train = [{f: e[k][f] for f in fields} for e in split["train"] for k in KINDS]
        valid = [{f: e["marked"][f] for f in fields} for e in split["valid"]]
        if not args.calibrate:
            fit_kind = {"velocity": fit_velocity, "articulation": fit_articulation, "timing": fit_timing}[args.what]
            plan = fit_kind(train, valid, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=progress,
                            note_feature_names=note_names)
        if args.calibrate or args.spread is not None:  # a fit calibrates with the fitted spread
            plan.calibrate(train, valid, args.spread)  # the level and offsets follow the stored spread
        if args.cross_fit:
            before = plan.length_offsets
            folds = out_of_fold_plans(plan, split["train"], valid, args.cross_fit, fit_articulation, fields,
                                      epochs=args.epochs, lr=args.lr, seed=args.seed, progress=progress,
                                      note_feature_names=note_names)
            plan.length_offsets = fit_length_offsets(plan, valid, out_of_fold=folds)
            print(f"articulation plan: offsets from the validation pieces {[round(x, 3) for x in before]}, with "
                  f"{args.cross_fit} folds of the training pieces {[round(x, 3) for x in plan.length_offsets]}",
                  file=sys.stderr)
        # the timing plan is not stretched (velocity_plan.TimingPlan), from a plain score either
        plan.spread_plain = plain_spread(plan, fit_spread, train) if args.what != "timing" else None
        if args.what == "timing":
            plan.min_ms = args.timing_min_ms
        plan.length_offsets_plain = ()  # none: a score without markings takes length_offsets
        if args.plain_offsets != "none":
            plan.length_offsets_plain = fit_length_offsets(
                plan, plain_validation(split["valid"], args.plain_offsets, args.plain_view, fields, args.workers,
                                       note_names),
                spread=plan.spread_plain)
            print(f"articulation plan: offsets for a score without markings ({args.plain_offsets} view of the "
                  f"validation pieces) {[round(x, 3) for x in plan.length_offsets_plain]}", file=sys.stderr)
        print(f"{args.what} plan: level {plan.level[0]:.2f} + {plan.level[1]:.3f} x the network's mean, "
              f"notated-length offsets {[round(x, 3) for x in plan.length_offsets]}, key-down bound "
              f"{getattr(plan, 'max_key_down_s', 0.0):.2f} s", file=sys.stderr)
        rows = note_rows
    bar.close()
    print(f"stored spread {plan.spread:.3f}, from a score without markings {plan.spread_plain or plan.spread:.3f}",
          file=sys.stderr)
    report = {"what": args.what, "train_performances": len(split["train"]), "fit_s": round(time.time() - start, 1),
              "valid": rows(plan, split["valid"]), "test": rows(plan, split["test"]),
              "test_2_per_piece": rows(plan, first_per_piece(split["test"], 2))}
    if len(getattr(plan, "members", [])) > 1:
        report["members"] = [{"seed": args.seed + k, "valid": rows(m, split["valid"]), "test": rows(m, split["test"])}
                             for k, m in enumerate(members)]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.into:
        size = store(plan, args.into, f"{args.what}_plan")
        print(f"wrote the {args.what} plan into {args.into} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
