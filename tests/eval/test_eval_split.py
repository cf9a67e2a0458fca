"""instruct-eval --tokens: the markings row, --per-piece and --max-bars, on a small split of Vienna 4x22."""
import json
import subprocess

import numpy as np
import pytest

from conftest import BIN, REPO, VIENNA
from instruct_tokenizer import vocab as V
from instruct_tokenizer.encode import encode_match
from instruct_tokenizer.match import load_match
from museformer.eval_split import (constant_perf, evaluate_split, first_bars, markdown, paired_r,
                                   select_performances)

PIECES = ("Schubert_D783_no15", "Chopin_op10_no3")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rows = [{"split": "test", "source": str(VIENNA / "match" / f"{p}_p0{k}.match"), "composer": p.split("_")[0],
             "title": p, "performer": f"p0{k}", "augment": ""} for p in PIECES for k in (1, 2)]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = encode_match(load_match(str(VIENNA / "match" / "Schubert_D783_no15_p03.match")))
    (d / "train.perf").write_text(" ".join(enc.perf) + "\n")
    return d


class ConstantRenderer:
    def render_many(self, scores, sampling, **kw):
        return [constant_perf(s, V.quantise_tempo(0.6), 70, -0.2) for s in scores]


def test_first_bars_and_selection():
    toks = ["ITempo_mid", V.BAR_TOKEN, "Pos_0", V.BAR_TOKEN, "Pos_0", V.BAR_TOKEN]
    assert first_bars(toks, 2) == toks[:5] and first_bars(toks, None) == toks
    perfs = [{"composer": c, "title": t, "i": i} for i, (c, t) in enumerate([("a", "x"), ("a", "x"), ("b", "y")])]
    assert [p["i"] for p in select_performances(perfs, per_piece=1)] == [0, 2]
    assert [p["i"] for p in select_performances(perfs, max_pieces=1)] == [0, 1]


def test_max_pieces_spreads_across_composers():
    """Pieces are taken one per composer in turn, not the alphabetically first (one composer's)."""
    pieces = [("Bach", f"fugue {k}") for k in range(7)] + [("Beethoven", "op. 2"), ("Chopin", "op. 10"),
                                                          ("Chopin", "op. 25")]
    perfs = [{"composer": c, "title": t, "i": i} for i, (c, t) in enumerate(pieces)]
    chosen = [(p["composer"], p["title"]) for p in select_performances(perfs, max_pieces=4)]
    assert sorted(chosen) == [("Bach", "fugue 0"), ("Bach", "fugue 1"), ("Beethoven", "op. 2"), ("Chopin", "op. 10")]
    assert len(select_performances(perfs, max_pieces=100)) == len(perfs)


def test_markings_row_per_piece_max_bars(tok_dir, tmp_path):
    res = evaluate_split(str(tok_dir), ConstantRenderer(), str(tmp_path), per_piece=1, max_bars=8)
    assert {"model", "deadpan", "markings", "training mean", "human"} <= set(res)
    assert res["model"]["performances"] == 2 and res["markings"]["performances"] == 2
    assert np.isfinite(res["markings"]["velocity_r"])  # tempo: constant within 8 bars here, so n/a
    assert not np.isfinite(res["deadpan"]["velocity_r"])  # constant velocity: no correlation
    assert res["markings"]["velocity_r"] > 0.0  # notated dynamics follow the human dynamics somewhat
    # one tempo bin throughout: no beat-tempo r on any performance
    assert not np.isfinite(res["model"]["beat_tempo_r"]) and res["model"]["beat_tempo_r_n"] == 0
    # only the first 8 bars of the human performances are measured
    import miditoolkit

    for i, piece in enumerate(PIECES):
        enc = encode_match(load_match(str(VIENNA / "match" / f"{piece}_p01.match")))
        played8 = sum(t.startswith("Vel_") and t != "Vel_Del" for t in first_bars(enc.perf, 8))
        notes = miditoolkit.MidiFile(str(tmp_path / "midi" / f"human-{i}.mid")).instruments[0].notes
        assert len(notes) == played8 < sum(t.startswith("Vel_") and t != "Vel_Del" for t in enc.perf) // 2
    assert list(tmp_path.glob("curves-*.png"))
    paired = res["model, where markings has r"]  # the constant model has no r where markings has one
    assert paired["velocity_r_n"] == res["markings"]["velocity_r_n"] and not np.isfinite(paired["velocity_r"])
    # key-down and length per row: the model plays every beat 0.6 s, deadpan 0.5 s, so each rendering lasts
    # 1.2 times deadpan's over the same pianist's; the human row has key-downs but no length ratio
    ratio = np.array(res["model"]["length_ratio_median"]) / res["deadpan"]["length_ratio_median"]
    assert ratio == pytest.approx(1.2, rel=0.05)
    assert "length_ratio_median" not in res["human"]
    assert 0 < res["human"]["held_over_500ms_share"] < 1 and res["human"]["key_down_median_ms"] > 20
    table = markdown(res)
    assert "held over 500 ms" in table and f"| human | {res['human']['key_down_median_ms']:.0f} |" in table


