"""The Python clients, ``streamvlm stream`` and ``streamvlm bench serve`` against a real
uvicorn server on loopback (the offline tiny Qwen2.5-VL on the CPU)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from _server import ServerThread, jpeg  # noqa: E402

from streamvlm.client import AsyncStreamClient, ClientError, StreamClient  # noqa: E402
from streamvlm.servers import ServerSettings, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
API_KEY = "client-test-key"
SETTINGS = ServerSettings(api_key=API_KEY, max_sessions=4, idle_timeout_s=None, max_new_tokens=16)


@pytest.fixture(scope="module")
def server():
    from streamvlm import StreamVLM

    engine = StreamVLM.from_pretrained("tiny-qwen2.5-vl", device="cpu", dtype="float32")
    running = ServerThread(create_app(engine, SETTINGS), SETTINGS)
    yield running
    running.stop()


def test_async_client_streams_asks_and_tracks_acks(server):
    async def main():
        async with AsyncStreamClient(
            server.http, api_key=API_KEY, memory={"window": 4}, max_in_flight=3
        ) as c:
            session_id = c.session["id"]
            for i in range(10):
                await c.send_frame(jpeg(i), 0.5 * i)
                assert c.in_flight <= 3  # the window holds the sender back
            await c.send_frame(b"\xff\xd8\xff not really a jpeg", 5.0)  # refused: one error reply
            await c.wait_in_flight(0)
            assert [e["code"] for e in c.frame_errors] == ["bad_image"]  # an error, not an ack
            encoded = await asyncio.wait_for(c.wait_encoded(), 60)  # every frame sent is in memory
            assert encoded["cause"] == "encoded" and encoded["received"] == 11 and encoded["rejected"] == 1
            assert encoded["encoded"] == 10 and encoded["pending"] == encoded["partial"] == 0
            stream = await c.ask("What moved?", max_new_tokens=4)
            deltas = [d async for d in stream]
            assert stream.done["type"] == "answer.done" and "".join(deltas) == stream.done["text"]
            assert stream.done["timings"]["new_tokens"] >= 1
            assert stream.done["spans"][-1]["t_end"] == 4.5 and stream.done["frames_dropped"] == 0
            at_once = await (await c.ask("What moved?", max_new_tokens=2, wait=False)).result()
            assert at_once["timings"]["wait_s"] == 0.0
            with pytest.raises(ClientError) as refused:  # a question option the server refuses
                await (await c.ask("What moved?", max_new_tokens=10_000)).result()
            assert refused.value.code == "bad_option"
            with pytest.raises(ClientError, match="latest frame received") as future:
                await (await c.ask("What moved?", since=60)).result()
            assert future.value.code == "bad_option"
            assert (await c.reset())["cause"] == "reset"
            stats = await c.stats()
            assert stats["frames"]["received"] == 11 and stats["frames"]["rejected"] == 1
            final = await c.close()
            assert final["cause"] == "close" and final["pending"] == 0
            assert final["encoded"] + final["dropped"] == 10
            return session_id

    session_id = asyncio.run(main())
    # deleted on exit: the session's token no longer opens it
    from _server import request

    assert request(server.http, "GET", f"/v1/sessions/{session_id}", token="x")[0] == 404


def test_async_client_auth_errors(server):
    async def main():
        with pytest.raises(ClientError) as no_key:
            await AsyncStreamClient(server.http).connect()
        assert no_key.value.code == "unauthorized" and no_key.value.status == 401
        owner = AsyncStreamClient(server.http, api_key=API_KEY)
        await owner.create_session()
        stranger = AsyncStreamClient(server.http, session={**owner.session, "token": "wrong"})
        with pytest.raises(ClientError) as wrong_token:
            await stranger.connect()  # the websocket handshake is refused with the server's error
        assert wrong_token.value.status in (401, 403)
        await owner.delete_session()

    asyncio.run(main())


def test_sync_client_from_plain_threads(server):
    with StreamClient(server.http, api_key=API_KEY, memory={"window": 4}) as client:
        for i in range(8):
            client.send_frame(np.full((64, 80, 3), 20 * i, np.uint8), i / 4)  # RGB arrays: JPEG-encoded
        client.wait_in_flight(0, timeout=30)
        assert client.wait_encoded(timeout=30)["encoded"] == 8
        answer = client.ask("What colour is it?", max_new_tokens=4)
        deltas = list(answer)
        assert answer.done is not None and "".join(deltas) == answer.done["text"]
        assert client.ask("And now?", max_new_tokens=2).text(timeout=30) is not None
        assert client.last_ack["accepted"] == 8
        final = client.close_stream()
        assert final["encoded"] == 8 and final["pending"] == 0
        assert client.stats()["stats"]["bytes_per_tier"]["device"] > 0


def stream_command() -> list[str]:
    return [sys.executable, "-m", "streamvlm", "stream"]


def test_stream_command_sends_a_file_and_prints_the_answer(server, make_video):
    video = make_video("clip.mp4", num_frames=24, fps=8.0)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", STREAMVLM_API_KEY=API_KEY)
    command = stream_command() + ["--server", server.http, "--file", str(video), "--fps", "4"]
    command += ["--max-new-tokens", "4", "--ask", "What happened at the end?"]
    done = subprocess.run(
        command, input="What moved?\n", env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    # piped questions are echoed, each followed by its streamed answer
    assert out[0] == "? What moved?" and out[2] == "? What happened at the end?", done.stdout
    assert re.search(r"12 frames sent, 12 encoded, 0 dropped, 0 rejected", done.stderr), done.stderr


def test_stream_command_reports_a_missing_file_before_opening_a_session(server):
    command = stream_command() + ["--server", server.http, "--file", "/no/such/video.mp4"]
    done = subprocess.run(command, input="", capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and done.stderr.startswith("error: cannot open"), done.stderr


def test_stream_parser_imports_neither_websockets_nor_torch():
    code = (
        "import sys, argparse; from streamvlm.client.cli import add_stream_parser; "
        "from streamvlm.bench.cli import add_bench_parser; "
        "p = argparse.ArgumentParser(); s = p.add_subparsers(); add_stream_parser(s); add_bench_parser(s); "
        "print(sorted({'torch', 'transformers', 'websockets', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_serve_smoke():
    from streamvlm.bench.serve import ServeBenchConfig, run_serve_bench

    config = ServeBenchConfig(sessions=(1,), duration_s=3.0, fps=6.0, question_every_s=1.0, device="cpu")
    lines = []
    result = run_serve_bench(config, log=lines.append)
    (row,) = result.rows
    assert row.sessions == 1 and row.frames_sent == 18
    # every frame is accounted for once the stream is closed
    assert row.frames_encoded + row.frames_dropped + row.frames_rejected == row.frames_sent
    assert row.answers >= 1 and row.latency_p50_s is not None and row.latency_p50_s <= row.latency_p99_s
    assert row.memory_bytes_per_session["device"] > 0
    assert len(lines) == 1 and lines[0].split()[0] == "1"
    assert result.to_dict()["rows"][0]["encoded_per_s"] > 0
