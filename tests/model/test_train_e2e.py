"""fairseq-train / fairseq-generate with --user-dir museformer on the tokenizer's output of data/."""

import pytest

from conftest import BIN, REPO, VIENNA, run_cli as run, train_losses as losses
from instruct_tokenizer.grammar import target_slots, token_type

TRAIN = ["--user-dir", str(REPO / "museformer"), "--task", "museformer_s2p", "--arch", "museformer_s2p_tiny",
         "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--share-all-embeddings", "--style-embed", "--align-source",
         "--attention-impl", "dense", "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "4096", "--cpu",
         "--num-workers", "0", "--no-progress-bar", "--log-format", "simple", "--log-interval", "1", "--seed", "1",
         "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.05"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    run([BIN / "instruct-tokenize", "build", VIENNA / "match", "--out", "tok", "--split", "0.5,0.25,0.25",
         "--workers", "2", "--no-progress", "--max-tokens", "400"], root)
    run([BIN / "fairseq-preprocess", "--source-lang", "score", "--target-lang", "perf", "--trainpref", "tok/train",
         "--validpref", "tok/valid", "--testpref", "tok/test", "--srcdict", "tok/dict.txt", "--tgtdict",
         "tok/dict.txt", "--destdir", "bin", "--workers", "1"], root)
    return root


@pytest.fixture(scope="module")
def trained(corpus):
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--max-epoch", "3", "--save-dir", "ckpt",
               "--tensorboard-logdir", "tb"], corpus)
    return corpus, log


