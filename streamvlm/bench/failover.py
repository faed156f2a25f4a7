"""Client steps of a failover, as a cluster's user lives them (``bench serve --failover``, tests).

A session is a camera: it is created under a name, streams the frames of a synthetic
world the bundled model was trained on, and asks about it. After its replica dies the
client reconnects with the same name and token; the cluster routes it to another replica,
which resumes the session from the shared store. Everything here is a client of the
public protocol (``AsyncStreamClient``); nothing reaches into a server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

# the bundled model's world with seed 24 (assets/shapes.mp4): the diamond shows a 7
SHAPES_SEED = 24
SHAPES_SECONDS = 20.0
QUESTION = "What digit did the diamond show?"
ANSWER = "7"


def shapes_frames(seconds: float = SHAPES_SECONDS, seed: int = SHAPES_SEED) -> list[tuple]:
    """The world's frames at 1 fps: ``(rgb, t)`` pairs (rendered, no file needed)."""
    from ..synth.world import World

    world = World(seed, seconds, fps=1.0)
    return [(world.render(i), world.frame_time(i)) for i in range(round(world.seconds))]


@dataclass
class Watched:
    """A session after its frames were sent and its question answered."""

    session: dict  # id, token, stream: what reconnecting needs
    answer: str
    blocks: int  # blocks its memory held when published
    frames_sent: int
    frames_encoded: int


async def watch(server: str, session_id: str, frames, *, timeout_s: float = 60.0) -> Watched:
    """Create ``session_id``, send ``frames``, ask ``QUESTION``, and wait until everything
    encoded is in the shared store (``shared.unpublished_blocks == 0``)."""
    from ..client import AsyncStreamClient

    client = AsyncStreamClient(server, session_id=session_id, delete_on_exit=False, timeout=timeout_s)
    await client.connect()
    try:
        for rgb, t in frames:
            await client.send_frame(rgb, t)
        answer = await (await client.ask(QUESTION, max_new_tokens=4)).result()
    finally:
        await client.disconnect()
    stats = await published(server, client.session, timeout_s)
    return Watched(
        client.session,
        answer["text"],
        stats["stats"]["blocks"],
        len(frames),
        stats["stats"]["frames_encoded"],
    )


async def published(server: str, session: dict, timeout_s: float) -> dict:
    """The session's description once its replica has published every block it encoded."""
    from ..client import AsyncStreamClient

    client = AsyncStreamClient(server, session=session, delete_on_exit=False, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        described = await client.stats()
        if described.get("shared", {}).get("unpublished_blocks") == 0:
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session['id']} was not published within {timeout_s} s")
        await asyncio.sleep(0.2)


@dataclass
class Resumed:
    """A session asked again after its replica was lost."""

    answer: str
    blocks: int
    frames_encoded: int
    replica: str | None
    failover_s: float  # from the reconnect attempt to the answer's last byte


async def reconnect_and_ask(server: str, session: dict, *, timeout_s: float = 120.0) -> Resumed:
    """Reconnect to ``session`` (retrying while the cluster routes around the lost replica)
    and ask ``QUESTION`` again over what was resumed."""
    from ..client import AsyncStreamClient, ClientError

    start = time.monotonic()
    while True:
        client = AsyncStreamClient(server, session=dict(session), delete_on_exit=False, timeout=timeout_s)
        try:
            await client.connect()
            answer = await (await client.ask(QUESTION, max_new_tokens=4)).result()
            break
        except (ClientError, OSError):
            if time.monotonic() - start > timeout_s:
                raise
            await asyncio.sleep(0.25)
        finally:
            await client.disconnect()
    failover_s = time.monotonic() - start
    described = await client.stats()
    return Resumed(
        answer["text"],
        described["stats"]["blocks"],
        described["stats"]["frames_encoded"],
        described.get("shared", {}).get("replica"),
        failover_s,
    )
