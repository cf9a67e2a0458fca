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


@needs_release
def test_a_score_midi_s_dynamics_come_from_its_velocities(renderer, tmp_path):
    """Two bars exported at p (velocity 49), two at f (96): read as ``Dyn_p`` / ``Dyn_f`` and played louder
    where f than the same score read without them (``midi_velocities=False``, no ``Dyn``)."""
    import miditoolkit

    path = tmp_path / "pf.mid"
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.time_signature_changes.append(miditoolkit.TimeSignature(4, 4, 0))
    piano = miditoolkit.Instrument(program=0)
    piano.notes = [miditoolkit.Note(velocity=49 if k < 8 else 96, pitch=60 + (0, 4, 7, 12)[k % 4], start=480 * k,
                                    end=480 * k + 400) for k in range(16)]
    midi.instruments.append(piano)
    midi.dump(str(path))

    def loud_minus_soft(perf) -> float:
        vel = [n.velocity for n in sorted(perf.midi.instruments[0].notes, key=lambda n: n.start)]
        return (sum(vel[8:]) - sum(vel[:8])) / 8

    read = renderer.render(path, seed=1)
    plain = renderer.render(path, seed=1, midi_velocities=False)
    assert [t for t in read.score_tokens if t.startswith("Dyn_")] == ["Dyn_p", "Dyn_f"]
    assert not [t for t in plain.score_tokens if t.startswith("Dyn_")]
    assert loud_minus_soft(read) > loud_minus_soft(plain) + 5


@needs_release
def test_dynamics_alone_leave_the_tempo_and_articulation_plans_plain(renderer):
    """A score whose only markings are dynamic levels (a score MIDI's velocities) is a plain score to the tempo
    and articulation plans, and a marked one to the velocity plan (K331 with its other markings dropped)."""
    import numpy as np

    from instruct_tokenizer.score import dynamics_only, without_markings

    marked = renderer.score_tokens(str(MOZART))
    dyn = [t for t in marked if t.split("_")[0] not in V.MARKING_TYPES or t in ("Dyn_p", "Dyn_f")]
    plain = without_markings(marked)
    assert dynamics_only(dyn) and not dynamics_only(marked) and not dynamics_only(plain)
    with_dyn, without = renderer.plans_of(dyn), renderer.plans_of(plain)
    for name in ("tempo_plan", "articulation_plan"):
        assert np.array_equal(with_dyn[name][0], without[name][0])
    assert not np.allclose(with_dyn["velocity_plan"][0], without["velocity_plan"][0])


@needs_release
def test_a_performance_given_as_a_score_is_played_at_its_own_tempo(renderer, tmp_path, caplog):
    """A pianist's K331 opening written as a MIDI file at 120 beats per minute, as recordings and
    transcriptions are (onsets off any notated grid; 120 reads as no metronome mark): warned about, played
    at 120, not at a tempo estimated from its rubato read as note values (108 here: 1.28 times its length),
    so the rendering keeps about the pianist's length (1.16); ``qpm`` still overrides."""
    import logging

    import miditoolkit
    from instruct_tokenizer.match import load_match

    played = load_match(str(REPO / "data" / "vienna4x22" / "match" / "Mozart_K331_1st-mov_p01.match"))
    keep = played.played & (played.onset_s < 30.0)
    path = tmp_path / "played.mid"
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.tempo_changes = [miditoolkit.TempoChange(120.0, 0)]
    piano = miditoolkit.Instrument(program=0)
    beats = lambda s: int(round(s * 2 * 480))  # noqa: E731  s -> ticks at 120 beats per minute
    piano.notes = [miditoolkit.Note(velocity=int(v), pitch=int(p), start=beats(a), end=beats(b))
                   for a, b, p, v in zip(played.onset_s[keep], played.offset_s[keep], played.perf_pitch[keep],
                                         played.velocity[keep])]
    midi.instruments.append(piano)
    midi.dump(str(path))
    with caplog.at_level(logging.WARNING):
        perf = renderer.render(path, seed=0)
    assert any("reads as a performance" in r.getMessage() for r in caplog.records)
    assert renderer.tempo.source == "performance" and renderer.tempo.qpm == pytest.approx(120.0)
    length_s = perf.midi.get_tick_to_time_mapping()[perf.midi.max_tick] if perf.midi.max_tick else 0.0
    given_s = float(played.offset_s[keep].max() - played.onset_s[keep].min())
    assert 0.8 < length_s / given_s < 1.25
    renderer.render(path, seed=0, qpm=60.0)
    assert renderer.tempo.source == "override" and renderer.tempo.qpm == 60.0