@pytest.mark.slow
def test_loss_falls_and_tensorboard_logs(trained):
    root, log = trained
    ls = losses(log)
    assert len(ls) == 3 and ls[-1] < ls[0], ls
    assert list((root / "tb").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_resume_from_checkpoint_last(trained):
    root, _ = trained
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--max-epoch", "4", "--save-dir", "ckpt"], root)
    assert "loaded checkpoint ckpt/checkpoint_last.pt (epoch 4 @" in log, "resumes after epoch 3"
    assert len(losses(log)) == 1, "only the 4th epoch runs after resuming"


@pytest.mark.slow
def test_anchored_fine_tune_of_a_checkpoint(trained):
    """A warm start fine-tuned with the anchored criterion and only the Tempo rows training: fairseq builds
    the criterion from its flags, loads the reference checkpoint and logs the KL."""
    root, _ = trained
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--criterion", "museformer_anchored_ce",
               "--anchor-model", "ckpt/checkpoint_last.pt", "--anchor-free-types", "Tempo",
               "--train-rows", "Tempo", "--weight-decay", "0", "--restore-file", "ckpt/checkpoint_last.pt",
               "--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters",
               "--max-update", "3", "--save-dir", "ckpt_anchored"], root)
    assert "anchor_kl=" in log and "num. trained:" in log
    assert (root / "ckpt_anchored" / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_scheduled_sampling_fine_tune_of_a_checkpoint(trained):
    """fairseq builds the scheduled-sampling criterion from its flags, the task tells it the update number
    (the share of changed inputs is logged and grows with the ramp) and validation stays teacher-forced."""
    root, _ = trained
    log = run([BIN / "fairseq-train", "bin", *TRAIN, "--criterion", "museformer_scheduled_sampling",
               "--ss-rate", "0.5", "--ss-ramp-updates", "4", "--restore-file", "ckpt/checkpoint_last.pt",
               "--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters",
               "--max-update", "4", "--save-dir", "ckpt_ss"], root)
    changed = [float(x.split("ss_changed=")[1].split(",")[0]) for x in log.splitlines() if "ss_changed=" in x]
    assert len(changed) >= 3 and changed[0] == 0.0 and changed[-1] > 0.0, changed
    valid_line = log.split("valid on 'valid' subset")[1].split("\n")[0]
    assert "| ss_changed 0 |" in valid_line, valid_line  # validation: the gold inputs
    assert (root / "ckpt_ss" / "checkpoint_last.pt").is_file()


def _valid_rate(root, gen_log):
    src = (root / "tok" / "test.score").read_text().splitlines()
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
@pytest.mark.parametrize("mode", [["--beam", "2"], ["--sampling", "--beam", "1", "--sampling-topp", "0.9", "--temperature", "1.2"]],
                         ids=["beam", "sampling"])
def test_generate_is_always_valid(trained, mode):
    root, _ = trained
    log = run([BIN / "fairseq-generate", "bin", "--user-dir", REPO / "museformer", "--task", "museformer_s2p",
               "--path", "ckpt/checkpoint_best.pt", "--gen-subset", "test", "--cpu", "--batch-size", "8", *mode], root)
    ok, n = _valid_rate(root, log)
    assert n > 0 and ok == n, f"{ok}/{n} valid"


@pytest.mark.slow
def test_generate_keeps_the_key_down_floor(trained):
    """The task's --min-key-down-ms holds every generated note at least that long (or gives it the
    longest articulation, when none reaches the floor), next to --no-deletions --unisons-once (every
    note played but a unison's repeated pitch), a mean type and the tempo band (the task flags)."""
    import numpy as np

    from instruct_tokenizer import vocab as V
    from instruct_tokenizer.decode import decode_performance
    from instruct_tokenizer.grammar import unison_repeats

    root, _ = trained
    log = run([BIN / "fairseq-generate", "bin", "--user-dir", REPO / "museformer", "--task", "museformer_s2p",
               "--path", "ckpt/checkpoint_best.pt", "--gen-subset", "test", "--cpu", "--batch-size", "8",
               "--sampling", "--beam", "1", "--temperature", "1.5", "--min-key-down-ms", "80", "--no-deletions", "--unisons-once",
               "--type-temperature", "Tempo=mean", "--tempo-band", "6", "--tempo-anchor", "self",
               "--fermata-hold", "15"], root)
    ok, n = _valid_rate(root, log)
    assert n > 0 and ok == n, f"{ok}/{n} valid"
    src = (root / "tok" / "test.score").read_text().splitlines()
    for line in log.splitlines():
        if line.startswith("H-"):
            k, _, toks = line.split("\t")
            score, perf = src[int(k[2:])].split(), toks.split()
            p = decode_performance(score, perf)
            arts = np.array([float(V.parse(t)[1]) for t in perf if token_type(t) == V.ART])
            held_ms = (p.offset_s - p.onset_s) * 1000
            once = [m for m, slot in zip(unison_repeats(score), target_slots(score)) if slot == V.VEL]
            assert p.played.tolist() == [not m for m in once]  # every note but a unison's repeat
            held_ms, arts = held_ms[p.played], arts[p.played]
            assert np.all((held_ms >= 80 - 1e-3) | (arts >= V.ART_MAX - 1e-9)), np.sort(held_ms)[:5]


@pytest.mark.slow
def test_untrained_model_generates_valid_output(corpus):
    run([BIN / "fairseq-train", "bin", *TRAIN, "--max-update", "1", "--save-dir", "ckpt0", "--lr", "1e-9"], corpus)
    log = run([BIN / "fairseq-generate", "bin", "--user-dir", REPO / "museformer", "--task", "museformer_s2p",
               "--path", "ckpt0/checkpoint_last.pt", "--gen-subset", "test", "--cpu", "--batch-size", "8",
               "--beam", "1"], corpus)
    ok, n = _valid_rate(corpus, log)
    assert ok == n > 0


@pytest.mark.slow
def test_two_process_ddp_trains_this_architecture(corpus):
    run([BIN / "torchrun", "--nproc_per_node", "2", "--master_port", "29541", BIN / "fairseq-train", "bin", *TRAIN,
         "--max-epoch", "1", "--save-dir", "ckpt_ddp", "--distributed-backend", "gloo", "--ddp-backend", "no_c10d"],
        corpus)
    assert (corpus / "ckpt_ddp" / "checkpoint_last.pt").exists()
