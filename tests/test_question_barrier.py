"""A question covers every frame received before it (the barrier), and impossible spans
are refused: in the frame queue, in a session with its encoder thread, and over a real
websocket (uvicorn on loopback, a raw ``websockets`` client written from docs/protocol.md).

The session tests use the offline tiny Qwen2.5-VL; the websocket ones the bundled trained
``streamvlm-tiny-synth`` on ``assets/shapes.mp4``, whose answer to the question below is 7.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.errors import ConfigError, QuestionTimeoutError
from streamvlm.runtime.scheduling import FrameQueue

SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes.mp4"
DIAMOND = "What digit did the diamond show?"


@pytest.fixture(scope="module")
def engine() -> StreamVLM:
    return StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)


def attended(answer) -> list[tuple]:
    return [(b.id, b.t_start, b.t_end, b.tokens, b.tier) for b in answer.blocks]


# ------------------------------------------------------------------------ the queue


def test_a_fence_is_reached_after_every_frame_put_before_it():
    q = FrameQueue(8)
    q.put("a")
    fence = q.put_fence()
    q.put("b")
    assert len(q) == 2  # fences take no room
    assert [q.get(), q.get(), q.get()] == ["a", fence, "b"]
    assert q.put_fence() is not None  # still open
    q.close()
    q.get(), q.done()  # the consumer takes the last fence and finishes
    assert q.get() is None and q.put_fence() is None  # closed and drained: nothing to wait for


@pytest.mark.parametrize("policy, dropped", [("drop_oldest", [1, 2, 2]), ("drop_newest", [0, 0, 0])])
def test_a_fence_counts_the_drops_of_frames_put_before_it_only(policy, dropped):
    q = FrameQueue(2, policy)
    q.put(0), q.put(1)
    fence = q.put_fence()
    counts = []
    for i in (2, 3, 4):  # drop_oldest drops 0, 1 (before the fence), then 2 (after it)
        q.put(i)
        counts.append(fence.dropped)
    assert counts == dropped and q.dropped == 3


# ---------------------------------------------------------------- session: exactness


@pytest.mark.parametrize("n", [9, 10])  # a partly filled chunk at the end, or none
def test_pushed_frames_then_ask_equals_added_frames_then_ask(engine, n):
    """With an encoder thread, a question asked right after ``push_frame`` attends the same
    blocks (the partial chunk as ``pending``) and gives the same tokens as a session fed
    with ``add_frame`` on the caller's thread."""
    memory = MemoryConfig(window=4, queue_frames=64)
    threaded, plain = engine.new_session(memory=memory), engine.new_session(memory=memory)
    for i in range(n):
        threaded.push_frame(frame(i), float(i))
        plain.add_frame(frame(i), float(i))
    got = threaded.ask("what is on screen?", max_new_tokens=6)
    want = plain.ask("what is on screen?", max_new_tokens=6)
    assert attended(got) == attended(want)
    assert sum(b.t_end == n - 1 for b in got.blocks) == 1  # the last frame pushed is in it
    assert got.token_ids == want.token_ids and got.text == want.text
    assert got.asked_at == want.asked_at == n - 1
    assert got.frames_dropped == 0
    threaded.close(), plain.close()


def test_frames_pushed_after_the_question_stay_out_of_its_pending_block(engine):
    memory = MemoryConfig(window=4, chunk_frames=8)  # 5 frames: all pending, none flushed
    threaded, plain = engine.new_session(memory=memory), engine.new_session(memory=memory)
    for i in range(3):
        threaded.push_frame(frame(i), float(i))
        plain.add_frame(frame(i), float(i))
    stream = threaded.ask_stream("what is on screen?", max_new_tokens=4)  # returns at once
    for i in range(3, 5):
        threaded.push_frame(frame(i), float(i))
    assert threaded.drain(30) and threaded.pending_frames == 5
    got = "".join(stream)
    want = plain.ask("what is on screen?", max_new_tokens=4)
    assert attended(stream.answer) == attended(want) and got == want.text
    assert stream.answer.blocks[-1].tier == "pending" and stream.answer.blocks[-1].t_end == 2.0
    threaded.close(), plain.close()


