"""scripts/generate_to_midi.py: fairseq-generate H- lines + manifest.jsonl -> whole-performance MIDI.

The hypotheses here are the human performance segments themselves, so the stitched MIDI must equal the
MIDI decoded from the unsegmented whole performance."""
import json
import subprocess
import sys

import miditoolkit
import pytest

from conftest import BIN, REPO, VIENNA

MATCH_DIR = VIENNA / "match"
SCRIPT = REPO / "scripts" / "generate_to_midi.py"


def _notes(path):
    midi = miditoolkit.MidiFile(str(path))
    return [(n.pitch, n.start, n.end, n.velocity) for n in midi.instruments[0].notes]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """Two Vienna performances tokenized whole and in small overlapping segments."""
    root = tmp_path_factory.mktemp("gen")
    src = root / "src"
    src.mkdir()
    for p in sorted(MATCH_DIR.glob("*.match"))[:2]:
        (src / p.name).symlink_to(p)
    for name, max_tokens in (("whole", 100000), ("seg", 400)):
        subprocess.run([str(BIN / "instruct-tokenize"), "build", str(src), "--out", str(root / name),
                        "--split", "0,0,1", "--seed", "0", "--max-tokens", str(max_tokens), "--overlap-bars", "2",
                        "--no-progress"], check=True, capture_output=True, text=True)
    return root


def _fake_generate(tok_dir, path, drop_line=None):
    perf = (tok_dir / "test.perf").read_text().splitlines()
    lines = [f"S-{i}\t...\nH-{i}\t-0.5\t{p}\nD-{i}\t-0.5\t{p}" for i, p in enumerate(perf) if i != drop_line]
    path.write_text("\n".join(lines) + "\n")


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_stitched_generation_equals_whole_performance(segmented, tmp_path):
    seg, whole = segmented / "seg", segmented / "whole"
    assert len((seg / "test.score").read_text().splitlines()) > 2  # really segmented
    for d in (seg, whole):
        _fake_generate(d, d / "gen.txt")
        proc = _run(d / "gen.txt", d, "--split", "test", "--out", tmp_path / d.name)
        assert proc.returncode == 0, proc.stderr
    out_seg = sorted((tmp_path / "seg").glob("*.mid"))
    out_whole = sorted((tmp_path / "whole").glob("*.mid"))
    assert [p.name for p in out_seg] == [p.name for p in out_whole] and len(out_seg) == 2
    for a, b in zip(out_seg, out_whole):
        assert _notes(a) == _notes(b), f"stitched {a} differs from {b}"


def test_missing_hypothesis_is_one_error_line(segmented, tmp_path):
    seg = segmented / "seg"
    _fake_generate(seg, tmp_path / "gen.txt", drop_line=0)
    proc = _run(tmp_path / "gen.txt", seg, "--split", "test", "--out", tmp_path / "out")
    assert proc.returncode == 0  # the other performance is still written
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no hypothesis for lines [0]" in proc.stderr
    assert len(list((tmp_path / "out").glob("*.mid"))) == 1
