"""scripts/select_checkpoint.py: free-running scores of tiny checkpoints on a validation split, logged to
tensorboard and a JSON, the best one copied to checkpoint_best_freerun.pt, nothing scored twice."""
import json
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, VIENNA
from instruct_tokenizer.encode import encode_match
from instruct_tokenizer.match import load_match
from museformer.render import DEFAULT_CHECKPOINT

sys.path.insert(0, str(REPO / "scripts"))
import select_checkpoint as sc  # noqa: E402

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="needs the released model's args and dictionary")


def _tiny_checkpoint(path, data_dir, seed, updates):
    """A randomly initialised 1-layer, 32-wide model with the released model's flags and dictionary,
    saved in fairseq's checkpoint layout with ``updates`` as its num_updates."""
    from fairseq import checkpoint_utils, tasks

    import museformer  # noqa: F401

    args = checkpoint_utils.load_checkpoint_to_cpu(str(DEFAULT_CHECKPOINT))["args"]
    args.data = str(data_dir)
    for k, v in dict(encoder_layers=1, decoder_layers=1, encoder_embed_dim=32, decoder_embed_dim=32,
                     encoder_ffn_embed_dim=64, decoder_ffn_embed_dim=64, encoder_attention_heads=2,
                     decoder_attention_heads=2).items():
        setattr(args, k, v)
    torch.manual_seed(seed)
    model = tasks.setup_task(args).build_model(args)
    torch.save({"args": args, "model": model.state_dict(), "extra_state": {"epoch": 1},
                "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                       "optimizer_name": "Adam", "lr_scheduler_state": {"best": 9.0},
                                       "num_updates": updates}]}, path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    from fairseq import checkpoint_utils

    import museformer  # noqa: F401

    dictionary = checkpoint_utils.load_checkpoint_to_cpu(str(DEFAULT_CHECKPOINT))["dictionary"]
    data = root / "bin"
    data.mkdir()
    for lang in ("score", "perf"):
        (data / f"dict.{lang}.txt").write_text(dictionary)
    tok = root / "tok"
    tok.mkdir()
    rows = [{"split": "valid", "source": str(VIENNA / "match" / f"{p}_p01.match"), "composer": p.split("_")[0],
             "title": p, "performer": "p01", "augment": ""} for p in ("Chopin_op10_no3", "Schubert_D783_no15")]
    (tok / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = encode_match(load_match(str(VIENNA / "match" / "Schubert_D783_no15_p03.match")))
    (tok / "train.perf").write_text(" ".join(enc.perf) + "\n")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    _tiny_checkpoint(ckpt / "checkpoint_1_100.pt", data, 0, 100)
    _tiny_checkpoint(ckpt / "checkpoint_1_200.pt", data, 1, 200)
    (ckpt / "checkpoint_last.pt").write_bytes((ckpt / "checkpoint_1_200.pt").read_bytes())  # not an interval one
    return root


def _args(root):
    return [str(root / "ckpt"), "--tokens", str(root / "tok"), "--data", str(root / "bin"), "--max-pieces", "2",
            "--max-bars", "4", "--tb", str(root / "tb")]


def test_scores_every_checkpoint_once_and_keeps_the_best(run_dir, monkeypatch):
    assert sc.main(_args(run_dir)) == 0
    scores = json.loads((run_dir / "ckpt" / sc.SCORES).read_text())
    assert set(scores["checkpoints"]) == {"checkpoint_1_100.pt", "checkpoint_1_200.pt"}
    for name, updates in (("checkpoint_1_100.pt", 100), ("checkpoint_1_200.pt", 200)):
        f = scores["checkpoints"][name]
        assert f["num_updates"] == updates and f["performances"] == 2
        assert 0 < f["overall_js"] < 1 and 0 < f["length_ratio"] < 20
        assert f["combined"] == pytest.approx(sc.combined_score(f))
    best = max(scores["checkpoints"], key=lambda k: scores["checkpoints"][k]["combined"])
    assert scores["best"] == best
    assert (run_dir / "ckpt" / sc.BEST).read_bytes() == (run_dir / "ckpt" / best).read_bytes()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {"freerun/overall_js", "freerun/beat_tempo_r", "freerun/velocity_r", "freerun/length_ratio",
            "freerun/combined"} <= set(acc.Tags()["scalars"])
    assert sorted(e.step for e in acc.Scalars("freerun/combined")) == [100, 200]

    calls = []
    monkeypatch.setattr(sc, "score_checkpoint", lambda path, a: calls.append(path) or {})
    assert sc.main(_args(run_dir)) == 0 and calls == []  # nothing new: nothing rendered


def test_combined_score():
    m = {"velocity_r": 0.4, "beat_tempo_r": float("nan"), "overall_js": 0.15, "length_ratio": 2.0}
    assert sc.combined_score(m) == pytest.approx(0.4 + 0.0 - 0.15 - 1.0)
    assert sc.combined_score(dict(m, length_ratio=1.0)) > sc.combined_score(dict(m, length_ratio=0.5))
    assert np.isfinite(sc.combined_score(dict(m, length_ratio=float("nan"))))


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert sc.main([str(tmp_path / "nope"), "--tokens", str(tmp_path)]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert sc.main([str(tmp_path), "--tokens", str(tmp_path)]) == 1
    assert "no manifest.jsonl" in capsys.readouterr().err


def test_reads_a_checkpoint_in_a_fresh_interpreter(run_dir):
    """The watcher reads a checkpoint's update count before anything else imports the plugin: fairseq's
    args upgrade then looks the task up by name, so the script must register it itself (it skipped every
    checkpoint before: KeyError 'museformer_s2p')."""
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import select_checkpoint as sc; "
            "print(sc.num_updates(__import__('pathlib').Path(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "scripts"), str(run_dir / "ckpt" / "checkpoint_1_200.pt")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split()[-1] == "200"
