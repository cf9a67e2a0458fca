"""The web page's endpoints (museformer/serve/app.py) in-process, with the released model on a short score."""
import os
import re
import time
from pathlib import Path

import pytest

from conftest import REPO, VIENNA, stderr_of
from instruct_tokenizer.encode import split_bars
from museformer.render import DEFAULT_CHECKPOINT
from museformer.serve.app import STATIC, create_app
from museformer.serve.audio import Synth
from museformer.serve.studio import Studio
from serve_helpers import cached_loader, write_short_score

BAD = REPO / "tests" / "bad_inputs"
PNG = b"\x89PNG\r\n\x1a\n"


def make_client(tmp_path, **kw):
    from starlette.testclient import TestClient

    studio = Studio(str(DEFAULT_CHECKPOINT), examples=VIENNA / "musicxml", loader=cached_loader, **kw)
    return studio, TestClient(create_app(studio), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def short_score(tmp_path_factory):
    return write_short_score(tmp_path_factory.mktemp("score") / "short.mid", bars=6)


@pytest.fixture
def client(tmp_path):
    studio, client = make_client(tmp_path)
    with client:
        yield studio, client
    studio.shutdown()
    assert not studio.root.exists(), "the server's files are deleted when it stops"


def files_under(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def wait(client, job, timeout=300):
    deadline = time.time() + timeout
    while job["state"] == "running":
        assert time.time() < deadline, "render job did not finish"
        time.sleep(0.2)
        job = client.get(f"/api/job/{job['id']}").json()
    return job


def open_short(client, short_score):
    r = client.post("/api/open?name=short.mid", content=short_score.read_bytes())
    assert r.status_code == 200, r.text
    return r.json()


def test_page_and_its_files_are_served_with_nothing_from_the_network(client):
    _, c = client
    page = c.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    for name in ("app.js", "style.css"):
        assert c.get(f"/static/{name}").status_code == 200
    for path in STATIC.iterdir():  # every script and style ships with the package: no http(s) URL at all
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path.name
    info = c.get("/api/info").json()
    assert info["style"]["tempo"] == ["slow", "mid", "fast"] and info["defaults"]["tempo_band"] == 12.0
    assert "Chopin_op10_no3.musicxml" in info["examples"]


def test_requests_for_another_host_are_refused(client):
    _, c = client
    assert c.get("/api/info", headers={"host": "attacker.example"}).status_code == 400


@pytest.mark.parametrize("name,content,status,reason", [
    ("notes.mid", b"not a midi file at all", 400, "not a readable MIDI file"),
    ("notes.musicxml", b"this is not XML", 400, "cannot parse MusicXML"),
    ("xxe.musicxml", (BAD / "xxe.musicxml").read_bytes(), 400, "declares XML entities"),
    ("bomb.musicxml", (BAD / "bomb.musicxml").read_bytes(), 400, "declares XML entities"),
    ("empty.mid", b"", 400, "empty file"),
    ("notes.txt", b"C D E", 400, "unknown score format '.txt'"),
    ("../../etc/passwd.mid", b"junk", 400, "passwd.mid: not a readable MIDI file"),
])
def test_bad_uploads_are_one_line_and_leave_nothing(client, name, content, status, reason):
    studio, c = client
    r = c.post("/api/open", params={"name": name}, content=content)
    assert r.status_code == status
    error = r.json()["error"]
    assert reason in error and "\n" not in error and error.startswith(Path(name).name)
    assert files_under(studio.root) == [], "an upload that was refused leaves no file"
    assert "root:" not in r.text


def test_oversized_upload_is_refused_before_reading_it_whole(tmp_path):
    studio, c = make_client(tmp_path, max_upload_bytes=4096)
    with c:
        r = c.post("/api/open", params={"name": "big.mid"}, content=b"x" * 5000)  # declared length
        assert r.status_code == 413 and r.json()["error"] == "big.mid: file larger than 4 KiB"

        def chunks():  # no declared length: counted while it streams
            for _ in range(10):
                yield b"x" * 1000

        r = c.post("/api/open", params={"name": "big.mid"}, content=chunks())
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        assert files_under(studio.root) == []
    studio.shutdown()


def test_render_passage_keep_and_download(client, short_score, tmp_path):
    import miditoolkit

    studio, c = client
    session = open_short(c, short_score)
    sid = session["id"]
    assert session["bars"] == 6 and session["notes"] == 6 * 4 * 3 + 1 and session["notes_to_play"] == 72
    # a score MIDI at 90 quarters per minute: a stated tempo, no fermata, no dynamics
    assert session["rules"] == {"notated_tempo": True, "fermata_hold": False, "dynamics_band": False}
    assert session["tempo"].startswith("90 quarter notes per minute: the score's metronome mark")
    assert files_under(studio.root) == [], "the upload is deleted once read"
    job = c.post("/api/render", json={"session": sid, "settings": {"seed": 1}}).json()
    job = wait(c, job)
    assert job["state"] == "done", job["error"]
    take = job["take"]
    assert take["id"] == 1 and take["kept"] and take["notes_played"] == 72 and take["passage"] is None
    assert len(take["bar_times_s"]) == 6 and take["bar_times_s"] == sorted(take["bar_times_s"])

    roll = c.get(f"/api/take/{sid}/1/roll.png")
    assert roll.status_code == 200 and roll.content.startswith(PNG)
    axis = c.get(f"/api/take/{sid}/1/roll.json").json()
    assert 0 < axis["x0_px"] < axis["x1_px"] < axis["width_px"] and axis["t1_s"] > take["duration_s"] - 1
    assert c.get(f"/api/take/{sid}/1/curves.png").content.startswith(PNG)
    midi = c.get(f"/api/take/{sid}/1/performance.mid")
    assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
    (tmp_path / "take1.mid").write_bytes(midi.content)
    assert sum(len(i.notes) for i in miditoolkit.MidiFile(str(tmp_path / "take1.mid")).instruments) == 72

    # re-render bars 3-4 in another style: the other bars keep their tokens
    job = c.post("/api/render", json={"session": sid, "settings": {"seed": 5, "style": {"tempo": "fast"}},
                                      "first_bar": 3, "last_bar": 4}).json()
    job = wait(c, job)
    assert job["state"] == "done", job["error"]
    take2 = job["take"]
    assert take2["passage"] == [3, 4] and take2["parent"] == 1 and not take2["kept"]
    assert [j["bar"] for j in take2["joins"]] == [3, 5]
    assert take2["joins"][1]["grid_ms"] == take2["joins"][1]["base_grid_ms"]
    bars1 = c.get(f"/api/take/{sid}/1/tokens").json()["bars"]
    bars2 = c.get(f"/api/take/{sid}/2/tokens").json()["bars"]
    assert bars1[:2] == bars2[:2] and bars1[4:] == bars2[4:] and bars1[2:4] != bars2[2:4]

    assert c.post("/api/keep", json={"session": sid, "take": 2}).json()["kept"] == 2
    final = c.get(f"/api/session/{sid}/final.mid")
    assert final.status_code == 200 and "short-performance.mid" in final.headers["content-disposition"]
    assert final.content == c.get(f"/api/take/{sid}/2/performance.mid").content
    reference = c.get(f"/api/take/{sid}/0/performance.mid")
    assert reference.status_code == 200

    c.delete(f"/api/session/{sid}")
    assert files_under(studio.root) == [] and c.get(f"/api/session/{sid}").status_code == 404


@pytest.mark.skipif(Synth.find().missing is not None, reason="FluidSynth or a soundfont is not installed "
                    "(apt-get install fluidsynth timgm6mb-soundfont; .ci/run does)")
def test_audio_of_a_take_and_of_the_deadpan_score(client, short_score):
    _, c = client
    sid = open_short(c, short_score)["id"]
    ref = c.get(f"/api/take/{sid}/0/audio.oga")
    assert ref.status_code == 200 and ref.headers["content-type"] == "audio/ogg" and ref.content[:4] == b"OggS"
    wait(c, c.post("/api/render", json={"session": sid, "settings": {}}).json())
    audio = c.get(f"/api/take/{sid}/1/audio.oga")
    assert audio.status_code == 200 and audio.content[:4] == b"OggS" and len(audio.content) > 10000


@pytest.mark.skipif(Synth.find().missing is not None, reason="FluidSynth or a soundfont is not installed "
                    "(apt-get install fluidsynth timgm6mb-soundfont; .ci/run does)")
def test_the_bars_finished_so_far_can_be_heard_while_the_rest_renders(client, short_score):
    import threading

    from museformer.serve.studio import StudioError

    studio, c = client
    sid = open_short(c, short_score)["id"]
    bars = split_bars(studio.session(sid).reference)[1]
    release = threading.Event()

    def work(progress):  # a render that has finished its first segment (bars 1-2 of 6) and goes on
        progress(1, 3, bars[:2])
        release.wait(60)
        raise StudioError("stopped by the test")

    job = studio.submit(sid, work, preview=True)
    deadline = time.time() + 60
    while c.get(f"/api/job/{job.id}").json()["preview_bars"] != 2:
        assert time.time() < deadline
        time.sleep(0.05)
    audio = c.get(f"/api/job/{job.id}/preview.oga")
    release.set()
    assert audio.status_code == 200 and audio.content[:4] == b"OggS"
    job_json = wait(c, c.get(f"/api/job/{job.id}").json())
    assert job_json["state"] == "error" and job_json["preview_bars"] == 0


def test_missing_fluidsynth_says_what_to_install_and_keeps_the_midi(tmp_path, short_score):
    studio, c = make_client(tmp_path, synth=Synth(fluidsynth=None, soundfont=None))
    with c:
        info = c.get("/api/info").json()
        assert not info["audio"] and "apt-get install fluidsynth" in info["audio_missing"]
        sid = open_short(c, short_score)["id"]
        r = c.get(f"/api/take/{sid}/0/audio.oga")
        assert r.status_code == 503 and "apt-get install fluidsynth" in r.json()["error"]
        assert c.get(f"/api/take/{sid}/0/performance.mid").status_code == 200
    studio.shutdown()


@pytest.mark.parametrize("body,reason", [
    ({"settings": {"seed": "x"}}, "seed: expected an integer"),
    ({"settings": {"temperature": 0}}, "temperature: 0 is outside"),
    ({"settings": {"style": {"tempo": "warp"}}}, "style tempo='warp'"),
    ({"settings": {"colour": 1}}, "unknown setting 'colour'"),
    ({"settings": {}, "first_bar": 0, "last_bar": 2}, "bars 0-2: choose bars within 1-6"),
    ({"settings": {}, "first_bar": 4, "last_bar": 3}, "bars 4-3"),
    ({"settings": {}, "first_bar": 1, "last_bar": 2}, "render the whole piece first"),
])
def test_bad_render_requests_are_one_line(client, short_score, body, reason):
    _, c = client
    sid = open_short(c, short_score)["id"]
    r = c.post("/api/render", json={"session": sid, **body})
    assert r.status_code == 400 and reason in r.json()["error"] and "\n" not in r.json()["error"]


def test_unknown_session_take_or_job_is_404(client, short_score):
    _, c = client
    assert c.get("/api/take/nope/1/roll.png").status_code == 404
    sid = open_short(c, short_score)["id"]
    assert c.get(f"/api/take/{sid}/7/roll.png").json()["error"] == "no take 7 in this session"
    assert c.get("/api/job/nope").status_code == 404
    assert c.get("/nothing/here").json()["error"] == "not found: /nothing/here"
    assert c.get("/api/open").json()["error"] == "GET /api/open: Method Not Allowed"


def test_old_sessions_are_evicted_with_their_files(tmp_path, short_score):
    studio, c = make_client(tmp_path, max_sessions=1)
    with c:
        first = open_short(c, short_score)["id"]
        c.get(f"/api/take/{first}/0/performance.mid")
        assert files_under(studio.root)
        second = open_short(c, short_score)["id"]
        assert c.get(f"/api/session/{first}").status_code == 404
        assert c.get(f"/api/session/{second}").status_code == 200
        assert not (studio.root / first).exists()
    studio.shutdown()


def test_split_bars_of_a_take_match_the_score(client, short_score):
    studio, c = client
    sid = open_short(c, short_score)["id"]
    bars = c.get(f"/api/take/{sid}/0/tokens").json()["bars"]
    assert len(bars) == len(split_bars(studio.session(sid).score_tokens)[1]) == 6


def test_serve_subcommand_help_and_bad_checkpoint(tmp_path):
    from museformer.render import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    code, err = stderr_of(main, ["serve", "--checkpoint", tmp_path / "missing.pt"])
    expected = f"instruct-render serve: error: {tmp_path / 'missing.pt'}: checkpoint not found"
    assert code == 1 and err.strip().splitlines() == [expected]
    assert "instruct-serve-" not in os.environ.get("INSTRUCT_TOKENIZER_CACHE", ""), "no setting outlives main"


def test_settings_reach_the_renderer(client, short_score):
    """Expected value and the decoding rules load the renderer with those rules; the take says so."""
    studio, c = client
    sid = open_short(c, short_score)["id"]
    settings = {"seed": 2, "expected_value": True, "tempo_band": 0, "min_key_down_ms": 40, "keep_unisons": True}
    take = wait(c, c.post("/api/render", json={"session": sid, "settings": settings}).json())["take"]
    assert "expected value" in take["label"] and "min_key_down_ms=40.0" in take["label"]
    assert take["notes_played"] == 73, "keep_unisons: both notes of the unison are played"
    from museformer.serve.studio import Settings

    r = studio.renderer(Settings.from_json(settings))
    assert (r.decode.type_temperature, r.decode.tempo_band, r.decode.min_key_down_ms, r.decode.unisons_once) == \
        ("Tempo=mean,Vel=mean", 0.0, 40.0, False)


def test_plan_settings_reach_the_renderer():
    """The page's plan widths are instruct-render's, defaults included; out of range is one error."""
    from museformer.decoding.config import TEMPO_PLAN_BINS, VELOCITY_PLAN_BINS
    from museformer.serve.studio import Settings, StudioError

    assert Settings().rules()["tempo_plan"] == TEMPO_PLAN_BINS and Settings().rules()["velocity_plan"] == VELOCITY_PLAN_BINS
    rules = Settings.from_json({"tempo_plan": 0, "velocity_plan": 6, "articulation_plan": 7, "timing_plan": 9}).rules()
    assert (rules["tempo_plan"], rules["velocity_plan"], rules["articulation_plan"], rules["timing_plan"]) == (0, 6, 7, 9)
    with pytest.raises(StudioError, match="timing_plan"):
        Settings.from_json({"timing_plan": -1})
    with pytest.raises(StudioError, match="articulation_plan"):
        Settings.from_json({"articulation_plan": -1})
    with pytest.raises(StudioError, match="velocity_plan"):
        Settings.from_json({"velocity_plan": -1})


def test_the_page_says_which_tempo_and_why_a_played_file_keeps_its_own(client, short_score, tmp_path):
    """The short score's tempo line is its mark; the same notes played (onsets off the grid by a few
    milliseconds, the file at 120 beats per minute, which reads as no mark) keep the file's own tempo
    and the page says why, as instruct-render's log does."""
    import miditoolkit
    import numpy as np

    _, c = client
    midi = miditoolkit.MidiFile(str(short_score))
    midi.tempo_changes = [miditoolkit.TempoChange(120.0, 0)]
    jitter = np.random.default_rng(0).integers(3, 40, size=sum(len(i.notes) for i in midi.instruments))
    for note, shift in zip((n for i in midi.instruments for n in i.notes), jitter):
        note.start, note.end = note.start + int(shift), note.end + int(shift)
    played = tmp_path / "played.mid"
    midi.dump(str(played))
    r = c.post("/api/open?name=played.mid", content=played.read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["tempo"] == ("120 quarter notes per minute: the file's own MIDI tempo: it reads as a "
                                 "performance, not a score")
