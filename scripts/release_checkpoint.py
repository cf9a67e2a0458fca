#!/usr/bin/env python
"""Turn a fairseq training checkpoint into the single released model file.

The released file keeps fairseq's checkpoint layout (so ``fairseq.checkpoint_utils`` and the safe
``weights_only`` loader read it) but holds only what rendering needs: the args, fp16 weights, a
minimal optimizer history (fairseq's upgrade code expects one entry), and the dictionary text embedded
under ``"dictionary"`` (so no ``data-bin/`` is needed). Usage:

    python scripts/release_checkpoint.py checkpoints/run/checkpoint_best.pt checkpoints/instruct-museformer.pt
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_BYTES = 30 * 1000 * 1000


class ReleaseTooLarge(Exception):
    """The released file would exceed ``MAX_BYTES`` (nothing is written)."""


def released_state(state: dict, args, weights: dict, dictionary: str) -> dict:
    """The released file's content from a checkpoint ``state``: ``args``, the (fp16) ``weights``, a
    one-entry optimizer history and the extra state fairseq's loader reads, the dictionary text."""
    last = state["optimizer_history"][-1]
    return {
        "args": args,
        "model": weights,
        "optimizer_history": [{"criterion_name": last["criterion_name"],
                               "optimizer_name": last["optimizer_name"],
                               "lr_scheduler_state": {"best": last.get("lr_scheduler_state", {}).get("best")},
                               "num_updates": last["num_updates"]}],
        "extra_state": {k: v for k, v in state.get("extra_state", {}).items()
                        if k in ("epoch", "train_iterator", "val_loss", "best")},
        "dictionary": dictionary,
    }


def save_released(released: dict, dst: str) -> int:
    """Write ``released`` to ``dst`` atomically (through ``dst.part``); its size in bytes. Raises
    ReleaseTooLarge, leaving no file, past ``MAX_BYTES``."""
    tmp = dst + ".part"
    torch.save(released, tmp)
    size = os.path.getsize(tmp)
    if size > MAX_BYTES:
        os.unlink(tmp)
        raise ReleaseTooLarge(f"{size / 1e6:.1f} MB exceeds the 30 MB release limit")
    os.replace(tmp, dst)
    return size


def release(src: str, dst: str, data_dir: str = None) -> int:
    from fairseq import checkpoint_utils

    import museformer  # noqa: F401  (registers the task, needed to upgrade the state)

    state = checkpoint_utils.load_checkpoint_to_cpu(src)
    args = state["args"]
    dict_path = Path(data_dir or args.data) / "dict.perf.txt"
    if not dict_path.is_file():
        sys.exit(f"release_checkpoint: error: {dict_path}: dictionary not found (pass --data)")
    for key in ("data", "save_dir", "tensorboard_logdir", "restore_file"):
        if hasattr(args, key):
            setattr(args, key, None if key != "data" else "")
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    try:
        size = save_released(released_state(state, args, weights, dict_path.read_text()), dst)
    except ReleaseTooLarge as err:
        sys.exit(f"release_checkpoint: error: {dst}: {err}")
    print(f"wrote {dst} ({size / 1e6:.1f} MB, {sum(v.numel() for v in weights.values()) / 1e6:.2f}M params)")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="fairseq checkpoint (e.g. checkpoint_best.pt)")
    p.add_argument("dst", help="released model file")
    p.add_argument("--data", default=None, help="fairseq data dir holding dict.perf.txt (default: args.data)")
    a = p.parse_args()
    return release(a.src, a.dst, a.data)


if __name__ == "__main__":
    sys.exit(main())
