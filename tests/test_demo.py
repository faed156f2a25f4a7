"""The Gradio live demo: its parts without a browser, its command, and the page in headless Chromium.

The browser test serves the demo mounted in the real server app on a loopback port,
opens it in Debian's Chromium with a fake webcam (``--use-fake-device-for-media-stream``),
starts the webcam stream, checks that frames reach the tab's session, asks a question
in the chat box and waits for the answer. It keeps a screenshot: in
``$STREAMVLM_TEST_ARTIFACTS`` when set, else in pytest's tmp_path (the path is printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamvlm.errors import ConfigError

HAVE_GRADIO = importlib.util.find_spec("gradio") is not None
HAVE_SERVER = (
    importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("uvicorn") is not None
)
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

needs_gradio = pytest.mark.skipif(
    not (HAVE_GRADIO and HAVE_SERVER),
    reason="the demo needs gradio and the server extra: pip install -e '.[demo,server]'",
)
needs_browser = pytest.mark.skipif(
    not (HAVE_SELENIUM and CHROMIUM and CHROMEDRIVER),
    reason="the browser test needs selenium (pip) and Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver)",
)


def _frame(i: int, size: int = 64) -> np.ndarray:
    rgb = np.full((size, size, 3), i * 37 % 255, dtype=np.uint8)
    rgb[8:24, (i * 5) % 40 : (i * 5) % 40 + 16] = 255
    return rgb


# ----------------------------------------------------------------- no browser, no Gradio


def test_thumbnail_ring_keeps_the_newest_frames_and_finds_them_by_time():
    from streamvlm.demos.thumbnails import ThumbnailRing

    ring = ThumbnailRing(capacity=4, side=16)
    for i in range(6):
        ring.add(i * 0.5, _frame(i))
    assert len(ring) == 4 and ring.oldest == 1.0
    assert [th.t for th in ring.between(1.4, 2.0)] == [1.5, 2.0]
    assert ring.between(0.0, 0.9) == []  # evicted
    image = ring.between(2.5, 2.5)[0].image()
    assert max(image.size) <= 16 and image.mode == "RGB"


def test_demo_session_keeps_times_increasing_and_maps_answers_to_thumbnails(engine):
    from streamvlm.demos.panels import answer_note, memory_details_markdown, memory_markdown
    from streamvlm.demos.state import DemoSessions

    sessions = DemoSessions(engine, max_sessions=1)
    demo = sessions.get_or_create("tab")
    assert sessions.get_or_create("tab") is demo
    with pytest.raises(ConfigError, match="already serves 1"):
        sessions.get_or_create("other tab")
    demo.push(_frame(0), 5.0)
    demo.push(_frame(1), 1.0)  # a second source behind the first: nudged after it, not refused
    demo.push(_frame(2), 65.5)
    demo.push(_frame(3))
    assert demo.session.drain(30)
    stats = demo.stats()
    assert stats.frames_seen == 4 and stats.blocks == 2
    assert "**4** frames watched, up to 1:05" in memory_markdown(stats)
    assert "| device |" in memory_details_markdown(stats) and "blocks 2" in memory_details_markdown(stats)

    stream = demo.ask_stream("what did you see?", max_new_tokens=3)
    with pytest.raises(ConfigError, match="still streaming"):
        demo.ask_stream("and now?")
    "".join(stream)
    retrieved = demo.retrieved(stream.answer)
    assert [r.t_start for r in retrieved] == sorted(r.t_start for r in retrieved)
    assert sum(len(r.thumbnails) for r in retrieved) == 4  # every frame is still in the ring
    assert not any(r.pictures_lost for r in retrieved)
    note = answer_note(stream.answer, retrieved)
    assert note.startswith("Answered over the video up to 1:05; looked at 2 moments: 0:05, 1:05"), note
    "".join(demo.ask_stream("again?", max_new_tokens=1))  # the answer lock was released
    sessions.close_all()
    assert len(sessions) == 0


def test_times_read_as_a_video_player_shows_them():
    from streamvlm.demos.panels import clock, span_clock

    assert [clock(t) for t in (0.0, 0.99, 12.4, 75.0, 3725.2)] == ["0:00", "0:00", "0:12", "1:15", "1:02:05"]
    assert span_clock(12.0, 14.5) == "0:12–0:14"
    assert span_clock(12.0, 12.5) == "0:12"  # one second: one time


def test_a_question_that_waits_for_its_frames_says_so():
    from streamvlm.demos.panels import waiting_note

    assert waiting_note(12) == "*Watching the 12 frames sent before your question first…*"
    assert waiting_note(1) == "*Watching the 1 frame sent before your question first…*"


def test_the_model_line_says_what_the_model_can_answer():
    from streamvlm.demos.panels import model_markdown
    from streamvlm.models.catalog import model_card

    synth = model_markdown("streamvlm-tiny-synth")
    assert "`streamvlm-tiny-synth`" in synth and model_card("streamvlm-tiny-synth").can_answer in synth
    assert "answers are noise" in model_markdown("tiny-qwen2.5-vl")
    # a real checkpoint: streamvlm does not speak for it, the line names it only
    assert model_markdown("Qwen/Qwen2.5-VL-7B-Instruct") == "**Model:** `Qwen/Qwen2.5-VL-7B-Instruct`"


JARGON = re.compile(r"\b(top[-_ ]?k|answer window|blocks?|tiers?|tokens?|KV)\b", re.IGNORECASE)


def test_every_attended_moment_is_listed_and_evicted_pictures_are_named(engine, tmp_path):
    """16 frames (8 moments of 2) with pictures kept of the last 4 frames only, memory on
    disk: all 8 moments are in the HTML, 6 open and 2 behind the expander, each caption
    says its memory came from disk, and the 6 whose pictures were evicted say so instead
    of vanishing."""
    from streamvlm.config import MemoryConfig
    from streamvlm.demos.attended import MOMENTS_SHOWN, attended_html
    from streamvlm.demos.panels import memory_markdown
    from streamvlm.demos.state import DemoSession

    on_disk = MemoryConfig(device_bytes=0, host_bytes=0, disk_dir=str(tmp_path / "session"))
    demo = DemoSession(engine, on_disk, thumbnails=4)
    for i in range(16):
        demo.push(_frame(i), 10.0 + i)
    assert demo.session.drain(30)
    answer = demo.session.ask("what did you see?", max_new_tokens=1)
    retrieved = demo.retrieved(answer)
    assert len(retrieved) == 8 and MOMENTS_SHOWN == 6
    assert [r.pictures_lost for r in retrieved] == [True] * 6 + [False] * 2
    html = attended_html(retrieved, demo.thumbnails.capacity)
    assert html.count("<figure") == 8 and html.count("<img") == 4
    assert "The last answer looked at 8 moments of the video, 0:10–0:25:" in html
    expander = html[html.index("<details") : html.index("</details>")]
    assert "Show 2 earlier moments (0:10–0:13)" in expander and expander.count("<figure") == 2
    assert html.count("no picture kept</div>") == 6
    assert html.count("its picture was not kept (the demo keeps pictures of the last 4 frames)") == 6
    assert html.count(", from memory (disk)") == 8
    assert "<figcaption>0:24–0:25, from memory (disk)</figcaption>" in html
    assert not JARGON.search(re.sub(r"<[^>]+>", " ", html)), "the attended view speaks plainly"
    panel = memory_markdown(demo.stats())
    assert "- memory in use: " in panel and panel.endswith(" on disk") and not JARGON.search(panel)
    demo.close()


def test_a_video_file_plays_into_the_session_at_its_own_timestamps(engine, sample_video):
    from streamvlm.config import MemoryConfig
    from streamvlm.demos.state import DemoSession, video_frames

    # a queue of 2 frames: played faster than real time, the video waits for room, never dropped
    demo = DemoSession(engine, MemoryConfig(queue_frames=2))
    fed = []
    played = demo.play(video_frames(sample_video, fps=2.0), realtime=False, stopped=lambda: len(fed) >= 6)
    for _rgb, t in played:
        fed.append(t)
    # a new session reads the video's own times
    assert fed == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=0.01)
    assert demo.session.drain(30)
    stats = demo.stats()
    assert stats.frames_seen == 6 and stats.frames_dropped == 0
    assert len(demo.thumbnails.between(fed[0], fed[-1])) == 6
    demo.close()


def test_demo_parser_imports_neither_torch_nor_gradio():
    """`streamvlm --help` builds this parser: it must stay light."""
    code = (
        "import argparse, sys; from streamvlm.demos.cli import add_demo_parser; "
        "p = argparse.ArgumentParser(); add_demo_parser(p.add_subparsers()); "
        "p.parse_args(['demo', '--port', '0']); "
        "print(sorted({'torch', 'transformers', 'gradio', 'fastapi'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _demo_args(*argv: str) -> argparse.Namespace:
    from streamvlm.demos.cli import add_demo_parser

    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


@pytest.mark.parametrize(
    "argv, message",
    [(["--port", "70000"], "--port"), (["--fps", "0"], "--fps"), (["--max-sessions", "0"], ">= 1")],
)
def test_demo_command_rejects_bad_options_before_loading_a_model(argv, message):
    args = _demo_args(*argv)
    with pytest.raises(ConfigError, match=message):
        args.func(args)


# ------------------------------------------------------------------- the served demo


@pytest.fixture(scope="module")
def engine():
    """The bundled model: what a person meets first, and it answers about shapes.mp4."""
    from streamvlm import StreamVLM

    return StreamVLM.from_pretrained("streamvlm-tiny-synth", device="cpu", dtype="float32")


@needs_gradio
def test_demo_command_serves_the_page_standalone():
    """`streamvlm demo` on its own: the page is served at / (the command runs in a child process)."""
    code = (
        "import argparse; from streamvlm.demos.cli import add_demo_parser; "
        "p = argparse.ArgumentParser(); add_demo_parser(p.add_subparsers()); "
        "a = p.parse_args(['demo', '--model', 'tiny-qwen2.5-vl', '--device', 'cpu', '--port', '0']); "
        "a.func(a)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the demo command exited early"
            if "streamvlm: demo of" in line:
                url = line.split(" on ", 1)[1].strip()
        assert url is not None and url.endswith("/"), url
        # the URL is printed once the port is bound; uvicorn starts accepting a moment later
        page = _wait("the page", lambda: _get(url), timeout=30).decode()
        assert "<html" in page and "gradio" in page.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_demo(engine):
    """The server app with the demo mounted at /demo, on a free loopback port; yields (server, sessions)."""
    if not (HAVE_GRADIO and HAVE_SERVER):
        pytest.skip("the demo needs gradio and the server extra: pip install -e '.[demo,server]'")
    from _server import ServerThread

    from streamvlm.demos import DemoSessions, mount_demo
    from streamvlm.servers import ServerSettings, create_app

    settings = ServerSettings(api_key=None)
    app = create_app(engine, settings)
    # every block attended (the bundled model's default answers over three): the page test
    # needs more moments than the view shows open
    sessions = DemoSessions(engine, engine.memory(top_k=None), max_sessions=2)
    mount_demo(app, engine, "/demo", sessions=sessions, max_new_tokens=8)
    server = ServerThread(app, settings)
    yield server, sessions
    server.stop()
    assert len(sessions) == 0, "the app's shutdown closes the demo's sessions"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="streamvlm-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # we may run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # no network here: without these Chromium keeps trying Google's hosts
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",  # a synthetic webcam
        "--use-fake-ui-for-media-stream",  # grant camera access without asking
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _get(url: str) -> bytes | None:
    try:
        return urllib.request.urlopen(url, timeout=30).read()
    except OSError:
        return None


def _wait(what: str, condition, timeout: float = 30.0, every: float = 0.2):
    """Poll ``condition`` until it returns something true. The page is built by script and
    Gradio re-renders parts of it as values change, so an element not there yet or gone
    stale counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as e:
            if type(e).__name__ not in ("StaleElementReferenceException", "NoSuchElementException"):
                raise
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _click(what: str, find, timeout: float = 30.0) -> None:
    """Click the first element ``find()`` returns, finding it again if it went stale."""
    _wait(what, lambda: (els := find()) and (els[0].click() or True), timeout)


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


