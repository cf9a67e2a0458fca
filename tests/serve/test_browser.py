"""End to end in a real browser: ``instruct-render serve`` started as a user starts it, Debian's Chromium
driven by Playwright. Opens an embedded score through the file input, renders it with the released model,
waits for the audio and the pictures, re-renders a bar range in another style, keeps that take, downloads
the MIDI and checks it: one note per score note, the untouched bars token-identical. Bad uploads each give
one line on the page and leave nothing on disk; when the server stops, none of its files are left.

Screenshot: ``tmp_path/serve.png``; set ``UPDATE_DOCS=1`` to write ``docs/serve.png`` too (a test run
would otherwise rewrite a tracked file every time).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, VIENNA
from instruct_tokenizer.encode import score_file_to_tokens, split_bars
from instruct_tokenizer.grammar import target_slots, unison_repeats
from museformer.serve.audio import Synth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCORE = VIENNA / "musicxml" / "Schubert_D783_no15.musicxml"  # 33 bars, 328 notes: one segment
BARS = 33
PASSAGE = (9, 12)  # bars, 1-based, inclusive
TIMEOUT_MS = 240_000


def _skip_reason():
    if not Path(CHROMIUM).is_file():
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The server in its own process, its temporary folder under ``tmp_path/tmp``; yields (url, tmp)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "museformer.render", "serve", "--port", str(port)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            urllib.request.urlopen(url + "/api/info", timeout=5).read()
            break
        except OSError:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
    try:
        yield url, tmp
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
    assert list(tmp.iterdir()) == [], "the server leaves no file behind"


def _files(tmp: Path):
    return sorted(p.name for p in tmp.rglob("*") if p.is_file())


def _message(page) -> str:
    page.wait_for_function("() => !document.querySelector('#message').hidden && "
                           "!document.querySelector('#message').textContent.startsWith('reading')")
    return page.inner_text("#message")


def _wait_media(page, take: int):
    """The performance audio of ``take`` and the deadpan score's audio loaded, the pictures drawn."""
    if Synth.find().missing is None:
        page.wait_for_function(
            f"""() => {{ const a = document.querySelector('#perf-audio'), s = document.querySelector('#score-audio');
                return a.src.includes('/{take}/audio.oga') && a.readyState >= 1 && a.duration > 1
                    && s.readyState >= 1 && s.duration > 1; }}""", timeout=TIMEOUT_MS)
    else:
        assert "apt-get install fluidsynth" in page.inner_text("#audio-missing")
    for image in ("roll", "curves"):
        page.wait_for_function(
            f"""() => {{ const i = document.querySelector('#{image}');
                return i.src.includes('/{take}/{image}.png') && i.complete && i.naturalWidth > 200; }}""",
            timeout=TIMEOUT_MS)


def test_render_listen_steer_download(server, tmp_path):
    import miditoolkit
    from playwright.sync_api import sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            accept_downloads=True, viewport={"width": 1360, "height": 1000})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")

        # bad uploads: one line on the page each, nothing on disk
        bad = [("notmusic.mid", b"hello, not music", "notmusic.mid: not a readable MIDI file"),
               ("xxe.musicxml", (REPO / "tests" / "bad_inputs" / "xxe.musicxml").read_bytes(),
                "xxe.musicxml: declares XML entities (xxe): refused"),
               ("huge.mid", b"\0" * (21 * 2 ** 20), "huge.mid: file larger than 20 MiB")]
        for name, data, reason in bad:
            upload = {"name": name, "mimeType": "application/octet-stream", "buffer": data}
            page.set_input_files("#file", files=[upload])
            text = _message(page)
            assert text.startswith(reason) and "\n" not in text, text
            assert "error" in page.get_attribute("#message", "class")
            assert _files(tmp) == [], "a refused upload leaves no file"
            page.evaluate("() => { document.querySelector('#message').hidden = true; }")

        # open the embedded score through the file input, render it
        page.set_input_files("#file", str(SCORE))
        page.wait_for_function(f"() => document.querySelector('#score-info').textContent.includes('{BARS} bars')")
        page.click("#render")
        page.wait_for_selector("#takes tr[data-take='1']")
        _wait_media(page, 1)

        # re-render bars 5-8 faster with another seed; compare; keep it
        page.fill("#bar-from", str(PASSAGE[0]))
        page.fill("#bar-to", str(PASSAGE[1]))
        page.select_option("#style-tempo", "fast")
        page.fill("#seed", "7")
        page.click("#passage")
        page.wait_for_selector("#takes tr[data-take='2']")
        _wait_media(page, 2)
        page.check("#takes tr[data-take='2'] input[type=radio]")
        page.wait_for_function("() => state.session.kept === 2")
        _wait_media(page, 2)
        page.click("#rules summary")  # the decoding rules open in the screenshot
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        if os.environ.get("UPDATE_DOCS") == "1":
            shutil.copy(tmp_path / "serve.png", REPO / "docs" / "serve.png")

        with page.expect_download() as download:
            page.click("#download")
        midi_path = tmp_path / "final.mid"
        download.value.save_as(midi_path)
        sid = page.evaluate("() => state.session.id")
        take1 = page.request.get(f"{url}/api/take/{sid}/1/tokens").json()["bars"]
        take2 = page.request.get(f"{url}/api/take/{sid}/2/tokens").json()["bars"]
        browser.close()

    first, last = PASSAGE
    assert take1[:first - 1] == take2[:first - 1], "bars before the passage changed"
    assert take1[last:] == take2[last:], "bars after the passage changed"
    assert take1[first - 1:last] != take2[first - 1:last], "the passage was not re-rendered"
    score = score_file_to_tokens(str(SCORE), markings=True)
    assert len(take2) == len(split_bars(score)[1]) == BARS
    repeats = [r for r, slot in zip(unison_repeats(score), target_slots(score)) if slot == "Vel"]
    notes = miditoolkit.MidiFile(str(midi_path)).instruments[0].notes
    assert len(notes) == len(repeats) - sum(repeats), "one note per score note (a unison struck once)"
