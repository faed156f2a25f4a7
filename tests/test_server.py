"""The server over real sockets: uvicorn on loopback, ``websockets`` clients, urllib for REST.

One server (API key set, small limits) serves the module's tests; a second, without a
key and with a short idle timeout, checks open mode and expiry; ``streamvlm serve`` runs
once as a real subprocess. The model is the offline tiny Qwen2.5-VL on the CPU, frames
are 112x112 JPEGs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from _server import (  # noqa: E402
    ServerThread,
    auth,
    default_sigint,
    jpeg,
    parse_metrics,
    png,
    request,
    wait_for_health,
)
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from streamvlm.servers import ServerSettings, create_app, pack_frame  # noqa: E402

API_KEY = "test-api-key"
SETTINGS = ServerSettings(
    api_key=API_KEY,
    max_sessions=4,
    idle_timeout_s=None,
    max_frame_bytes=64 << 10,
    max_message_bytes=256 << 10,
    max_text_bytes=8 << 10,
    max_frame_side=1024,
    max_frame_pixels=1024 * 1024,
    max_fps=50.0,
    max_question_chars=200,
    max_new_tokens=32,
    max_pending_questions=2,
    decode_threads=2,
)
# device and host budgets small enough that blocks move to the host tier and leave it
MEMORY = {"window": 4, "device_bytes": 20_000, "host_bytes": 60_000, "queue_frames": 8}


@pytest.fixture(scope="module")
def engine():
    from streamvlm import StreamVLM

    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(engine):
    running = ServerThread(create_app(engine, SETTINGS), SETTINGS)
    yield running
    running.stop()


# ----------------------------------------------------------------------------- helpers


def create_session(server: ServerThread, memory: dict | None = None, persist: bool = False) -> dict:
    body = {"memory": memory or MEMORY, "persist": persist}
    status, body = request(server.http, "POST", "/v1/sessions", body, token=API_KEY)
    assert status == 201, body
    return body


def delete_session(server: ServerThread, session: dict) -> dict:
    status, body = request(server.http, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])
    assert status == 200, body
    return body


def stream_url(server: ServerThread, session: dict) -> str:
    return server.ws + session["stream"]


async def reply(ws) -> dict:
    """The next reply to a request (each gets exactly one), skipping the unrequested
    ``encoded`` acks that say encoding caught up."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if message.get("cause") != "encoded":
            return message


async def until_done(ws, qid: str) -> tuple[list[str], dict]:
    """Deltas and the answer.done of question ``qid``, asserting nothing else arrives for it."""
    deltas = []
    while True:
        message = await reply(ws)
        if message["type"] == "answer.delta":
            assert message["id"] == qid
            deltas.append(message["text"])
        elif message["type"] == "answer.done":
            assert message["id"] == qid
            return deltas, message
        else:
            raise AssertionError(f"unexpected {message}")


# ------------------------------------------------------------------------------ tests


