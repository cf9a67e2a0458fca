#!/usr/bin/env bash
# Runs the GPU work on a lent CUDA host whose python3 has torch but no fairseq and no network: what it needs
# travels in .gpu/ (made by scripts/gpu/pack.sh): the patched fairseq 0.10.2 source, pure-Python
# dependencies, and the (n)ASAP fairseq-preprocess output (train/valid) as bin.tar.xz.
# Usage: scripts/gpu/device_run.sh check|train RESULT_DIR
#   check: gpu_check.py (backends agree on GPU, fp16, step throughput), then a 100-second fairseq-train
#          run of the gpu profile (SMOKE_ARCHS, the full-size museformer_s2p) for its throughput
#   train: scripts/train_nasap.sh gpu with ARCH (museformer_s2p_small) for HOURS, then the release file,
#          split into 15 MB parts (cat them to rejoin)
set -uo pipefail
MODE=${1:?check|train}
RESULT=${2:?result dir}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$RESULT/device_$MODE.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"

# fairseq: the patched source tree, with its two Cython extensions compiled here (once per machine)
if ! ls /tmp/fs/fairseq/data/data_utils_fast*.so >/dev/null 2>&1; then
  rm -rf /tmp/fs && mkdir -p /tmp/fs && cp -r .gpu/src/. /tmp/fs/
  (cd /tmp/fs && python3 "$ROOT/scripts/gpu/build_fairseq_ext.py" >/tmp/fs/build.log 2>&1) || { tail -20 /tmp/fs/build.log; exit 1; }
fi
export PYTHONPATH="$ROOT:/tmp/fs:$ROOT/.gpu/site"
mkdir -p /tmp/cli
for c in train preprocess generate; do printf '#!/bin/sh\nexec python3 -m fairseq_cli.%s "$@"\n' "$c" >/tmp/cli/fairseq-$c; done
# a wrapper, not a symlink: a venv's python linked from elsewhere loses its venv (and torch)
printf '#!/bin/sh\nexec python3 "$@"\n' >/tmp/cli/python
chmod +x /tmp/cli/*
[ -f /tmp/bin/dict.perf.txt ] || { mkdir -p /tmp/bin && tar -xJf .gpu/bin.tar.xz -C /tmp/bin; }
python3 -c "import fairseq, museformer, instruct_tokenizer.grammar; print('fairseq', fairseq.__version__)" || exit 1

if [ "$MODE" = check ]; then
  timeout 200 python3 scripts/gpu/gpu_check.py --json "$RESULT/gpu_check.json"
  echo "gpu_check exit $?"
  for arch in ${SMOKE_ARCHS:-museformer_s2p}; do
    rm -rf "/tmp/smoke_$arch"
    timeout "${SMOKE_S:-100}" env BIN=/tmp/cli DATA_BIN=/tmp/bin OUT="/tmp/smoke_$arch" ARCH="$arch" RELEASE=0 HOURS=1 \
      EXTRA="--max-update 400 --disable-validation --no-save --log-interval 20" scripts/train_nasap.sh gpu \
      >"$RESULT/smoke_$arch.log" 2>&1
    echo "smoke $arch exit $?"
    grep -E "wps=|Error|error" "$RESULT/smoke_$arch.log" | tail -4
  done
else
  rm -rf /tmp/gpu_train
  env BIN=/tmp/cli DATA_BIN=/tmp/bin OUT=/tmp/gpu_train ARCH="${ARCH:-museformer_s2p_small}" HOURS="${HOURS:-0.1}" \
    LR="${LR:-1e-3}" WARMUP="${WARMUP:-400}" MAX_TOKENS="${MAX_TOKENS:-32768}" UPDATE_FREQ=1 \
    EXTRA="--log-interval 50" scripts/train_nasap.sh gpu >"$RESULT/train.log" 2>&1
  echo "train exit $?"
  grep -E "valid on|wps=" "$RESULT/train.log" | tail -6
  [ -f /tmp/gpu_train/instruct-museformer.pt ] && split -b 15000000 /tmp/gpu_train/instruct-museformer.pt "$RESULT/release.pt.part-"
  ls -la "$RESULT"
fi
