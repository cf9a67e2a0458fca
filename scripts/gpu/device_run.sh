#!/usr/bin/env bash
# Runs the GPU work on a lent CUDA host whose python3 has torch but no fairseq and no network: what it needs
# travels in .gpu/ (made by scripts/gpu/pack.sh): the patched fairseq 0.10.2 source, pure-Python
# dependencies, and the (n)ASAP fairseq-preprocess output (train/valid) as bin.tar.xz.
# Usage: scripts/gpu/device_run.sh check|train RESULT_DIR
#   check: gpu_check.py (backends agree on GPU, fp16, step throughput; CHECK_ARGS=--throughput-only times
#          the backends only, CHECK_S bounds it), then a SMOKE_S-second fairseq-train run of the gpu profile
#          (SMOKE_ARCHS, the full-size museformer_s2p, IMPL dense) for its throughput
#   train: scripts/train_nasap.sh gpu with ARCH (museformer_s2p_small) for HOURS (INIT=CKPT warm-starts),
#          then every kept checkpoint (the interval ones and the best) as a release file
#          (cand_UPDATES.pt, cand_best.pt), each split into 15 MB parts when larger (cat them to rejoin)
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
  echo "start $(date +%s)"
  timeout "${CHECK_S:-200}" python3 scripts/gpu/gpu_check.py ${CHECK_ARGS:-} --json "${CHECK_JSON:-$RESULT/gpu_check.json}"
  echo "gpu_check exit $? at $(date +%s)"
  for arch in ${SMOKE_ARCHS:-museformer_s2p}; do
    rm -rf "/tmp/smoke_$arch"
    timeout "${SMOKE_S:-100}" env BIN=/tmp/cli DATA_BIN=/tmp/bin OUT="/tmp/smoke_$arch" ARCH="$arch" RELEASE=0 HOURS=1 \
      IMPL="${IMPL:-dense}" EXTRA="--max-update 400 --disable-validation --no-save --log-interval 10" \
      scripts/train_nasap.sh gpu >"$RESULT/smoke_$arch.log" 2>&1
    echo "smoke $arch exit $? at $(date +%s)"
    grep -E "wps=|Error|error" "$RESULT/smoke_$arch.log" | tail -4
  done
else
  rm -rf /tmp/gpu_train
  echo "train start $(date +%s)"
  env BIN=/tmp/cli DATA_BIN=/tmp/bin OUT=/tmp/gpu_train ARCH="${ARCH:-museformer_s2p_small}" HOURS="${HOURS:-0.1}" \
    LR="${LR:-1e-3}" WARMUP="${WARMUP:-400}" MAX_TOKENS="${MAX_TOKENS:-32768}" UPDATE_FREQ=1 \
    EXTRA="--log-interval 50 ${EXTRA:-}" scripts/train_nasap.sh gpu >"$RESULT/train.log" 2>&1
  echo "train exit $? at $(date +%s)"
  grep -E "valid on|wps=" "$RESULT/train.log" | tail -6
  for ck in /tmp/gpu_train/ckpt/checkpoint_*_*.pt /tmp/gpu_train/ckpt/checkpoint_best.pt; do
    [ -f "$ck" ] || continue
    name=$(basename "$ck" .pt); name=cand_${name##*_}
    python3 scripts/release_checkpoint.py "$ck" "/tmp/$name.pt" --data /tmp/bin >/dev/null || continue
    if [ "$(stat -c %s "/tmp/$name.pt")" -gt 15000000 ]; then split -b 15000000 "/tmp/$name.pt" "$RESULT/$name.pt.part-"
    else cp "/tmp/$name.pt" "$RESULT/"; fi
  done
  ls -la "$RESULT"
fi
