#!/usr/bin/env python
"""Interpolate two models of one architecture in weight space (WiSE-FT, Wortsman et al. 2022; fairseq's
checkpoint averaging with two weights): ``(1 - w) * A + w * B``, parameter by parameter, in float32.

A is typically the released model and B a fine-tune of it: the fine-tune moves what it was trained for
(for example the tempo rows) and drifts elsewhere; a point between the two keeps more of A. Both files are
released-format or training checkpoints of the same architecture (same parameter names and shapes)
and the same dictionary; the output is a released-format file (``scripts/release_checkpoint.py``'s
layout: fp16 weights, the dictionary embedded) with A's args and history.

    python scripts/interpolate_checkpoints.py A.pt B.pt --weight 0.5 -o OUT.pt
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_checkpoint import ReleaseTooLarge, released_state, save_released  # noqa: E402


class InterpolateError(Exception):
    """The two checkpoints cannot be interpolated (the message names the file and the reason)."""


def load_state(path: str) -> dict:
    """A checkpoint through fairseq's loader (torch's ``weights_only`` loader)."""
    from fairseq import checkpoint_utils

    import museformer  # noqa: F401  (registers the task, needed to upgrade the state)

    if not Path(path).is_file():
        raise InterpolateError(f"{path}: no such file")
    return checkpoint_utils.load_checkpoint_to_cpu(path)


def interpolate(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], weight: float,
                b_name: str = "B") -> Dict[str, torch.Tensor]:
    """``(1 - weight) * a + weight * b`` for every floating-point tensor (float32 arithmetic, fp16
    result); other tensors (counters, buffers of integers) must be equal and are taken from ``a``."""
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:3]
        raise InterpolateError(f"{b_name}: parameters differ from the first model's ({', '.join(missing)} ...)")
    out = {}
    for name, va in a.items():
        vb = b[name]
        if va.shape != vb.shape:
            raise InterpolateError(f"{b_name}: {name} has shape {tuple(vb.shape)}, the first model {tuple(va.shape)}")
        if va.is_floating_point():
            out[name] = ((1.0 - weight) * va.float() + weight * vb.float()).half()
        elif torch.equal(va, vb):
            out[name] = va
        else:
            raise InterpolateError(f"{b_name}: {name} (not floating point) differs from the first model's")
    return out


def dictionary_text(state: dict, path: str) -> str:
    """The embedded dictionary of a released file, or the training run's ``dict.perf.txt``."""
    if "dictionary" in state:
        return state["dictionary"]
    dict_path = Path(getattr(state["args"], "data", "") or "") / "dict.perf.txt"
    if not dict_path.is_file():
        raise InterpolateError(f"{path}: no embedded dictionary and {dict_path} not found")
    return dict_path.read_text()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="the first model (weight 1 - w), e.g. checkpoints/instruct-museformer.pt")
    ap.add_argument("b", help="the second model (weight w), same architecture and dictionary")
    ap.add_argument("--weight", "-w", type=float, required=True, help="w in [0, 1]: the second model's share")
    ap.add_argument("-o", "--out", required=True, help="the released-format output file")
    args = ap.parse_args(argv)
    if not 0.0 <= args.weight <= 1.0:
        ap.error(f"--weight {args.weight}: must lie in [0, 1]")
    try:
        sa, sb = load_state(args.a), load_state(args.b)
        dictionary = dictionary_text(sa, args.a)
        if dictionary != dictionary_text(sb, args.b):
            raise InterpolateError(f"{args.b}: its dictionary differs from {args.a}'s")
        weights = interpolate(sa["model"], sb["model"], args.weight, b_name=args.b)
    except InterpolateError as err:
        print(f"interpolate_checkpoints: error: {err}", file=sys.stderr)
        return 1
    released = released_state(sa, sa["args"], weights, dictionary)
    released["interpolation"] = {"a": os.path.basename(args.a), "b": os.path.basename(args.b), "weight": args.weight}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        save_released(released, args.out)
    except ReleaseTooLarge as err:
        print(f"interpolate_checkpoints: error: {args.out}: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {1 - args.weight:g} x {args.a} + {args.weight:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
