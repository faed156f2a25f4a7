"""Running blocking iterators (an answer's token loop) in a thread, consumed on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


async def iterate_in_thread(iterable: Iterable[T], executor: Executor) -> AsyncIterator[T]:
    """Iterate ``iterable`` in ``executor`` and yield its items on the event loop.

    The iteration itself (``iter()`` included) runs in the thread, so model work never
    touches the loop. An exception in the thread is raised here. When the consumer
    stops early (closes this generator, or its task is cancelled) the thread stops
    before taking the next item. Items wait in an unbounded queue: callers pass
    iterators that are bounded themselves (an answer has at most ``max_new_tokens``).
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down): stop producing
            stop.set()

    def produce() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                put((True, item))
            put((False, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((False, e))

    loop.run_in_executor(executor, produce)
    try:
        while True:
            more, value = await items.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
