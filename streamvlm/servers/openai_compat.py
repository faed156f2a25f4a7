"""OpenAI-compatible ``POST /v1/chat/completions`` (and ``GET /v1/models``).

A completion answers the last user message's text either over a session's memory
(named in the extra field ``"streamvlm": {"session": "<id>"}``, authorised by that
session's token) or over a video sent inline as a ``video_url`` content part holding a
base64 ``data:`` URL (the convention of vLLM and SGLang), which is streamed through a
throwaway session first (``inline_video.py``); where the operator passed ``--allow-dir``,
the URL may instead name a video file inside an allowed directory. ``"stream": true``
sends server-sent events in OpenAI's ``chat.completion.chunk`` format, ending with
``data: [DONE]``; with an inline video the response starts at once and SSE comments
report the encoding's progress until the answer's events begin. See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..errors import ConfigError, InvalidQuestionError, StreamVLMError
from .chat_request import ChatCall, parse_chat, read_video_file
from .inline_video import InlineVideo
from .metrics import Metrics
from .protocol import ProtocolError, answer_fields
from .sessions import SessionRegistry, bearer_token
from .settings import ServerSettings
from .threads import iterate_in_thread


def add_openai_routes(
    app: FastAPI,
    engine,
    registry: SessionRegistry,
    settings: ServerSettings,
    metrics: Metrics,
    answer_pool: Executor,
    require_api_key: Callable[[Request], None],
    read_json: Callable,
) -> None:
    """Register ``/v1/models`` and ``/v1/chat/completions`` on ``app``."""
    # base64 makes 3 bytes into 4; the rest of the body is small JSON
    body_limit = settings.max_video_bytes * 4 // 3 + 4 + settings.max_text_bytes

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        """The one model this server runs, as an OpenAI model list."""
        require_api_key(request)
        return {
            "object": "list",
            "data": [{"id": engine.model_name, "object": "model", "owned_by": "streamvlm"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """Answer over a session's memory or an inline video; ``stream: true`` for SSE."""
        token = bearer_token(request.headers.get("authorization"))
        # Only a caller with the API key or some session's token may make the server read
        # a body of up to body_limit bytes; which session it is comes with the body.
        if settings.api_key is not None and not (
            token is not None and (_same(token, settings.api_key) or registry.knows(token))
        ):
            raise ProtocolError(
                "unauthorized",
                "send the API key, or the session's token, as 'Authorization: Bearer ...'",
                status=401,
            )
        body = await read_json(request, body_limit)
        if not _names_session(body):
            require_api_key(request)  # an inline video makes a new (throwaway) session: the key's to grant
        call = parse_chat(body, settings, engine.model_name)
        if call.video_path is not None:  # checked against --allow-dir and read, off the loop
            video, suffix = await asyncio.to_thread(read_video_file, call.video_path, settings)
            call = replace(call, video=video, video_suffix=suffix, video_path=None)
        if call.session_id is None:
            return await _over_video(call)
        served = await registry.obtain(call.session_id, request.headers.get("authorization"))
        if served.session is None:
            raise ProtocolError("not_found", "no such session", status=404)
        lease = _Lease(served.session)
        return await _respond(call, lease, await asyncio.to_thread(_ask, lease.session, call))

    async def _over_video(call: ChatCall):
        """Probe the video (refusals are HTTP errors), then encode it, ask and answer."""
        release = registry.reserve()  # the throwaway session counts against max_sessions
        try:
            video = await asyncio.to_thread(InlineVideo, call.video, call.video_suffix, call.fps, settings)
        except BaseException:
            release()
            raise
        if call.stream:  # the response starts now; the encoding's progress goes out as comments
            watch = _Watch(engine, video, call, release)
            events = _video_events(watch, engine.model_name, call, answer_pool, metrics, settings)
            return _EventStream(events, on_end=watch.abandon)
        try:
            session, stream = await asyncio.to_thread(watch_and_ask, engine, video, call)
        except BaseException:
            release()
            raise
        return await _respond(call, _Lease(session, release), stream)

    async def _respond(call: ChatCall, lease: _Lease, stream):
        """The answer to ``call``, whole or as server-sent events; ``lease`` ends with it."""
        arrived = time.perf_counter()
        completion = _Completion(engine.model_name, lease.session, stream)
        if call.stream:
            return _EventStream(_events(completion, call, answer_pool, metrics, arrived, lease))
        try:
            await asyncio.get_running_loop().run_in_executor(answer_pool, lambda: [*stream])
        finally:
            await lease.end()
        latency, ttft = _latencies(stream.answer, arrived)
        metrics.observe_answer(latency, ttft)
        return completion.full(latency)


class _Lease:
    """The session a completion answers over; a throwaway one is closed, and its slot freed, at the end."""

    def __init__(self, session, release: Callable[[], None] | None = None):
        self.session = session
        self._release = release

    async def end(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            try:
                await asyncio.to_thread(self.session.close)  # encodes what it holds: off the loop
            finally:
                release()

    def end_soon(self) -> None:
        """``end`` without waiting: for a generator that may be closing because its client left."""
        if self._release is not None:
            release, self._release = self._release, None
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self.session.close).add_done_callback(lambda _: release())


def _names_session(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("streamvlm"), dict) and "session" in body["streamvlm"]
    )


def _latencies(answer, arrived: float) -> tuple[float, float]:
    """(arrival to last token, arrival to first token) of an answer, in seconds."""
    latency = time.perf_counter() - arrived
    return latency, max(0.0, latency - answer.timings.total_s) + answer.timings.ttft_s


