"""Corpus build: piece-level splits, instruct prefix, fairseq-preprocess on the output unchanged."""
import json
import math
import subprocess
from collections import Counter

import pytest

from conftest import BIN, REPO, SHARED, VIENNA
from instruct_tokenizer.build import BuildConfig, Source, assign_splits, find_sources
from instruct_tokenizer.encode import style_prefix

PIECES_CSV = SHARED / "benchmarks" / "pianist_transformer_testset" / "pieces.csv"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    proc = subprocess.run([str(BIN / "instruct-tokenize"), "build", str(VIENNA / "match"), "--out", str(out),
                           "--split", "0.5,0.25,0.25", "--workers", "2", "--no-progress", "--max-tokens", "600"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_outputs_line_aligned_and_bar_synchronous(built):
    for split in ("train", "valid", "test"):
        score = (built / f"{split}.score").read_text().splitlines()
        perf = (built / f"{split}.perf").read_text().splitlines()
        assert len(score) == len(perf) > 0
        for s, p in zip(score, perf):
            assert s.split().count("Bar_None") == p.split().count("Bar_None")
            assert p.split()[0] == "Bar_None", "segments start on a bar"
            assert max(len(s.split()), len(p.split())) <= 600 or s.split().count("Bar_None") == 1


def test_no_piece_crosses_splits(built):
    rows = [json.loads(x) for x in (built / "manifest.jsonl").read_text().splitlines()]
    split_of = {}
    for r in rows:
        split_of.setdefault((r["composer"], r["title"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()), split_of


def test_pinned_test_pieces_on_nasap_metadata(nasap):
    sources = find_sources([str(nasap)])
    cfg = BuildConfig(seed=3, test_pieces=str(PIECES_CSV))
    splits = assign_splits([s.piece for s in sources], cfg)
    import csv

    pinned = {(r["composer"], r["title"]) for r in csv.DictReader(open(PIECES_CSV))}
    in_test = [s for s in sources if s.piece in pinned]
    assert len(in_test) == 104
    assert all(splits[s.piece] == "test" for s in in_test)
    assert {splits[p] for p in splits if p not in pinned} <= {"train", "valid", "test"}
    again = assign_splits([s.piece for s in sources], cfg)
    assert again == splits, "deterministic by seed"


def test_changing_one_style_changes_only_its_prefix_token():
    base = style_prefix({})
    loud = style_prefix({"dynamics": "loud"})
    diff = [(a, b) for a, b in zip(base, loud) if a != b]
    assert diff == [("IDyn_mid", "IDyn_loud")]


def test_fairseq_preprocess_runs_on_build_output(built, tmp_path):
    proc = subprocess.run([str(BIN / "fairseq-preprocess"), "--source-lang", "score", "--target-lang", "perf",
                           "--trainpref", str(built / "train"), "--validpref", str(built / "valid"),
                           "--testpref", str(built / "test"), "--srcdict", str(built / "dict.txt"),
                           "--tgtdict", str(built / "dict.txt"), "--destdir", str(tmp_path / "bin"),
                           "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "bin" / "train.score-perf.perf.bin").exists()
    assert "0.0% replaced by <unk>" in proc.stdout + proc.stderr


def test_broken_alignment_is_skipped_with_its_reason(monkeypatch):
    """A performance whose alignment outliers exceed MAX_OUTLIER_SHARE is skipped, naming why; one at
    the bound is kept."""
    from instruct_tokenizer import build as B

    real = B.encode_match
    src = Source(str(sorted((VIENNA / "match").glob("*.match"))[0]), "c", "t", "p")
    for share, skipped in ((1.0, True), (B.MAX_OUTLIER_SHARE, False)):
        def fake(mf, *args, share=share, **kw):
            enc = real(mf, *args, **kw)
            enc.stats["outliers"] = int(share * mf.n_played)
            return enc

        monkeypatch.setattr(B, "encode_match", fake)
        res = B.process((src, BuildConfig(progress=False), False))
        assert ("error" in res) == skipped
        if skipped:
            assert res["error"].startswith("broken alignment:") and "alignment outliers" in res["error"]


def test_training_recipe_build_flags_parse():
    """scripts/train_nasap.sh's build flags parse (a negative range must be written --flag=-3,3: as two
    words, argparse takes -3,3 for an option and the recipe stopped at its first step)."""
    import re
    import shlex

    from instruct_tokenizer.cli import build_parser

    script = (REPO / "scripts" / "train_nasap.sh").read_text()
    scales = re.search(r"TEMPO_SCALES=\$\{TEMPO_SCALES:-([^}]+)\}", script).group(1)
    flags = shlex.split(re.search(r"AUG_FLAGS=\(([^)]+)\)", script).group(1).replace("$TEMPO_SCALES", scales))
    args = build_parser().parse_args(["build", "src", "--out", "tok", *flags])
    assert args.augment_transpose == (-3, -2, -1, 1, 2, 3)
    assert args.augment_tempo == (0.9, 1.1)


def _script_module(name: str):
    """``scripts/{name}.py`` imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oversample_repeats_only_whole_token_matches(tmp_path):
    os_lines = _script_module("oversample_lines")
    (tmp_path / "train.score").write_text("Bar_None After_fermata Pos_0\nBar_None Pos_0\nBar_None After_fermatas\n")
    (tmp_path / "train.perf").write_text("a\nb\nc\n")
    assert os_lines.main([str(tmp_path), "--token", "After_fermata", "--times", "3",
                          "--out-prefix", str(tmp_path / "train.os")]) == 0
    assert (tmp_path / "train.os.perf").read_text().splitlines() == ["a", "a", "a", "b", "c"]
    score = (tmp_path / "train.os.score").read_text().splitlines()
    assert score[:3] == ["Bar_None After_fermata Pos_0"] * 3 and len(score) == 5
    assert (tmp_path / "train.perf").read_text() == "a\nb\nc\n"  # the source is left as it was


def test_oversample_rejects_unpaired_files_and_writes_nothing(tmp_path, capsys):
    os_lines = _script_module("oversample_lines")
    (tmp_path / "train.score").write_text("x\ny\n")
    (tmp_path / "train.perf").write_text("a\n")
    assert os_lines.main([str(tmp_path), "--token", "x", "--times", "2", "--out-prefix", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.score" in err[0]
    assert not list(tmp_path.glob("o.*"))


# ----------------------------------------------------------------------------------------- duplicates
def _result(path, piece, checksum=None, error=None, warning=None):
    src = Source(path, *piece, "p")
    return {"source": src, "error": error} if error else {"source": src, "checksum": checksum, "warning": warning}


def test_dedupe_keeps_a_valid_copy_in_the_evaluation_split():
    from instruct_tokenizer.build import dedupe

    a, b = ("c", "train piece"), ("c", "test piece")
    splits = {a: "train", b: "test"}
    results = [_result("bad.match", a, error="matched share 0.20 below 0.5"),
               _result("orphan.match", a, "x", warning="no MusicXML beside it"),
               _result("train.match", a, "x"),
               _result("test.match", b, "x"),
               _result("other.match", a, "y", warning="no MusicXML beside it")]
    reasons = [r for _, r in dedupe(results, splits)]
    assert reasons == ["matched share 0.20 below 0.5", "duplicate of test.match", "duplicate of test.match",
                       None, None]
    splits[b] = "train"  # all in train: the copy built whole (no warning) is kept, not the first
    reasons = [r for _, r in dedupe(results, splits)]
    assert reasons[1:4] == ["duplicate of train.match", None, "duplicate of train.match"]


def test_build_keeps_the_valid_copy_of_a_duplicate(tmp_path):
    """A copy of a performance whose matched share is too low (insertions added) comes first: it is
    skipped for that reason, and the valid file with the same aligned notes is built, not reported as
    its duplicate."""
    from instruct_tokenizer.build import build

    good = sorted((VIENNA / "match").glob("Schubert*.match"))[0]
    lines = good.read_text().splitlines()
    n_snotes = sum(line.startswith("snote") for line in lines)
    insertions = [f"insertion-note(x{i},[C,n],4,{1000 + i},{1200 + i},{1200 + i},50)." for i in range(2 * n_snotes)]
    (tmp_path / "src").mkdir()
    bad = tmp_path / "src" / "A_copy_p01.match"
    bad.write_text("\n".join(lines + insertions) + "\n")
    report = build([str(bad), str(good)], str(tmp_path / "out"), BuildConfig(split=(1, 0, 0), progress=False))
    assert [p for p, _ in report.skipped] == [str(bad)] and "matched share" in report.skipped[0][1]
    assert report.built["train"] == 1
    manifest = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {m["source"] for m in manifest} == {str(good)}


# ----------------------------------------------------------------------------------------- empty split
def test_empty_split_stops_the_build_and_says_how_to_fix_it(tmp_path):
    """Four pieces with the default 0.8,0.1,0.1 give 3 train, 1 valid and no test piece: the build names
    the split and the fix, exits 1 and writes nothing (fairseq-preprocess --testpref would die later)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("already here")
    proc = subprocess.run([str(BIN / "instruct-tokenize"), "build", str(VIENNA / "match"), "--out", str(out),
                           "--seed", "1", "--workers", "1", "--no-progress"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in err[0] and "split 'test' would be empty" in err[0]
    assert "3 train, 1 valid, 0 test" in err[0] and "--split 0.5,0.25,0.25" in err[0] and "--testpref" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"], "nothing written, nothing lost"


def test_empty_split_reason_when_every_file_of_its_piece_is_skipped():
    from instruct_tokenizer.build import Item, empty_split_reason

    a, b = ("c", "kept"), ("c", "skipped")
    item = Item(Source("a.match", *a, "p"), "", [], [], [], Counter(), {})
    cfg = BuildConfig(split=(0.5, 0.5, 0.0))
    reason = empty_split_reason([item], {a: "train", b: "valid"}, cfg)
    assert reason.startswith("split 'valid' would be empty: its 1 piece(s) gave no performance")
    assert empty_split_reason([item], {a: "train", b: "valid"}, BuildConfig(split=(1, 0, 0))) is None
    pinned = BuildConfig(split=(1, 0, 0), test_pieces="pieces.csv")  # pinned pieces ask for test
    assert "split 'test'" in empty_split_reason([item], {a: "train"}, pinned)


def _qpm_values(tokens):
    return [float(t.partition("_")[2]) for t in tokens if t.startswith("QPM_")]


@pytest.mark.parametrize("infer", [False, True])
def test_tempo_scaled_copy_asks_for_the_tempo_it_plays(infer):
    """A copy played twice as slowly is the score asking for half its notated tempo: its ``QPM`` tokens
    are halved (within the semitone grid's rounding) and, in the relative encoding, its tempo tokens are
    those of the original (the level over the notated tempo is unchanged). Before the fix the copy kept
    the original ``QPM`` and its ``TempoLevel`` moved by an octave."""
    from instruct_tokenizer import build as B

    src = Source(str(sorted((VIENNA / "match").glob("*.match"))[0]), "c", "t", "p")
    cfg = BuildConfig(progress=False, notated_tempo=True, relative_tempo=True, infer_tempo=infer,
                      tempo_scale=(2.0,))
    res = B.process((src, cfg, True))
    assert "items" in res, res.get("error")
    orig, slow = res["items"]
    assert (orig.augment, slow.augment) == ("", "tempo2")
    qpm_orig = _qpm_values(" ".join(orig.score_bars).split())
    qpm_slow = _qpm_values(" ".join(slow.score_bars).split())
    assert qpm_orig and len(qpm_orig) == len(qpm_slow)
    ratios = [a / b for a, b in zip(qpm_orig, qpm_slow)]
    assert all(1.95 <= r <= 2.05 for r in ratios), sorted(set(ratios))
    perf_orig = " ".join(orig.perf_bars).split()
    perf_slow = " ".join(slow.perf_bars).split()
    assert len(perf_orig) == len(perf_slow)
    levels = [(a, b) for a, b in zip(orig.perf_prefix, slow.perf_prefix) if a.startswith("TempoLevel_")]
    assert levels and all(abs(int(a.split("_")[1]) - int(b.split("_")[1])) <= 1 for a, b in levels), levels[:3]
    rel = [abs(int(a.split("_")[1]) - int(b.split("_")[1])) for a, b in zip(perf_orig, perf_slow)
           if a.startswith("TempoRel_")]
    assert rel and sum(d <= 2 for d in rel) >= 0.9 * len(rel), sorted(rel)[-5:]
    assert [t for t in perf_orig if t.startswith("Vel_")] == [t for t in perf_slow if t.startswith("Vel_")]
    # the instruct tempo level is the pianist's against the tempo asked for: the copy keeps its original's
    assert abs(B.instruct_log_period(orig) - B.instruct_log_period(slow)) < 0.05
    assert abs(orig.stats["mean_log_period"] + math.log(2.0) - slow.stats["mean_log_period"]) < 0.05


def test_fit_to_dictionary_moves_missing_values_to_the_nearest(tmp_path):
    fit = _script_module("fit_to_dictionary")
    build, out = tmp_path / "tok", tmp_path / "fit"
    build.mkdir()
    (build / "train.score").write_text("Bar_None Pos_0\n")
    (build / "train.perf").write_text("Bar_None Time_170 Time_160 Sus_-3\n")
    (tmp_path / "dict.txt").write_text("Bar_None 1\nPos_0 1\nTime_160 1\nTime_176 1\nTime_-4 1\nSus_-8 1\nSus_0 1\n")
    assert fit.main([str(build), str(tmp_path / "dict.txt"), "--out", str(out)]) == 0
    assert (out / "train.perf").read_text() == "Bar_None Time_176 Time_160 Sus_0\n"
    assert (out / "train.score").read_text() == "Bar_None Pos_0\n"
    assert (out / "dict.txt").read_text() == (tmp_path / "dict.txt").read_text()
    assert (build / "train.perf").read_text() == "Bar_None Time_170 Time_160 Sus_-3\n"  # left as it was


def test_fit_to_dictionary_rejects_a_token_without_counterpart(tmp_path, capsys):
    fit = _script_module("fit_to_dictionary")
    build, out = tmp_path / "tok", tmp_path / "fit"
    build.mkdir()
    (build / "train.perf").write_text("Bar_None Fermata_yes\n")
    (tmp_path / "dict.txt").write_text("Bar_None 1\n")
    assert fit.main([str(build), str(tmp_path / "dict.txt"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.perf" in err[0] and "Fermata_yes" in err[0]
    assert not (out / "train.perf").exists() and not list(out.glob(".*tmp"))


def test_fit_to_dictionary_reads_the_released_models_dictionary():
    fit = _script_module("fit_to_dictionary")
    lines = fit.dictionary_lines(str(REPO / "checkpoints" / "instruct-museformer.pt"))
    tokens = [line.split()[0] for line in lines]
    assert len(tokens) == len(set(tokens)) > 3000 and "Time_160" in tokens and "Time_168" not in tokens