@needs_gradio
@needs_browser
def test_demo_page_streams_the_webcam_into_a_session_and_answers(served_demo, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server, sessions = served_demo
    before = sessions.sessions()
    browser.get(server.http + "/demo/")
    _wait("the page", lambda: "streamvlm" in browser.find_element(By.TAG_NAME, "h2").text)

    # Gradio's webcam: grant access (the fake UI accepts), then start streaming.
    def webcam_button(label):
        return lambda: [
            b
            for b in browser.find_elements(By.CSS_SELECTOR, "#streamvlm-webcam button")
            if label in b.text and b.is_displayed()
        ]

    _click("the webcam access button", webcam_button("Access Webcam"))
    _click("the record button", webcam_button("Record"))

    session = _wait("the tab's session", lambda: [x for x in sessions.sessions() if x not in before])[0]
    _wait("webcam frames in the session", lambda: session.stats().frames_seen >= 4)
    assert session.stats().blocks >= 1
    _wait("the memory panel to show frames", lambda: "frames watched" in _text(browser, "streamvlm-memory"))

    box = browser.find_element(By.CSS_SELECTOR, "#streamvlm-question textarea")
    box.send_keys("What did the camera show?", Keys.ENTER)
    _wait("the answer", lambda: "looked at" in _text(browser, "streamvlm-chat"), timeout=45)
    assert "What did the camera show?" in _text(browser, "streamvlm-chat")
    _wait(
        "the attended frames' thumbnails",
        lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-attended img"),
    )
    # Frames keep flowing around the answer. Not strictly *while* it streams any more: the
    # device lock lets up to MAX_PASSED_OVER (16) answer grants overtake a waiting chunk, so
    # a short answer can hold the chunk until it ends (runtime/scheduling.py); the next
    # frames are taken right after.
    _wait("webcam frames after the answer", lambda: session.stats().frames_seen > 4, timeout=15)

    artifacts = Path(os.environ.get("STREAMVLM_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "demo_webcam_answer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # "Forget everything" closes the tab's session at once (leaving the page closes it too, once
    # Gradio's heartbeat notices: up to tens of seconds, too slow to wait for here).
    _click("the reset button", lambda: browser.find_elements(By.ID, "streamvlm-reset"))
    _wait("the session to close", lambda: session not in sessions.sessions())
    _wait("its encoder thread to end", lambda: not session.session._worker.is_alive())
    assert not session.push(_frame(0)), "a closed session takes no frames"


@needs_gradio
@needs_browser
def test_demo_page_plays_an_uploaded_video_as_a_stream(served_demo, browser, sample_video):
    from selenium.webdriver.common.by import By

    server, sessions = served_demo
    before = sessions.sessions()
    browser.get(server.http + "/demo/")
    _click(
        "the video tab",
        lambda: [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Video" in b.text],
    )
    upload = _wait(
        "the upload input",
        lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-video input[type=file]"),
    )
    upload[0].send_keys(str(sample_video))
    _wait("the upload", lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-video video"))
    _click("the play button", lambda: browser.find_elements(By.ID, "streamvlm-play"))
    session = _wait("the tab's session", lambda: [x for x in sessions.sessions() if x not in before])[0]
    _wait("video frames in the session", lambda: session.stats().frames_seen >= 3)
    _click("the stop button", lambda: browser.find_elements(By.ID, "streamvlm-stop"))
    seen = session.stats().frames_seen
    time.sleep(1.5)  # at 2 fps, three more frames would have gone in had Stop not stopped it
    assert session.stats().frames_seen <= seen + 1


SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes.mp4"
# what the page says on its main surface, in plain words (the jargon is only under "Advanced")
PLAIN_LABELS = (
    "ask about anything the video has shown",
    "Play as a live stream",
    "play as fast as the model can watch",
    "What the model remembers",
    "frames watched",
    "Forget everything and start over",
    "Advanced: answer options",
    "Advanced: memory details",
)


@needs_gradio
@needs_browser
def test_demo_page_reads_plainly_and_shows_every_moment_an_answer_looked_at(served_demo, browser, tmp_path):
    """A person's first contact: upload assets/shapes.mp4, play it, ask, and read the page.

    Checks in Chromium what a person sees: plain labels and no jargon on the main surface,
    the model line with what the model can answer, the answer, every attended moment
    reachable (the earlier ones behind "Show N earlier moments"), every caption whole
    (not clipped: its scroll size equals its client size), and a screenshot of it all.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from streamvlm.demos.attended import MOMENTS_SHOWN
    from streamvlm.models.catalog import model_card

    server, sessions = served_demo
    before = sessions.sessions()
    browser.get(server.http + "/demo/")
    model_line = _wait("the model line", lambda: _text(browser, "streamvlm-model"))
    assert "streamvlm-tiny-synth" in model_line
    assert model_card("streamvlm-tiny-synth").can_answer in model_line

    _click(
        "the video tab",
        lambda: [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Video" in b.text],
    )
    upload = _wait(
        "the upload input",
        lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-video input[type=file]"),
    )
    upload[0].send_keys(str(SHAPES))
    _wait("the upload", lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-video video"))
    _click("the fast checkbox", lambda: browser.find_elements(By.CSS_SELECTOR, "#streamvlm-fast input"))
    _click("the play button", lambda: browser.find_elements(By.ID, "streamvlm-play"))
    _wait("the video to be sent", lambda: "done: 20 frames sent" in _text(browser, "streamvlm-playback"), 60)
    session = [x for x in sessions.sessions() if x not in before][0]
    # Session's questions wait for the frames sent before them (issue 16 item 1); draining
    # here too keeps this test about the page, whichever side of that change it runs on.
    assert session.session.drain(60)
    _wait("the memory panel", lambda: "20 frames watched, up to 0:19" in _text(browser, "streamvlm-memory"))

    box = browser.find_element(By.CSS_SELECTOR, "#streamvlm-question textarea")
    box.send_keys("What digit did the diamond show?", Keys.ENTER)
    chat = _wait("the answer", lambda: "looked at" in (t := _text(browser, "streamvlm-chat")) and t, 60)
    assert "Answered over the video up to 0:19; looked at 10 moments" in chat
    assert re.search(r"\b7\b", chat.split("What digit did the diamond show?")[1]), chat

    # plain words on the main surface; the expert words are only in the collapsed accordions
    page = browser.execute_script("return document.body.innerText")
    for label in PLAIN_LABELS:
        assert label in page, f"{label!r} is not on the page"
    assert not JARGON.search(page), f"jargon on the main surface: {JARGON.search(page).group(0)!r}"

    # every attended moment reachable: the newest open, the earlier ones one click away
    attended = browser.find_element(By.ID, "streamvlm-attended")
    assert "looked at 10 moments of the video, 0:00–0:19" in attended.text
    moments = attended.find_elements(By.CSS_SELECTOR, "figure")
    assert len(moments) == 10 == session.stats().blocks
    assert sum(m.is_displayed() for m in moments) == MOMENTS_SHOWN
    summary = attended.find_element(By.CSS_SELECTOR, "summary")
    assert summary.text == "Show 4 earlier moments (0:00–0:07)"
    summary.click()
    _wait("the earlier moments", lambda: all(m.is_displayed() for m in moments))
    pictures = attended.find_elements(By.CSS_SELECTOR, "img")
    assert len(pictures) == 20 and all(p.is_displayed() for p in pictures)
    assert all(browser.execute_script("return arguments[0].naturalWidth", p) > 0 for p in pictures)

    # every caption whole: the times and where the memory came from, nothing clipped
    captions = attended.find_elements(By.CSS_SELECTOR, "figcaption")
    texts = [c.text for c in captions]
    assert texts[0] == "0:00–0:01, from memory (device)" and texts[-1] == "0:18–0:19, from memory (device)"
    assert all(re.fullmatch(r"\d+:\d\d(–\d+:\d\d)?, from memory \((device|RAM|disk)\)", t) for t in texts), (
        texts
    )
    sizes = browser.execute_script(
        "return arguments[0].map(e => [e.scrollWidth, e.clientWidth, e.scrollHeight, e.clientHeight])",
        captions,
    )
    assert all(sw <= cw and sh <= ch for sw, cw, sh, ch in sizes), sizes

    # the screenshot: the whole page, after the window grows to hold it
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(max(height + 150, 1000), 2400))  # + the window's own frame
    browser.execute_script("window.scrollTo(0, 0)")
    artifacts = Path(os.environ.get("STREAMVLM_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "demo_video_answer.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
