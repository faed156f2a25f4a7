"""Sessions that free themselves, over real sockets: a client's ``close`` deletes its
session (unless it asked to persist), a disconnect leaves it to the idle timeout, and the
operator (the API key) lists and deletes sessions. The model is the offline tiny
Qwen2.5-VL on the CPU."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from _server import ServerThread, auth, jpeg, parse_metrics, request  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from streamvlm.servers import ServerSettings, create_app, pack_frame  # noqa: E402

API_KEY = "lifecycle-key"
SETTINGS = ServerSettings(api_key=API_KEY, max_sessions=4, idle_timeout_s=None)
MODEL = "tiny-qwen2.5-vl"


@pytest.fixture(scope="module")
def engine():
    from streamvlm import StreamVLM

    return StreamVLM.from_pretrained(MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(engine):
    running = ServerThread(create_app(engine, SETTINGS), SETTINGS)
    yield running
    running.stop()


def create(server: ServerThread, **body) -> dict:
    status, session = request(server.http, "POST", "/v1/sessions", body, token=API_KEY)
    assert status == 201, session
    return session


def open_sessions(server: ServerThread) -> int:
    return request(server.http, "GET", "/health")[1]["sessions"]


async def stream_then_close(server: ServerThread, session: dict, frames: int = 0) -> tuple[dict, int]:
    """Send ``frames`` frames and ``close``, read until the server closes: (final ack, close code)."""
    async with connect(server.ws + session["stream"], additional_headers=auth(session["token"])) as ws:
        for i in range(frames):
            await ws.send(pack_frame(jpeg(i), t=i * 0.5))
            assert json.loads(await ws.recv())["type"] == "ack"
        await ws.send(json.dumps({"type": "close"}))
        final = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=30)
        return final, ws.close_code


def test_two_hundred_sessions_closed_by_their_clients_leave_none_open(server):
    """200 sessions on a 4-slot server, 4 at a time: each client's ``close`` frees its slot,
    or the fifth creation would be refused with 503."""
    rounds, batch = 50, SETTINGS.max_sessions
    before = parse_metrics(request(server.http, "GET", "/metrics", token=API_KEY)[1])

    async def one() -> tuple[dict, int]:
        session = await asyncio.to_thread(create, server)
        return await stream_then_close(server, session)

    async def main() -> list[tuple[dict, int]]:
        results = []
        for _ in range(rounds):
            results += await asyncio.gather(*(one() for _ in range(batch)))
        return results

    started = time.perf_counter()
    results = asyncio.run(main())
    took = time.perf_counter() - started
    assert len(results) == rounds * batch == 200
    assert all(final["cause"] == "close" and final["deleted"] and code == 1000 for final, code in results)
    assert open_sessions(server) == 0
    samples = parse_metrics(request(server.http, "GET", "/metrics", token=API_KEY)[1])
    assert samples["streamvlm_sessions"] == 0
    grew = {name: samples[name] - before.get(name, 0) for name in samples}
    assert grew["streamvlm_sessions_created_total"] == 200
    assert grew['streamvlm_sessions_ended_total{reason="close"}'] == 200
    assert took < 60, f"200 sessions took {took:.1f} s"


def test_a_closed_session_is_gone_and_a_persistent_one_stays(server):
    plain = create(server)
    final, code = asyncio.run(stream_then_close(server, plain, frames=3))
    assert final["deleted"] is True and final["received"] == 3 and final["pending"] == 0 and code == 1000
    path = f"/v1/sessions/{plain['id']}"
    assert request(server.http, "GET", path, token=plain["token"])[0] == 404

    kept = create(server, persist=True)
    assert kept["persist"] is True and plain["persist"] is False
    final, code = asyncio.run(stream_then_close(server, kept, frames=3))
    assert final["deleted"] is False and code == 1000
    path = f"/v1/sessions/{kept['id']}"
    status, body = request(server.http, "GET", path, token=kept["token"])
    assert status == 200 and body["persist"] and body["frames"]["encoded"] == 3
    # a persistent session can be streamed to again, and deleted by its token
    final, _ = asyncio.run(stream_then_close(server, kept, frames=0))
    assert final["received"] == 3 and not final["deleted"]
    assert request(server.http, "DELETE", path, token=kept["token"])[0] == 200
    assert open_sessions(server) == 0


def test_a_client_that_disconnects_without_close_leaves_its_session(server):
    session = create(server)

    async def drop() -> None:
        async with connect(server.ws + session["stream"], additional_headers=auth(session["token"])) as ws:
            await ws.send(pack_frame(jpeg(0), t=0.0))
            assert json.loads(await ws.recv())["type"] == "ack"
        # leaving the block closes the socket without the protocol's close message

    asyncio.run(drop())
    path = f"/v1/sessions/{session['id']}"
    status, body = request(server.http, "GET", path, token=session["token"])
    assert status == 200 and not body["streaming"] and body["frames"]["received"] == 1
    assert request(server.http, "DELETE", path, token=session["token"])[0] == 200


def test_the_operator_lists_and_deletes_any_session(server):
    a, b = create(server), create(server, persist=True)
    # listing needs the API key: not a session's token, not a wrong key
    for token in (None, a["token"], "wrong"):
        status, body = request(server.http, "GET", "/v1/sessions", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized", body
    status, listing = request(server.http, "GET", "/v1/sessions", token=API_KEY)
    assert status == 200 and listing["max_sessions"] == SETTINGS.max_sessions
    entries = {s["id"]: s for s in listing["sessions"]}
    assert set(entries) == {a["id"], b["id"]}
    entry = entries[b["id"]]
    assert entry["model"] == MODEL and entry["persist"] and not entry["streaming"]
    assert entry["frames"]["received"] == 0 and entry["idle_s"] >= 0
    assert entry["created_at"] <= entry["last_active_at"] <= time.time()
    assert "token" not in entry  # the operator sees sessions, not their keys

    async def kicked() -> tuple[dict, int]:
        """The operator deletes ``a`` while its client streams: the client is told and closed."""
        async with connect(server.ws + a["stream"], additional_headers=auth(a["token"])) as ws:
            await ws.send(pack_frame(jpeg(0), t=0.0))
            assert json.loads(await ws.recv())["type"] == "ack"
            listing = await asyncio.to_thread(request, server.http, "GET", "/v1/sessions", token=API_KEY)
            assert {s["id"]: s["streaming"] for s in listing[1]["sessions"]}[a["id"]] is True
            path = f"/v1/sessions/{a['id']}"
            status, deleted = await asyncio.to_thread(request, server.http, "DELETE", path, token=API_KEY)
            assert status == 200 and deleted["deleted"] and deleted["frames"]["received"] == 1
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), timeout=30)
            return message, ws.close_code

    message, code = asyncio.run(kicked())
    assert message["code"] == "session_deleted" and code == 1001
    samples = parse_metrics(request(server.http, "GET", "/metrics", token=API_KEY)[1])
    assert samples['streamvlm_sessions_ended_total{reason="operator"}'] == 1
    assert request(server.http, "DELETE", f"/v1/sessions/{b['id']}", token=API_KEY)[0] == 200
    status, body = request(server.http, "DELETE", f"/v1/sessions/{b['id']}", token=API_KEY)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert request(server.http, "GET", "/v1/sessions", token=API_KEY)[1]["sessions"] == []
    # a session's token still deletes only its own session
    c, d = create(server), create(server)
    assert request(server.http, "DELETE", f"/v1/sessions/{c['id']}", token=d["token"])[0] == 403
    assert (
        request(server.http, "GET", f"/v1/sessions/{c['id']}", token=API_KEY)[0] == 403
    )  # the key reads none
    for s in (c, d):
        assert request(server.http, "DELETE", f"/v1/sessions/{s['id']}", token=s["token"])[0] == 200


def test_session_info_and_health_name_the_model_and_what_it_can_answer(server):
    from streamvlm.models.catalog import model_card

    card = model_card(MODEL).to_dict()
    assert card["kind"] == "random" and card["can_answer"]
    session = create(server)
    assert session["model"] == MODEL and session["model_card"] == card
    status, body = request(server.http, "GET", f"/v1/sessions/{session['id']}", token=session["token"])
    assert status == 200 and body["model"] == MODEL and body["model_card"] == card
    health = request(server.http, "GET", "/health")[1]
    assert health["model"] == MODEL and health["model_card"] == card
    request(server.http, "DELETE", f"/v1/sessions/{session['id']}", token=session["token"])


def test_without_an_api_key_there_is_no_operator_and_idle_sessions_expire(engine):
    settings = ServerSettings(api_key=None, idle_timeout_s=0.3)
    server = ServerThread(create_app(engine, settings), settings)
    try:
        session = create(server)
        # no key can delete a session but its own token
        status, body = request(server.http, "DELETE", f"/v1/sessions/{session['id']}", token="anything")
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = request(server.http, "GET", "/v1/sessions", token="anything")
        assert status == 403 and body["error"]["code"] == "operator_disabled"
        assert "STREAMVLM_API_KEY" in body["error"]["message"] and "\n" not in body["error"]["message"]
        # the idle timeout from the settings frees it with nobody's help
        deadline = time.monotonic() + 10
        while open_sessions(server) != 0:
            assert time.monotonic() < deadline, "the idle session was not deleted"
            time.sleep(0.1)
        assert request(server.http, "GET", f"/v1/sessions/{session['id']}", token=session["token"])[0] == 404
    finally:
        server.stop()


def test_idle_timeout_settings_and_the_serve_option(capsys):
    from streamvlm.cli import main
    from streamvlm.servers.cli import idle_seconds

    assert ServerSettings(idle_timeout_s=0).idle_timeout_s is None  # 0: never
    assert ServerSettings().idle_timeout_s == 900.0
    assert [idle_seconds(t) for t in ("none", "Never", "0", "30", "2.5")] == [0.0, 0.0, 0.0, 30.0, 2.5]
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(SystemExit) as refused:  # argparse's one-line error, before any model loads
            main(["serve", "--idle-timeout", bad])
        assert refused.value.code == 2
        err = capsys.readouterr().err
        assert "--idle-timeout" in err and err.count("\n") <= 2, err
