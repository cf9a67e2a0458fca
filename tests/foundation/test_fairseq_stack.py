"""The patched fairseq 0.10.2 stack works end to end through its real console scripts, on CPU."""
import argparse
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
VOCAB = [f"w{i}" for i in range(12)]


def run(cmd, cwd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def write_copy_corpus(root: Path, n_train=300, n_valid=30, seed=0):
    """A toy translation task: the target is the source reversed."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", 10)):
        src = [[rng.choice(VOCAB) for _ in range(rng.randint(3, 8))] for _ in range(n)]
        (root / f"{split}.src").write_text("\n".join(" ".join(s) for s in src) + "\n")
        (root / f"{split}.tgt").write_text("\n".join(" ".join(reversed(s)) for s in src) + "\n")


TRAIN_FLAGS = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "2000", "--cpu",
    "--no-progress-bar", "--log-format", "simple", "--log-interval", "1", "--seed", "1",
    "--num-workers", "0",
]


@pytest.fixture(scope="module")
def toy_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_copy_corpus(root)
    run([str(BIN / "fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", "train", "--validpref", "valid", "--testpref", "test",
         "--destdir", "bin", "--joined-dictionary", "--workers", "1"], cwd=root)
    return root


def epoch_losses(log: str) -> list:
    return [float(x) for x in re.findall(r"\[train\]\[INFO\] - epoch \d+ \| loss ([\d.]+)", log)] or \
        [float(x) for x in re.findall(r"epoch \d+ \| loss ([\d.]+)", log)]


@pytest.mark.slow
def test_preprocess_train_generate_tensorboard(toy_bin):
    root = toy_bin
    log = run([str(BIN / "fairseq-train"), "bin", *TRAIN_FLAGS, "--max-epoch", "3",
               "--save-dir", "ckpt", "--tensorboard-logdir", "tb"], cwd=root)
    losses = epoch_losses(log)
    assert len(losses) >= 2, log[-2000:]
    assert losses[-1] < losses[0], f"train loss did not fall: {losses}"
    assert (root / "ckpt" / "checkpoint_best.pt").exists()
    events = list((root / "tb").rglob("events.out.tfevents*"))
    assert events, "--tensorboard-logdir wrote no event files"
    out = run([str(BIN / "fairseq-generate"), "bin", "--path", "ckpt/checkpoint_best.pt",
               "--beam", "2", "--cpu", "--gen-subset", "test", "--batch-size", "4"], cwd=root)
    hyps = [line for line in out.splitlines() if line.startswith("H-")]
    assert len(hyps) == 10, out[-2000:]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(toy_bin):
    root = toy_bin
    run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533",
         str(BIN / "fairseq-train"), "bin", *TRAIN_FLAGS, "--max-epoch", "1",
         "--save-dir", "ckpt_ddp", "--distributed-backend", "gloo", "--ddp-backend", "no_c10d"],
        cwd=root)
    assert (root / "ckpt_ddp" / "checkpoint_last.pt").exists()


def test_import_fairseq_has_no_numpy_alias_warnings():
    code = "import warnings; warnings.simplefilter('always'); import fairseq"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"np\.(float|int|long|bool|object)\b", proc.stderr), proc.stderr


def test_optional_flags_parse():
    """fairseq's dataclass-to-argparse bridge accepts Optional[...] fields on Python >= 3.9."""
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["dummy", "--arch", "transformer", "--max-tokens", "2000"])
    assert args.max_tokens == 2000


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_checkpoint_with_namespace_loads_safely(tmp_path):
    from fairseq import checkpoint_utils

    args = argparse.Namespace(arch="transformer", task="translation")
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": 1.5}, "num_updates": 3}]
    path = _save({"args": args, "model": {"w": torch.zeros(2)}, "optimizer_history": history,
                  "extra_state": {"train_iterator": {"epoch": 2}}}, tmp_path / "ok.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["args"].arch == "transformer"


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/instruct_museformer_pwned",))


class Custom:
    pass


@pytest.mark.parametrize("payload", [Custom(), Evil()], ids=["custom-class", "os-system"])
def test_checkpoint_with_other_globals_is_refused(tmp_path, payload):
    from fairseq import checkpoint_utils

    marker = Path("/tmp/instruct_museformer_pwned")
    marker.unlink(missing_ok=True)
    path = _save({"args": argparse.Namespace(arch="x"), "model": {}, "evil": payload}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match=r"bad\.pt: refused to load checkpoint"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_getfullargspec_patch_for_c10d():
    """The c10d DDP path must not call inspect.getargspec (removed in Python 3.11)."""
    import inspect

    from fairseq.models import distributed_fairseq_model

    src = inspect.getsource(distributed_fairseq_model)
    assert "getargspec(" not in src.replace("getfullargspec(", "")
