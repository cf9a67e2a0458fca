"""The Python API: ``from museformer import Renderer``; load the released model once, render a score,
get the MIDI object back and write it on request."""
from pathlib import Path

import pytest

from museformer import DecodeConfig, Performance, Renderer, RenderError
from museformer.render import DEFAULT_CHECKPOINT
from instruct_tokenizer.grammar import target_slots, token_type
from instruct_tokenizer import vocab as V

REPO = Path(__file__).resolve().parents[2]
MOZART = REPO / "data" / "vienna4x22" / "musicxml" / "Mozart_K331_1st-mov.musicxml"
needs_release = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no released checkpoint")


@pytest.fixture(scope="module")
def renderer():
    return Renderer.load()


@needs_release
def test_render_returns_the_midi_and_writes_it_on_request(renderer, tmp_path):
    out = tmp_path / "sub" / "k331.mid"
    perf = renderer.render(MOZART, style="tempo=slow,dynamics=soft", seed=3, out=out)
    assert isinstance(perf, Performance) and perf.path == out and out.is_file()
    assert [token_type(t) for t in perf.tokens] == target_slots(perf.score_tokens)
    played = sum(1 for t in perf.tokens if token_type(t) == V.VEL and t != V.tok(V.VEL, V.DELETED))
    assert sum(len(i.notes) for i in perf.midi.instruments) == played  # one MIDI note per played score note
    assert "ITempo_slow" in perf.score_tokens and "IDyn_soft" in perf.score_tokens
    assert not list(out.parent.glob("*.part"))


@needs_release
def test_same_seed_same_rendering_and_style_as_dict(renderer):
    a = renderer.render(MOZART, style={"tempo": "fast"}, seed=5)
    b = renderer.render(MOZART, style="tempo=fast", seed=5)
    assert a.tokens == b.tokens and a.path is None


@needs_release
def test_load_takes_decoding_settings_and_rejects_bad_ones():
    r = Renderer.load(decode=DecodeConfig(), tempo_band=0, threads=2)
    assert r.decode.tempo_band == 0 and r.threads == 2
    with pytest.raises(RenderError, match="--tempo-band"):
        Renderer.load(tempo_band=-1)
    with pytest.raises(ValueError, match="unknown settings"):
        DecodeConfig().replace(tempo_bnd=3)
