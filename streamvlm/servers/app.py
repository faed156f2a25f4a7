"""The FastAPI application: REST for sessions, health and metrics, and the stream websocket.

``create_app(engine, settings)`` builds it around a loaded ``StreamVLM``; ``run.py``
serves it with uvicorn. The protocol is in ``docs/protocol.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import StreamVLMError
from ..models.catalog import model_card
from .limits import session_options
from .metrics import CONTENT_TYPE, Metrics
from .openai_compat import add_openai_routes
from .protocol import ProtocolError
from .sessions import SessionRegistry, bearer_token
from .settings import API_KEY_ENV, ServerSettings
from .stream import KICK_TIMEOUT_S, StreamConnection

log = logging.getLogger("streamvlm.server")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
}


def create_app(engine, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``engine`` (a loaded ``StreamVLM``) within ``settings``.

    ``settings`` defaults to ``ServerSettings.from_env()`` (the API key from
    ``STREAMVLM_API_KEY``). The app owns its sessions: they are closed when it shuts
    down, and sessions left idle longer than ``settings.idle_timeout_s`` are closed.
    """
    settings = settings or ServerSettings.from_env()
    metrics = Metrics()
    registry = SessionRegistry(engine, settings, metrics)
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="streamvlm-decode")
    # A session has one answer at a time on its websocket, and chat completions may ask it
    # too: two threads per session keep every answer going (they share the device lock).
    answer_pool = ThreadPoolExecutor(2 * settings.max_sessions, thread_name_prefix="streamvlm-answer")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        chores = [asyncio.create_task(_expire_idle(registry, settings))]
        if registry.shared is not None:
            registry.start_shared()
            chores.append(asyncio.create_task(_publish_shared(registry, settings.cluster)))
        try:
            yield
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            await registry.close_all()
            if registry.shared is not None:
                registry.shared.close()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            answer_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="streamvlm",
        version=__version__,
        description="Stream video into a vision-language model and ask about it (docs/protocol.md).",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.metrics = metrics
    _add_error_handlers(app)
    # what every description of the server says about its model: the name and what it can answer
    model = {"model": engine.model_name, "model_card": model_card(engine.model_name).to_dict()}

    def is_api_key(token: str | None) -> bool:
        return (
            settings.api_key is not None
            and token is not None
            and hmac.compare_digest(token.encode(), settings.api_key.encode())
        )

    def require_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ProtocolError(
                "unauthorized", "send the server's API key as 'Authorization: Bearer <key>'", status=401
            )
        if not is_api_key(token):
            raise ProtocolError("unauthorized", "the API key is wrong", status=401)

    def require_operator(request: Request) -> None:
        """The operator is whoever holds the API key; a server without one has no operator."""
        if settings.api_key is None:
            raise ProtocolError(
                "operator_disabled",
                f"listing and deleting others' sessions needs an API key; start the server with {API_KEY_ENV} set",
                status=403,
            )
        require_api_key(request)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the model and how many sessions are open."""
        return {
            "status": "ok",
            **model,
            "sessions": len(registry),
            "max_sessions": settings.max_sessions,
            "version": __version__,
            **({"replica": settings.cluster.replica_id} if settings.cluster is not None else {}),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text(request: Request) -> PlainTextResponse:
        """Prometheus text format; needs the API key when one is set."""
        require_api_key(request)
        text = metrics.render(await registry.samples(), registry.connections)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> dict:
        """Open a session. Body (optional):
        ``{"memory": {MemoryConfig options}, "system_prompt": str, "persist": bool}``.

        Returns its ``id``, its ``token`` (keep it: it is the only way to reach the
        session), the websocket path to stream to and the model's card.
        """
        require_api_key(request)
        body = await _json_body(request, settings.max_text_bytes)
        options = session_options(body, settings, engine.memory)
        served = await registry.create(options)
        return {
            "id": served.id,
            "token": served.token,
            "stream": f"/v1/sessions/{served.id}/stream",
            **model,
            "persist": served.persist,
            "memory": asdict(served.memory),
            "limits": _client_limits(settings),
        }

    @app.get("/v1/sessions")
    async def list_sessions(request: Request) -> dict:
        """Every open session, for the operator (the API key): ids, activity, counters."""
        require_operator(request)
        listed = {
            "sessions": [served.summary(engine.model_name) for served in registry.all()],
            "max_sessions": settings.max_sessions,
            "idle_timeout_s": settings.idle_timeout_s,
        }
        if registry.shared is not None:  # every session of the cluster, from the directory
            listed["cluster_sessions"] = await asyncio.to_thread(registry.shared.listing)
        return listed

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, request: Request) -> dict:
        """The session's frame counters, ``Session.stats()`` and the model's card; needs its token."""
        served = await registry.obtain(session_id, request.headers.get("authorization"))
        described = served.describe(await registry.stats(served), model)
        if registry.shared is not None and served.session is not None:
            described["shared"] = registry.shared.describe(served.id, served.session)
        return described

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, request: Request) -> dict:
        """Close the session (and its stream connection); returns its last counters and stats.

        Needs the session's token, or the API key (the operator may delete any session).
        """
        authorization = request.headers.get("authorization")
        if is_api_key(bearer_token(authorization)):
            if registry.shared is not None and registry.held(session_id) is None:
                return await registry.delete_elsewhere(session_id)
            registry.find(session_id)
            return await registry.delete(session_id, "operator")
        await registry.obtain(session_id, authorization)
        return await registry.delete(session_id)

    @app.websocket("/v1/sessions/{session_id}/stream")
    async def stream(ws: WebSocket, session_id: str) -> None:
        """Frames and questions in, acks and streamed answers out (docs/protocol.md)."""
        try:
            served = await registry.obtain(session_id, ws.headers.get("authorization"))
            # a client that reconnects right after its socket broke finds the old connection
            # still finishing (stopping an answer at its next token): wait for it, not 409
            if served.connection is not None and served.connection.closing:
                await served.connection.finished(KICK_TIMEOUT_S)
            if served.connection is not None:
                raise ProtocolError(
                    "already_streaming",
                    "another connection is streaming to this session; close it first",
                    status=409,
                )
        except ProtocolError as e:
            await _deny(ws, e)
            return
        await ws.accept()
        connection = StreamConnection(ws, served, registry, settings, metrics, decode_pool, answer_pool)
        served.connection = connection
        try:
            await connection.run()
        finally:
            served.connection = None

    add_openai_routes(app, engine, registry, settings, metrics, answer_pool, require_api_key, _json_body)
    return app


async def _json_body(request: Request, limit: int):
    """The request body as JSON (``{}`` when empty), refusing more than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError("message_too_large", f"the body is over the limit of {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: no Content-Length needed to be safe
        body += chunk
        if len(body) > limit:
            raise ProtocolError(
                "message_too_large", f"the body is over the limit of {limit} bytes", status=413
            )
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"the body is not valid JSON: {e}") from None


