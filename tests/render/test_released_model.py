"""The released model file loads through the safe loader and renders a valid performance."""
import pytest
import torch

from conftest import REPO, VIENNA
from instruct_tokenizer.encode import score_file_to_tokens
from instruct_tokenizer.grammar import target_slots, token_type
from museformer.render import DEFAULT_CHECKPOINT, Renderer, Sampling, split_bars


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_released_checkpoint_renders_valid_tokens():
    assert DEFAULT_CHECKPOINT.stat().st_size <= 30 * 1000 * 1000
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):  # the only allowlisted global
        state = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    toks = score_file_to_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"), style={"dynamics": "loud"})
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:3] for t in b]
    perf = r.render_tokens(toks, Sampling(seed=1), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_rendering_plays_every_score_note_unless_deletions_allowed():
    from instruct_tokenizer.grammar import DELETION

    toks = score_file_to_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:4] for t in b]
    strict = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    assert not strict.task.load_grammar().table[:, strict.tgt_dict.index(DELETION)].any()
    loose = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), allow_deletions=True)
    assert loose.task.load_grammar().table[:, loose.tgt_dict.index(DELETION)].any()
    for seed in range(3):
        assert DELETION not in strict.render_tokens(toks, Sampling(seed=seed, temperature=2.0), progress=False)
