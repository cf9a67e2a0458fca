"""The lean sampling loop's hot path in C++ (``museformer/csrc/step.cpp``), built once per torch version
with ``torch.utils.cpp_extension`` (a C++ compiler and ninja, as fairseq's own extensions need) and cached
under ``~/.cache/instruct-museformer/native`` (``INSTRUCT_NATIVE_DIR`` to move it).

Every function there is the Python code it names, operator for operator (the same ATen kernels on the
same operands), so it gives the same tokens bit for bit (``tests/render/test_native_step.py``); it saves
the interpreter's overhead per operator, most of a step's cost for a 128-wide model (``docs/speed.md``).
Where it cannot be built the Python step runs, after one line on stderr saying why;
``INSTRUCT_NATIVE=0`` turns it off.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "step.cpp"
_module: Optional[ModuleType] = None
_tried = False
active = True  # False: loaded() answers None (the decoding rules' arithmetic runs in Python; benchmarks)


def enabled() -> bool:
    """Whether the native step may be used (``INSTRUCT_NATIVE`` is not 0)."""
    return os.environ.get("INSTRUCT_NATIVE", "1") != "0"


def loaded() -> Optional[ModuleType]:
    """The extension if it is already built and loaded in this process (never builds it): the decoding
    rules' arithmetic takes it from here once the lean loop has loaded it."""
    return _module if active else None


def build_dir() -> Path:
    """Where the extension is built: one folder per source, torch version and Python version (a build for
    another Python would not load)."""
    versions = f"{torch.__version__} {sys.version_info[0]}.{sys.version_info[1]} {sys.platform}".encode()
    key = hashlib.sha256(SOURCE.read_bytes() + versions).hexdigest()[:12]
    root = os.environ.get("INSTRUCT_NATIVE_DIR") or Path.home() / ".cache" / "instruct-museformer" / "native"
    return Path(root) / key


def load(quiet: bool = False) -> Optional[ModuleType]:
    """The built extension (built on first use, about a minute of one core), or None where it is turned
    off or cannot be built (one line on stderr, once, unless ``quiet``)."""
    global _module, _tried
    if _module is not None or _tried or not enabled():
        return _module
    _tried = True
    where = build_dir()
    try:
        from torch.utils import cpp_extension

        # ninja from the environment's bin folder (pip's ninja) when the shell's PATH lacks it
        bin_dir = os.path.dirname(sys.executable)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + bin_dir
        where.mkdir(parents=True, exist_ok=True)
        if not any(where.glob("*.so")) and not quiet:
            print(f"instruct-museformer: building the native decoding step in {where} (once, about a minute)",
                  file=sys.stderr)
        _module = cpp_extension.load(name="museformer_step_" + where.name, sources=[str(SOURCE)],
                                     build_directory=str(where), extra_cflags=["-O2"], verbose=False)
    except Exception as err:  # no compiler, no ninja, a failed build: the Python step runs
        if not quiet:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            print(f"instruct-museformer: the native decoding step is unavailable ({reason}); "
                  "using the Python step (same tokens, slower)", file=sys.stderr)
        _module = None
    return _module


def main() -> int:
    """Build the extension now: ``python -c "from museformer import native; native.main()"`` (the setup
    script runs it)."""
    module = load()
    print(f"native decoding step: {'built in ' + str(build_dir()) if module is not None else 'unavailable'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
