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

from ..config import MemoryConfig
from ..errors import ConfigError, InvalidFrameError
from ..ingest.frames import Frame
from ..memory.block import Block, BlockMeta
from ..memory.store import BlockStore, InProcessStore
from ..models.base import Backend, LayerKV
from .answer import Answer, BlockRef, SessionStats, Timings
from .context import concat_layers, new_kv_from_cache, recent_by_frames
from .decode import SamplingParams, TextStreamer, decode_tokens
from .questions import validate_question

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
        store: BlockStore | None = None,
    ):
        self.backend = backend
        self.memory = memory or MemoryConfig()
        self.system_prompt = system_prompt
        self._lock = device_lock or threading.RLock()
        self.store = store or InProcessStore()
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
        self.encode_s = 0.0
        self._encode_sinks()

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
            visible = self.store.get(m.id for m in recent_by_frames(self.store.metas(), self.memory.window))
            context = concat_layers([self.sink_kv, *(b.layers for b in visible)])
            cache = self.backend.new_cache(context)
            self.backend.forward(chunk.embeds, chunk.positions, cache)
            layers = new_kv_from_cache(cache, context[0][0].shape[1])
        meta = BlockMeta(
            id=self._next_block_id,
            t_start=pending[0][1],
            t_end=pending[real_frames - 1][1],
            frames=real_frames,
            positions=chunk.positions.cpu(),
            kept=torch.ones(chunk.positions.shape[1], dtype=torch.bool),
        )
        self.store.put(Block(meta=meta, layers=layers))
        self._next_block_id += 1
        self.next_position = max(self.next_position, meta.max_position + 1)
        self.frames_encoded += real_frames
        self.chunks_encoded += 1
        self.encode_s += time.perf_counter() - started

    # ----- answers ---------------------------------------------------------------

    def answer_context(self) -> list[BlockMeta]:
        """Blocks a question attends to now (besides sinks), oldest first.

        Every block when ``answer_blocks`` is None (lossless); otherwise the most recent
        ``answer_blocks`` blocks together with the encoding window.
        """
        metas = self.store.metas()
        if self.memory.answer_blocks is None:
            return metas
        chosen = (
            {m.id for m in metas[len(metas) - self.memory.answer_blocks :]}
            if self.memory.answer_blocks
            else set()
        )
        chosen |= {m.id for m in recent_by_frames(metas, self.memory.window)}
        return [m for m in metas if m.id in chosen]

    def ask(self, question: str, **sampling) -> Answer:
        """Answer ``question`` about everything seen so far. Keyword options: see ``SamplingParams``."""
        stream = self.ask_stream(question, **sampling)
        for _ in stream:
            pass
        return stream.answer

    def ask_stream(self, question: str, *, blocks: list[BlockMeta] | None = None, **sampling) -> AnswerStream:
        """Like ``ask`` but iterate it for text deltas as tokens are produced; ``.answer`` holds the result.

        ``blocks`` overrides which blocks are attended (default ``answer_context()``).
        """
        text = validate_question(question, self.memory.max_question_chars)
        params = SamplingParams(**sampling)
        self.flush()
        return AnswerStream(self, text, blocks if blocks is not None else self.answer_context(), params)

    # ----- introspection ---------------------------------------------------------

    @property
    def stream_time(self) -> float:
        """Stream time of the latest frame seen (0 before any)."""
        return self._last_t if self._last_t is not None else 0.0

    def stats(self) -> SessionStats:
        metas = self.store.metas()
        return SessionStats(
            frames_seen=self.frames_seen,
            frames_encoded=self.frames_encoded,
            chunks_encoded=self.chunks_encoded,
            blocks=len(metas),
            tokens_stored=sum(m.tokens for m in metas),
            sink_tokens=len(self.sink_ids),
            stream_time=self.stream_time,
            next_position=self.next_position,
            bytes_per_tier=self.store.bytes_per_tier(),
            encode_s=self.encode_s,
        )


class AnswerStream:
    """Iterator of an answer's text deltas; ``answer`` is set when it is exhausted."""

    def __init__(self, session: Session, question: str, blocks: list[BlockMeta], params: SamplingParams):
        self.session = session
        self.question = question
        self.blocks = blocks
        self.params = params
        # The question follows everything seen when it was asked, even if frames arrive
        # while it is being answered.
        self.position = session.next_position
        self.asked_at = session.stream_time
        self.answer: Answer | None = None
        self._deltas = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __next__(self) -> str:
        return next(self._deltas)

    def _run(self) -> Iterator[str]:
        s, backend = self.session, self.session.backend
        started = time.perf_counter()
        ids = backend.prompt_parts(s.system_prompt, self.question).question
        embeds = backend.question_embeds(ids)
        positions = backend.text_positions(self.position, embeds.shape[0])
        with s._lock:
            stored = s.store.get(m.id for m in self.blocks)
            cache = backend.new_cache(concat_layers([s.sink_kv, *(b.layers for b in stored)]))
            hidden = backend.forward(embeds, positions, cache)
            first_logits = backend.logits(hidden[-1:])[0]
        ttft = time.perf_counter() - started
        refs = [BlockRef(m.id, m.t_start, m.t_end, m.tokens, s.store.tier_of(m.id)) for m in self.blocks]
        streamer = TextStreamer(backend.tokenizer)
        tokens: list[int] = []
        steps = decode_tokens(
            backend, cache, first_logits, self.position + embeds.shape[0], self.params, lambda: s._lock
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
