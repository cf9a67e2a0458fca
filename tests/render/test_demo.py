"""A shortened `make demo`: the released model renders and is evaluated on an embedded piece; then the
pipeline check (tokenize -> preprocess -> train -> generate) through the real CLIs."""
import json
import os
import subprocess

import miditoolkit
import pytest

from conftest import BIN, REPO


@pytest.mark.slow
def test_short_demo(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "demo"), TRAIN_MINUTES="0.25", PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo"
    first = proc.stdout.index("== 1/2 the released model renders")
    assert first < proc.stdout.index("== 2/2") < proc.stdout.index("pipeline check, not a model")
    midi = miditoolkit.MidiFile(str(out / "render.mid"))  # the released model, from the MusicXML
    notes = midi.instruments[0].notes
    assert len(notes) > 100 and any(c.number == 64 for c in midi.instruments[0].control_changes)
    manifest = [json.loads(x) for x in (out / "eval-tok" / "manifest.jsonl").read_text().splitlines()]
    assert {r["title"] for r in manifest if r["split"] == "test"} == {"Mozart_K331_1st-mov"}
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"model", "deadpan", "markings", "training mean", "human"} <= set(results)
    assert results["model"]["performances"] == 4
    assert results["model"]["overall_js"] < results["deadpan"]["overall_js"]
    assert list((out / "eval").glob("curves-*.png"))
    check = [json.loads(x) for x in (out / "check" / "tok" / "manifest.jsonl").read_text().splitlines()]
    test_perfs = {r["source"] for r in check if r["split"] == "test"}
    generated = sorted((out / "check" / "generate").glob("*.mid"))  # fairseq-generate -> generate_to_midi.py
    assert len(generated) == len(test_perfs) and all(miditoolkit.MidiFile(str(g)).instruments[0].notes
                                                     for g in generated)
    assert f"{out}/render.mid" in proc.stdout.splitlines()[-4]


def test_render_bad_score_is_one_line(tmp_path):
    bad = tmp_path / "junk.mid"
    bad.write_bytes(b"not midi at all")
    proc = subprocess.run([str(BIN / "instruct-render"), str(bad), "-o", str(tmp_path / "o.mid"),
                           "--checkpoint", str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o.mid").exists()
