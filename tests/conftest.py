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
