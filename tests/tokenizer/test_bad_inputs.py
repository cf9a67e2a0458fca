"""Broken and hostile inputs: one clear line naming the file and the reason; nothing partial written."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, REPO, VIENNA

BAD = REPO / "tests" / "bad_inputs"
BAD_MATCH = sorted(BAD.glob("*.match"))
BAD_SCORES = sorted(BAD.glob("*.musicxml")) + sorted(BAD.glob("*.mid"))


def tokenize(*args, cwd=None):
    return subprocess.run([str(BIN / "instruct-tokenize"), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("path", BAD_MATCH, ids=lambda p: p.name)
def test_bad_match_is_one_line_and_build_fails_cleanly(path, tmp_path):
    out = tmp_path / "out"
    proc = tokenize("build", path, "--out", out, "--workers", "1", "--no-progress")
    assert proc.returncode != 0, "nothing was built, so the exit code must be non-zero"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("skipped")]
    assert len(lines) == 1 and str(path) in lines[0], proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists() or not any(out.iterdir()), "no partial outputs"


def test_build_goes_on_past_bad_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in BAD_MATCH:
        shutil.copy(p, src / p.name)
    for p in sorted((VIENNA / "match").glob("Schubert*.match"))[:2]:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "keep.txt").write_text("already here")
    proc = tokenize("build", src, "--out", out, "--workers", "2", "--no-progress", "--split", "1,0,0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("skipped") >= len(BAD_MATCH)
    assert (out / "keep.txt").read_text() == "already here", "nothing already written is lost"
    assert len((out / "train.score").read_text().splitlines()) > 0
    assert not list(out.glob(".build-*")), "no temporary leftovers"


@pytest.mark.parametrize("path", BAD_SCORES, ids=lambda p: p.name)
def test_hostile_or_empty_scores(path, tmp_path):
    proc = tokenize("score", path, "-o", tmp_path / "tokens.txt")
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    assert "root:" not in text, "an external entity was resolved"
    if proc.returncode != 0:
        assert len(proc.stderr.strip().splitlines()) == 1 and str(path) in proc.stderr
        assert not (tmp_path / "tokens.txt").exists()
    else:  # the XXE file parses with its entity left unresolved
        assert "root:" not in (tmp_path / "tokens.txt").read_text()


def test_entity_bomb_memory_is_bounded():
    import resource

    code = ("import resource; from instruct_tokenizer.encode import score_file_to_tokens\n"
            "from instruct_tokenizer.scorefile import ScoreReadError\n"
            f"try: score_file_to_tokens({str(BAD / 'bomb.musicxml')!r})\n"
            "except ScoreReadError: pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().splitlines()[-1]) < 1_500_000  # KiB: no billion-laughs expansion


@pytest.mark.parametrize("name", ["xxe.musicxml", "bomb.musicxml"])
@pytest.mark.parametrize("compressed", [False, True])
def test_scores_declaring_entities_are_refused_before_parsing(name, compressed, tmp_path):
    """A DOCTYPE that declares entities (external-entity and expansion attacks start so; no real score
    does: none of the (n)ASAP and Vienna MusicXML files) is refused with one line, also inside an .mxl."""
    import zipfile

    from instruct_tokenizer.scorefile import ScoreReadError, declared_entities, load_score

    path = BAD / name
    if compressed:
        path = tmp_path / (Path(name).stem + ".mxl")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("META-INF/container.xml", '<?xml version="1.0"?><container><rootfiles>'
                       f'<rootfile full-path="{name}"/></rootfiles></container>')
            z.write(BAD / name, name)
    assert declared_entities(str(path))
    with pytest.raises(ScoreReadError, match=r"declares XML entities \(.*\): refused, a score needs none"):
        load_score(str(path))
    for clean in sorted((VIENNA / "musicxml").glob("*.musicxml")):
        assert declared_entities(str(clean)) == []


def test_compressed_musicxml_that_unpacks_too_large_is_refused(tmp_path):
    import zipfile

    from instruct_tokenizer.scorefile import MAX_XML_BYTES, ScoreReadError, load_score

    path = tmp_path / "bomb.mxl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", b"<a>" + b" " * (MAX_XML_BYTES + 1) + b"</a>")
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ScoreReadError, match="MiB unpacked"):
        load_score(str(path))