def test_wait_false_answers_over_what_is_encoded_without_waiting(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, queue_frames=64))
    lock = engine.device_lock
    with lock:  # the encoder stalls at its first chunk
        for i in range(12):
            session.push_frame(frame(i), float(i))
        while lock._next_ticket < lock._serving + 2:  # the encoder waits for the device
            time.sleep(0.001)
        stream = session.ask_stream("what is on screen?", max_new_tokens=2, wait=False)
        answering = threading.Thread(target=lambda: "".join(stream))
        answering.start()
        while lock._next_ticket < lock._serving + 3:  # the question waits right behind it
            time.sleep(0.001)
    answering.join(30)
    now = stream.answer
    covered = session.ask("what is on screen?", max_new_tokens=2)
    assert sum(b.t_end - b.t_start + 1 for b in covered.blocks) == 12  # one frame a second
    # the first chunk, and the next one taken but not encoded yet (its pending frames)
    assert 2 <= sum(b.t_end - b.t_start + 1 for b in now.blocks) <= 4
    assert now.timings.wait_s == 0.0 and covered.timings.wait_s > 0
    session.close()


def test_a_question_that_waits_too_long_fails_in_one_line_and_the_session_goes_on(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, question_wait_s=0.2))
    with engine.device_lock:  # nothing can be encoded while the test holds the device
        for i in range(6):
            session.push_frame(frame(i), float(i))
        stream = session.ask_stream("what is on screen?", max_new_tokens=2)
        started = time.perf_counter()
        with pytest.raises(QuestionTimeoutError, match=r"within 0\.2 s .*wait=False.*question_wait_s"):
            next(iter(stream))
        assert time.perf_counter() - started < 5
    assert session.ask("what is on screen?", max_new_tokens=2).blocks  # later questions answer
    with pytest.raises(ConfigError, match="question_wait_s"):
        MemoryConfig(question_wait_s=0)
    session.close()


def test_frames_the_queue_dropped_before_the_question_are_reported_not_fatal(engine):
    session = engine.new_session(memory=MemoryConfig(window=4, queue_frames=2))
    with engine.device_lock:  # the encoder stalls: the queue overflows
        for i in range(10):
            session.push_frame(frame(i), float(i))
        stream = session.ask_stream("what is on screen?", max_new_tokens=2)
    answer = session.ask("what is on screen?", max_new_tokens=2)
    "".join(stream)
    dropped = session.stats().frames_dropped
    assert dropped > 0 and stream.answer.frames_dropped == answer.frames_dropped == dropped
    assert sum(b.t_end - b.t_start + 1 for b in answer.blocks) >= 10 - dropped  # the rest is in
    session.close()


def test_the_encoder_says_when_it_has_caught_up(engine):
    session = engine.new_session(memory=MemoryConfig(window=4))
    caught_up = threading.Event()
    session.on_caught_up = caught_up.set
    for i in range(5):
        session.push_frame(frame(i), float(i))
    assert caught_up.wait(30) and session.drain(30) and session.caught_up()
    assert session.pending_frames == 1 and session.stats().frames_encoded == 4
    session.close()


# ------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    "options, words",
    [
        ({"since": -1.0}, "since=-1 s is negative"),
        ({"until": -0.5}, "until=-0.5 s is negative"),
        ({"since": 5, "until": 2}, "since=5 s is after until=2 s"),
        ({"since": 9.5}, r"after the latest frame received \(9 s\)"),
        ({"since": float("nan")}, "finite"),
        ({"wait": "no"}, "wait must be true or false"),
    ],
)
def test_impossible_spans_are_refused_before_anything_runs(engine, options, words):
    session = engine.new_session(memory=MemoryConfig(window=4))
    for i in range(10):
        session.push_frame(frame(i), float(i))
    with pytest.raises(ConfigError, match=words):
        session.ask_stream("what is on screen?", **options)
    assert session.ask("what is on screen?", since=9, max_new_tokens=2).blocks  # the edge is fine
    session.close()


# ------------------------------------------------------------------------ websocket

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from _server import ServerThread, request  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from streamvlm.servers import ServerSettings, create_app, pack_frame  # noqa: E402


@pytest.fixture(scope="module")
def shapes_server():
    synth = StreamVLM.from_pretrained("streamvlm-tiny-synth", device="cpu")
    settings = ServerSettings(api_key=None, idle_timeout_s=None)
    running = ServerThread(create_app(synth, settings), settings)
    yield running
    running.stop()


