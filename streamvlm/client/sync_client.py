"""``StreamClient``: ``AsyncStreamClient`` for code without an event loop.

The async client runs on an event loop in a background thread of its own; each method
here submits a coroutine to it and waits for the result. So a plain script (or a
Gradio callback) can stream frames from one thread and read an answer from another.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from .async_client import AnswerStream, AsyncStreamClient


class SyncAnswerStream:
    """One answer, for blocking code: iterate it for the text deltas; then ``done`` is the
    ``answer.done`` message. ``result()`` waits for it without the deltas."""

    def __init__(self, stream: AnswerStream, client: StreamClient):
        self._stream = stream
        self._client = client
        self.id = stream.id

    @property
    def done(self) -> dict | None:
        return self._stream.done

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                yield self._client._call(self._stream.__anext__())
            except StopAsyncIteration:
                return

    def result(self, timeout: float | None = None) -> dict:
        """The ``answer.done`` message (raises ``ClientError`` if the answer failed)."""
        return self._client._call(self._stream.result(), timeout)

    def text(self, timeout: float | None = None) -> str:
        """The whole answer text."""
        return self.result(timeout)["text"]


class StreamClient:
    """Blocking client of a streamvlm server; takes ``AsyncStreamClient``'s arguments.

    ``with StreamClient("http://127.0.0.1:8000") as client:`` creates a session and
    connects; ``client.send_frame(rgb, t)``, ``client.ask("...")`` (iterate it, or
    ``.text()``); on exit the stream is closed and the session deleted. ``close()``
    alone ends the stream and stops the background thread.
    """

    def __init__(self, server: str, **options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="streamvlm-client", daemon=True)
        self._thread.start()
        # the async client makes futures and conditions: build it on its own loop
        self.client: AsyncStreamClient = self._call(_build(server, options))

    def _call(self, coroutine: Coroutine, timeout: float | None = None) -> Any:
        if not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError("this StreamClient is shut down")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # ----- the async client's API, blocking --------------------------------------

    @property
    def session(self) -> dict | None:
        """The session (``id``, ``token``, ``stream``, ...), once created."""
        return self.client.session

    @property
    def last_ack(self) -> dict | None:
        """The latest ``ack``: the session's cumulative frame counters."""
        return self.client.last_ack

    @property
    def in_flight(self) -> int:
        return self.client.in_flight

    def health(self) -> dict:
        return self._call(self.client.health())

    def create_session(self) -> dict:
        return self._call(self.client.create_session())

    def connect(self) -> StreamClient:
        """Create a session if there is none and open its stream."""
        self._call(self.client.connect())
        return self

    def send_frame(self, frame: Any, t: float) -> None:
        """Send one frame at stream time ``t`` (see ``AsyncStreamClient.send_frame``)."""
        self._call(self.client.send_frame(frame, t))

    def wait_in_flight(self, at_most: int = 0, timeout: float | None = None) -> None:
        self._call(self.client.wait_in_flight(at_most), timeout)

    def wait_encoded(self, timeout: float | None = None) -> dict:
        """Wait until every frame sent is encoded; the ``encoded`` ack (``AsyncStreamClient.wait_encoded``)."""
        return self._call(self.client.wait_encoded(), timeout)

    def ask(self, text: str, **options: Any) -> SyncAnswerStream:
        """Ask a question (options as ``AsyncStreamClient.ask``, ``wait=False`` among them);
        iterate the result for deltas, or call ``.text()``."""
        return SyncAnswerStream(self._call(self.client.ask(text, **options)), self)

    def reset(self) -> dict:
        return self._call(self.client.reset())

    def stats(self) -> dict:
        return self._call(self.client.stats())

    def delete_session(self) -> dict:
        return self._call(self.client.delete_session())

    def close_stream(self) -> dict | None:
        """The ``close`` handshake: every frame encoded, every answer sent; the final ack."""
        return self._call(self.client.close())

    def close(self) -> None:
        """End the stream (if open) and stop the background loop."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self.client.disconnect())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> StreamClient:
        return self.connect()

    def __exit__(self, *exc_info) -> None:
        try:
            self._call(self.client.__aexit__(*exc_info))
        finally:
            self.close()


async def _build(server: str, options: dict) -> AsyncStreamClient:
    return AsyncStreamClient(server, **options)
