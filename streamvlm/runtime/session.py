"""A session: one stream, its memory, its position counter, and questions about it."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from ..config import POSITION_MODES, MemoryConfig
from ..errors import ConfigError, InvalidFrameError
from ..ingest.frames import Frame
from ..memory.block import Block, BlockMeta
from ..memory.pruning import TemporalPruner
from ..models.base import Backend, LayerKV
from ..retrieval.positions import contiguous_positions, reposition
from ..retrieval.select import Selection, select_blocks
from ..retrieval.summaries import block_summary
from . import persistence
from .answer import Answer, BlockRef, SessionStats, Timings
from .context import concat_layers, new_kv_from_cache, per_layer_context, recent_by_frames
from .decode import SamplingParams, TextStreamer, decode_tokens
from .questions import validate_question
from .scheduling import FairLock, FrameQueue

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant watching a live video. Answer questions about what you have seen."
)


class Session:
    """One video stream, encoded chunk by chunk into blocks, and answers about it.

    Positions: the sink (system prompt and the opening of the user turn) takes positions
    ``0 .. S-1``; the video starts at ``S``; every chunk's positions come from the
    backend; ``next_position`` is one past the largest position used so far, and is
    where a question starts. It is a different counter from the number of cached slots.
    """

    def __init__(
        self,
        backend: Backend,
        memory: MemoryConfig | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        device_lock: AbstractContextManager | None = None,
        _resume: bool = False,
    ):
        self.backend = backend
        self.memory = memory or MemoryConfig()
        self.system_prompt = system_prompt
        self._lock = device_lock or FairLock()
        self.store = persistence.build_store(self.memory, backend, resume=_resume)
        self.index = persistence.build_index(self.memory, backend)
        self._unflushed = 0
        self._blocks_at_full = 0  # blocks held at the last full checkpoint (table + index)
        self._queue: FrameQueue | None = None
        self._worker: threading.Thread | None = None
        self._last_pushed_t: float | None = None
        self.background_errors: list[str] = []
        self.chunk_frames = self.memory.chunk_frames or backend.default_chunk_frames
        if self.chunk_frames % backend.frame_multiple:
            raise ConfigError(
                f"chunk_frames={self.chunk_frames} does not fit {backend.family}: use a multiple of "
                f"{backend.frame_multiple} (its temporal patch size)"
            )
        self._pending: list[tuple[np.ndarray, float]] = []
        self._t0: float | None = None  # stream time of the first frame: time positions count from it
        self._last_t: float | None = None
        self._next_block_id = 0
        self.frames_seen = 0
        self.frames_encoded = 0
        self.chunks_encoded = 0
        self.visual_tokens_seen = 0
        self.visual_tokens_kept = 0
        self.encode_s = 0.0
        self.pruner = (
            TemporalPruner(self.memory.prune_threshold, self.memory.prune_mode, self.memory.prune_min_kept)
            if self.memory.prune_threshold is not None
            else None
        )
        self._encode_sinks()
        if self.memory.disk_dir is not None and not _resume:
            self.checkpoint()

    @classmethod
    def resume(cls, directory: str | Path, engine, **overrides) -> Session:
        """Reopen a session from its disk directory (``MemoryConfig.disk_dir``): its blocks,
        index, position counter and stream clock, as of the last flushed block.

        ``overrides`` replace saved ``MemoryConfig`` fields that do not change what is
        stored (e.g. ``top_k``, ``window``). Raises ``SessionResumeError`` when the
        directory is not a session or was written by another model.
        """
        return persistence.resume(cls, Path(directory), engine, overrides)

    # ----- sinks -----------------------------------------------------------------

    def _encode_sinks(self) -> None:
        ids = self.backend.prompt_parts(self.system_prompt).sink
        positions = self.backend.text_positions(0, len(ids))
        with self._lock:
            cache = self.backend.new_cache()
            self.backend.forward(self.backend.embed_ids(ids), positions, cache)
        self.sink_ids = ids
        self.sink_positions = positions
        self.sink_kv: tuple[LayerKV, ...] = new_kv_from_cache(cache, 0)
        self.video_start = len(ids)
        self.next_position = len(ids)

    # ----- frames ----------------------------------------------------------------

    def add_frame(self, rgb: np.ndarray, t: float) -> None:
        """Add one RGB frame (H, W, 3 uint8) seen at stream time ``t`` seconds.

        Frames are buffered until a chunk is full, then encoded into a block.
        Timestamps must not go backwards.
        """
        _check_frame(rgb)
        t = float(t)
        if not math.isfinite(t):
            raise InvalidFrameError(f"frame time must be a finite number of seconds, got {t}")
        if self._last_t is not None and t < self._last_t:
            raise InvalidFrameError(
                f"frame time {t:.3f}s is before the previous frame's {self._last_t:.3f}s; "
                "send frames in presentation order"
            )
        if self._t0 is None:
            self._t0 = t
        self._last_t = t
        self.frames_seen += 1
        self._pending.append((rgb, t))
        if len(self._pending) >= self.chunk_frames:
            self._encode_pending()

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
        last = self._last_pushed_t if self._last_pushed_t is not None else self._last_t
        if not math.isfinite(t) or (last is not None and t < last):
            raise InvalidFrameError(f"frame time {t} is not a finite time after the previous frame's {last}")
        self._last_pushed_t = t
        if self._queue is None:
            self._queue = FrameQueue(self.memory.queue_frames, self.memory.queue_policy)
            self._worker = threading.Thread(target=self._encode_queued, name="streamvlm-encoder", daemon=True)
            self._worker.start()
        return self._queue.put((rgb, t))

    def queue_counts(self) -> tuple[int, int]:
        """``(frames dropped by the encoder queue, frames waiting in it)``; ``(0, 0)`` before
        ``push_frame`` was first used. Two counters any thread may read without the device
        lock, unlike ``stats()``: cheap enough to report on every frame."""
        queue = self._queue
        return (queue.dropped, len(queue)) if queue is not None else (0, 0)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame is encoded (a partial chunk stays pending); False on timeout."""
        return self._queue.join(timeout) if self._queue is not None else True

    def _encode_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self.add_frame(*item)
            except Exception as e:  # keep encoding: one bad frame must not stop the stream
                self.background_errors.append(f"{type(e).__name__}: {e}")
            finally:
                self._queue.done()

    def flush(self) -> None:
        """Encode a partly filled chunk now (padding it by repeating its last frame if the model needs it)."""
        if self._pending:
            self._encode_pending()

    def _encode_pending(self) -> None:
        pending, self._pending = self._pending, []
        real_frames = len(pending)
        multiple = self.backend.frame_multiple
        while len(pending) % multiple:  # Qwen2.5-VL encodes frames in pairs: repeat the last
            pending.append(pending[-1])
        frames = [rgb for rgb, _ in pending]
        times = [t - self._t0 for _, t in pending]
        started = time.perf_counter()
        with self._lock:
            chunk = self.backend.encode_frames(
                frames, times, video_start=self.video_start, next_position=self.next_position
            )
            embeds, positions, kept = self._prune(chunk)
            window = recent_by_frames(self.store.metas(), self.memory.window)
            visible = self.store.get((m.id for m in window), purpose="window")
            context = concat_layers([self.sink_kv, *(b.layers for b in visible)])
            cache = self.backend.new_cache(context)
            self.backend.forward(embeds, positions, cache)
            layers = new_kv_from_cache(cache, context[0][0].shape[1])
            summary = block_summary(self.backend, layers, positions)
            # the positions the chunk spans, pruned or not: what follows starts after them
            spans_to = int(chunk.positions.max()) + 1
            self._commit_block(pending, real_frames, positions, kept, layers, summary, spans_to)
        self.encode_s += time.perf_counter() - started

    def _prune(self, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chunk's embeddings and positions that the pruner keeps, and its kept mask."""
        seen = chunk.embeds.shape[0]
        self.visual_tokens_seen += seen
        if self.pruner is None:
            self.visual_tokens_kept += seen
            return chunk.embeds, chunk.positions, torch.ones(seen, dtype=torch.bool)
        pruned = self.pruner.prune(chunk.embeds, chunk.grid)
        self.visual_tokens_kept += int(pruned.kept.sum())
        return pruned.embeds, chunk.positions[:, pruned.kept.to(chunk.positions.device)], pruned.kept.cpu()

    def _commit_block(self, pending, real_frames, positions, kept, layers, summary, spans_to) -> None:
        """Store a new block and index it (under the device lock: questions never see half of it)."""
        meta = BlockMeta(
            id=self._next_block_id,
            t_start=pending[0][1],
            t_end=pending[real_frames - 1][1],
            frames=real_frames,
            positions=positions.cpu(),
            kept=kept,
            summary=summary,
        )
        gone = self.store.put(Block(meta=meta, layers=layers))
        self.index.add(meta.id, summary)
        if gone:
            self.index.remove(gone)
        self._next_block_id += 1
        self.next_position = max(self.next_position, spans_to)  # before a checkpoint saves it
        self.frames_encoded += real_frames
        self.chunks_encoded += 1
        self._unflushed += 1
        if self.memory.disk_dir is not None and self._unflushed >= self.memory.disk_flush_blocks:
            self._checkpoint()

    def checkpoint(self) -> None:
        """Make everything encoded so far durable in ``disk_dir``, block table and index included."""
        if self.memory.disk_dir is None:
            raise ConfigError("this session has no disk tier; set MemoryConfig.disk_dir to checkpoint it")
        with self._lock:
            self._checkpoint(full=True)

    def _checkpoint(self, full: bool | None = None) -> None:
        persistence.checkpoint(self, full=full)
        self._unflushed = 0

    def close(self) -> None:
        """Stop the encoder thread after its queue, encode a partial chunk and, with a disk
        tier, checkpoint and release the directory."""
        if self._queue is not None:
            self._queue.close()
            self._worker.join()
        self.flush()
        if self.memory.disk_dir is not None:
            self.checkpoint()
            self.store.disk.close()

    # ----- answers ---------------------------------------------------------------

    def answer_context(
        self,
        queries: torch.Tensor | None = None,
        since: float | None = None,
        until: float | None = None,
        top_k: int | None = None,
        answer_window: int | None = None,
    ) -> Selection:
        """Blocks a question attends to (besides sinks), per layer, oldest first.

        Candidates are the blocks overlapping ``[since, until]`` (all by default). With no
        ``top_k`` (and no ``answer_blocks``) every candidate is attended: lossless. With
        ``top_k``, the index picks blocks for ``queries`` as ``MemoryConfig.selection``
        says; the blocks of the ``answer_window`` newest frames (this argument, else
        ``MemoryConfig.answer_window``, else the encoding window) and the ``answer_blocks``
        newest candidates are added.
        """
        metas = [m for m in self.store.metas() if _overlaps(m, since, until)]
        top_k = top_k if top_k is not None else self.memory.top_k
        if top_k is None and self.memory.answer_blocks is None:
            return Selection([[m.id for m in metas]] * self.backend.num_layers)
        window = next(
            w for w in (answer_window, self.memory.answer_window, self.memory.window) if w is not None
        )
        recent = recent_by_frames(metas, window)
        if self.memory.answer_blocks:
            recent += metas[len(metas) - self.memory.answer_blocks :]
        always = {m.id for m in recent}
        if top_k is None:
            return Selection([sorted(always)] * self.backend.num_layers)
        if queries is None:
            raise ValueError("retrieval needs the question's queries")
        return select_blocks(
            self.index,
            queries,
            [m.id for m in metas],
            top_k,
            mode=self.memory.selection,
            neighbours=self.memory.neighbours,
            always=always,
        )

    def ask(self, question: str, **options) -> Answer:
        """Answer ``question`` about what the session has seen.

        Options: ``since`` / ``until`` / ``top_k`` / ``answer_window`` / ``blocks`` /
        ``positions`` (see ``ask_stream``) and
        the sampling options of ``SamplingParams`` (``max_new_tokens``, ``temperature``,
        ``top_p``, ``seed``, ``stop_token_ids``).
        """
        stream = self.ask_stream(question, **options)
        for _ in stream:
            pass
        return stream.answer

    def ask_stream(
        self,
        question: str,
        *,
        since: float | None = None,
        until: float | None = None,
        top_k: int | None = None,
        answer_window: int | None = None,
        blocks: list[int] | None = None,
        positions: str | None = None,
        **sampling,
    ) -> AnswerStream:
        """Like ``ask`` but iterate it for text deltas as tokens are produced; ``.answer`` holds the result.

        ``since`` / ``until`` (stream seconds) restrict the blocks considered. For this
        question only: ``top_k`` overrides ``MemoryConfig.top_k``, ``answer_window``
        ``MemoryConfig.answer_window`` (with retrieval, the newest frames always attended)
        and ``positions`` (``original`` or ``contiguous``) ``MemoryConfig.position_mode``;
        ``blocks`` names the block ids to attend outright (no retrieval).
        """
        text = validate_question(question, self.memory.max_question_chars)
        params = SamplingParams(**sampling)
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if answer_window is not None and answer_window < 0:
            raise ConfigError(f"answer_window must be >= 0 frames, got {answer_window}")
        if positions is not None and positions not in POSITION_MODES:
            raise ConfigError(f"positions must be one of {', '.join(POSITION_MODES)}, got {positions!r}")
        if self._queue is None:  # with an encoder thread, frames in flight are that thread's
            self.flush()
        return AnswerStream(
            self,
            text,
            params,
            since=since,
            until=until,
            top_k=top_k,
            answer_window=answer_window,
            blocks=blocks,
            positions=positions or self.memory.position_mode,
        )

    # ----- introspection ---------------------------------------------------------

    @property
    def stream_time(self) -> float:
        """Stream time of the latest frame seen (0 before any)."""
        return self._last_t if self._last_t is not None else 0.0

    def stats(self) -> SessionStats:
        metas = self.store.metas()
        dropped, waiting = self.queue_counts()
        return SessionStats(
            frames_seen=self.frames_seen,
            frames_encoded=self.frames_encoded,
            chunks_encoded=self.chunks_encoded,
            visual_tokens_seen=self.visual_tokens_seen,
            visual_tokens_kept=self.visual_tokens_kept,
            blocks=len(metas),
            tokens_stored=sum(m.tokens for m in metas),
            sink_tokens=len(self.sink_ids),
            stream_time=self.stream_time,
            next_position=self.next_position,
            bytes_per_tier=self.store.bytes_per_tier(),
            kv_bits_per_element=self.store.kv_bits_per_element(),
            codec_state_bytes=self.store.codec_state_bytes(),
            encode_s=self.encode_s,
            hits_per_tier=dict(self.store.hits["answer"]),
            window_hits_per_tier=dict(self.store.hits["window"]),
            load_s=self.store.load_s,
            dropped_blocks=self.store.dropped_blocks
            + (self.store.disk.dropped_blocks if self.store.disk else 0),
            indexed_blocks=len(self.index),
            frames_dropped=dropped,
            queue_depth=waiting,
        )


class AnswerStream:
    """Iterator of an answer's text deltas; ``answer`` is set when it is exhausted.

    Retrieval runs in two passes (see docs/retrieval.md): the question is first prefilled
    over the sinks and the recent window (or the sinks alone: ``query_context``) to get
    its per-layer queries, which pick the blocks; then it is prefilled again over sinks +
    picked blocks, and answered.
    """

    def __init__(self, session: Session, question: str, params: SamplingParams, **context):
        self.session = session
        self.question = question
        self.params = params
        self._context = context
        # The question follows everything seen when it was asked, even if frames arrive
        # while it is being answered.
        self.position = session.next_position
        self.asked_at = session.stream_time
        self.selection: Selection | None = None
        self.answer: Answer | None = None
        self._deltas = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __next__(self) -> str:
        return next(self._deltas)

    def _select(self, embeds: torch.Tensor, positions: torch.Tensor) -> Selection:
        s, backend, ctx = self.session, self.session.backend, self._context
        if ctx["blocks"] is not None:
            known = {m.id for m in s.store.metas()}
            missing = [b for b in ctx["blocks"] if b not in known]
            if missing:
                raise ConfigError(f"blocks {missing} are not in this session's memory")
            return Selection([sorted(ctx["blocks"])] * backend.num_layers)
        queries = None
        if (ctx["top_k"] or s.memory.top_k) is not None:
            window = (
                recent_by_frames(s.store.metas(), s.memory.window)
                if s.memory.query_context == "window"
                else []
            )
            cache = backend.new_cache(
                concat_layers(
                    [s.sink_kv, *(b.layers for b in s.store.get((m.id for m in window), purpose="window"))]
                )
            )
            queries = backend.question_queries(embeds, positions, cache)
        return s.answer_context(
            queries,
            since=ctx["since"],
            until=ctx["until"],
            top_k=ctx["top_k"],
            answer_window=ctx["answer_window"],
        )

    def _contiguous(self, blocks: dict, question_tokens: int):
        """Re-rotate the attended blocks to consecutive positions; the question follows them."""
        s, backend = self.session, self.session.backend
        step = 1
        if backend.position_dims == 3:
            step = backend.tokens_per_second * backend.temporal_patch_size
        layout = contiguous_positions(list(blocks.values()), s.video_start, backend.position_dims, step)
        moved = {b: reposition(backend, blocks[b], layout[b]) for b in blocks}
        start = max(int(p.max()) for p in layout.values()) + 1
        return moved, backend.text_positions(start, question_tokens)

    def _run(self) -> Iterator[str]:
        s, backend = self.session, self.session.backend
        started = time.perf_counter()
        ids = backend.prompt_parts(s.system_prompt, self.question).question
        embeds = backend.question_embeds(ids)
        positions = backend.text_positions(self.position, embeds.shape[0])
        with s._lock:
            self.selection = selection = self._select(embeds, positions)
            blocks = {b.id: b for b in s.store.get(selection.union)}  # one batched load from the tiers
            tiers = {b: s.store.tier_of(b) for b in blocks}
            if self._context["positions"] == "contiguous" and blocks:
                blocks, positions = self._contiguous(blocks, embeds.shape[0])
            context = per_layer_context(s.sink_kv, blocks, selection.layers)
            cache = backend.new_cache(context)
            hidden = backend.forward(embeds, positions, cache)
            first_logits = backend.logits(hidden[-1:])[0]
        ttft = time.perf_counter() - started
        refs = [
            BlockRef(b, blocks[b].meta.t_start, blocks[b].meta.t_end, blocks[b].meta.tokens, tiers[b])
            for b in blocks
        ]
        streamer = TextStreamer(backend.tokenizer)
        tokens: list[int] = []
        steps = decode_tokens(
            backend, cache, first_logits, int(positions[0, -1]) + 1, self.params, lambda: s._lock
        )
        for token in steps:
            tokens.append(token)
            delta = streamer.push(token)
            if delta:
                yield delta
        tail = streamer.finish()
        if tail:
            yield tail
        total = time.perf_counter() - started
        self.answer = Answer(
            question=self.question,
            text=streamer.text,
            asked_at=self.asked_at,
            blocks=refs,
            timings=Timings(
                ttft_s=ttft, total_s=total, prefill_s=ttft, decode_s=total - ttft, new_tokens=len(tokens)
            ),
            token_ids=tokens,
            finish_reason="length" if len(tokens) == self.params.max_new_tokens else "stop",
        )


def _overlaps(meta: BlockMeta, since: float | None, until: float | None) -> bool:
    return (since is None or meta.t_end >= since) and (until is None or meta.t_start <= until)


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
