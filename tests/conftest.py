"""Shared test fixtures and paths (constants, MidiTok style)."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
VIENNA = DATA / "vienna4x22"
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent

# Console scripts of the venv that runs the tests (fairseq-*, instruct-*, torchrun).
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def run_cli(cmd, cwd, timeout=600) -> str:
    """Run a console script on one thread; assert it succeeds (showing its output tails); stdout+stderr."""
    import subprocess

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
