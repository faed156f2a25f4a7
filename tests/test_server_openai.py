"""The OpenAI-compatible endpoint over real sockets: answers over a session's memory and
over an inline video, whole or as server-sent events (read raw and by the official
``openai`` package), and its refusals (a too-long video before any frame is encoded)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from _server import ServerThread, auth, jpeg, request  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from streamvlm.servers import ServerSettings, create_app, pack_frame  # noqa: E402

API_KEY = "openai-test-key"
SETTINGS = ServerSettings(
    api_key=API_KEY,
    max_sessions=3,
    idle_timeout_s=None,
    max_new_tokens=16,
    max_video_bytes=256 << 10,
    max_video_frames=12,
    stream_keepalive_s=0.05,
)
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server():
    from streamvlm import StreamVLM

    engine = StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    running = ServerThread(create_app(engine, SETTINGS), SETTINGS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def watched(server):
    """A session that has seen 8 frames over the websocket (and persists after its ``close``)."""
    body = {"memory": {"window": 2}, "persist": True}
    status, session = request(server.http, "POST", "/v1/sessions", body, token=API_KEY)
    assert status == 201

    async def feed():
        async with connect(server.ws + session["stream"], additional_headers=auth(session["token"])) as ws:
            for i in range(8):
                await ws.send(pack_frame(jpeg(i), t=i * 0.5))
                assert json.loads(await ws.recv())["type"] == "ack"
            await ws.send(json.dumps({"type": "close"}))
            assert json.loads(await ws.recv())["cause"] == "close"

    asyncio.run(feed())
    yield session
    request(server.http, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])


def chat_body(**extra) -> dict:
    return {"model": "tiny-qwen2.5-vl", "messages": [{"role": "user", "content": "What moved?"}], **extra}


def sse_with_comments(base: str, body: dict, token: str) -> tuple[list[str], list[str]]:
    """(``data:`` payloads, ``:`` comment lines) of a streamed completion, each in order."""
    req = urllib.request.Request(base + CHAT, data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.read().decode().split("\n") if line]
    assert all(line.startswith(("data: ", ": ")) for line in lines), lines
    events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    return events, [line for line in lines if line.startswith(": ")]


def sse(base: str, body: dict, token: str) -> list[str]:
    """The ``data:`` payloads of a streamed completion, in order."""
    return sse_with_comments(base, body, token)[0]


def test_models_lists_the_served_model(server):
    status, body = request(server.http, "GET", "/v1/models", token=API_KEY)
    assert status == 200 and [m["id"] for m in body["data"]] == ["tiny-qwen2.5-vl"]


def test_completion_over_a_sessions_memory(server, watched):
    body = chat_body(max_tokens=6, streamvlm={"session": watched["id"], "top_k": 1})
    status, reply = request(server.http, "POST", CHAT, body, token=watched["token"])
    assert status == 200, reply
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny-qwen2.5-vl"
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == reply["streamvlm"]["text"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["completion_tokens"] == reply["streamvlm"]["timings"]["new_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the 2-frame window's block and the one retrieved: not all four
    assert 1 <= len(reply["streamvlm"]["blocks"]) < 4 and reply["streamvlm"]["spans"]


def test_streamed_completion_is_server_sent_events(server, watched):
    body = chat_body(
        stream=True,
        max_completion_tokens=8,
        stream_options={"include_usage": True},
        streamvlm={"session": watched["id"]},
    )
    events = sse(server.http, body, watched["token"])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == finish["streamvlm"]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_completion_over_an_inline_video(server, make_video):
    before = request(server.http, "GET", "/health")[1]["sessions"]
    video = make_video("clip.mp4", num_frames=16, width=64, height=48, fps=8.0).read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What moved?"}]
    body = chat_body(messages=[{"role": "user", "content": content}], max_tokens=4, streamvlm={"fps": 4})
    status, reply = request(server.http, "POST", CHAT, body, token=API_KEY)
    assert status == 200, reply
    spans = reply["streamvlm"]["spans"]
    assert spans[0]["t_start"] == 0.0 and spans[-1]["t_end"] >= 1.5  # the whole 2-s clip at 4 fps
    events = sse(server.http, body | {"stream": True}, API_KEY)
    assert events[-1] == "[DONE]" and "error" not in events[-2]
    # the throwaway sessions are gone and freed their slots
    assert request(server.http, "GET", "/health")[1]["sessions"] == before
    free = SETTINGS.max_sessions - before
    created = [request(server.http, "POST", "/v1/sessions", {}, token=API_KEY) for _ in range(free)]
    assert [status for status, _ in created] == [201] * free
    for _, s in created:
        request(server.http, "DELETE", f"/v1/sessions/{s['id']}", token=s["token"])


def _video_part(url: str) -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What?"}]


@pytest.mark.parametrize(
    "body, status, code",
    [
        (chat_body(), 400, "bad_request"),  # neither a session nor a video
        (chat_body(model="gpt-4o", streamvlm={"session": "x"}), 404, "model_not_found"),
        (chat_body(n=2, streamvlm={"session": "x"}), 400, "bad_option"),
        (chat_body(max_tokens=10**6, streamvlm={"session": "x"}), 400, "bad_option"),
        (chat_body(streamvlm={"session": "x", "fps": 0}), 400, "bad_option"),
        (chat_body(streamvlm={"sesion": "x"}), 400, "bad_option"),
        (chat_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "bad_request"),
        (chat_body(messages=[{"role": "system", "content": "hi"}]), 400, "bad_request"),
        (
            chat_body(messages=[{"role": "user", "content": _video_part("file:///etc/passwd")}]),
            403,
            "path_not_allowed",  # no --allow-dir: the server reads no path a client names
        ),
        (
            chat_body(messages=[{"role": "user", "content": _video_part("https://example.com/v.mp4")}]),
            400,
            "bad_video",
        ),
        (
            chat_body(messages=[{"role": "user", "content": _video_part("data:video/mp4;base64,@@@")}]),
            400,
            "bad_video",
        ),
        (
            # an HLS playlist pointing at a local file: refused before FFmpeg sees it
            chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": _video_part(
                            "data:video/mp4;base64,"
                            + base64.b64encode(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n").decode()
                        ),
                    }
                ]
            ),
            400,
            "bad_video",
        ),
        (
            chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": _video_part(
                            "data:video/mp4;base64,"
                            + base64.b64encode(b"\0\0\0\x18ftypmp42" + b"\0" * 64).decode()
                        ),
                    }
                ]
            ),
            400,
            "bad_video",
        ),
    ],
)
def test_refusals_are_one_line_errors(server, body, status, code):
    got, reply = request(server.http, "POST", CHAT, body, token=API_KEY)
    assert got == status, reply
    assert reply["error"]["code"] == code and "\n" not in reply["error"]["message"]


def test_a_session_answers_only_to_its_own_token(server, watched):
    body = chat_body(streamvlm={"session": watched["id"]})
    assert request(server.http, "POST", CHAT, body, token=API_KEY)[0] == 403  # the API key is not its token
    assert request(server.http, "POST", CHAT, body)[0] == 401
    assert (
        request(server.http, "POST", CHAT, chat_body(streamvlm={"session": "nope"}), token=API_KEY)[0] == 404
    )
    # inline videos need the API key
    status, reply = request(
        server.http,
        "POST",
        CHAT,
        chat_body(messages=[{"role": "user", "content": _video_part("data:video/mp4;base64,AAAA")}]),
    )
    assert status == 401
    # a body over the video limit is refused before it is read
    big = b'{"messages": "' + b"x" * (500 << 10) + b'"}'
    status, reply = request(server.http, "POST", CHAT, raw=big, token=API_KEY)
    assert status == 413 and reply["error"]["code"] == "message_too_large", reply


# ------------------------------------------------------------- inline video: limits and streaming


def video_body(video: bytes, fps: float, **extra) -> dict:
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    return chat_body(
        messages=[{"role": "user", "content": _video_part(url)}], streamvlm={"fps": fps}, **extra
    )


def without_duration(mkv: bytes) -> bytes:
    """A Matroska file whose Segment Info has no Duration: the element (ID 0x4489, 8-byte
    float) becomes a Void element of the same length, so no metadata says how long it is."""
    at = mkv.find(b"\x44\x89\x88")
    assert at > 0
    return mkv[:at] + b"\xec\x89" + b"\0" * 9 + mkv[at + 11 :]


def sessions_in_use(server) -> int:
    """Open sessions plus slots held by throwaway ones (inline videos being encoded)."""
    registry = server.server.config.app.state.registry
    return len(registry) + registry._reserved


def wait_for_slots(server, in_use: int) -> None:
    """Wait until ``in_use`` slots are taken again (a streamed response frees its
    throwaway session's slot just after its last event)."""
    deadline = time.monotonic() + 30
    while sessions_in_use(server) != in_use:
        assert time.monotonic() < deadline, f"{sessions_in_use(server)} slots in use, not {in_use}"
        time.sleep(0.05)


def test_a_too_long_video_is_refused_from_its_container_before_any_frame_is_encoded(server, make_video):
    before = sessions_in_use(server)
    # 60 s at 2 fps: 60 frames at 1 fps, over max_video_frames=12, known from the metadata
    long = make_video("long.mp4", num_frames=120, width=64, height=48, fps=2.0).read_bytes()
    started = time.perf_counter()
    status, reply = request(server.http, "POST", CHAT, video_body(long, 1), token=API_KEY)
    took = time.perf_counter() - started
    assert status == 400 and reply["error"]["code"] == "video_too_long", reply
    assert "has 60 frames at 1 fps" in reply["error"]["message"]  # counted from metadata, not decoded
    assert took < 5.0, took
    # the count is exact at the limit: 16 frames at 8 fps are 12 frames at 6 fps (allowed), 16 at 8
    clip = make_video("clip.mp4", num_frames=16, width=64, height=48, fps=8.0).read_bytes()
    status, reply = request(server.http, "POST", CHAT, video_body(clip, 6, max_tokens=2), token=API_KEY)
    assert status == 200, reply
    status, reply = request(server.http, "POST", CHAT, video_body(clip, 8), token=API_KEY)
    assert status == 400 and "has 16 frames at 8 fps" in reply["error"]["message"]
    wait_for_slots(server, before)


def test_a_video_whose_container_hides_its_length_is_counted_while_decoding(server, make_video):
    before = sessions_in_use(server)
    hidden = without_duration(make_video("v.mkv", num_frames=40, width=64, height=48, fps=8.0).read_bytes())
    status, reply = request(server.http, "POST", CHAT, video_body(hidden, 8), token=API_KEY)
    assert status == 400 and reply["error"]["code"] == "video_too_long", reply
    assert "more than 12 frames" in reply["error"]["message"]
    # streamed, the refusal comes in the stream, after the progress comments (no total to show)
    events, comments = sse_with_comments(server.http, video_body(hidden, 8, stream=True), API_KEY)
    assert comments and all(c.startswith(": encoding ") and "/" not in c for c in comments), comments
    assert json.loads(events[0])["error"]["code"] == "video_too_long" and events[1:] == ["[DONE]"]
    wait_for_slots(server, before)


def test_a_streamed_inline_video_starts_at_once_and_reports_progress(server, make_video):
    """The status, headers and a first comment arrive before the first frame is encoded;
    progress comments follow while it encodes, then the answer's chunks."""
    before = sessions_in_use(server)
    video = make_video("clip.mp4", num_frames=24, width=160, height=120, fps=8.0).read_bytes()
    body = json.dumps(video_body(video, 4, stream=True, max_tokens=4)).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        started = time.perf_counter()
        connection.request("POST", CHAT, body, {"Authorization": f"Bearer {API_KEY}"})
        response = connection.getresponse()
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines: list[tuple[float, str]] = []
        while True:
            line = response.readline().decode()
            if not line:
                break
            if line.strip():
                lines.append((time.perf_counter() - started, line.strip()))
    finally:
        connection.close()
    first_at, first = lines[0]
    assert first == ": encoding 0/12 frames", first  # sent before any frame was encoded
    comments = [text for _, text in lines if text.startswith(":")]
    done = [int(c.split()[2].split("/")[0]) for c in comments]
    assert done == sorted(done) and all(c.endswith("/12 frames") for c in comments)
    data_at = next(at for at, text in lines if text.startswith("data: "))
    assert first_at < data_at  # the first byte did not wait for the encoding
    # after the comments, the usual chunks: role, content, finish, [DONE]
    events = [text[len("data: ") :] for _, text in lines if text.startswith("data: ")]
    first_data = next(k for k, (_, text) in enumerate(lines) if text.startswith("data: "))
    assert all(text.startswith("data: ") for _, text in lines[first_data:])  # no comment once answering
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = next(c for c in chunks if c["choices"][0]["finish_reason"])
    assert finish["streamvlm"]["spans"][-1]["t_end"] >= 2.5  # the whole 3-s clip at 4 fps
    wait_for_slots(server, before)


def test_the_openai_package_reads_a_streamed_inline_video(server, make_video):
    openai = pytest.importorskip("openai")
    before = sessions_in_use(server)
    video = make_video("clip.mp4", num_frames=16, width=64, height=48, fps=8.0).read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    client = openai.OpenAI(base_url=server.http + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="tiny-qwen2.5-vl",
        messages=[{"role": "user", "content": _video_part(url)}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"streamvlm": {"fps": 4}},
    )
    chunks = list(stream)  # the progress comments are skipped by the SDK's SSE reader
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["streamvlm"]["text"] == text
    assert chunks[-1].usage.completion_tokens >= 1
    wait_for_slots(server, before)


def test_a_client_that_leaves_while_its_video_encodes_frees_the_slot(server, make_video):
    before = sessions_in_use(server)
    video = make_video("clip.mp4", num_frames=24, width=160, height=120, fps=8.0).read_bytes()
    body = json.dumps(video_body(video, 4, stream=True)).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", CHAT, body, {"Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    assert response.readline().startswith(b": encoding 0/")
    connection.close()  # gone before the answer
    wait_for_slots(server, before)  # the encoding stopped and its session was closed
