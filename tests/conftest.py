"""Shared test fixtures and paths (constants, MidiTok style)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
VIENNA = DATA / "vienna4x22"
# a rule's own test turns the plans off (--tempo-plan 0 --velocity-plan 0 --articulation-plan 0, on by default): they would hold the
# very drift or lift that the test plants to see the rule act
NO_PLANS = {"tempo_plan": 0.0, "velocity_plan": 0.0, "articulation_plan": 0.0, "timing_plan": 0.0}
# ../shared beside the clone (CI links it there as shipped: (n)ASAP packed); INSTRUCT_SHARED overrides
SHARED = Path(os.environ.get("INSTRUCT_SHARED") or REPO.parent / "shared")
BENCH = SHARED / "benchmarks" / "pianist_transformer_testset"
BIN = Path(sys.executable).parent

# Console scripts of the venv that runs the tests (fairseq-*, instruct-*, torchrun).
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def run_cli(cmd, cwd, timeout=600) -> str:
    """Run a console script on one thread; assert it succeeds (showing its output tails); stdout+stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[0]}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stderr_of(main, argv) -> tuple:
    """Run an in-process CLI entry point ``main(argv)``; (exit code, its stderr text)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def train_losses(log: str) -> list:
    """Per-epoch training losses from a fairseq-train log."""
    import re

    return [float(x) for x in re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)]


@pytest.fixture(scope="session")
def nasap(tmp_path_factory) -> Path:
    """The (n)ASAP dataset, unpacked: ``SHARED/datasets/nasap`` where a finished unpack is already there,
    else unpacked once per test run from the shipped archive (``SHARED/datasets/unpack DEST``, a few
    seconds) into a temporary folder that is removed at the end of the run. Skips only when ``SHARED``
    has neither the dataset nor its archive; a failed unpack fails the tests that need it."""
    datasets = SHARED / "datasets"
    if (datasets / "nasap" / ".complete").is_file():
        yield datasets / "nasap"
        return
    unpack = datasets / "unpack"
    if not (unpack.is_file() and (datasets / "nasap.tar.xz").is_file()):
        pytest.skip(f"(n)ASAP not found: neither {datasets / 'nasap'} nor its archive beside {unpack}")
    dest = tmp_path_factory.mktemp("shared")
    proc = subprocess.run([str(unpack), str(dest)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{unpack} {dest} failed: {proc.stderr.strip()[-500:]}")
    try:
        yield Path(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(dest, ignore_errors=True)