def test_health_and_metrics_parse(server):
    status, body = request(server.http, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"]
    status, body = request(server.http, "GET", "/metrics")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, text = request(server.http, "GET", "/metrics", token=API_KEY)
    assert status == 200
    samples = parse_metrics(text)
    for name in (
        "streamvlm_sessions",
        "streamvlm_frames_received_total",
        'streamvlm_frames_dropped_total{reason="rate"}',
        'streamvlm_frames_dropped_total{reason="queue"}',
        "streamvlm_queue_depth",
        'streamvlm_memory_bytes{tier="device"}',
        'streamvlm_answer_latency_seconds_bucket{le="+Inf"}',
        "streamvlm_answer_latency_seconds_count",
    ):
        assert name in samples, name


def test_concurrent_sessions_stream_frames_while_answers_stream(server):
    """Three sessions stream frames and ask questions at once: every frame is encoded or
    counted as dropped, every answer arrives as deltas then done, and memory stays in budget."""
    sessions = [create_session(server, persist=True) for _ in range(3)]  # read after their close
    n_frames = 30

    async def client(session: dict, index: int) -> tuple[list[dict], int]:
        messages: list[dict] = []
        async with connect(stream_url(server, session), additional_headers=auth(session["token"])) as ws:

            async def read() -> None:
                try:
                    async for raw in ws:
                        messages.append(json.loads(raw))
                except ConnectionClosed:
                    pass

            reader = asyncio.create_task(read())
            i = 0
            # at least n_frames, and frames keep coming until an answer has finished (then
            # one more), so answers demonstrably stream while frames flow, however busy
            # the machine is
            while i < n_frames or not any(m["type"] == "answer.done" for m in messages):
                await ws.send(pack_frame(jpeg(i + 10 * index), t=i * 0.1))
                if i in (6, 14):
                    question = {"type": "question", "id": f"s{index}-q{i}", "text": "What moved?"}
                    await ws.send(json.dumps(question | {"options": {"max_new_tokens": 12}}))
                await asyncio.sleep(0.03)
                i += 1
                assert i < 2000, "no answer finished while frames were streaming"
            await ws.send(pack_frame(jpeg(i + 10 * index), t=i * 0.1))
            await ws.send(json.dumps({"type": "close"}))
            await asyncio.wait_for(reader, timeout=60)
            assert ws.close_code == 1000
        return messages, i + 1

    async def main():
        return await asyncio.gather(*(client(s, k) for k, s in enumerate(sessions)))

    results = asyncio.run(main())
    streamed_while_framing = 0
    for session, (messages, n_sent) in zip(sessions, results, strict=True):
        errors = [m for m in messages if m["type"] == "error"]
        assert not errors, errors
        acks = [m for m in messages if m["type"] == "ack" and m["cause"] != "encoded"]
        assert len(acks) == n_sent + 1 and acks[-1]["cause"] == "close"
        final = acks[-1]
        assert final["received"] == n_sent and final["rejected"] == 0
        assert final["encoded"] + final["dropped"] == n_sent
        assert final["pending"] == 0 and final["queue_depth"] == 0
        for qid in (q for q in {m.get("id") for m in messages} if q):
            kinds = [m["type"] for m in messages if m.get("id") == qid]
            assert kinds[-1] == "answer.done" and set(kinds[:-1]) <= {"answer.delta"}, kinds
            done = next(m for m in messages if m["type"] == "answer.done" and m["id"] == qid)
            text = "".join(m["text"] for m in messages if m["type"] == "answer.delta" and m["id"] == qid)
            assert text == done["text"]
            assert (
                done["timings"]["total_s"] > 0 and done["timings"]["latency_s"] >= done["timings"]["total_s"]
            )
            assert done["spans"] and all(s["t_start"] <= s["t_end"] for s in done["spans"])
            # an answer that ended before the last frame was acked streamed while frames flowed
            last_frame_ack = max(
                k for k, m in enumerate(messages) if m["type"] == "ack" and m["cause"] == "frame"
            )
            streamed_while_framing += messages.index(done) < last_frame_ack
        status, body = request(server.http, "GET", f"/v1/sessions/{session['id']}", token=session["token"])
        assert status == 200 and body["frames"]["encoded"] == final["encoded"]
        stats = body["stats"]
        assert stats["bytes_per_tier"]["device"] <= MEMORY["device_bytes"]
        assert stats["bytes_per_tier"]["host"] <= MEMORY["host_bytes"]
        assert stats["blocks"] > 0
    assert streamed_while_framing > 0

    status, text = request(server.http, "GET", "/metrics", token=API_KEY)
    samples = parse_metrics(text)
    assert samples["streamvlm_answers_total"] >= 6
    assert samples["streamvlm_frames_received_total"] >= 3 * n_frames
    assert samples["streamvlm_answer_latency_seconds_count"] >= 6
    for session in sessions:
        delete_session(server, session)


def test_malformed_input_gets_documented_errors_and_the_connection_stays_usable(server):
    session = create_session(server)
    frame = jpeg(0)

    async def main():
        async with connect(stream_url(server, session), additional_headers=auth(session["token"])) as ws:

            async def expect(message, code: str) -> dict:
                await ws.send(message)
                got = await reply(ws)
                assert got["type"] == "error" and got["code"] == code, got
                assert got["message"] and "\n" not in got["message"]
                return got

            question = {"type": "question", "id": "q", "text": "What is there?"}
            await expect("{not json", "bad_json")
            await expect("[1, 2]", "bad_message")
            await expect(json.dumps({"type": "dance"}), "unknown_type")
            await expect("x" * (9 << 10), "message_too_large")
            assert (await expect(json.dumps(question | {"text": "  "}), "bad_question"))["id"] == "q"
            await expect(json.dumps(question | {"text": "why " * 100}), "question_too_long")
            await expect(json.dumps(question | {"text": "\ud800?"}), "bad_question")  # a lone surrogate
            await expect(json.dumps(question | {"options": {"max_new_tokens": 10**9}}), "bad_option")
            await expect(json.dumps(question | {"options": {"top_k": 0}}), "bad_option")
            await expect(json.dumps(question | {"options": {"answer_window": -1}}), "bad_option")
            await expect(json.dumps(question | {"options": {"temperature": "hot"}}), "bad_option")
            await expect(json.dumps(question | {"options": {"path": "/etc/passwd"}}), "bad_option")
            await expect(b"\x89PNG not a header", "bad_header")
            await expect(pack_frame(b"GIF89a, or anything that is not an image", 0.0), "bad_image")
            await expect(pack_frame(frame[: len(frame) // 3], 0.0), "bad_image")  # truncated JPEG
            await expect(pack_frame(os.urandom(70 << 10), 0.0), "frame_too_large")
            await expect(pack_frame(png(2000, 8), 0.0), "frame_dimensions")
            await expect(pack_frame(frame, math.nan), "bad_timestamp")

            await ws.send(pack_frame(frame, 1.0))
            ack = await reply(ws)
            assert ack["type"] == "ack" and ack["queued"] and ack["accepted"] == 1
            assert ack["rejected"] == 6  # every invalid frame above, counted
            await expect(pack_frame(frame, 0.5), "bad_timestamp")  # goes back in time

            await ws.send(json.dumps(question | {"options": {"max_new_tokens": 4}}))
            deltas, done = await until_done(ws, "q")
            assert "".join(deltas) == done["text"]

            # past the socket's hard limit the connection closes with 1009 ...
            await ws.send(b"\0" * (300 << 10))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=30)
            assert ws.close_code == 1009

        # ... and the session and the server carry on
        async with connect(stream_url(server, session), additional_headers=auth(session["token"])) as ws:
            await ws.send(pack_frame(frame, 2.0))
            assert (await reply(ws))["type"] == "ack"

    asyncio.run(main())
    status, body = request(server.http, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    delete_session(server, session)


def test_auth_keeps_sessions_apart(server):
    a, b = create_session(server), create_session(server)
    # creating needs the API key
    assert request(server.http, "POST", "/v1/sessions", {})[0] == 401
    status, body = request(server.http, "POST", "/v1/sessions", {}, token="wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # each session answers to its own token only
    path = f"/v1/sessions/{a['id']}"
    assert request(server.http, "GET", path)[1]["error"]["code"] == "unauthorized"
    status, body = request(server.http, "GET", path, token=b["token"])
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert request(server.http, "GET", path, token=API_KEY)[0] == 403  # the API key opens no session
    assert request(server.http, "DELETE", path, token=b["token"])[0] == 403
    assert request(server.http, "GET", "/v1/sessions/nosuchsession", token=a["token"])[0] == 404
    assert request(server.http, "GET", path, token=a["token"])[0] == 200
    assert a["id"] != b["id"] and a["token"] != b["token"] and len(a["token"]) >= 40

    async def refused(session: dict, headers: dict) -> tuple[int, dict]:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(stream_url(server, session), additional_headers=headers):
                pass
        response = caught.value.response
        return response.status_code, json.loads(response.body)

    async def main():
        assert (await refused(a, {}))[0] == 401
        status, body = await refused(a, auth(b["token"]))  # another session's token cannot feed it
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert (await refused({"stream": "/v1/sessions/nope/stream"}, auth(a["token"])))[0] == 404
        async with connect(stream_url(server, a), additional_headers=auth(a["token"])) as ws:
            status, body = await refused(a, auth(a["token"]))  # one stream per session
            assert status == 409 and body["error"]["code"] == "already_streaming"
            await ws.send(pack_frame(jpeg(1), 0.0))
            assert (await reply(ws))["type"] == "ack"
            # deleting the session ends its stream with an error and close code 1001
            deleted = await asyncio.to_thread(delete_session, server, a)
            assert deleted["frames"]["received"] == 1
            assert (await reply(ws))["code"] == "session_deleted"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=30)
            assert ws.close_code == 1001

    asyncio.run(main())
    assert request(server.http, "GET", path, token=a["token"])[0] == 404
    status, body = request(server.http, "GET", f"/v1/sessions/{b['id']}", token=b["token"])
    assert status == 200 and body["frames"]["received"] == 0  # b never saw a's frame
    delete_session(server, b)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"memory": {"window": -1}}, 400, "window"),
        ({"memory": {"host_bytes": 1 << 60}}, 400, "at most"),
        ({"memory": {"queue_frames": 10**9}}, 400, "at most"),
        ({"memory": {"window": "wide"}}, 400, "must be int"),
        ({"memory": {"prune_threshold": 2e308}}, 400, "finite"),  # json.dumps writes Infinity
        ({"memory": {"disk_dir": "/etc"}}, 400, "disk"),
        ({"memory": {"no_such_option": 1}}, 400, "unknown"),
        ({"memory": {"host_codec": "zip"}}, 400, "host_codec"),
        ({"memory": [1, 2]}, 400, "object"),
        ({"colour": "blue"}, 400, "unknown field"),
        ({"system_prompt": "x" * 5000}, 400, "system_prompt"),
    ],
)
def test_absurd_session_options_are_refused_with_one_line(server, body, status, words):
    got, answer = request(server.http, "POST", "/v1/sessions", body, token=API_KEY)
    assert got == status, answer
    assert answer["error"]["code"] == "bad_option" and words in answer["error"]["message"]
    assert "\n" not in answer["error"]["message"]


