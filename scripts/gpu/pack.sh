#!/usr/bin/env bash
# Packs what a lent GPU host without network needs into .gpu/ (git-ignored through .git/info/exclude):
#   .gpu/src       the fairseq 0.10.2 sdist with our one patch (its Cython extensions are compiled there)
#   .gpu/site      pure-Python dependencies the host lacks (hydra, omegaconf, antlr4, partitura and its own,
#                  miditoolkit, mido), copied from .venv
#   .gpu/bin.tar.xz a fairseq-preprocess output's dictionaries and train/valid splits (DATA_BIN)
#   .gpu/bin_NAME.tar.xz the same of each further NAME=DIR (device_run.sh JOBS reads it as data NAME)
#   .gpu/init/     checkpoints a JOBS entry warm-starts from (INIT=CKPT,... copied in; at most 64 MiB carried)
# Usage: scripts/gpu/pack.sh DATA_BIN [NAME=DIR ...]   then carry .gpu and run scripts/gpu/device_run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA_BIN=${1:?usage: pack.sh DATA_BIN [NAME=DIR ...]}
shift
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SDIST=.cache/fairseq/fairseq-0.10.2.tar.gz
[ -f "$SDIST" ] || { echo "pack: error: $SDIST: missing (make setup downloads it)" >&2; exit 1; }
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/site .gpu/src
for p in partitura miditoolkit mido hydra omegaconf antlr4 lark xmlschema elementpath; do cp -r "$SP/$p" .gpu/site/; done
find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SDIST" -C "$tmp"
(cd "$tmp/fairseq-0.10.2" && patch -p1 --quiet --forward < "$OLDPWD/scripts/patches/fairseq-0.10.2-py311.patch")
cp -r "$tmp/fairseq-0.10.2/fairseq" "$tmp/fairseq-0.10.2/fairseq_cli" .gpu/src/
pack_bin() {  # pack_bin DIR OUT.tar.xz
  (cd "$1" && tar -cf - dict.score.txt dict.perf.txt train.score-perf.* valid.score-perf.*) | xz -T2 -6 > "$2"
}
pack_bin "$DATA_BIN" .gpu/bin.tar.xz
for extra in "$@"; do pack_bin "${extra#*=}" ".gpu/bin_${extra%%=*}.tar.xz"; done
if [ -n "${INIT:-}" ]; then mkdir -p .gpu/init; for ck in ${INIT//,/ }; do cp "$ck" .gpu/init/; done; fi
du -sh .gpu
