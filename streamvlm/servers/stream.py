"""One websocket stream connection: frames in, acks and streamed answers out.

The receive loop handles one message at a time, in order. Frames are decoded in a
thread pool and handed to the session's encoder queue (``Session.push_frame`` never
waits for the model); questions go to a per-connection queue that a second task
answers one by one, iterating the answer in a thread and sending each text delta as it
arrives. So frames keep flowing while an answer streams, the event loop never runs
model work, and everything that waits is bounded: the encoder queue
(``MemoryConfig.queue_frames``), the question queue (``max_pending_questions``), the
deltas of one answer (``max_new_tokens``), and what uvicorn reads off the socket
(it stops reading until the loop takes the last message).

A question covers every frame received before it (the session waits for them in the
answer's thread). When encoding catches up with every frame received, a third task
sends an ``ack`` with ``"cause": "encoded"``, so a client can tell that all it sent is in
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import Executor
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from ..errors import ConfigError, InvalidFrameError, InvalidQuestionError, StreamVLMError
from . import protocol
from .frames import decode_image
from .metrics import Metrics
from .protocol import Close, ProtocolError, Question, Reset
from .sessions import ServedSession, SessionRegistry
from .settings import ServerSettings
from .threads import iterate_in_thread

log = logging.getLogger("streamvlm.server")

KICK_TIMEOUT_S = 2.0
# the "encoded" ack waits until no frame has arrived for this long: one when a burst or a
# stream stops, not one per frame of a live stream the encoder keeps up with
ENCODED_ACK_QUIET_S = 0.1


class StreamConnection:
    """Serves ``/v1/sessions/{id}/stream`` for one accepted websocket."""

    def __init__(
        self,
        ws: WebSocket,
        served: ServedSession,
        registry: SessionRegistry,
        settings: ServerSettings,
        metrics: Metrics,
        decode_pool: Executor,
        answer_pool: Executor,
    ):
        self.ws = ws
        self.served = served
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.answer_pool = answer_pool
        self.questions: asyncio.Queue = asyncio.Queue(maxsize=settings.max_pending_questions)
        self._send_lock = asyncio.Lock()  # the receive loop and the answer task both send
        self._open = True
        self._asked = 0
        self._task: asyncio.Task | None = None  # the task running ``run``
        self._caught_up = asyncio.Event()  # set when the encoder may have caught up: check it
        self._in_frame = False  # the receive loop is handling a frame (decoding it, then its ack)
        self._encoded_acked = 0  # ``received`` when the last "encoded" ack was sent
        self._last_frame_at = 0.0  # time.monotonic() when the receive loop last finished a frame
        self._notify = None  # the session's ``on_caught_up`` while this connection feeds it

    # ----- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Receive until the client closes, sends ``close`` or the session is deleted."""
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._notify = lambda: loop.call_soon_threadsafe(self._caught_up.set)
        self._listen()
        answering = asyncio.create_task(self._answer_loop())
        catching_up = asyncio.create_task(self._caught_up_loop())
        try:
            while self._open:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self.served.touch()
                if message.get("bytes") is not None:
                    await self._on_frame(message["bytes"])
                elif message.get("text") is not None and await self._on_text(message["text"]):
                    break
        finally:
            self._open = False
            answering.cancel()  # closes the answer's iterator: its thread stops at the next token
            catching_up.cancel()
            await asyncio.gather(answering, catching_up, return_exceptions=True)
            session = self.served.session
            if session is not None and session.on_caught_up is self._notify:
                session.on_caught_up = None
            self.served.touch()

    @property
    def closing(self) -> bool:
        """The socket is gone or going, and the connection is finishing (an answer being
        stopped at its next token): a new connection to its session may wait for it."""
        return not self._open

    async def finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this connection's handler to end."""
        if self._task is None or self._task.done():
            return True
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        return bool(done)

    async def kick(self, code: str, message: str) -> None:
        """End the connection from outside (the session is being deleted).

        A client that stopped reading holds up every send to it: after ``KICK_TIMEOUT_S``
        the connection's task is cancelled instead, so deleting never waits on a client.
        """
        self._open = False
        try:
            await asyncio.wait_for(self._say_goodbye(code, message), KICK_TIMEOUT_S)
        except TimeoutError:
            if self._task is not None:
                self._task.cancel()

    async def _say_goodbye(self, code: str, message: str) -> None:
        await self._send(protocol.error_message(code, message))
        await self._close(1001, code)

    # ----- frames -----------------------------------------------------------------

    async def _on_frame(self, data: bytes) -> None:
        self._in_frame = True
        try:
            await self._take_frame(data)
        finally:
            self._in_frame = False
            self._last_frame_at = time.monotonic()
            self._caught_up.set()  # a refused or rate-dropped frame may be the last one

    async def _take_frame(self, data: bytes) -> None:
        served, counts = self.served, self.served.frames
        counts.received += 1
        self.metrics.frames_received += 1
        t = None
        try:
            t, image = protocol.unpack_frame(data)
            if len(image) > self.settings.max_frame_bytes:  # before anything else costs time
                raise ProtocolError(
                    "frame_too_large",
                    f"frame is {len(image)} bytes, over the limit of {self.settings.max_frame_bytes}",
                )
            if served.last_t is not None and t < served.last_t:
                raise ProtocolError(
                    "bad_timestamp",
                    f"frame time {t:.3f}s is before the previous frame's {served.last_t:.3f}s; "
                    "send frames in order (or reset the session to start over)",
                )
            if not served.limiter.allow():
                counts.dropped_rate += 1
                self.metrics.frames_dropped_rate += 1
                await self._ack("frame", t=t, queued=False)
                return
            loop = asyncio.get_running_loop()
            rgb = await loop.run_in_executor(self.decode_pool, decode_image, image, self.settings)
            if served.session is None or not self._open:
                raise ProtocolError("session_closed", "this session was deleted; the frame was not used")
            served.session.push_frame(rgb, t)
            served.last_t = t
            counts.accepted += 1
        except ProtocolError as e:
            counts.rejected += 1
            self.metrics.frames_rejected[e.code] += 1
            await self._error(e.code, e.message, t=t)
            return
        except (InvalidFrameError, ConfigError) as e:  # a timestamp push_frame refuses; a closed queue
            counts.rejected += 1
            self.metrics.frames_rejected["bad_frame"] += 1
            await self._error("bad_frame", str(e), t=t)
            return
        await self._ack("frame", t=t, queued=True)

    async def _ack(self, cause: str, **extra: Any) -> None:
        session = self.served.session
        await self._send(
            {
                "type": "ack",
                "cause": cause,
                **extra,
                **self.served.counts(),
                "partial": session.pending_frames if session is not None else 0,
                "stream_time": session.stream_time if session is not None else None,
            }
        )
        if session is not None and session.background_errors:
            # an encode failed in the session's thread: tell the client once per failure
            while session.background_errors:
                await self._error("encode_failed", session.background_errors.pop(0))

    # ----- control messages -------------------------------------------------------

    async def _on_text(self, text: str) -> bool:
        """Handle one control message; True when the connection should end."""
        try:
            message = protocol.parse_control(
                text,
                max_bytes=self.settings.max_text_bytes,
                max_question_chars=self.settings.max_question_chars,
                max_new_tokens=self.settings.max_new_tokens,
                next_id=f"q{self._asked + 1}",
            )
            if isinstance(message, Question):
                await self._ask(message)
            elif isinstance(message, Reset):
                await self.registry.reset(self.served)
                self._listen()  # the fresh memory's encoder reports to this connection too
                await self._ack("reset")
            elif isinstance(message, Close):
                await self._finish()
                return True
        except ProtocolError as e:
            await self._error(e.code, e.message, **e.context)
        return False

    async def _ask(self, q: Question) -> None:
        self._asked += 1
        if self.questions.full():
            raise ProtocolError(
                "too_many_questions",
                f"{self.settings.max_pending_questions} questions are already waiting; ask again after an answer",
                id=q.id,
            )
        session = self.served.session
        if session is None:
            raise ProtocolError("session_closed", "this session was deleted", id=q.id)
        try:
            stream = await asyncio.to_thread(session.ask_stream, q.text, **q.options)
        except InvalidQuestionError as e:
            raise ProtocolError("bad_question", str(e), id=q.id) from None
        except (ConfigError, TypeError) as e:
            raise ProtocolError("bad_option", str(e), id=q.id) from None
        self.questions.put_nowait((q.id, stream, time.perf_counter()))

    async def _finish(self) -> None:
        """``close``: answer what was asked, encode every frame received, final ack, delete
        the session unless it persists, close.

        The ack comes before the delete (its counters and ``stream_time`` read the live
        session) and the delete before the socket closes, so a client that waits for the
        close finds the session's slot free.
        """
        await self.questions.join()
        session = self.served.session
        if session is not None:
            # drain, then encode the partial chunk: no frame stays pending
            await asyncio.to_thread(lambda: (session.drain(), session.flush()))
        await self._ack("close", deleted=not self.served.persist)
        await self.registry.closed_by_client(self.served)
        await self._close(1000, "closed")

    # ----- catching up ------------------------------------------------------------

    def _listen(self) -> None:
        """Have the session's encoder thread wake ``_caught_up_loop`` when it runs dry."""
        if self.served.session is not None:
            self.served.session.on_caught_up = self._notify

    async def _caught_up_loop(self) -> None:
        """Send ``{"type": "ack", "cause": "encoded"}`` when encoding has caught up with the
        frames received since the last one (no frame being decoded, none queued for the
        encoder; only the chunk being filled, ``partial``, is not in a block yet) and no
        frame has arrived for ``ENCODED_ACK_QUIET_S``."""
        while True:
            await self._caught_up.wait()
            self._caught_up.clear()
            while True:  # until sent, or until a later frame or encode will wake it again
                session, received = self.served.session, self.served.frames.received
                if session is None or self._in_frame or received == self._encoded_acked:
                    break
                if not session.caught_up():
                    break
                quiet = self._last_frame_at + ENCODED_ACK_QUIET_S - time.monotonic()
                if quiet <= 0:
                    self._encoded_acked = received
                    await self._ack("encoded")
                    break
                await asyncio.sleep(quiet)

    # ----- answers ----------------------------------------------------------------

    async def _answer_loop(self) -> None:
        while True:
            qid, stream, arrived = await self.questions.get()
            try:
                await self._answer(qid, stream, arrived)
            except asyncio.CancelledError:
                raise
            except StreamVLMError as e:
                await self._error("answer_failed", str(e), id=qid)
            except Exception:
                log.exception("answer %s failed", qid)
                await self._error("internal", "the server failed to answer; see its log", id=qid)
            finally:
                self.questions.task_done()

    async def _answer(self, qid: str, stream, arrived: float) -> None:
        async with contextlib.aclosing(iterate_in_thread(stream, self.answer_pool)) as deltas:
            async for delta in deltas:
                await self._send(protocol.delta_message(qid, delta))
        await self._done(qid, stream.answer, arrived)

    async def _done(self, qid: str, answer, arrived: float) -> None:
        latency = time.perf_counter() - arrived
        fields = protocol.answer_fields(answer, latency)
        self.metrics.observe_answer(latency, fields["timings"]["queued_s"] + answer.timings.ttft_s)
        self.served.answers += 1
        await self._send({"type": "answer.done", "id": qid, **fields})

    # ----- sending ----------------------------------------------------------------

    async def _error(self, code: str, message: str, **context: Any) -> None:
        self.metrics.errors[code] += 1
        context = {k: v for k, v in context.items() if v is not None}
        await self._send(protocol.error_message(code, message, **context))

    async def _send(self, message: dict) -> None:
        async with self._send_lock:
            if self.ws.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.ws.send_text(json.dumps(message))  # ASCII-escaped: any str is valid
            except Exception:  # the client is gone; the receive loop sees the disconnect
                self._open = False

    async def _close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                try:
                    await self.ws.close(code, reason)
                except Exception:
                    pass
