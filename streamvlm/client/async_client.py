"""``AsyncStreamClient``: one session on a streamvlm server, driven from asyncio.

A background reader task takes every server message off the websocket and routes it:
frame replies (``ack`` or a frame ``error``) settle the oldest frame in flight, answer
messages go to the ``AnswerStream`` of their question id, ``reset`` / ``close`` acks to
whoever waits for them. So sending never waits for a reply unless it asks to (the
in-flight window), and answers stream while frames keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..servers.protocol import pack_frame
from .frames import encode_frame
from .rest import ROUTING_HEADER, ClientError, request_json, websocket_url

# Error codes that are the one reply to a frame message (docs/protocol.md).
FRAME_ERROR_CODES = frozenset(
    {"bad_header", "bad_timestamp", "frame_too_large", "frame_dimensions", "bad_image", "bad_frame"}
)
# Server messages are small JSON, but an answer.done lists every attended block.
MAX_SERVER_MESSAGE = 16 << 20


class AnswerStream:
    """One question's answer: iterate it for the text deltas (``async for``); then
    ``done`` is the ``answer.done`` message (text, asked_at, spans, blocks, timings).

    ``await stream.result()`` skips the deltas and returns ``done``. A refused question or
    a failed answer raises ``ClientError`` (with the server's code) from either.
    """

    def __init__(self, qid: str, text: str):
        self.id = qid
        self.text = text
        self.done: dict | None = None
        self._items: asyncio.Queue = asyncio.Queue()  # deltas, then a final dict or ClientError
        self._finished = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        if self._finished.done() and self._items.empty():
            self._finished.result()  # raises the error, if the answer failed
            raise StopAsyncIteration
        item = await self._items.get()
        if isinstance(item, str):
            return item
        self._finished.result()
        raise StopAsyncIteration

    async def result(self) -> dict:
        """Wait for ``answer.done`` and return it (raises ``ClientError`` if the answer failed)."""
        return await asyncio.shield(self._finished)

    # called by the reader task
    def _delta(self, text: str) -> None:
        self._items.put_nowait(text)

    def _finish(self, done: dict | None = None, error: ClientError | None = None) -> None:
        if self._finished.done():
            return
        self.done = done
        if error is not None:
            self._finished.set_exception(error)
            self._finished.exception()  # mark retrieved: a caller that never awaits it is fine
        else:
            self._finished.set_result(done)
        self._items.put_nowait(None)


class AsyncStreamClient:
    """Stream frames to a streamvlm server and ask about them.

    Args:
        server: ``http://host:port`` of ``streamvlm serve`` (``https`` for TLS).
        api_key: the server's API key, when it has one (``STREAMVLM_API_KEY`` there);
            used only to create sessions.
        session: an existing session (``{"id", "token", "stream"}`` as ``create_session``
            returned it) to reconnect to instead of creating one.
        session_id: the name to create the session under (``cam0``) instead of one the
            server picks. Every request about a session carries its id in the
            ``x-session-id`` header, which a cluster routes by (docs/deploy.md).
        memory: ``MemoryConfig`` options for the session created (``{"window": 8}``).
        system_prompt: replaces the server's default one for the session created.
        max_in_flight: frames sent and not yet acknowledged before ``send_frame`` waits
            (back-pressure: the sender goes as fast as the server replies, no faster).
        jpeg_quality: quality of frames given as arrays or PIL images.
        timeout: seconds for REST calls and for the websocket handshake.

    Use as ``async with AsyncStreamClient(url) as client:`` — it creates the session and
    connects; on exit it closes the stream (encoding every frame sent) and deletes the
    session unless ``delete_on_exit=False``.
    """

    def __init__(
        self,
        server: str,
        *,
        api_key: str | None = None,
        session: dict | None = None,
        session_id: str | None = None,
        memory: dict | None = None,
        system_prompt: str | None = None,
        max_in_flight: int = 8,
        jpeg_quality: int = 85,
        timeout: float = 30.0,
        delete_on_exit: bool = True,
        on_error: Callable[[dict], None] | None = None,
    ):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.server = server
        self.api_key = api_key
        self.session = session
        self.session_id = session_id
        self.memory = memory
        self.system_prompt = system_prompt
        self.max_in_flight = max_in_flight
        self.jpeg_quality = jpeg_quality
        self.timeout = timeout
        self.delete_on_exit = delete_on_exit
        self.on_error = on_error
        self.last_ack: dict | None = None  # the latest ack: cumulative counters of the session
        self.last_encoded: dict | None = None  # the latest "encoded" ack: encoding caught up then
        self.frames_sent = 0
        self.frame_errors: list[dict] = []  # frames the server refused (each one's error message)
        self.errors: list[dict] = []  # errors about neither a frame nor a question (encode_failed, ...)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._in_flight: deque[float] = deque()  # times of frames awaiting their reply, in order
        self._settled = asyncio.Condition()
        self._answers: dict[str, AnswerStream] = {}
        self._control: dict[str, deque[asyncio.Future]] = {"reset": deque(), "close": deque()}
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None

    # ----- REST ---------------------------------------------------------------------

    async def _rest(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        return await asyncio.to_thread(
            request_json, self.server, method, path, body, token, self.timeout, self._routing()
        )

    def _routing(self) -> dict[str, str]:
        """The header a cluster routes a session's requests by (harmless to a single server)."""
        session_id = self.session["id"] if self.session is not None else self.session_id
        return {ROUTING_HEADER: session_id} if session_id is not None else {}

    async def health(self) -> dict:
        """``GET /health``: status, model, open sessions."""
        return await self._rest("GET", "/health")

    async def create_session(self) -> dict:
        """Create a session with this client's memory options; returns the server's reply
        (``id``, ``token``, ``stream``, ``model``, ``memory``, ``limits``)."""
        # persist: the client reads the session after its stream's ``close`` (stats, --keep-session)
        # and deletes it itself on exit (``delete_on_exit``)
        body: dict[str, Any] = {"persist": True}
        if self.session_id is not None:
            body["id"] = self.session_id
        if self.memory:
            body["memory"] = self.memory
        if self.system_prompt is not None:
            body["system_prompt"] = self.system_prompt
        self.session = await self._rest("POST", "/v1/sessions", body, self.api_key)
        return self.session

    async def stats(self) -> dict:
        """``GET /v1/sessions/{id}``: frame counters, answers and ``Session.stats()``."""
        return await self._rest("GET", f"/v1/sessions/{self._session['id']}", token=self._session["token"])

    async def delete_session(self) -> dict:
        """Delete the session (its stream connection is closed by the server); final counts."""
        reply = await self._rest(
            "DELETE", f"/v1/sessions/{self._session['id']}", token=self._session["token"]
        )
        self.session = None
        return reply

    @property
    def _session(self) -> dict:
        if self.session is None:
            raise ClientError("no_session", "no session: call create_session() or connect() first")
        return self.session

    # ----- websocket ----------------------------------------------------------------

    async def connect(self) -> AsyncStreamClient:
        """Create a session if there is none, open its stream websocket, start reading."""
        if self._ws is not None:
            return self
        if self.session is None:
            await self.create_session()
        url = websocket_url(self.server, self._session["stream"])
        headers = {"Authorization": f"Bearer {self._session['token']}", **self._routing()}
        try:
            self._ws = await connect(
                url,
                additional_headers=headers,
                max_size=MAX_SERVER_MESSAGE,
                compression=None,  # the server has it off: frames are compressed images already
                open_timeout=self.timeout,
            )
        except InvalidStatus as e:
            raise _refusal(e) from None
        except OSError as e:
            raise ClientError("connection", f"cannot open {url}: {e}") from None
        self._closed_reason = None
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aenter__(self) -> AsyncStreamClient:
        return await self.connect()

    async def __aexit__(self, *exc_info) -> None:
        try:
            if exc_info[0] is None:
                await self.close()
            else:
                await self.disconnect()
        finally:
            if self.delete_on_exit and self.session is not None:
                with contextlib.suppress(ClientError):
                    await self.delete_session()

    async def send_frame(self, frame: Any, t: float) -> None:
        """Send one frame taken at stream time ``t`` (seconds, never decreasing).

        ``frame``: JPEG/PNG/WebP bytes, an RGB ``(H, W, 3)`` uint8 array or a PIL image
        (encoded as JPEG in a thread). Waits while ``max_in_flight`` frames are unacknowledged.
        """
        data = await asyncio.to_thread(encode_frame, frame, self.jpeg_quality)
        await self.wait_in_flight(self.max_in_flight - 1)
        ws = self._open_ws()
        self._in_flight.append(float(t))
        self.frames_sent += 1
        try:
            await ws.send(pack_frame(data, t))
        except ConnectionClosed:
            raise self._gone() from None

    async def wait_in_flight(self, at_most: int = 0) -> None:
        """Wait until at most ``at_most`` frames await their reply (0: every frame acked)."""
        async with self._settled:
            await self._settled.wait_for(lambda: len(self._in_flight) <= at_most or self._ws is None)
        if len(self._in_flight) > at_most:
            raise self._gone()

    async def wait_encoded(self) -> dict:
        """Wait until the server has encoded every frame this client sent (all but the
        chunk still being filled, which questions attend anyway); returns that ``encoded`` ack.

        Questions do not need it (each covers every frame sent before it); it is for a
        client that wants to know its frames are in memory, e.g. before it stops sending.
        Bound it with ``asyncio.wait_for``.
        """
        await self.wait_in_flight(0)
        # every frame sent has its reply; the server counted it in ``received`` before
        target = (self.last_ack or {}).get("received", 0)
        async with self._settled:
            await self._settled.wait_for(
                lambda: (self.last_encoded or {}).get("received", -1) >= target or self._ws is None
            )
        if (self.last_encoded or {}).get("received", -1) < target:
            raise self._gone()
        return self.last_encoded

    @property
    def in_flight(self) -> int:
        """Frames sent whose reply has not arrived yet."""
        return len(self._in_flight)

    async def ask(self, text: str, *, id: str | None = None, **options: Any) -> AnswerStream:
        """Ask a question; returns its ``AnswerStream`` at once (the answer streams into it).

        ``options`` are the protocol's question options: ``max_new_tokens``, ``top_k``,
        ``answer_window``, ``since``, ``until``, ``temperature``, ``top_p``, ``seed``, and
        ``wait``: the answer covers every frame sent before the question (the server
        waits until they are encoded) unless ``wait=False``, which answers at once over
        what is encoded.
        """
        ws = self._open_ws()
        qid = str(id) if id is not None else f"c{next(self._ids)}"
        if qid in self._answers:
            raise ValueError(f"question id {qid!r} is already waiting for its answer")
        stream = AnswerStream(qid, text)
        self._answers[qid] = stream
        message = {"type": "question", "id": qid, "text": text}
        if options:
            message["options"] = options
        try:
            await ws.send(json.dumps(message))
        except ConnectionClosed:
            self._answers.pop(qid, None)
            raise self._gone() from None
        return stream

    async def reset(self) -> dict:
        """Forget everything the session has seen; returns the ``reset`` ack."""
        return await self._control_message("reset")

    async def close(self) -> dict | None:
        """Finish: the server answers what was asked, encodes every frame sent, sends a
        final ack (returned) and closes the connection. The session stays open."""
        if self._ws is None:
            return None
        try:
            ack = await self._control_message("close")
        finally:
            await self.disconnect()
        return ack

    async def disconnect(self) -> None:
        """Drop the websocket without the ``close`` handshake (frames in flight may be lost)."""
        ws, reader = self._ws, self._reader
        if ws is not None:
            await ws.close()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._ws = self._reader = None

    async def _control_message(self, kind: str) -> dict:
        ws = self._open_ws()
        waiter = asyncio.get_running_loop().create_future()
        self._control[kind].append(waiter)
        try:
            await ws.send(json.dumps({"type": kind}))
        except ConnectionClosed:
            raise self._gone() from None
        return await waiter

    def _open_ws(self) -> ClientConnection:
        if self._ws is None or self._reader is None or self._reader.done():
            raise self._gone()
        return self._ws

    def _gone(self) -> ClientError:
        return ClientError("closed", self._closed_reason or "the stream is not connected; call connect()")

    # ----- the reader ---------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    await self._route(json.loads(raw))
            self._closed_reason = f"the server closed the stream ({ws.close_code} {ws.close_reason})".strip()
        except ConnectionClosed as e:
            self._closed_reason = f"the connection closed ({e})"
        finally:
            await self._fail_everything()

    async def _route(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "ack":
            self.last_ack = message
            if message.get("cause") == "frame":
                await self._settle()
            elif message.get("cause") == "encoded":
                self.last_encoded = message
                async with self._settled:
                    self._settled.notify_all()
            elif self._control.get(message.get("cause"), None):
                _resolve(self._control[message["cause"]].popleft(), message)
        elif kind == "answer.delta":
            stream = self._answers.get(message.get("id"))
            if stream is not None:
                stream._delta(message.get("text", ""))
        elif kind == "answer.done":
            stream = self._answers.pop(message.get("id"), None)
            if stream is not None:
                stream._finish(done=message)
        elif kind == "error":
            await self._route_error(message)

    async def _route_error(self, message: dict) -> None:
        code, qid = message.get("code", "error"), message.get("id")
        if qid is not None and qid in self._answers:
            error = ClientError(code, message.get("message", ""), id=qid)
            self._answers.pop(qid)._finish(error=error)
            return
        if code in FRAME_ERROR_CODES or (code == "session_closed" and self._in_flight):
            self.frame_errors.append(message)
            await self._settle()
        else:
            self.errors.append(message)
        if self.on_error is not None:
            self.on_error(message)

    async def _settle(self) -> None:
        """One frame got its reply (replies come in the order frames were sent)."""
        if self._in_flight:
            self._in_flight.popleft()
        async with self._settled:
            self._settled.notify_all()

    async def _fail_everything(self) -> None:
        error = self._gone()
        for stream in list(self._answers.values()):
            stream._finish(error=error)
        self._answers.clear()
        for waiters in self._control.values():
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                    waiter.exception()
        self._ws = None
        async with self._settled:
            self._settled.notify_all()


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _refusal(e: InvalidStatus) -> ClientError:
    """A refused websocket handshake as the server's JSON error."""
    response = e.response
    try:
        error = json.loads(response.body)["error"]
        return ClientError(error["code"], error["message"], status=response.status_code)
    except (ValueError, KeyError, TypeError):
        return ClientError(
            "http_error", f"handshake refused: HTTP {response.status_code}", status=response.status_code
        )
