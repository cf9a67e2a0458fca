"""The released model file loads through the safe loader and renders a valid performance."""
import pytest
import torch

from conftest import REPO, VIENNA
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
    toks = r.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"), style={"dynamics": "loud"})
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:3] for t in b]
    perf = r.render_tokens(toks, Sampling(seed=1), progress=False)
    assert [token_type(t) for t in perf] == target_slots(toks)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_rendering_plays_every_score_note_unless_deletions_allowed():
    from instruct_tokenizer.grammar import DELETION

    strict = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    toks = strict.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:4] for t in b]
    assert not strict.task.load_grammar().table[:, strict.tgt_dict.index(DELETION)].any()
    loose = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), allow_deletions=True)
    assert loose.task.load_grammar().table[:, loose.tgt_dict.index(DELETION)].any()
    for seed in range(3):
        assert DELETION not in strict.render_tokens(toks, Sampling(seed=seed, temperature=2.0), progress=False)


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_type_temperature_sharpens_only_its_type():
    """Tempo=0.25 divides only the Tempo slots' logits by 0.25: tempo tokens vary less across seeds,
    every other slot keeps its distribution's scale (checked on the logits multiplier)."""
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT), type_temperature="Tempo=0.25")
    grammar = r.task.load_grammar()
    tempo = grammar.type_id["Tempo"]
    assert grammar.scale[tempo] == pytest.approx(4.0)
    assert all(grammar.scale[i] == 1.0 for n, i in grammar.type_id.items() if n != "Tempo")
    toks = r.score_tokens(str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"))
    prefix, bars = split_bars(toks)
    toks = prefix + [t for b in bars[:3] for t in b]
    plain = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))

    def tempo_spread(renderer):
        runs = [[t for t in renderer.render_tokens(toks, Sampling(seed=s, temperature=1.5), progress=False)
                 if token_type(t) == "Tempo"] for s in range(4)]
        return sum(len(set(col)) for col in zip(*runs))

    assert tempo_spread(r) < tempo_spread(plain)


@pytest.mark.parametrize("bad", ["Foo=0.5", "Tempo=0", "Tempo", "Tempo=x"])
def test_bad_type_temperature_is_one_error_line(bad, tmp_path):
    from museformer.render import main

    out = tmp_path / "out.mid"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(VIENNA / "musicxml" / "Chopin_op10_no3.musicxml"), "-o", str(out),
                     "--type-temperature", bad])
    assert code == 1 and not out.exists()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "--type-temperature" in lines[0], err.getvalue()


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")
def test_render_many_of_no_pieces_is_empty():
    r = Renderer.from_checkpoint(str(DEFAULT_CHECKPOINT))
    assert r.render_many([], Sampling(seed=0), progress=False) == []