def test_paired_r_uses_the_baseline_s_defined_performances_only():
    model = {"velocity_r": {0: 0.5, 1: 0.1, 2: 0.9}, "log_tempo_r": {0: 0.2, 1: 0.4, 2: 0.6}}
    markings = {"velocity_r": {0: 0.3, 1: float("nan"), 2: 0.1}, "log_tempo_r": {0: float("nan"), 1: 0.7}}
    out = paired_r(model, markings)
    assert out["velocity_r"] == pytest.approx(0.7) and out["velocity_r_n"] == 2
    assert out["log_tempo_r"] == pytest.approx(0.4) and out["log_tempo_r_n"] == 1


class RecordingRenderer(ConstantRenderer):
    """Trained with markings and notated tempo but no instruct prefix; keeps the scores it was given."""
    score_features = {"instruct": False, "markings": True, "notated_tempo": True}

    def render_many(self, scores, sampling, **kw):
        self.scores = [list(s) for s in scores]
        return super().render_many(scores, sampling, **kw)


def test_model_gets_the_score_tokens_it_was_trained_on(tok_dir, tmp_path):
    """The model row renders the score as the build tokenized it for this model: markings and QPM from
    the MusicXML, no prefix for a model trained without one (and the human reference is unchanged)."""
    r = RecordingRenderer()
    res = evaluate_split(str(tok_dir), r, str(tmp_path), per_piece=1, max_bars=8, markings=False)
    assert res["model"]["performances"] == 2
    for s in r.scores:
        types = {V.parse(t)[0] for t in s}
        assert V.QPM in types and types & set(V.GROUP_MARKING_TYPES + V.NOTE_MARKING_TYPES)
        assert not types & set(V.INSTRUCT_TYPES) and s[0] == V.BAR_TOKEN
        # the notated tempo instruct-render would use: the mark, else the estimate (never the bare 120)
        assert {t for t in s if t.startswith(V.QPM + "_")} != {V.tok(V.QPM, 120)}
    plain = ConstantRenderer()  # no score_features: the plain score with the instruct prefix
    evaluate_split(str(tok_dir), plain, str(tmp_path / "plain"), per_piece=1, max_bars=8, markings=False)
    for i in range(2):  # the human reference does not depend on the score tokens' optional markings
        name = f"midi/human-{i}.mid"
        assert (tmp_path / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_plain_scores_render_without_markings_and_keep_the_notated_tempo(tok_dir, tmp_path):
    """--plain-scores: the model renders each score as a score MIDI gives it (no marking, the same QPM as
    the marked score), there is no markings row, and the human reference is the same."""
    marked, plain = RecordingRenderer(), RecordingRenderer()
    evaluate_split(str(tok_dir), marked, str(tmp_path / "marked"), per_piece=1, max_bars=8, markings=False)
    res = evaluate_split(str(tok_dir), plain, str(tmp_path / "plain"), per_piece=1, max_bars=8,
                         plain="markings-dropped")
    assert "markings" not in res and res["model"]["performances"] == 2
    for m, p in zip(marked.scores, plain.scores):
        types = {V.parse(t)[0] for t in p}
        assert not types & V.MARKING_TYPES and V.QPM in types
        assert [t for t in p if t.startswith(V.QPM + "_")] == [t for t in m if t.startswith(V.QPM + "_")]
        assert [t for t in m if V.parse(t)[0] not in V.MARKING_TYPES] == p
    for i in range(2):
        name = f"midi/human-{i}.mid"
        assert (tmp_path / "marked" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


@pytest.mark.parametrize("flag,value,message", [("--per-piece", "0", "--per-piece must be at least 1"),
                                                ("--temperature", "0", "--temperature must be > 0")],
                         ids=lambda p: str(p))
def test_cli_bad_limit_is_one_line(tok_dir, tmp_path, flag, value, message):
    proc = subprocess.run([str(BIN / "instruct-eval"), "--tokens", str(tok_dir), "--checkpoint",
                           str(REPO / "checkpoints" / "instruct-museformer.pt"), flag, value,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"instruct-eval: error: {message}"


def test_cli_checkpoint_defaults_to_the_release(tok_dir, tmp_path):
    """--tokens without --checkpoint renders with the released model, as instruct-render does (it loads,
    then the bad limit is the one error line, not a traceback)."""
    proc = subprocess.run([str(BIN / "instruct-eval"), "--tokens", str(tok_dir), "--per-piece", "0",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == "instruct-eval: error: --per-piece must be at least 1"


def test_cli_tiny_model_run(tok_dir, tmp_path):
    proc = subprocess.run([str(BIN / "instruct-eval"), "--tokens", str(tok_dir), "--checkpoint",
                           str(REPO / "checkpoints" / "instruct-museformer.pt"), "--max-pieces", "1",
                           "--per-piece", "1", "--max-bars", "3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["model"]["performances"] == 1 and "markings" in res
    assert "| markings (1) |" in (tmp_path / "results.md").read_text()


def test_cli_missing_match_file_is_one_line_and_writes_nothing(tmp_path):
    """A build whose manifest names a match file that is gone (a corpus not unpacked here): one error line
    naming the file, no traceback, no output folder."""
    tok = tmp_path / "tok"
    tok.mkdir()
    gone = tmp_path / "corpus" / "Bach" / "gone.match"
    (tok / "manifest.jsonl").write_text(json.dumps({"split": "test", "source": str(gone), "composer": "Bach",
                                                    "title": "gone", "performer": "p", "augment": ""}) + "\n")
    enc = encode_match(load_match(str(VIENNA / "match" / "Schubert_D783_no15_p03.match")))
    (tok / "train.perf").write_text(" ".join(enc.perf) + "\n")
    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "instruct-eval"), "--tokens", str(tok), "--checkpoint",
                           str(REPO / "checkpoints" / "instruct-museformer.pt"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"instruct-eval: error: {gone}: cannot read"), lines
    assert not out.exists()


def test_cli_build_without_training_tokens_is_one_line(tok_dir, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "manifest.jsonl").write_text((tok_dir / "manifest.jsonl").read_text())
    (tok / "train.perf").write_text("")
    proc = subprocess.run([str(BIN / "instruct-eval"), "--tokens", str(tok), "--checkpoint",
                           str(REPO / "checkpoints" / "instruct-museformer.pt"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == f"instruct-eval: error: {tok / 'train.perf'}: no training performance tokens (the training-mean baseline needs them)"


def test_plain_scores_in_the_score_midi_view(tmp_path):
    """--plain-scores score-midi: each score as a notation program's score MIDI export writes it
    (score.as_score_midi: staccato notes shorter), the same notes and notated tempo as the markings-dropped
    view, and the same human reference."""
    from instruct_tokenizer.score import as_score_midi

    tok_dir = tmp_path / "tok"  # Vienna's K331 excerpt: the one with staccato notes
    tok_dir.mkdir()
    rows = [{"split": "test", "source": str(VIENNA / "match" / f"Mozart_K331_1st-mov_p0{k}.match"),
             "composer": "Mozart", "title": "K331", "performer": f"p0{k}", "augment": ""} for k in (1, 2)]
    (tok_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tok_dir / "train.perf").write_text(" ".join(encode_match(load_match(rows[1]["source"])).perf) + "\n")
    marked, dropped, exported = RecordingRenderer(), RecordingRenderer(), RecordingRenderer()
    evaluate_split(str(tok_dir), marked, str(tmp_path / "marked"), per_piece=1, markings=False)
    evaluate_split(str(tok_dir), dropped, str(tmp_path / "dropped"), per_piece=1, plain="markings-dropped")
    res = evaluate_split(str(tok_dir), exported, str(tmp_path / "exported"), per_piece=1, plain="score-midi")
    assert "markings" not in res and res["model"]["performances"] == 1
    shorter = 0
    for m, d, e in zip(marked.scores, dropped.scores, exported.scores):
        assert e == as_score_midi(m) and len(e) == len(d)
        kinds = [(V.parse(a)[0], V.parse(b)[0]) for a, b in zip(d, e)]
        assert all(a == b for a, b in kinds)  # token for token the same types: only lengths differ
        shorter += sum(V.parse(a)[0] == V.DUR and int(V.parse(b)[1]) < int(V.parse(a)[1]) for a, b in zip(d, e))
    assert shorter > 0  # the excerpts' staccato notes
    # the pianist is decoded on the notated lengths (the tokens' own), not on the view's shorter ones
    name = "midi/human-0.mid"
    assert (tmp_path / "marked" / name).read_bytes() == (tmp_path / "exported" / name).read_bytes()
    with pytest.raises(ValueError, match="plain view"):
        evaluate_split(str(tok_dir), RecordingRenderer(), str(tmp_path / "bad"), per_piece=1,
                       plain="deadpan")


def test_articulation_is_compared_on_the_notated_lengths():
    """A key-down given on a score MIDI view (a staccato quarter written as an eighth) reads, on the notated
    score, one octave shorter in log2: the same seconds over twice the length."""
    from instruct_tokenizer.score import as_score_midi
    from museformer.eval_split import features_on_notated

    q = V.GRID
    notated = ["Bar_None", "TimeSig_4/4", "QPM_100", "Pos_0", "Pitch_60", f"Dur_{q}", "Staff_1", "Mark_staccato",
               f"Pos_{q}", "Pitch_62", f"Dur_{q}", "Staff_1"]
    view = as_score_midi(notated)
    perf = constant_perf(view, V.quantise_tempo(0.6), 70, -0.2)
    on_view = features_on_notated(view, perf, view)["articulation"]
    on_notated = features_on_notated(view, perf, notated)["articulation"]
    assert np.allclose(on_notated - on_view, [-1.0, 0.0])
