"""scripts/gpu/gpu_check.py runs on CPU in its dry-run mode (small sizes, no flex), so that the GPU
session's script does not rot between sessions that have a GPU."""

import json
import subprocess
import sys

from conftest import REPO, run_cli as run

SCRIPT = REPO / "scripts" / "gpu" / "gpu_check.py"


def test_throughput_only_times_the_asked_backends(tmp_path):
    out = tmp_path / "check.json"
    run([sys.executable, SCRIPT, "--cpu-dry-run", "--throughput-only", "--impls", "dense,bar", "--json", out],
        tmp_path)
    report = json.loads(out.read_text())
    assert report["agreement"] == [] and report["half"] == []
    assert [r["impl"] for r in report["throughput"]] == ["dense", "bar"]
    assert all(r["tok_per_s"] > 0 and r["warmup_s"] > 0 for r in report["throughput"])


def test_full_dry_run_checks_agreement(tmp_path):
    log = run([sys.executable, SCRIPT, "--cpu-dry-run", "--impls", "dense"], tmp_path)
    assert "agreement {'impl': 'bar'" in log and "gpu_check: PASS" in log


def test_unknown_backend_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--impls", "dense,flash"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "gpu_check.py: error: --impls/--shapes: unknown flash (impls: dense,bar; shapes: 1k,8k)"
    assert "Traceback" not in proc.stderr
