#!/usr/bin/env bash
# Builds and installs the released fairseq 0.10.2 sdist into the given Python, with our one reviewed
# compatibility patch (scripts/patches/fairseq-0.10.2-py311.patch; every hunk says why).
# Usage: scripts/install_fairseq.sh PYTHON
# The wheel is built with --no-build-isolation so that its Cython/C++ extensions are compiled against
# the numpy and torch already installed in that Python (a wheel built against numpy 1.x does not load
# under numpy 2). Built wheels are cached under .cache/fairseq/, keyed by patch, numpy, torch and Python.
set -euo pipefail
PY=${1:?usage: install_fairseq.sh PYTHON}
root=$(cd "$(dirname "$0")/.." && pwd)
patch_file="$root/scripts/patches/fairseq-0.10.2-py311.patch"
cache="$root/.cache/fairseq"
sdist_url="https://files.pythonhosted.org/packages/02/59/1f466d82d64482e2809a167e0067979c23057b3752e668537d5ff24453c9/fairseq-0.10.2.tar.gz"
sdist_sha256="45b90d8ccc3f5a4623a523fe2d0465f54413d03fd1ec9a9d7af0461148ca1a68"
mkdir -p "$cache"

key=$("$PY" - "$patch_file" <<'PYEOF'
import hashlib, sys, platform
import numpy, torch
h = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:12]
print(f"{h}-np{numpy.__version__}-torch{torch.__version__}-py{platform.python_version()}".replace("+", "_"))
PYEOF
)
stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.fairseq-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$PY" -c "import fairseq" 2>/dev/null; then
  echo "fairseq 0.10.2 ($key) already installed"
  exit 0
fi

wheel_dir="$cache/wheels/$key"
if ! ls "$wheel_dir"/fairseq-0.10.2-*.whl >/dev/null 2>&1; then
  sdist="$cache/fairseq-0.10.2.tar.gz"
  if [ ! -f "$sdist" ] || ! echo "$sdist_sha256  $sdist" | sha256sum -c --status; then
    echo "downloading fairseq 0.10.2 sdist"
    curl -fsSL --retry 3 -o "$sdist.part" "$sdist_url"
    echo "$sdist_sha256  $sdist.part" | sha256sum -c --status || { echo "error: $sdist: sha256 mismatch" >&2; exit 1; }
    mv "$sdist.part" "$sdist"
  fi
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  tar -xzf "$sdist" -C "$build"
  (cd "$build/fairseq-0.10.2" && patch -p1 --quiet --forward < "$patch_file")
  echo "building fairseq 0.10.2 wheel ($key); this takes 2-3 minutes"
  "$PY" -m pip wheel --no-deps --no-build-isolation --no-cache-dir -q "$build/fairseq-0.10.2" -w "$wheel_dir.part"
  rm -rf "$wheel_dir" && mv "$wheel_dir.part" "$wheel_dir"
fi
# --no-deps: fairseq's own list asks for the `dataclasses` backport (stdlib on 3.7+); its real run-time
# dependencies are pinned in requirements.txt instead.
"$PY" -m pip install --no-deps --force-reinstall -q "$wheel_dir"/fairseq-0.10.2-*.whl
"$PY" -c "import fairseq" 
echo "$key" > "$stamp"
echo "fairseq 0.10.2 installed ($key)"