def test_bad_bodies_and_unknown_routes(server):
    status, body = request(server.http, "POST", "/v1/sessions", raw=b"{oops", token=API_KEY)
    assert status == 400 and body["error"]["code"] == "bad_json"
    status, body = request(server.http, "POST", "/v1/sessions", raw=b" " * (9 << 10), token=API_KEY)
    assert status == 413 and body["error"]["code"] == "message_too_large"
    status, body = request(server.http, "GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_session_limit_frame_rate_and_reset(server):
    sessions = []
    while True:  # fill the server
        body = {"memory": MEMORY, "persist": True}  # the first is read after its close
        status, body = request(server.http, "POST", "/v1/sessions", body, token=API_KEY)
        if status != 201:
            break
        sessions.append(body)
    assert status == 503 and body["error"]["code"] == "too_many_sessions"
    assert len(sessions) == SETTINGS.max_sessions
    delete_session(server, sessions.pop())
    sessions.append(create_session(server))  # a slot is free again
    session = sessions[0]
    burst = 120  # far over max_fps=50 with its one-second burst: the excess is dropped, counted

    async def main():
        async with connect(stream_url(server, session), additional_headers=auth(session["token"])) as ws:
            started = time.monotonic()
            for i in range(burst):
                await ws.send(pack_frame(jpeg(i), t=i / 100))
            acks = [await reply(ws) for _ in range(burst)]
            elapsed = time.monotonic() - started  # the bucket refills meanwhile (slow on a busy machine)
            assert all(a["type"] == "ack" for a in acks)
            last = acks[-1]
            assert last["dropped_rate"] >= burst - SETTINGS.max_fps * (1 + elapsed) - 1
            assert sum(not a["queued"] for a in acks) == last["dropped_rate"]
            await ws.send(json.dumps({"type": "reset"}))
            reset = await reply(ws)
            assert reset["type"] == "ack" and reset["cause"] == "reset"
            assert (
                reset["received"] == burst and reset["encoded"] + reset["dropped"] + reset["pending"] == burst
            )
            # the new memory starts empty, and its clock may start again
            await ws.send(
                json.dumps(
                    {"type": "question", "id": 7, "text": "Anything?", "options": {"max_new_tokens": 3}}
                )
            )
            _, done = await until_done(ws, "7")
            assert done["blocks"] == [] and done["asked_at"] == 0.0
            await asyncio.sleep(1.0)  # let the bucket refill
            await ws.send(pack_frame(jpeg(0), t=0.0))
            assert (await reply(ws))["queued"]
            await ws.send(json.dumps({"type": "close"}))
            final = await reply(ws)
            assert final["cause"] == "close" and final["pending"] == 0
            assert final["encoded"] + final["dropped"] == final["received"] == burst + 1

    asyncio.run(main())
    status, body = request(server.http, "GET", f"/v1/sessions/{session['id']}", token=session["token"])
    assert body["resets"] == 1 and body["stats"]["frames_seen"] == 1
    for s in sessions:
        delete_session(server, s)


def test_too_many_questions_waiting_are_refused(server):
    session = create_session(server)

    async def main():
        async with connect(stream_url(server, session), additional_headers=auth(session["token"])) as ws:
            for i in range(8):
                question = {
                    "type": "question",
                    "id": f"q{i}",
                    "text": "What?",
                    "options": {"max_new_tokens": 32},
                }
                await ws.send(json.dumps(question))
            await ws.send(json.dumps({"type": "close"}))
            outcome: dict[str, str] = {}
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] in ("answer.done", "error"):
                    outcome[m["id"]] = m["type"] if m["type"] == "answer.done" else m["code"]
            return outcome

    outcome = asyncio.run(main())
    assert set(outcome) == {f"q{i}" for i in range(8)}  # every question is answered or refused
    assert set(outcome.values()) <= {"answer.done", "too_many_questions"}
    assert "too_many_questions" in outcome.values() and outcome["q0"] == "answer.done"
    # its client closed it: the session is gone (it did not ask to persist)
    assert request(server.http, "GET", f"/v1/sessions/{session['id']}", token=session["token"])[0] == 404


