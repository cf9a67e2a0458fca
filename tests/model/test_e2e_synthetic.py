"""fairseq-preprocess / fairseq-train / fairseq-generate / torchrun through the real console scripts, on a
synthetic bar-structured parallel corpus generated here (no tokenizer, no data files needed).

Score: an optional prefix token, then per bar ``Bar_None`` + ``P_i`` per note; performance: per bar
``Bar_None`` + ``V_j`` per note with j a function of the note and its neighbour (learnable). Generation
uses ``--grammar museformer.synthetic_grammar``.
"""
import numpy as np
import pytest

from conftest import BIN, REPO, run_cli as run, train_losses as losses
from museformer.synthetic_grammar import target_slots, token_type

TRAIN = ["--user-dir", str(REPO / "museformer"), "--task", "museformer_s2p", "--arch", "museformer_s2p_tiny",
         "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--share-all-embeddings",
         "--fine-bars", "0,1,2,4", "--attention-impl", "bar", "--optimizer", "adam", "--lr", "0.003",
         "--max-tokens", "2048", "--cpu", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
         "--log-interval", "1", "--seed", "1", "--criterion", "cross_entropy", "--dropout", "0.0"]
GEN = ["--user-dir", str(REPO / "museformer"), "--task", "museformer_s2p", "--grammar", "museformer.synthetic_grammar",
       "--gen-subset", "test", "--cpu", "--batch-size", "8"]


def make_pair(rng):
    src, tgt = ([f"Inst_{rng.integers(0, 2)}"] if rng.random() < 0.5 else []), []
    for _ in range(int(rng.integers(2, 9))):
        src.append("Bar_None")
        tgt.append("Bar_None")
        notes = rng.integers(0, 12, size=int(rng.integers(1, 6)))
        for i, p in enumerate(notes):
            src.append(f"P_{p}")
            tgt.append(f"V_{(p + (notes[i - 1] if i else 0)) % 12}")
    return " ".join(src), " ".join(tgt)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    for split, n in (("train", 240), ("valid", 24), ("test", 12)):
        pairs = [make_pair(rng) for _ in range(n)]
        (root / f"{split}.score").write_text("\n".join(s for s, _ in pairs) + "\n")
        (root / f"{split}.perf").write_text("\n".join(t for _, t in pairs) + "\n")
    run([BIN / "fairseq-preprocess", "--source-lang", "score", "--target-lang", "perf", "--trainpref", "train",
         "--validpref", "valid", "--testpref", "test", "--joined-dictionary", "--destdir", "bin", "--workers", "1"],
        root)
    return root


@pytest.fixture(scope="module")
def trained(corpus):
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--max-epoch", "4", "--save-dir", "ckpt",
               "--tensorboard-logdir", "tb"], corpus)
    return corpus, log


@pytest.mark.slow
def test_loss_falls_and_tensorboard_logs(trained):
    root, log = trained
    ls = losses(log)
    assert len(ls) == 4 and ls[-1] < ls[0] - 0.5, ls
    assert list((root / "tb").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_resume_from_checkpoint_last(trained):
    root, _ = trained
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--max-epoch", "5", "--save-dir", "ckpt"], root)
    assert "loaded checkpoint ckpt/checkpoint_last.pt (epoch 5 @" in log, log[-2000:]
    assert len(losses(log)) == 1, "only the 5th epoch runs after resuming"


def valid_rate(root, gen_log):
    src = (root / "test.score").read_text().splitlines()
    hyps = {}
    for line in gen_log.splitlines():
        if line.startswith("H-"):
            k, _, toks = line.split("\t")
            hyps[int(k[2:])] = toks.split()
    ok = 0
    for i, s in enumerate(src):
        slots = target_slots(s.split())
        h = hyps.get(i, [])
        ok += len(h) == len(slots) and all(token_type(t) == x for t, x in zip(h, slots))
    return ok, len(src)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--beam", "3"],
                                  ["--sampling", "--beam", "1", "--sampling-topp", "0.9", "--temperature", "1.5"]],
                         ids=["beam", "sampling"])
def test_generate_is_always_valid(trained, mode):
    root, _ = trained
    log = run([BIN / "fairseq-generate", "bin", *GEN, "--path", "ckpt/checkpoint_best.pt", *mode], root)
    ok, n = valid_rate(root, log)
    assert n > 0 and ok == n, f"{ok}/{n} valid\n{log[-2000:]}"


@pytest.mark.slow
def test_two_process_ddp_trains(corpus):
    log = run([BIN / "torchrun", "--nproc_per_node", "2", "--master_port", "29547", BIN / "fairseq-train", "bin",
               *TRAIN, "--max-epoch", "1", "--save-dir", "ckpt_ddp", "--distributed-backend", "gloo",
               "--ddp-backend", "no_c10d"], corpus)
    assert (corpus / "ckpt_ddp" / "checkpoint_last.pt").exists()
    assert "distributed_world_size': 2" in log or "world size 2" in log.lower() or "rank 1" in log.lower(), log[-3000:]