def shapes_frames() -> list[tuple[bytes, float]]:
    """assets/shapes.mp4 sampled at 1 fps, as JPEG bytes with their times."""
    from PIL import Image

    from streamvlm.ingest import FileSource, Sampler

    out = []
    for f in Sampler(1.0).sample(FileSource(SHAPES)):
        buffer = io.BytesIO()
        Image.fromarray(f.rgb).save(buffer, format="JPEG", quality=90)
        out.append((buffer.getvalue(), f.t))
    return out


async def ask_after_frames(base: str, ws_base: str, frames, question: dict) -> list[dict]:
    """What docs/protocol.md's example does: create a session, send every frame as fast as
    the socket takes them, then the question, then close; every server message."""
    status, session = request(base, "POST", "/v1/sessions", {})
    assert status == 201, session
    headers = {"Authorization": f"Bearer {session['token']}"}
    messages = []
    async with connect(ws_base + session["stream"], additional_headers=headers) as ws:
        for jpeg, t in frames:
            await ws.send(pack_frame(jpeg, t))
        await ws.send(json.dumps({"type": "question", "id": "q1"} | question))
        await ws.send(json.dumps({"type": "close"}))
        async for raw in ws:
            messages.append(json.loads(raw))
    request(base, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])
    return messages


def test_a_raw_client_sending_as_fast_as_it_can_then_asking_gets_7(shapes_server):
    frames = shapes_frames()
    assert len(frames) == 20
    for _ in range(3):
        messages = asyncio.run(
            ask_after_frames(shapes_server.http, shapes_server.ws, frames, {"text": DIAMOND})
        )
        errors = [m for m in messages if m["type"] == "error"]
        assert not errors, errors
        done = next(m for m in messages if m["type"] == "answer.done")
        assert done["text"] == "7", done
        assert done["asked_at"] == 19.0 and done["frames_dropped"] == 0
        # every frame was a candidate: the bundled model answers over the two blocks retrieved
        # for the question and the newest two frames (its recommended context), chosen among
        # all 10 blocks of the 20 frames
        assert len(done["blocks"]) + done["left_out"] == 10 and done["spans"][-1]["t_end"] == 19.0
        acks = [m for m in messages if m["type"] == "ack"]
        assert [a["cause"] for a in acks].count("frame") == 20 and acks[-1]["cause"] == "close"


def test_the_socket_refuses_impossible_spans_and_acks_when_encoding_caught_up(shapes_server):
    frames = shapes_frames()[:5]

    async def main() -> list[dict]:
        status, session = request(shapes_server.http, "POST", "/v1/sessions", {})
        headers = {"Authorization": f"Bearer {session['token']}"}
        seen = []
        async with connect(shapes_server.ws + session["stream"], additional_headers=headers) as ws:
            for jpeg, t in frames:
                await ws.send(pack_frame(jpeg, t))
            while not any(m.get("cause") == "encoded" and m["received"] == 5 for m in seen):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            for k, options in enumerate(
                [{"since": 3, "until": 1}, {"since": -2}, {"since": 4.5}, {"wait": 0}, {"wait": False}]
            ):
                question = {"type": "question", "id": f"r{k}", "text": DIAMOND, "options": options}
                await ws.send(json.dumps(question))
            await ws.send(json.dumps({"type": "close"}))
            async for raw in ws:
                seen.append(json.loads(raw))
        request(shapes_server.http, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])
        return seen

    seen = asyncio.run(main())
    encoded = next(m for m in seen if m.get("cause") == "encoded" and m["received"] == 5)
    assert encoded["encoded"] == 4 and encoded["partial"] == encoded["pending"] == 1
    assert encoded["queue_depth"] == 0
    errors = {m["id"]: m for m in seen if m["type"] == "error"}
    assert set(errors) == {"r0", "r1", "r2", "r3"}
    assert all(e["code"] == "bad_option" and "\n" not in e["message"] for e in errors.values())
    assert "after until" in errors["r0"]["message"] and "negative" in errors["r1"]["message"]
    assert "latest frame received (4 s)" in errors["r2"]["message"]
    assert "true or false" in errors["r3"]["message"]
    done = next(m for m in seen if m["type"] == "answer.done")
    assert done["id"] == "r4" and done["timings"]["wait_s"] == 0.0