def test_a_client_that_does_not_read_stalls_no_other_session(server):
    """One client floods frames and questions and never reads a reply; another still gets
    its answer at once."""
    flooder, other = create_session(server), create_session(server)

    async def main():
        async with (
            # the flooder's close handshake cannot get through what it never read: do not wait long
            connect(
                stream_url(server, flooder), additional_headers=auth(flooder["token"]), close_timeout=0.5
            ) as a,
            connect(stream_url(server, other), additional_headers=auth(other["token"])) as b,
        ):
            image = jpeg(3)
            for i in range(300):
                await a.send(pack_frame(image, t=i * 0.01))
                if i % 100 == 0:
                    await a.send(json.dumps({"type": "question", "text": "Anything?"}))
            started = time.perf_counter()
            await b.send(pack_frame(image, t=0.0))
            assert (await reply(b))["type"] == "ack"
            await b.send(
                json.dumps({"type": "question", "id": "b", "text": "What?", "options": {"max_new_tokens": 4}})
            )
            await until_done(b, "b")
            answered = time.perf_counter() - started
            status, body = await asyncio.to_thread(
                request, server.http, "GET", f"/v1/sessions/{flooder['id']}", token=flooder["token"]
            )
            assert status == 200 and body["streaming"]  # REST answers about the flooded session too
            # deleting the flooder's session does not wait for it to read
            started = time.perf_counter()
            await asyncio.to_thread(delete_session, server, flooder)
            return answered, time.perf_counter() - started

    answered, deleted = asyncio.run(main())
    assert answered < 10.0 and deleted < 10.0
    delete_session(server, other)


