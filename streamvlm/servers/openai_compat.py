"""OpenAI-compatible ``POST /v1/chat/completions`` (and ``GET /v1/models``).

A completion answers the last user message's text either over a session's memory
(named in the extra field ``"streamvlm": {"session": "<id>"}``, authorised by that
session's token) or over a video sent inline as a ``video_url`` content part holding a
base64 ``data:`` URL (the convention of vLLM and SGLang), which is streamed through a
throwaway session first; where the operator passed ``--allow-dir``, the URL may instead
name a video file inside an allowed directory. ``"stream": true`` sends server-sent events in OpenAI's
``chat.completion.chunk`` format, ending with ``data: [DONE]``. See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ..config import MemoryConfig
from ..errors import ConfigError, InvalidQuestionError, StreamVLMError
from .chat_request import ChatCall, parse_chat, read_video_file
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
        lease = await _lease(call, request)
        arrived = time.perf_counter()
        try:
            stream = await asyncio.to_thread(_ask, lease.session, call)
        except BaseException:
            await lease.end()
            raise
        completion = _Completion(engine.model_name, lease.session, stream)
        if call.stream:
            events = _events(completion, call, answer_pool, metrics, arrived, lease)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            await asyncio.get_running_loop().run_in_executor(answer_pool, lambda: [*stream])
        finally:
            await lease.end()
        latency, ttft = _latencies(stream.answer, arrived)
        metrics.observe_answer(latency, ttft)
        return completion.full(latency)

    async def _lease(call: ChatCall, request: Request) -> _Lease:
        if call.session_id is not None:
            served = registry.authorize(call.session_id, request.headers.get("authorization"))
            if served.session is None:
                raise ProtocolError("not_found", "no such session", status=404)
            return _Lease(served.session)
        release = registry.reserve()  # the throwaway session counts against max_sessions
        try:
            return _Lease(await asyncio.to_thread(open_video_session, engine, call, settings), release)
        except BaseException:
            release()
            raise


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


# --------------------------------------------------------------------- model work (threads)


def open_video_session(engine, call: ChatCall, settings: ServerSettings):
    """A new session that has watched ``call.video`` at ``call.fps`` (runs in a thread)."""
    from ..ingest import FileSource, Sampler

    with tempfile.TemporaryDirectory(prefix="streamvlm-video-") as tmp:
        path = Path(tmp) / f"video{call.video_suffix}"
        path.write_bytes(call.video)
        try:
            source = FileSource(path, backend="pyav")
        except StreamVLMError as e:
            raise ProtocolError("bad_video", f"the video cannot be opened: {e}") from None
        info = source.info
        if info.width > settings.max_frame_side or info.height > settings.max_frame_side:
            raise ProtocolError(
                "frame_dimensions",
                f"video frames are {info.width}x{info.height}, over {settings.max_frame_side} per side",
            )
        if info.width * info.height > settings.max_frame_pixels:
            raise ProtocolError(
                "frame_dimensions",
                f"video frames are {info.width}x{info.height}, over {settings.max_frame_pixels} pixels",
            )
        if info.duration is not None and info.duration > settings.max_video_seconds:
            raise ProtocolError(
                "video_too_long",
                f"the video lasts {info.duration:.0f} s, over {settings.max_video_seconds:g} s",
            )
        session = engine.new_session(MemoryConfig())
        try:
            frames = 0
            for frame in Sampler(call.fps).sample(source):
                frames += 1
                if frames > settings.max_video_frames:
                    raise ProtocolError(
                        "video_too_long",
                        f"the video has more than {settings.max_video_frames} frames at {call.fps:g} fps; "
                        "send a shorter clip or a lower streamvlm.fps",
                    )
                session.add_frame(frame.rgb, frame.t)
            if frames == 0:
                raise ProtocolError("bad_video", "no frame of the video could be decoded")
            session.flush()
        except ProtocolError:
            session.close()
            raise
        except StreamVLMError as e:  # the decoder's or the session's complaint about the frames
            session.close()
            raise ProtocolError("bad_video", str(e)) from None
        except BaseException:
            session.close()
            raise
    return session


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
    except StreamVLMError as e:  # the status line has gone: report in the stream, as OpenAI does
        yield _event({"error": {"code": getattr(e, "code", "answer_failed"), "message": str(e)}})
    finally:
        lease.end_soon()
    yield "data: [DONE]\n\n"