class _Watch:
    """An inline video being encoded (and its question asked) in a thread, for a streamed
    response: ``lease()`` once it is done, or ``abandon()`` when the response ends first.
    """

    def __init__(self, engine, video: InlineVideo, call: ChatCall, release: Callable[[], None]):
        self.video = video
        self._release: Callable[[], None] | None = release
        self._stop = threading.Event()
        self.task = asyncio.ensure_future(asyncio.to_thread(watch_and_ask, engine, video, call, self._stop))

    def lease(self) -> tuple[_Lease, Any]:
        """The session's lease and the answer stream; raises what the encoding raised."""
        session, stream = self.task.result()
        release, self._release = self._release, None
        return _Lease(session, release), stream

    def abandon(self) -> None:
        """Stop encoding at the next frame, then close the session and free its slot
        (nothing to do once leased)."""
        if self._release is None:
            return
        release, self._release = self._release, None
        self._stop.set()

        def finished(task: asyncio.Future) -> None:
            if task.cancelled() or task.exception() is not None:
                release()  # watch_and_ask closed its session itself
            else:
                _Lease(task.result()[0], release).end_soon()

        self.task.add_done_callback(finished)


class _EventStream(StreamingResponse):
    """A ``text/event-stream`` response whose ``on_end`` runs however it ends, even when
    its body never started (a client gone before the first byte)."""

    def __init__(self, events: AsyncIterator[str], on_end: Callable[[], None] | None = None):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_end is not None:
                self._on_end()


# --------------------------------------------------------------------- model work (threads)


def watch_and_ask(engine, video: InlineVideo, call: ChatCall, stop: threading.Event | None = None):
    """(session, answer stream): ``video`` encoded into a new session and ``call`` asked
    over it (runs in a thread; the session is closed if either step fails)."""
    session = video.watch(engine, stop)
    try:
        return session, _ask(session, call)
    except BaseException:
        session.close()
        raise


def _ask(session, call: ChatCall):
    try:
        return session.ask_stream(call.question, **call.options)
    except InvalidQuestionError as e:
        raise ProtocolError("bad_question", str(e)) from None
    except ConfigError as e:
        raise ProtocolError("bad_option", str(e)) from None


# ---------------------------------------------------------------------------- responses


class _Completion:
    """Builds the OpenAI response objects of one answer."""

    def __init__(self, model: str, session, stream):
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.session = session
        self.stream = stream

    def usage(self) -> dict[str, int]:
        """Prompt tokens: sink + attended blocks + the question turn; completion: new tokens."""
        answer, backend = self.stream.answer, self.session.backend
        question = len(backend.prompt_parts(self.session.system_prompt, answer.question).question)
        prompt = len(self.session.sink.ids) + sum(b.tokens for b in answer.blocks) + question
        done = answer.timings.new_tokens
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def full(self, latency: float) -> dict[str, Any]:
        """The ``chat.completion`` object, with streamvlm's answer fields under ``streamvlm``."""
        answer = self.stream.answer
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": answer.finish_reason,
        }
        return {
            **self._base("chat.completion"),
            "choices": [choice],
            "usage": self.usage(),
            "streamvlm": answer_fields(answer, latency),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
        """One SSE event carrying a ``chat.completion.chunk``."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _event({**self._base("chat.completion.chunk"), "choices": [choice], **extra})

    def usage_chunk(self) -> str:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        return _event({**self._base("chat.completion.chunk"), "choices": [], "usage": self.usage()})


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _error_event(e: StreamVLMError) -> str:
    """An error after the status line has gone: reported in the stream, as OpenAI does."""
    return _event({"error": {"code": getattr(e, "code", "answer_failed"), "message": str(e)}})


_DONE = "data: [DONE]\n\n"


async def _video_events(
    watch: _Watch, model: str, call: ChatCall, pool: Executor, metrics: Metrics, settings: ServerSettings
) -> AsyncIterator[str]:
    """The SSE body over an inline video: a comment with the encoding's progress at once
    and every ``stream_keepalive_s`` until it is done, then the answer's events."""
    try:
        while not watch.task.done():
            yield f": encoding {watch.video.progress()}\n\n"
            await asyncio.wait({watch.task}, timeout=settings.stream_keepalive_s)
        lease, stream = watch.lease()
    except StreamVLMError as e:  # refused while decoding (a container that hid its length, ...)
        yield _error_event(e)
        yield _DONE
        return
    finally:
        watch.abandon()  # the client left, or the encoding failed: stop it and free the slot
    completion = _Completion(model, lease.session, stream)
    events = _events(completion, call, pool, metrics, time.perf_counter(), lease)
    async with contextlib.aclosing(events):  # closed with this one: the lease ends at once
        async for event in events:
            yield event


async def _events(
    completion: _Completion,
    call: ChatCall,
    pool: Executor,
    metrics: Metrics,
    arrived: float,
    lease: _Lease,
) -> AsyncIterator[str]:
    """The SSE body: a role chunk, content chunks, a finish chunk, usage if asked, ``[DONE]``."""
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        async with contextlib.aclosing(iterate_in_thread(completion.stream, pool)) as deltas:
            async for delta in deltas:
                yield completion.chunk({"content": delta})
        answer = completion.stream.answer
        latency, ttft = _latencies(answer, arrived)
        metrics.observe_answer(latency, ttft)
        yield completion.chunk({}, answer.finish_reason, streamvlm=answer_fields(answer, latency))
        if call.include_usage:
            yield completion.usage_chunk()
    except StreamVLMError as e:
        yield _error_event(e)
    finally:
        lease.end_soon()
    yield _DONE
