#!/usr/bin/env python3
"""Does a model hold fermatas? Teacher-forced on human performances, the lift of the ``Tempo`` bin of
the onset after a fermata over its segment's median, for the humans and for the model's expectation.

    python scripts/fermata_lift.py --checkpoint CKPT --data DATA_BIN --tokens TOK [--split test] [--lines 60]

A fermata lengthens the gap to the next onset, which is that onset's ``Tempo`` token (docs/tokens.md).
For every line of ``TOK/{split}.score`` whose score holds ``Mark_fermata`` (the first ``--lines`` of
them), the script runs the model teacher-forced on the human ``.perf`` line and compares, at each onset
that follows a group with a fermata, the human bin and the model's expected bin (sum of p x bin over
the ``Tempo`` tokens), each minus its own median over the segment's onsets. Bins are 3 % steps of the
beat period: +23 bins is about x2. Prints one line: fermatas counted, mean human lift, mean model lift.

    python scripts/fermata_lift.py --human-window --tokens TOK --split train

gives the figures behind ``--fermata-hold`` (``decoding.config.FERMATA_HOLD_BINS``): over every line of the split
that holds a fermata, the human ``Tempo`` bin of the fermata's own onset group and of the group after it
minus the reference that the hold lifts (``museformer.decoding.functions.fermata_reference_bin``: the 8-quarter
windowed level of the groups before, by the decoder's own arithmetic), median and quartiles.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instruct_tokenizer import vocab as V  # noqa: E402
from instruct_tokenizer.grammar import beat_period_s, fermata_slots, tempo_slot_gaps  # noqa: E402
from instruct_tokenizer.score import with_marking_state  # noqa: E402


def groups_after_fermata(score_tokens: Sequence[str]) -> List[int]:
    """Indices of the onset groups (``Pos`` tokens, 0-based) that follow a group holding a fermata: those
    that ``score.with_marking_state`` marks ``After_fermata``."""
    group, after = -1, []
    for t in with_marking_state(score_tokens, after_fermata=True):
        if t.startswith(V.POS + "_"):
            group += 1
        elif t == V.AFTER_FERMATA:
            after.append(group)
    return after


def fermata_lifts(score_tokens: Sequence[str], human_bins: Sequence[float],
                  model_bins: Sequence[float]) -> List[Tuple[float, float]]:
    """Per onset after a fermata: (human bin - human median, model bin - model median); the bins are
    given per onset group, in order (one ``Tempo`` token each)."""
    human, model = np.asarray(human_bins, float), np.asarray(model_bins, float)
    return [(human[g] - np.median(human), model[g] - np.median(model)) for g in groups_after_fermata(score_tokens)]


def window_lifts(score_tokens: Sequence[str], perf_tokens: Sequence[str]) -> List[Tuple[str, float]]:
    """Per slot that the fermata hold lifts (``grammar.fermata_slots``): ("own" for the fermata's own
    onset group, "after" for the group after it; a group that is both counts as "own"), and its
    ``Tempo`` bin minus the hold's reference bin before it (``fermata_reference_bin``, the decoder's
    level arithmetic); slots with no reference yet (the first group) are left out."""
    import torch

    from museformer.decoding.functions import fermata_reference_bin, tempo_level_update

    first, bin_log = V.tempo_value(0), float(np.log(V.tempo_value(1) / V.tempo_value(0)))
    held, (gaps, scales) = fermata_slots(score_tokens), tempo_slot_gaps(score_tokens)
    group, fermata_groups = -1, set()
    for t in score_tokens:
        if t.startswith(V.POS + "_"):
            group += 1
        elif t == V.FERMATA_MARK:
            fermata_groups.add(group)
    level = torch.zeros(1, 4, dtype=torch.float64)
    latest, group, out = torch.tensor([float("nan")], dtype=torch.float64), -1, []
    for k, (tok, gap, scale) in enumerate(zip(perf_tokens, gaps, scales)):
        period = beat_period_s(tok) if gap == gap else None  # NaN gap: no Tempo slot
        if period is None:
            continue
        group += 1
        if held[k]:
            ref = fermata_reference_bin(level, latest, torch.tensor([scale], dtype=torch.float64), first, bin_log)
            if torch.isfinite(ref).all():
                out.append(("own" if group in fermata_groups else "after", int(V.parse(tok)[1]) - float(ref)))
        p = torch.tensor([period], dtype=torch.float64)
        level = tempo_level_update(level, p, torch.tensor([gap], dtype=torch.float64),
                                   torch.tensor([scale], dtype=torch.float64))
        latest = p
    return out


def human_window_summary(scores: Sequence[str], perfs: Sequence[str]) -> str:
    """One line per kind ("own", "after"): count, median and quartiles of ``window_lifts`` over the
    lines holding a fermata."""
    lifts: dict = {"own": [], "after": []}
    for score, perf in zip(scores, perfs):
        if V.FERMATA_MARK in score.split():
            for kind, lift in window_lifts(score.split(), perf.split()):
                lifts[kind].append(lift)
    rows = []
    for kind, v in lifts.items():
        if v:
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            rows.append(f"{kind}: {len(v)} fermatas, human lift over the hold's reference: median {med:+.1f} "
                        f"bins (quartiles {q1:+.1f}, {q3:+.1f})")
    return "\n".join(rows)


def expected_tempo_bins(renderer, score: Sequence[str], perf: Sequence[str]) -> Tuple[List[float], List[float]]:
    """(human bin, model expected bin) per onset group, teacher-forced on the human tokens."""
    import torch

    r = renderer
    src = torch.cat([r.encode(score, r.src_dict, "score"), torch.tensor([r.src_dict.eos()])])[None]  # (1, S)
    tgt = torch.cat([r.encode(perf, r.tgt_dict, "perf"), torch.tensor([r.tgt_dict.eos()])])
    prev = torch.cat([torch.tensor([r.tgt_dict.eos()]), tgt[:-1]])[None]  # (1, T)
    with torch.no_grad():
        logits, _ = r.models[0](src, torch.tensor([src.shape[1]]), prev)  # (1, T, V)
    tempo_ids = [r.tgt_dict.index(V.tok(V.TEMPO, b)) for b in range(V.TEMPO_BINS)]
    prob = torch.softmax(logits[0].float()[:, tempo_ids], dim=-1)  # (T, bins)
    expected = (prob * torch.arange(V.TEMPO_BINS)).sum(-1)  # (T,)
    human, model = [], []
    for i, t in enumerate(perf):
        type_, value = V.parse(t)
        if type_ == V.TEMPO:
            human.append(float(value))
            model.append(float(expected[i]))
    return human, model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model file (.pt); not needed with --human-window")
    ap.add_argument("--data", default=None, help="fairseq data dir with the dictionaries (training checkpoints)")
    ap.add_argument("--tokens", required=True, help="instruct-tokenize build (with --xml-markings)")
    ap.add_argument("--split", default="test", help="split of --tokens (default test: unseen pieces)")
    ap.add_argument("--lines", type=int, default=60, help="the first N lines holding a fermata")
    ap.add_argument("--human-window", action="store_true",
                    help="no model: the human lifts over the fermata hold's reference (--fermata-hold's figures)")
    a = ap.parse_args(argv)
    if a.human_window:
        try:
            scores = (Path(a.tokens) / f"{a.split}.score").read_text().splitlines()
            perfs = (Path(a.tokens) / f"{a.split}.perf").read_text().splitlines()
        except OSError as e:
            print(f"fermata_lift: error: {e}", file=sys.stderr)
            return 1
        summary = human_window_summary(scores, perfs)
        if not summary:
            print(f"fermata_lift: no fermata in {a.tokens}/{a.split}.score", file=sys.stderr)
            return 1
        print(f"{a.split}:\n{summary}")
        return 0
    if not a.checkpoint:
        print("fermata_lift: error: --checkpoint is needed (or --human-window)", file=sys.stderr)
        return 1
    from tqdm import tqdm

    from museformer.render import Renderer, RenderError

    try:
        renderer = Renderer.from_checkpoint(a.checkpoint, a.data)
        scores = (Path(a.tokens) / f"{a.split}.score").read_text().splitlines()
        perfs = (Path(a.tokens) / f"{a.split}.perf").read_text().splitlines()
    except (RenderError, OSError) as e:
        print(f"fermata_lift: error: {e}", file=sys.stderr)
        return 1
    chosen = [k for k, s in enumerate(scores) if V.FERMATA_MARK in s.split()][: a.lines]
    lifts = []
    for k in tqdm(chosen, desc="fermata lines", unit="line"):
        score, perf = scores[k].split(), perfs[k].split()
        human, model = expected_tempo_bins(renderer, score, perf)
        lifts += fermata_lifts(score, human, model)
    if not lifts:
        print(f"fermata_lift: no fermata in {a.tokens}/{a.split}.score", file=sys.stderr)
        return 1
    h, m = np.mean(lifts, axis=0)
    print(f"{a.split}: {len(lifts)} fermatas in {len(chosen)} lines; Tempo bin lift over the segment median: "
          f"human {h:+.1f}, model {m:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
