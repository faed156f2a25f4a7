"""``streamvlm serve --allow-dir DIR``: chat completions may name a video file on the
server's disk only inside an allowed directory, by its real path, over real sockets."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from _server import ServerThread, request  # noqa: E402

from streamvlm.errors import ConfigError  # noqa: E402
from streamvlm.servers import ServerSettings, create_app  # noqa: E402

API_KEY = "allow-dir-test-key"
CHAT = "/v1/chat/completions"
LIMITS = {"api_key": API_KEY, "max_sessions": 2, "idle_timeout_s": None, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def engine():
    from streamvlm import StreamVLM

    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """An allowed directory holding a clip, and an outside one holding another clip."""
    from streamvlm.samples import write_video

    root = tmp_path_factory.mktemp("disk")
    allowed, outside = root / "allowed", root / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    write_video(allowed / "clip.mp4", num_frames=8, width=64, height=48, fps=8.0)
    write_video(outside / "secret.mp4", num_frames=8, width=64, height=48, fps=8.0)
    (allowed / "escape.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "dangling.mp4").symlink_to(outside / "nothing.mp4")
    (allowed / "inner-link.mp4").symlink_to(allowed / "clip.mp4")
    (allowed / "not-a-video.mp4").write_bytes(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    os.mkfifo(allowed / "fifo.mp4")
    return allowed, outside


@pytest.fixture(scope="module")
def closed(engine):
    """A server started without --allow-dir (the default)."""
    settings = ServerSettings(**LIMITS)
    running = ServerThread(create_app(engine, settings), settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def opened(engine, disk):
    """A server allowed to read under ``disk``'s allowed directory, given through a symlink
    and with a trailing ``/.`` (both resolved at start-up)."""
    allowed, _ = disk
    alias = allowed.parent / "alias"
    alias.symlink_to(allowed, target_is_directory=True)
    settings = ServerSettings(**LIMITS, allowed_dirs=(f"{alias}/.",))
    assert settings.allowed_dirs == (os.path.realpath(allowed),)
    running = ServerThread(create_app(engine, settings), settings)
    yield running
    running.stop()


def ask(server, url: str, **extra):
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What moved?"}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "streamvlm": {"fps": 4}}
    return request(server.http, "POST", CHAT, body | extra, token=API_KEY)


def refused(reply, code: str = "path_not_allowed") -> bool:
    error = reply["error"]
    return error["code"] == code and "\n" not in error["message"]


def test_default_server_reads_no_file(closed, disk):
    allowed, _ = disk
    for url in (f"file://{allowed}/clip.mp4", str(allowed / "clip.mp4"), "file:///etc/passwd", "clip.mp4"):
        status, reply = ask(closed, url)
        assert status == 403 and refused(reply), (url, reply)
        assert "--allow-dir" in reply["error"]["message"]
    assert request(closed.http, "GET", "/health")[1]["sessions"] == 0


def test_allowed_file_is_answered_like_an_inline_video(opened, disk):
    allowed, _ = disk
    before = request(opened.http, "GET", "/health")[1]["sessions"]
    for url in (
        f"file://{allowed}/clip.mp4",
        "file://localhost" + str(allowed / "clip.mp4"),
        str(allowed / "sub" / ".." / "clip.mp4"),  # '..' that stays inside is fine
        f"file://{allowed}/inner-link.mp4",  # a link to a file inside is fine
        f"file://{allowed}/%63lip.mp4",  # percent-encoded as a URL
    ):
        status, reply = ask(opened, url)
        assert status == 200, (url, reply)
        spans = reply["streamvlm"]["spans"]
        assert spans[0]["t_start"] == 0.0 and spans[-1]["t_end"] >= 0.75, spans  # the 1-s clip at 4 fps
        assert reply["choices"][0]["message"]["content"] == reply["streamvlm"]["text"]
    assert request(opened.http, "GET", "/health")[1]["sessions"] == before  # the throwaway sessions closed


def test_paths_out_of_the_allowed_dir_are_refused_alike(opened, disk):
    allowed, outside = disk
    urls = [
        f"file://{allowed}/../outside/secret.mp4",  # '..' escape to an existing file
        f"file://{allowed}/../outside/missing.mp4",  # ... and to a missing one: the same answer
        f"file://{allowed}/sub/../../outside/secret.mp4",
        str(allowed / ".." / "outside" / "secret.mp4"),
        f"file://{allowed}/escape.mp4",  # a link inside pointing outside
        f"file://{allowed}/dangling.mp4",  # a dangling link pointing outside
        f"file://{outside}/secret.mp4",  # an absolute path outside
        str(outside / "secret.mp4"),
        "/etc/passwd",
        "/nonexistent/file.mp4",
        f"file://{allowed}",  # the directory itself
        f"file://{allowed}/sub",  # a directory inside
        f"file://{allowed}/fifo.mp4",  # not a regular file (and opening it must not hang)
        f"file://{allowed}/%2E%2E/outside/secret.mp4",  # an encoded '..'
        f"file://{allowed}/clip.mp4%00.txt",  # an encoded NUL
        f"file://elsewhere{allowed}/clip.mp4",  # another host
        f"file://{allowed}/clip.mp4?x=1",
        "clip.mp4",  # relative: to nothing
        f"{allowed.name}/clip.mp4",
    ]
    messages = set()
    for url in urls:
        status, reply = ask(opened, url)
        assert status == 403 and refused(reply), (url, reply)
        messages.add(reply["error"]["message"])
    assert len(messages) == 1  # nothing in the answer tells what exists out there


def test_missing_file_inside_is_not_found(opened, disk):
    allowed, _ = disk
    for url in (f"file://{allowed}/missing.mp4", str(allowed / "sub" / "missing.mp4")):
        status, reply = ask(opened, url)
        assert status == 404 and refused(reply, "video_not_found"), (url, reply)


def test_allowed_file_gets_the_inline_videos_checks(opened, disk):
    allowed, _ = disk
    # the container is sniffed from the bytes, whatever the file is called
    status, reply = ask(opened, f"file://{allowed}/not-a-video.mp4")
    assert status == 400 and refused(reply, "bad_video"), reply
    # other schemes are still not fetched
    status, reply = ask(opened, "https://example.com/clip.mp4")
    assert status == 400 and refused(reply, "bad_video"), reply
    # and a file naming a session too is still one too many
    status, reply = ask(opened, f"file://{allowed}/clip.mp4", streamvlm={"session": "x"})
    assert status == 400 and refused(reply, "bad_request"), reply


def test_a_file_needs_the_api_key(opened, disk):
    allowed, _ = disk
    content = [
        {"type": "video_url", "video_url": {"url": f"file://{allowed}/clip.mp4"}},
        {"type": "text", "text": "What?"},
    ]
    body = {"messages": [{"role": "user", "content": content}]}
    status, reply = request(opened.http, "POST", CHAT, body)
    assert status == 401 and refused(reply, "unauthorized"), reply


def test_allowed_file_over_the_size_limit(engine, disk):
    allowed, _ = disk
    small = ServerSettings(**LIMITS, max_video_bytes=512, allowed_dirs=(str(allowed),))
    running = ServerThread(create_app(engine, small), small)
    try:
        status, reply = ask(running, f"file://{allowed}/clip.mp4")
        assert status == 413 and refused(reply, "video_too_large"), reply
    finally:
        running.stop()


def test_settings_resolve_and_check_dirs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    settings = ServerSettings(allowed_dirs=(str(tmp_path / "d" / ".." / "d"), str(tmp_path / "d")))
    assert settings.allowed_dirs == (os.path.realpath(tmp_path / "d"),)
    assert ServerSettings().allowed_dirs == ()
    for bad in ((str(tmp_path / "missing"),), (str(tmp_path / "f"),), str(tmp_path)):
        with pytest.raises(ConfigError):
            ServerSettings(allowed_dirs=bad)


@pytest.mark.parametrize("bad", ["/nonexistent/streamvlm-dir", "FILE"])
def test_serve_with_a_bad_allow_dir_is_one_error_line(bad, tmp_path, capsys, monkeypatch):
    from streamvlm import cli

    if bad == "FILE":
        bad = str(tmp_path / "file")
        (tmp_path / "file").write_text("x")
    monkeypatch.setattr("streamvlm.StreamVLM.from_pretrained", _no_model)
    assert cli.main(["serve", "--port", "0", "--allow-dir", str(tmp_path), "--allow-dir", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--allow-dir" in err[0], err


def test_serve_help_documents_allow_dir(capsys):
    from streamvlm import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    assert "--allow-dir DIR" in capsys.readouterr().out


def _no_model(*args, **kwargs):
    raise AssertionError("a bad --allow-dir must be reported before the model loads")
