"""A session: the stream clock over one stream, and two steps, ``encode_chunk`` and ``answer``.

Everything about blocks (tiers, index, ids, checkpoints) is ``BlockMemory``'s; the
question's path is ``answering.py``; the stream's counters are one ``StreamState``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..config import MemoryConfig
from ..errors import ConfigError, InvalidFrameError, QuestionTimeoutError
from ..ingest.frames import Frame
from ..memory.block import Block, BlockMeta, recent_by_frames
from ..memory.manager import BlockMemory
from ..memory.pruning import TemporalPruner
from ..models.base import Backend
from ..retrieval.summaries import CompletedSummaries, Probes, block_summary, drift_probes
from .answer import Answer, SessionStats
from .answering import AnswerStream, KeptMasks, Sink, decode_answer, prefill_answer
from .context import layer_parts, new_kv_from_cache
from .plan import AnswerPlan, answer_budget
from .positions import PositionBound, lay_out
from .questions import check_time_range, validate_question
from .scheduling import Fence, FrameQueue, PriorityLock
from .state import StreamState

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant watching a live video. Answer questions about what you have seen."
)


class Session:
    """One video stream, encoded chunk by chunk into blocks, and answers about it.

    Positions: the sink (system prompt and the opening of the user turn) takes positions
    ``0 .. S-1``; the video starts at ``S``; every chunk's positions come from the
    backend; ``state.next_position`` is one past the largest position used so far, and is
    where a question starts. It is a different counter from the number of cached slots.
    """

    def __init__(
        self,
        backend: Backend,
        memory: MemoryConfig | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        device_lock: PriorityLock | None = None,
        _blocks: BlockMemory | None = None,
        *,
        mirror=None,
    ):
        self.backend = backend
        self.memory = memory or MemoryConfig()  # the options; the blocks are ``self.blocks``
        self.system_prompt = system_prompt
        # model work is held as answer work (a question's prefill and tokens) or encode work,
        # which goes before other sessions' chunks while a question waits for this session's
        self._lock = device_lock or PriorityLock()
        self._encoding = self._lock.for_encoding(awaited=self._question_waits)
        self.chunk_frames = self.memory.chunk_frames or backend.default_chunk_frames
        if self.chunk_frames % backend.frame_multiple:
            raise ConfigError(
                f"chunk_frames={self.chunk_frames} does not fit {backend.family}: use a multiple of "
                f"{backend.frame_multiple} (its temporal patch size)"
            )
        self.pruner = (
            TemporalPruner(self.memory.prune_threshold, self.memory.prune_mode, self.memory.prune_min_kept)
            if self.memory.prune_threshold is not None
            else None
        )
        # a pruned chunk's retrieval summary counts its dropped tokens' reference keys
        self._summaries = CompletedSummaries() if self.pruner is not None else None
        self._kept_masks = KeptMasks()  # what completing pruned blocks read from disk once
        # ``mirror``: a cluster's shared store, where every checkpoint is published
        self.blocks = _blocks or BlockMemory.create(self.memory, backend, mirror)
        self.bound = PositionBound(self.memory.max_position_span or backend.max_positions)
        # the most tokens a question holds on the device (MemoryConfig.answer_tokens, or derived)
        self.answer_tokens = answer_budget(self.memory, backend.kv_bytes_per_token, self.bound.span)
        self.sink = self._encode_sink()
        self.video_start = len(self.sink.ids)
        self.state = StreamState(next_position=self.video_start)
        self.encode_s = 0.0  # seconds spent encoding chunks in this process
        self._pending: list[tuple[np.ndarray, float]] = []  # frames of the chunk being filled
        # guards ``_pending`` with ``state.frames_seen``, which counts the frames appended to it:
        # a question reads both at once. Taken inside the device lock, never around it.
        self._frames_lock = threading.Lock()
        self._queue: FrameQueue | None = None
        self._worker: threading.Thread | None = None
        self._last_pushed_t: float | None = None
        self.background_errors: list[str] = []
        # called from the encoder thread each time it has taken every queued frame (the
        # server's "encoded" ack); it must not block, and what it raises is ignored
        self.on_caught_up: Callable[[], None] | None = None
        if self.memory.disk_dir is not None and _blocks is None:
            self.checkpoint()  # the directory is a session from the start

    @classmethod
    def resume(cls, directory: str | Path, engine, *, mirror=None, **overrides) -> Session:
        """Reopen a session from its disk directory (``MemoryConfig.disk_dir``): its blocks,
        index, position counter and stream clock, as of the last flushed block.

        ``overrides`` replace saved ``MemoryConfig`` fields that do not change what is
        stored (e.g. ``top_k``, ``window``). Raises ``SessionResumeError`` when the
        directory is not a session or was written by another model. ``mirror`` (a
        ``memory.mirror.SessionMirror``) publishes every checkpoint to a cluster's store.
        """
        blocks, saved = BlockMemory.open(Path(directory), engine.backend, overrides, mirror)
        try:
            session = cls(engine.backend, blocks.config, saved["system_prompt"], engine.device_lock, blocks)
        except BaseException:
            blocks.close()
            raise
        session.state = StreamState.from_dict(saved)
        session.state.recover(saved["recovered"])
        return session

    def _encode_sink(self) -> Sink:
        ids = self.backend.prompt_parts(self.system_prompt).sink
        positions = self.backend.text_positions(0, len(ids))
        with self._lock:
            cache = self.backend.new_cache()
            self.backend.forward(self.backend.embed_ids(ids), positions, cache)
        return Sink(ids=ids, positions=positions, kv=new_kv_from_cache(cache, 0))

    @property
    def next_position(self) -> int:
        """Where the next chunk or question starts: one past the largest position used."""
        return self.state.next_position

    @property
    def stream_time(self) -> float:
        """Stream time of the latest frame seen (0 before any)."""
        return self.state.last_t if self.state.last_t is not None else 0.0

    # ----- frames: the stream clock ----------------------------------------------

    def add_frame(self, rgb: np.ndarray, t: float) -> None:
        """Add one RGB frame (H, W, 3 uint8) seen at stream time ``t`` seconds.

        Frames are buffered until a chunk is full, then encoded into a block.
        Timestamps must not go backwards.
        """
        _check_frame(rgb)
        t = float(t)
        if not math.isfinite(t):
            raise InvalidFrameError(f"frame time must be a finite number of seconds, got {t}")
        state = self.state
        if state.last_t is not None and t < state.last_t:
            raise InvalidFrameError(
                f"frame time {t:.3f}s is before the previous frame's {state.last_t:.3f}s; "
                "send frames in presentation order"
            )
        with self._frames_lock:
            if state.t0 is None:
                state.t0 = t
            state.last_t = t
            state.frames_seen += 1
            self._pending.append((rgb, t))
            full = len(self._pending) >= self.chunk_frames
        if full:
            self.flush()

    def add_frames(self, frames: Iterable[Frame | tuple[np.ndarray, float]]) -> int:
        """Add frames (``Frame`` objects or ``(rgb, t)`` pairs); returns how many."""
        count = 0
        for frame in frames:
            if isinstance(frame, Frame):
                self.add_frame(frame.rgb, frame.t)
            else:
                self.add_frame(*frame)
            count += 1
        return count

    def watch(self, path: str | Path, fps: float | None = 1.0, backend: str = "auto") -> int:
        """Stream a video file through the session at ``fps`` sampled frames per second."""
        from ..ingest import FileSource, Sampler

        return self.add_frames(Sampler(fps).sample(FileSource(path, backend=backend)))

    def push_frame(self, rgb: np.ndarray, t: float) -> bool:
        """Queue a frame for the session's encoder thread (started on first use) without waiting.

        For live sources: the caller never blocks on the model. When the queue
        (``MemoryConfig.queue_frames``) is full a frame is dropped by
        ``MemoryConfig.queue_policy``; returns False when this frame was the one dropped.
        The frame is checked here, so bad input raises in the caller's thread.
        """
        _check_frame(rgb)
        t = float(t)
        last = self._last_pushed_t if self._last_pushed_t is not None else self.state.last_t
        if not math.isfinite(t) or (last is not None and t < last):
            raise InvalidFrameError(f"frame time {t} is not a finite time after the previous frame's {last}")
        self._last_pushed_t = t
        if self._queue is None:
            self._queue = FrameQueue(self.memory.queue_frames, self.memory.queue_policy)
            self._worker = threading.Thread(target=self._encode_queued, name="streamvlm-encoder", daemon=True)
            self._worker.start()
        return self._queue.put((rgb, t))

    @property
    def received_time(self) -> float | None:
        """Stream time of the latest frame received (``push_frame`` or ``add_frame``); None before any."""
        return self._last_pushed_t if self._last_pushed_t is not None else self.state.last_t

    @property
    def pending_frames(self) -> int:
        """Frames of the chunk being filled: taken by the encoder, waiting for the chunk to fill
        (a question attends them as its ``pending`` block; ``flush`` or ``close`` encodes them)."""
        return len(self._pending)

    def queue_counts(self) -> tuple[int, int]:
        """``(frames dropped by the encoder queue, frames waiting in it)``; ``(0, 0)`` before
        ``push_frame`` was first used. Two counters any thread may read without the device
        lock, unlike ``stats()``: cheap enough to report on every frame."""
        queue = self._queue
        return (queue.dropped, len(queue)) if queue is not None else (0, 0)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame is encoded (a partial chunk stays pending); False on timeout."""
        return self._queue.join(timeout) if self._queue is not None else True

    def caught_up(self) -> bool:
        """Whether the encoder thread has taken every frame pushed (True without one): all
        that remains unencoded is the chunk being filled (``pending_frames``)."""
        return self._queue is None or self._queue.idle

    def _question_waits(self) -> bool:
        """Whether a question waits for this session's encoder (a fence is queued): its next
        chunk is on the question's path, so the device lock serves it before plain chunks."""
        queue = self._queue
        return queue is not None and queue.awaited

    def _encode_queued(self) -> None:
        queue = self._queue
        while (item := queue.get()) is not None:
            try:
                if isinstance(item, Fence):  # a question waits here: every earlier frame is taken
                    item.reach(self.state.frames_seen)
                else:
                    self.add_frame(*item)
            except Exception as e:  # keep encoding: one bad frame must not stop the stream
                self.background_errors.append(f"{type(e).__name__}: {e}")
            finally:
                queue.done()
            if self.on_caught_up is not None and queue.idle:
                try:
                    self.on_caught_up()
                except Exception:  # a listener's failure must not stop encoding
                    pass

    def flush(self) -> None:
        """Encode a partly filled chunk now (padding it by repeating its last frame if the model needs it).

        The frames leave ``_pending`` and become a block under one hold of the device lock,
        so a question (which reads both under it) sees them in exactly one of the two. Their
        image work is done before that, from a copy, so it never holds up another session."""
        with self._frames_lock:
            copied = list(self._pending)
        prepared = self._prepare(copied) if copied else None
        with self._encoding:
            with self._frames_lock:
                pending, self._pending = self._pending, []
            if pending:
                # another thread's add_frame may have changed them meanwhile: prepare again then
                same = list(map(id, pending)) == list(map(id, copied))
                self._encode_locked(pending, prepared if same else None)

    # ----- step 1: a chunk of frames becomes a block -----------------------------

    def encode_chunk(self, frames: list[tuple[np.ndarray, float]]) -> BlockMeta:
        """Encode frames the stream clock accepted (``(rgb, t)``, in order) into one block.

        The chunk attends to the sink and the blocks of the encoding window; its KV
        becomes a block in memory. A frame count that is not a multiple of the model's
        temporal patch is padded by repeating the last frame (the block counts only the
        real frames).
        """
        prepared = self._prepare(frames)  # the image work, before the lock
        with self._lock:
            return self._encode_locked(frames, prepared)

    def _encode_locked(self, frames: list[tuple[np.ndarray, float]], prepared=None) -> BlockMeta:
        """``encode_chunk`` for a caller that holds the device lock (``prepared``: ``_prepare(frames)``
        when the caller did it before taking the lock)."""
        state = self.state
        started = time.perf_counter()
        chunk = self._forward_chunk(frames, prune=True, prepared=prepared)
        state.next_position = max(state.next_position, chunk.spans_to)
        state.frames_encoded += len(frames)
        state.chunks_encoded += 1
        meta = self.blocks.commit(
            chunk.layers,
            t_start=frames[0][1],
            t_end=frames[-1][1],
            frames=len(frames),
            positions=chunk.positions,
            kept=chunk.kept,
            summary=self._summary(chunk),
            session_record=self._record(),
        )
        self.encode_s += time.perf_counter() - started
        return meta

    def _summary(self, chunk: _Chunk) -> torch.Tensor:
        """The block's retrieval summary: of its whole frame when it was pruned."""
        if self._summaries is None:
            return block_summary(self.backend, chunk.layers, chunk.positions)
        return self._summaries.summary(
            self.backend, chunk.layers, chunk.positions, chunk.kept, chunk.per_patch, chunk.probes
        )

    def _prepare(self, frames: list[tuple[np.ndarray, float]]):
        """The image work of a chunk (resize, patchify; the backend's ``prepare_frames``): it
        needs no model and no device lock, so callers do it before taking the lock."""
        return self.backend.prepare_frames([rgb for rgb, _ in self._padded(frames)])

    def _padded(self, frames: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
        """``frames`` padded to the backend's frame multiple by repeating the last one."""
        return frames + [frames[-1]] * (-len(frames) % self.backend.frame_multiple)

    def _forward_chunk(self, frames: list[tuple[np.ndarray, float]], prune: bool, prepared=None) -> _Chunk:
        """A chunk's KV against the sink and the encoding window (the caller holds the lock;
        ``prepared``: ``_prepare(frames)``, done here when None)."""
        padded = self._padded(frames)
        visual = self.backend.encode_prepared(
            prepared if prepared is not None else self._prepare(frames),
            [t - self.state.t0 for _, t in padded],
            video_start=self.video_start,
            next_position=self.state.next_position,
        )
        # the stream's own positions the chunk spans, pruned or not: what follows starts after them
        spans_to = int(visual.positions.max()) + 1
        window = self.blocks.window(self.memory.window)
        if self.bound.reaches(visual.positions, *(b.meta.positions for b in window)):
            # past the model's range: the window re-based after the sink, the chunk after it
            window, moved, _ = lay_out(self.backend, window, self.video_start, visual.positions)
            visual = replace(visual, positions=moved)
        self.bound.record(visual.positions, *(b.meta.positions for b in window), what="encoding a chunk")
        if prune:
            embeds, positions, kept = self._prune(visual)
        else:
            embeds, positions = visual.embeds, visual.positions
            kept = torch.ones(embeds.shape[0], dtype=torch.bool)
        layers, probes = self._forward_kept(visual, window, embeds, positions, kept)
        per_patch = visual.grid[1] * visual.grid[2]
        return _Chunk(layers, positions.cpu(), kept, spans_to, per_patch, probes)

    def _forward_kept(self, visual, window: list[Block], embeds, positions, kept):
        """The kept tokens' KV over the sink and ``window``, and the ``Probes`` a pruned chunk's
        summary needs (``drift_probes``, None without pruning): those few dropped tokens ride
        after the kept ones in the same forward, and the causal mask keeps the kept tokens
        from seeing them, so the block's KV is what it would be without them."""
        probe = drift_probes(kept) if self._summaries is not None else torch.zeros(0, dtype=torch.long)
        # the sink and the window written once each into a cache with room for this chunk:
        # concatenating them first, then appending the chunk, copied the whole context twice
        parts = layer_parts(self.sink.kv, window)
        start, stored = sum(k.shape[1] for k, _ in parts[0]), embeds.shape[0]
        cache = self.backend.cache_of_parts(parts, stored + probe.numel())
        if not probe.numel():
            self.backend.forward(embeds, positions, cache)
            return new_kv_from_cache(cache, start), None
        at = probe.to(visual.embeds.device)
        probe_positions = visual.positions[:, at]
        self.backend.forward(
            torch.cat([embeds, visual.embeds[at]]), torch.cat([positions, probe_positions], dim=1), cache
        )
        both = new_kv_from_cache(cache, start)
        layers = tuple((k[:, :stored].clone(), v[:, :stored].clone()) for k, v in both)
        return layers, Probes(probe, tuple((k[:, stored:], v[:, stored:]) for k, v in both), probe_positions)

    def _pending_block(self, fence: Fence | None) -> tuple[Block | None, int]:
        """The frames of the chunk being filled, encoded for a question only (the caller
        holds the device lock): the block they would make now (with the id the next block
        gets, nothing pruned), and the position after it. With ``fence``, only the frames
        the encoder had taken when it reached the fence: the question's own. Nothing is
        stored and no counter moves, so a question never changes how later frames are
        paired into chunks."""
        with self._frames_lock:
            frames, seen = list(self._pending), self.state.frames_seen
        if fence is not None:
            # the pending frames are the newest ones seen; drop those taken after the fence
            frames = frames[: max(0, len(frames) - (seen - fence.clock))]
        if not frames:
            return None, self.state.next_position
        chunk = self._forward_chunk(frames, prune=False)
        meta = BlockMeta(
            id=self.blocks.next_block_id,
            t_start=frames[0][1],
            t_end=frames[-1][1],
            frames=len(frames),
            positions=chunk.positions,
            kept=chunk.kept,
        )
        return Block(meta=meta, layers=chunk.layers), max(self.state.next_position, chunk.spans_to)

    def _prune(self, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chunk's embeddings and positions that the pruner keeps, and its kept mask."""
        seen = chunk.embeds.shape[0]
        self.state.visual_tokens_seen += seen
        if self.pruner is None:
            self.state.visual_tokens_kept += seen
            return chunk.embeds, chunk.positions, torch.ones(seen, dtype=torch.bool)
        pruned = self.pruner.prune(chunk.embeds, chunk.grid)
        self.state.visual_tokens_kept += int(pruned.kept.sum())
        return pruned.embeds, chunk.positions[:, pruned.kept.to(chunk.positions.device)], pruned.kept.cpu()

    # ----- step 2: a question becomes an answer ----------------------------------

    def answer(self, question: str, plan: AnswerPlan) -> AnswerStream:
        """Answer ``question`` as ``plan`` says; iterate the result for text deltas.

        The question covers every frame the session received before it. Frames of a chunk
        still being filled are encoded for this question alone and attended as its newest
        block (``tier="pending"`` in ``Answer.blocks``); they stay pending, so chunking is
        the same whether or not questions are asked. With an encoder thread
        (``push_frame``) the answer first waits, when it is first iterated (in the
        iterating thread: this call never blocks), until the encoder has taken every frame
        pushed before the question, at most ``plan.wait_s`` seconds (then
        ``QuestionTimeoutError``); frames the full queue dropped meanwhile are counted in
        ``Answer.frames_dropped``. The pending block holds only frames pushed before the
        question; blocks of later frames encoded by the time the answer starts are
        attended like any other. ``plan.wait=False`` answers over what the encoder has
        taken when the answer starts.

        A ``since`` / ``until`` span that cannot hold a frame (negative, reversed, or
        starting after the latest frame received) raises ``ConfigError`` here.
        """
        text = validate_question(question, self.memory.max_question_chars)
        received = self.received_time
        check_time_range(plan.since, plan.until, received)
        fence = self._queue.put_fence() if plan.wait and self._queue is not None else None
        run = partial(self._answer_deltas, plan=plan, fence=fence)
        return AnswerStream(text, received if received is not None else 0.0, run)

    def _answer_deltas(self, stream: AnswerStream, plan: AnswerPlan, fence: Fence | None) -> Iterator[str]:
        """The question's steps once its frames are in: wait at the fence, then prefill
        over the blocks and the pending frames as they are under one hold of the device
        lock, then decode."""
        started = time.perf_counter()
        if fence is not None and not fence.wait(plan.wait_s):
            raise QuestionTimeoutError(
                f"the frames received before this question were not encoded within {plan.wait_s:g} s "
                f"({len(self._queue)} still queued); ask with wait=False to answer over what is "
                "encoded, or raise MemoryConfig.question_wait_s"
            )
        waited = time.perf_counter() - started if fence is not None else 0.0
        dropped = fence.dropped if fence is not None else self.queue_counts()[0]
        with self._lock.for_answer():
            pending, stream.position = self._pending_block(fence)
            if plan.answer_tokens is None:
                plan = replace(plan, answer_tokens=self._question_budget(stream.question, plan, pending))
            ready = prefill_answer(
                stream,
                backend=self.backend,
                memory=self.blocks,
                sink=self.sink,
                system_prompt=self.system_prompt,
                video_start=self.video_start,
                plan=plan,
                pending=pending,
                bound=self.bound,
                masks=self._kept_masks,
            )
        yield from decode_answer(
            stream,
            ready,
            backend=self.backend,
            plan=plan,
            lock=self._lock.for_answer(),
            wait_s=waited,
            frames_dropped=dropped,
        )

    def _question_budget(self, question: str, plan: AnswerPlan, pending: Block | None) -> int:
        """The device budget (``self.answer_tokens``), raised if need be to hold this question
        over the blocks of its answer window: what encoding already holds on the device (the
        sink and the window), so a question within it never raises the device's peak, and a
        small ``device_bytes`` still answers over the newest frames."""
        blocks = [*self.blocks.metas(), *([pending.meta] if pending else [])]
        recent = sum(m.tokens for m in recent_by_frames(blocks, plan.answer_window))
        question_tokens = len(self.backend.prompt_parts(self.system_prompt, question).question)
        floor = len(self.sink.ids) + recent + question_tokens + plan.sampling.max_new_tokens
        return min(self.bound.span, max(self.answer_tokens, floor))

    def ask_stream(self, question: str, **options) -> AnswerStream:
        """``answer`` with the plan resolved from ``options`` (``AnswerPlan.resolve``):
        ``since`` / ``until`` (stream seconds) restrict the blocks considered; ``top_k``,
        ``answer_window`` and ``positions`` override the ``MemoryConfig`` values for this
        question; ``blocks`` names the block ids to attend outright; the rest are
        ``SamplingParams`` (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``,
        ``stop_token_ids``); ``answer_tokens`` overrides the session's budget; ``wait=False``
        answers over what is encoded without waiting for the encoder thread (``answer``).
        Never blocks: a bad option or span raises here, the waiting happens when the
        result is first iterated."""
        return self.answer(question, AnswerPlan.resolve(self.memory, **options))

    def ask(self, question: str, **options) -> Answer:
        """Answer ``question`` about what the session has seen (options as ``ask_stream``)."""
        stream = self.ask_stream(question, **options)
        for _ in stream:
            pass
        return stream.answer

    # ----- durability and the end ------------------------------------------------

    def _record(self) -> dict:
        """What the session saves beside its blocks: what the blocks do not say."""
        return {"system_prompt": self.system_prompt, **self.state.to_dict()}

    def checkpoint(self, full: bool | None = True) -> None:
        """Make everything encoded so far durable in ``disk_dir``, block table and index
        included (``full=None``: those two only when the memory's schedule says they are due)."""
        with self._lock:
            self.blocks.checkpoint(self._record(), full=full)

    def close(self) -> None:
        """Stop the encoder thread after its queue, encode a partial chunk and, with a disk
        tier, checkpoint and release the directory."""
        if self._queue is not None:
            self._queue.close()
            self._worker.join()
        self.flush()
        if self.memory.disk_dir is not None:
            self.checkpoint()
            self.blocks.close()

    def stats(self) -> SessionStats:
        """What the session has seen and what it holds."""
        dropped, waiting = self.queue_counts()
        counters = {f.name: getattr(self.state, f.name) for f in fields(StreamState)}
        return SessionStats(
            **{name: value for name, value in counters.items() if name in _STATS_FIELDS},
            **self.blocks.stats().to_dict(),
            sink_tokens=len(self.sink.ids),
            max_position_span_used=self.bound.used,
            answer_tokens=self.answer_tokens,
            stream_time=self.stream_time,
            encode_s=self.encode_s,
            frames_dropped=dropped,
            queue_depth=waiting,
        )


_STATS_FIELDS = {f.name for f in fields(SessionStats)}


class _Chunk(NamedTuple):
    """A chunk's KV as encoded, before it becomes a block."""

    layers: tuple
    positions: torch.Tensor  # [position_dims, kept tokens], CPU
    kept: torch.Tensor  # [tokens seen] bool
    spans_to: int  # one past the largest position of the chunk, pruned tokens included
    per_patch: int  # tokens of one temporal patch (the chunk's grid rows x columns)
    probes: Probes | None = None  # dropped tokens encoded for the summary only (pruning)


def _check_frame(rgb: object) -> None:
    if not isinstance(rgb, np.ndarray):
        raise InvalidFrameError(f"a frame must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InvalidFrameError(f"a frame must be RGB with shape (H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise InvalidFrameError(
            f"a frame must be uint8 (0-255), got {rgb.dtype}; convert with .astype(np.uint8)"
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InvalidFrameError(f"a frame of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to encode")