def _client_limits(settings: ServerSettings) -> dict:
    """The limits a streaming client needs to know."""
    return {
        "max_frame_bytes": settings.max_frame_bytes,
        "max_frame_side": settings.max_frame_side,
        "max_frame_pixels": settings.max_frame_pixels,
        "max_fps": settings.max_fps,
        "max_text_bytes": settings.max_text_bytes,
        "max_message_bytes": settings.max_message_bytes,
        "max_question_chars": settings.max_question_chars,
        "max_new_tokens": settings.max_new_tokens,
        "max_pending_questions": settings.max_pending_questions,
    }


def _error_response(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": " ".join(message.split())}}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": {"code", "message"}}`` with a one-line message."""

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, e: ProtocolError) -> JSONResponse:
        return _error_response(e.code, e.message, e.status)

    @app.exception_handler(StreamVLMError)
    async def streamvlm_error(request: Request, e: StreamVLMError) -> JSONResponse:
        return _error_response("bad_request", str(e), 400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response("bad_request", f"{where}: {first.get('msg', 'invalid request')}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error_response(_STATUS_CODES.get(e.status_code, "http_error"), str(e.detail), e.status_code)


async def _deny(ws: WebSocket, e: ProtocolError) -> None:
    """Refuse a websocket handshake with an HTTP status and the JSON error body."""
    try:
        await ws.send_denial_response(_error_response(e.code, e.message, e.status))
    except RuntimeError:  # the server cannot send an HTTP response here: close with policy violation
        await ws.close(1008, e.code)


async def _publish_shared(registry: SessionRegistry, cluster) -> None:
    """A replica's chore: publish what its sessions encoded at least every ``flush_s``."""
    while True:
        await asyncio.sleep(cluster.flush_s / 2)
        try:
            await registry.publish_due()
        except Exception:  # keep going: the next round publishes what this one missed
            log.exception("publishing the cluster's sessions failed")


async def _expire_idle(registry: SessionRegistry, settings: ServerSettings) -> None:
    if settings.idle_timeout_s is None:
        return
    # check several times per timeout so that a session lives at most ~1.25x its timeout
    interval = min(30.0, max(0.05, settings.idle_timeout_s / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            for session_id in await registry.expire_idle():
                log.info("closed idle session %s...", session_id[:6])
        except Exception:  # keep reaping: one failure must not leave sessions to pile up
            log.exception("expiring idle sessions failed")
