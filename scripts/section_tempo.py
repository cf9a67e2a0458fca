"""Tempo sections end to end: the (n)ASAP test and validation pieces whose tempo words change class
(``tempo_infer.tempo_sections``), their metronome marks dropped and their words kept, rendered whole by a
model twice: with one notated tempo for the whole score (the words line on the whole score, as before
sections) and with each section's own (``tempo_infer.apply_notated_tempo``). Prints, per section, the
pianists' tempo (median over the performances of the same score), each rendering's, and the median (mean)
|log2(rendered / pianists')| of both ways over the sections, per seed (1.0 = a factor of 2).

    python scripts/section_tempo.py outputs/tempo_fit/tok --seeds 0 1 2

(the build of ``scripts/fit_tempo.py``: whole performances, ``--notated-tempo --xml-markings``.) A
section's tempo is its notated quarters (first to last onset group) over the seconds between them.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from fit_tempo import section_pieces  # noqa: E402
from instruct_tokenizer import tempo_infer as T  # noqa: E402
from instruct_tokenizer.decode import decode_performance  # noqa: E402


def rendered_section_qpm(score: list, perf: list, sections: list) -> list:
    """Quarter notes per minute of each section of a rendering (NaN for a section of one onset group)."""
    played = decode_performance(score, perf)
    tl = played.timeline
    out = []
    for sec in sections:
        groups = np.where((tl.group_bar >= sec.first_bar) & (tl.group_bar < sec.first_bar + sec.n_bars))[0]
        seconds = played.group_grid_s[groups[-1]] - played.group_grid_s[groups[0]] if len(groups) > 1 else 0.0
        quarters = tl.group_q[groups[-1]] - tl.group_q[groups[0]] if len(groups) > 1 else 0.0
        out.append(60.0 * quarters / seconds if seconds > 0 else float("nan"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens", type=Path, help="the (n)ASAP build of scripts/fit_tempo.py (its test and valid splits)")
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "instruct-museformer.pt"),
                    help="the model file to render with (default: the released one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds, one rendering each way per seed")
    a = ap.parse_args()
    from museformer.render import Renderer, Sampling

    items = {**section_pieces(a.tokens, "test"), **section_pieces(a.tokens, "valid")}
    if not items:
        sys.exit(f"section_tempo: error: {a.tokens}: no test or validation piece whose tempo words change class")
    renderer = Renderer.from_checkpoint(a.checkpoint)
    model = T.default_model()
    for seed in a.seeds:
        errors: dict = {"one tempo": [], "sections": []}
        for (_, title), (unmarked, sections, human) in tqdm(items.items(), desc=f"seed {seed}", unit="piece"):
            ways = {"one tempo": T.with_qpm(unmarked, model.predict(T.score_features(unmarked))),
                    "sections": T.apply_notated_tempo(unmarked)[0]}
            got = {}
            for way, score in ways.items():
                perf = renderer.render_tokens(score, Sampling(seed=seed), progress=False)
                got[way] = rendered_section_qpm(score, perf, sections)
            for k, (sec, h) in enumerate(zip(sections, human)):
                print(f"seed {seed} {title[:32]:32s} bars {sec.first_bar + 1}-{sec.first_bar + sec.n_bars} "
                      f"{sec.word:8s} pianists {h:5.0f}  one tempo {got['one tempo'][k]:5.0f}  "
                      f"sections {got['sections'][k]:5.0f} qpm")
                for way in errors:
                    if h == h and got[way][k] == got[way][k]:
                        errors[way].append(abs(math.log2(got[way][k] / h)))
        print(f"seed {seed}, {len(items)} pieces, {len(errors['sections'])} sections: median (mean) "
              f"|log2(rendered / pianists')|: " + ", ".join(
                  f"{way} {np.median(e):.3f} ({np.mean(e):.3f})" for way, e in errors.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
