#!/usr/bin/env bash
# Runs the GPU work on a lent CUDA host whose python3 has torch but no fairseq and no network: what it needs
# travels in .gpu/ (made by scripts/gpu/pack.sh): the patched fairseq 0.10.2 source, pure-Python
# dependencies, and the (n)ASAP fairseq-preprocess output (train/valid) as bin.tar.xz.
# Usage: scripts/gpu/device_run.sh check|train RESULT_DIR
#   check: gpu_check.py (backends agree on GPU, fp16, step throughput; CHECK_ARGS=--throughput-only times
#          the backends only, CHECK_S bounds it), then a SMOKE_S-second fairseq-train run of the gpu profile
#          (SMOKE_ARCHS, the full-size museformer_s2p, IMPL dense) for its throughput
#   train: scripts/train_nasap.sh gpu for each of ARCHS (default ARCH, museformer_s2p_small), side by side on
#          the GPU, for HOURS (INIT=CKPT warm-starts), then every kept checkpoint (the interval ones and the
#          best) as a release file (cand_ARCH_UPDATES.pt, cand_ARCH_best.pt), each split into 15 MB parts
#          when larger (cat them to rejoin); SAVE_EVERY updates between kept checkpoints.
#          JOBS="TAG:ARCH:DATA:INIT ..." instead: one training per entry, side by side, TAG naming its files
#          (cand_TAG_UPDATES.pt), DATA the packed build it reads (empty: bin.tar.xz; NAME: bin_NAME.tar.xz,
#          pack.sh NAME=DIR; PER_JOB bounds the files of each), INIT a checkpoint (a path in the tree, e.g. .gpu/init/x.pt) it warm-starts from
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
for t in .gpu/bin_*.tar.xz; do  # pack.sh NAME=DIR: /tmp/bin_NAME
  [ -f "$t" ] || continue
  d=/tmp/$(basename "$t" .tar.xz)
  [ -f "$d/dict.perf.txt" ] || { mkdir -p "$d" && tar -xJf "$t" -C "$d"; }
done
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
  # one training per JOBS entry (or per ARCHS architecture), side by side on the one GPU (each its own
  # seed-1 run, its own folder); its kept checkpoints come back as release files cand_TAG_UPDATES.pt
  echo "train start $(date +%s)"
  pids=()
  jobs=${JOBS:-}
  if [ -z "$jobs" ]; then for arch in ${ARCHS:-${ARCH:-museformer_s2p_small}}; do jobs="$jobs ${arch#museformer_s2p_}:$arch::"; done; fi
  for job in $jobs; do
    IFS=: read -r tag arch data init <<<"$job"
    rm -rf "/tmp/gpu_train_$tag"
    env BIN=/tmp/cli DATA_BIN="/tmp/bin${data:+_$data}" OUT="/tmp/gpu_train_$tag" ARCH="$arch" HOURS="${HOURS:-0.1}" \
      LR="${LR:-1e-3}" WARMUP="${WARMUP:-400}" MAX_TOKENS="${MAX_TOKENS:-32768}" UPDATE_FREQ=1 RELEASE=0 \
      SAVE_EVERY="${SAVE_EVERY:-500}" INIT="${init:+$ROOT/$init}" EXTRA="--log-interval 50 ${EXTRA:-}" \
      scripts/train_nasap.sh gpu >"/tmp/train_$tag.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; echo "train exit $? at $(date +%s)"; done
  # what comes back is bounded (8 files of at most 16 MiB, 64 MiB in all): per job the best
  # checkpoint, then the interval ones newest first, while 7 files (the 8th is this log) and 66 MB hold
  files=0; bytes=0
  for job in $jobs; do
    IFS=: read -r tag arch data init <<<"$job"
    echo "== $tag ($arch, data ${data:-bin}, init ${init:-none})"
    grep -E "valid on|wps=|Error|Traceback" "/tmp/train_$tag.log" | tail -12
    kept=0
    for ck in "/tmp/gpu_train_$tag"/ckpt/checkpoint_best.pt $(ls -t "/tmp/gpu_train_$tag"/ckpt/checkpoint_*_*.pt 2>/dev/null); do
      [ -f "$ck" ] || continue
      [ "$kept" -ge "${PER_JOB:-7}" ] && break  # PER_JOB: at most this many files of one job
      kept=$((kept + 1))
      name=$(basename "$ck" .pt); name=cand_${tag}_${name##*_}
      python3 scripts/release_checkpoint.py "$ck" "/tmp/$name.pt" --data "/tmp/bin${data:+_$data}" >/dev/null || continue
      size=$(stat -c %s "/tmp/$name.pt"); parts=$(( (size + 14999999) / 15000000 ))
      if [ $((files + parts)) -gt 7 ] || [ $((bytes + size)) -gt 66000000 ]; then echo "left out: $name"; continue; fi
      files=$((files + parts)); bytes=$((bytes + size))
      if [ "$parts" -gt 1 ]; then split -b 15000000 "/tmp/$name.pt" "$RESULT/$name.pt.part-"
      else cp "/tmp/$name.pt" "$RESULT/"; fi
    done
  done
  ls -la "$RESULT"
fi
