"""Writes the golden token hashes that tests/render/test_decoding_identity.py checks: renderings of a few
short scores with the released model, fixed seeds, several segments (so that the rules' state crosses
segment joins), instruct-render's default rules and the expected-value variant. Run it only when a change
of behaviour is intended: the point of the goldens is that a refactor reproduces them token for token.

    .venv/bin/python tests/render/golden/make_golden.py
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from museformer.render import DEFAULT_CHECKPOINT, Renderer, Sampling  # noqa: E402
from instruct_tokenizer.encode import split_bars  # noqa: E402
from instruct_tokenizer.score import without_markings  # noqa: E402

import os  # noqa: E402

SHARED = Path(os.environ.get("INSTRUCT_SHARED") or REPO.parent / "shared")
BENCH = SHARED / "benchmarks" / "pianist_transformer_testset" / "score"
CASES = [  # (name, score path relative to the repo or the benchmark, bars, seed, type temperature)
    ("k331_default", "data/vienna4x22/musicxml/Mozart_K331_1st-mov.musicxml", 12, 0, ""),
    ("k331_mean", "data/vienna4x22/musicxml/Mozart_K331_1st-mov.musicxml", 12, 1, "Tempo=mean,Vel=mean"),
    ("d783_default", "data/vienna4x22/musicxml/Schubert_D783_no15.musicxml", 16, 2, ""),
    ("chopin38_default", "data/vienna4x22/musicxml/Chopin_op38.musicxml", 10, 3, ""),
    ("bench0_default", "BENCH/0.mid", 16, 4, ""),  # score MIDI: no markings, no stated tempo
    ("bench8_mean", "BENCH/8.mid", 12, 5, "Tempo=mean,Vel=mean"),
]
SEGMENT_TOKENS = 260  # small segments: every case crosses segment joins


def score_path(rel: str) -> Path:
    return BENCH / rel[len("BENCH/"):] if rel.startswith("BENCH/") else REPO / rel


def render_case(rel: str, bars: int, seed: int, type_temperature: str) -> list:
    # the goldens predate the plans (museformer.tempo_plan, museformer.velocity_plan): they check the other rules
    # and the dynamics band's default of then (4 bins; off by default since the velocity plan)
    renderer = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), type_temperature=type_temperature, tempo_plan=0.0,
                                        velocity_plan=0.0, articulation_plan=0.0, timing_plan=0.0, dynamics_band=4.0)
    renderer.max_positions = SEGMENT_TOKENS
    tokens = renderer.score_tokens(str(score_path(rel)))
    if renderer.tempo is not None and renderer.tempo.source != "mark":  # the goldens predate tempo_infer:
        tokens = renderer.score_tokens(str(score_path(rel)), qpm=120.0)  # a score without a mark got 120
    if rel.startswith("BENCH/"):  # ... and the dynamics read from a score MIDI's velocities (scorefile.midi_dynamics)
        tokens = without_markings(tokens)
    prefix, score_bars = split_bars(tokens)
    tokens = list(prefix) + [t for b in score_bars[:bars] for t in b]
    return renderer.render_tokens(tokens, Sampling(seed=seed), progress=False)


def digest(tokens: list) -> str:
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()


def main() -> None:
    out = {}
    for name, rel, bars, seed, tt in CASES:
        tokens = render_case(rel, bars, seed, tt)
        out[name] = {"tokens": len(tokens), "sha256": digest(tokens)}
        print(name, out[name])
    (HERE / "golden.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