def test_deleting_never_waits_for_a_client_that_does_not_read(monkeypatch):
    """A socket whose every send hangs (a client that stopped reading, TCP buffers full):
    kicking the connection gives up on the goodbye and cancels its task."""
    from types import SimpleNamespace

    from starlette.websockets import WebSocketState

    from streamvlm.servers import stream
    from streamvlm.servers.metrics import Metrics

    monkeypatch.setattr(stream, "KICK_TIMEOUT_S", 0.2)

    class StuckSocket:
        application_state = WebSocketState.CONNECTED

        async def receive(self):
            await asyncio.Event().wait()

        async def send_text(self, text):
            await asyncio.Event().wait()

        async def close(self, code, reason):
            await asyncio.Event().wait()

    async def main():
        served = SimpleNamespace(touch=lambda: None, session=None)
        connection = stream.StreamConnection(StuckSocket(), served, None, SETTINGS, Metrics(), None, None)
        task = asyncio.create_task(connection.run())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await connection.kick("session_deleted", "bye")
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
        return task.cancelled(), time.perf_counter() - started

    cancelled, took = asyncio.run(main())
    assert cancelled and took < 2.0


def test_frame_rate_bucket():
    from streamvlm.servers.limits import FrameRateLimiter

    now = [0.0]
    bucket = FrameRateLimiter(rate=10.0, clock=lambda: now[0])
    assert sum(bucket.allow() for _ in range(25)) == 10  # a burst of one second's frames
    now[0] += 0.5
    assert sum(bucket.allow() for _ in range(25)) == 5  # then the rate
    now[0] += 100.0
    assert sum(bucket.allow() for _ in range(25)) == 10  # idle time does not bank more than the burst


