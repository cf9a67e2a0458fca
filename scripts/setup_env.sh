#!/usr/bin/env bash
# Creates .venv and installs everything from nothing: pinned requirements, torch, the patched
# fairseq 0.10.2, then this project in editable mode. Idempotent; fails loudly on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "Python >= 3.9 required"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PY -m pip install -q --upgrade pip setuptools wheel
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options such as --index-url
$PY -m pip install -q $TORCH_SPEC
$PY -m pip install -q -r requirements.txt
scripts/install_fairseq.sh "$PY"
$PY -m pip install -q --no-deps --no-build-isolation -e .
$PY -c "import fairseq, museformer, instruct_tokenizer; print('setup ok: fairseq', fairseq.__version__)"
# the lean sampling loop's C++ step, built now rather than at the first render (about a minute; where it
# cannot be built, rendering runs the Python step, same tokens, and this says why)
$PY -c "from museformer import native; native.main()"
