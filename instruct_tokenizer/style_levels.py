"""What each ``--style`` level asks of the plans: offsets read off the training pianists.

The instruct prefix (``ITempo_fast``, ``IDyn_loud``, ...) labels every training performance by corpus
tertiles, and the network reads it; but the plans that steer the decoder (tempo, velocity, articulation)
read the score alone, and once they were on a style moved a rendering by under 1 % (docs/experiments.md
section 43). The ``styled_*`` functions move the plans themselves by what a pianist of that level does
against the other pianists of the same piece (``scripts/fit_style.py``, stored in ``data/style_levels.json``;
``mid`` leaves a plan as it is):

- tempo (tempo plan): every group's log period over the notated tempo (ln s per quarter) plus the offset;
- rubato (tempo plan): the curve's deviations from its mean times e^offset, at the same length;
- dynamics (velocity plan): every note's MIDI velocity plus the offset (within 1-127);
- range (velocity plan): the velocities' deviations from their mean times e^offset;
- articulation (articulation plan): every note's log2 key-down ratio plus the offset.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from . import vocab as V

STYLE_LEVELS_PATH = Path(__file__).resolve().parent / "data" / "style_levels.json"
# each style key's measure (scripts/fit_style.py): an additive offset in these units, or a log ratio that
# scales the plan's deviations from its mean
MEASURES = {"tempo": "ln s per quarter", "rubato": "log_ratio", "dynamics": "MIDI velocity", "range": "log_ratio",
            "articulation": "log2 key-down ratio"}
_TYPE_KEY = {type_: key for key, type_ in V.STYLE_KEYS.items()}


class StyleLevelsError(Exception):
    """The style levels file is missing a key or level, or holds a non-finite offset."""


@lru_cache(maxsize=4)
def load_offsets(path: Path = STYLE_LEVELS_PATH) -> Dict[str, Dict[str, float]]:
    """{style key: {level: offset}} (units: :data:`MEASURES`); every key and level present, ``mid`` 0."""
    try:
        offsets = json.loads(Path(path).read_text())["offsets"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StyleLevelsError(f"{path}: not a style levels file ({type(e).__name__}: {e})") from None
    for key, type_ in V.STYLE_KEYS.items():
        for level in V.INSTRUCT_LEVELS[type_]:
            value = offsets.get(key, {}).get(level)
            if value is None or not np.isfinite(value):
                raise StyleLevelsError(f"{path}: no finite offset for {key}={level}")
    if any(offsets[key]["mid"] != 0.0 for key in V.STYLE_KEYS):
        raise StyleLevelsError(f"{path}: a mid level must be 0")
    return offsets


def levels_of(score_tokens: Sequence[str]) -> Dict[str, str]:
    """{style key: level} of the instruct tokens in the score's prefix (before its first ``Bar``); a key it
    does not state is ``mid``."""
    out = {key: "mid" for key in V.STYLE_KEYS}
    for t in score_tokens:
        if t.startswith(V.BAR + "_"):
            break
        type_, _, level = t.partition("_")
        if type_ in _TYPE_KEY:
            out[_TYPE_KEY[type_]] = level
    return out


def asked(levels: Dict[str, str]) -> Dict[str, str]:
    """The keys of ``levels`` set to anything but ``mid``."""
    return {k: v for k, v in levels.items() if v != "mid"}


def _scaled(values: np.ndarray, log_ratio: float, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """``values``' deviations from their (weighted) mean times e^log_ratio."""
    mean = float(np.average(values, weights=weights)) if len(values) else 0.0
    return mean + float(np.exp(log_ratio)) * (values - mean)


def _log_length(factors: np.ndarray, quarters: np.ndarray) -> float:
    """ln of the time a curve of log factors plays ``quarters`` (per group) in, over its notated time."""
    top = float(factors.max())
    return top + float(np.log(np.sum(quarters * np.exp(factors - top))))


def styled_tempo(factors: np.ndarray, levels: Dict[str, str], quarters: Optional[np.ndarray] = None,
                 offsets: Optional[Dict[str, Dict[str, float]]] = None) -> np.ndarray:
    """(G,) a tempo plan's log factors over the notated tempo (ln s per quarter) for the ``tempo`` and
    ``rubato`` levels. ``rubato`` scales the curve's deviations from its mean and keeps the length it
    plays the score in (as ``museformer.tempo_plan.stretch`` does), ``quarters``: each group's quarters
    to the next (default: one each); ``tempo`` then adds its offset. Unchanged (the same array) when both
    are ``mid``."""
    if levels.get("tempo", "mid") == "mid" and levels.get("rubato", "mid") == "mid":
        return factors
    o = offsets or load_offsets()
    out = np.asarray(factors, np.float64)
    if levels.get("rubato", "mid") != "mid" and len(out):
        q = np.ones(len(out)) if quarters is None else np.asarray(quarters, np.float64)
        scaled = _scaled(out, o["rubato"][levels["rubato"]], q)
        out = scaled - (_log_length(scaled, q) - _log_length(out, q))
    return out + o["tempo"][levels.get("tempo", "mid")]


def styled_velocity(velocity: np.ndarray, levels: Dict[str, str],
                    offsets: Optional[Dict[str, Dict[str, float]]] = None) -> np.ndarray:
    """(N,) a velocity plan's MIDI velocities for the ``dynamics`` and ``range`` levels, within 1-127.
    Unchanged (the same array) when both are ``mid``."""
    if levels.get("dynamics", "mid") == "mid" and levels.get("range", "mid") == "mid":
        return velocity
    o = offsets or load_offsets()
    out = np.asarray(velocity, np.float64)
    if levels.get("range", "mid") != "mid":
        out = _scaled(out, o["range"][levels["range"]])
    return np.clip(out + o["dynamics"][levels.get("dynamics", "mid")], 1.0, 127.0)


def styled_articulation(log2_ratio: np.ndarray, levels: Dict[str, str],
                        offsets: Optional[Dict[str, Dict[str, float]]] = None) -> np.ndarray:
    """(N,) an articulation plan's log2 key-down ratios for the ``articulation`` level. Unchanged (the same
    array) at ``mid``."""
    level = levels.get("articulation", "mid")
    if level == "mid":
        return log2_ratio
    return np.asarray(log2_ratio, np.float64) + (offsets or load_offsets())["articulation"][level]


def describe(levels: Dict[str, str], offsets: Optional[Dict[str, Dict[str, float]]] = None) -> Optional[str]:
    """The render log's line on the asked levels and what each does to its plan, or None (all ``mid``):
    ``style: tempo=fast (beat periods x0.95), dynamics=loud (velocity +2.7)``."""
    levels = asked(levels)
    if not levels:
        return None
    o = offsets or load_offsets()
    what = {"tempo": lambda v: f"beat periods x{np.exp(v):.2f}", "rubato": lambda v: f"tempo curve x{np.exp(v):.2f}",
            "dynamics": lambda v: f"velocity {v:+.1f}", "range": lambda v: f"velocity spread x{np.exp(v):.2f}",
            "articulation": lambda v: f"key-downs x{2.0 ** v:.2f}"}
    parts = [f"{key}={level} ({what[key](o[key][level])})" for key, level in levels.items()]
    return "style: " + ", ".join(parts) + " (what the lowest or highest third of a piece's training pianists do)"