def test_open_mode_still_needs_session_tokens_and_idle_sessions_expire(engine):
    settings = ServerSettings(api_key=None, idle_timeout_s=0.4)
    server = ServerThread(create_app(engine, settings), settings)
    try:
        status, session = request(server.http, "POST", "/v1/sessions")  # no key needed, no body
        assert status == 201
        path = f"/v1/sessions/{session['id']}"
        assert request(server.http, "GET", path)[0] == 401
        assert request(server.http, "GET", path, token=session["token"])[0] == 200
        status, text = request(server.http, "GET", "/metrics")
        assert status == 200 and parse_metrics(text)["streamvlm_sessions"] == 1
        deadline = time.monotonic() + 10
        while request(server.http, "GET", path, token=session["token"])[0] == 200:
            assert time.monotonic() < deadline, "idle session was not closed"
            time.sleep(0.6)  # each request counts as activity: wait longer than the timeout
        assert request(server.http, "GET", "/health")[1]["sessions"] == 0
    finally:
        server.stop()


def test_serve_command_rejects_a_bad_port_before_loading_a_model(capsys):
    from streamvlm.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err.startswith("error: --port must be between 0 and 65535")


def test_serve_command_serves(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", STREAMVLM_API_KEY="k")
    command = [sys.executable, "-m", "streamvlm", "serve", "--model", "tiny-qwen2.5-vl", "--port", "0"]
    command += ["--device", "cpu", "--dtype", "float32", "--log-level", "warning"]
    proc = subprocess.Popen(
        command,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        preexec_fn=default_sigint,
    )
    try:
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        base = f"http://127.0.0.1:{match.group(1)}"
        status, body = wait_for_health(base, proc)
        assert status == 200 and body["status"] == "ok"
        assert request(base, "POST", "/v1/sessions", {}, token="k")[0] == 201
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down, then the CLI exits 130
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 130, rest
