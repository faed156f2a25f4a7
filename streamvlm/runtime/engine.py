"""The engine: one loaded model serving many sessions."""

from __future__ import annotations

import torch

from ..config import MemoryConfig
from ..models.base import Backend
from ..models.loading import load_backend
from ..models.recommended import memory_defaults_of as recommended_memory
from .scheduling import PriorityLock
from .session import DEFAULT_SYSTEM_PROMPT, Session


class StreamVLM:
    """Owns a model (through its backend) and creates sessions over it.

    Model work from all sessions is serialised with one lock (``device_lock``): the device
    runs one forward at a time, and sessions interleave between chunks and between
    tokens. A question's prefill and tokens go before waiting chunks, and the chunks a
    question waits for before the others, so a question waits for the chunk being encoded
    and its own session's, not for every session's queue (``PriorityLock``).
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self.device_lock = PriorityLock()

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        seed: int = 0,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
    ) -> StreamVLM:
        """Load a model by name: ``tiny-qwen2.5-vl`` / ``tiny-llava-ov`` (built offline), a local
        directory, or a Hugging Face hub id.

        ``device`` defaults to CUDA when available, else CPU; ``dtype`` to bfloat16 on
        CUDA and float32 on CPU; weights are loaded straight onto the device. ``seed`` sets
        the weights of the tiny models.

        ``max_pixels`` is the pixel budget of one frame (Qwen2.5-VL): it decides the visual
        tokens per frame, hence compute and memory per hour of stream (docs/memory.md).
        Default: the checkpoint's video processor config, else 256 x 28 x 28 (126 LLM
        tokens for a 720p frame). LLaVA-OneVision frames have one fixed size and take none.
        ``attn_implementation``: ``sdpa`` (default), ``flash_attention_2`` (CUDA, with the
        flash-attn package) or ``eager``, for the vision tower and plain forwards; the
        streaming prefill keeps streamvlm's own SDPA (models/loading.py says why).

        Raises ``ModelNotFoundError`` with a one-line reason when the weights are missing
        or the checkpoint is of an unsupported family, ``ConfigError`` for options or
        processor configs streamvlm cannot follow.
        """
        backend = load_backend(
            name,
            device=device,
            dtype=dtype,
            seed=seed,
            max_pixels=max_pixels,
            attn_implementation=attn_implementation,
        )
        backend.memory_defaults = recommended_memory(name)
        return cls(backend)

    @property
    def model_name(self) -> str:
        return self.backend.name

    def new_session(
        self,
        memory: MemoryConfig | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        *,
        mirror=None,
    ) -> Session:
        """Start a new stream with its own memory and position counter.

        ``memory`` defaults to the checkpoint's recommended options
        (``Backend.default_memory()``); build one with ``engine.memory(**options)`` to keep
        them for the options not given. ``mirror`` (``memory.mirror.SessionMirror``, with
        ``memory.disk_dir`` set) publishes every checkpoint to a cluster's shared store."""
        memory = memory if memory is not None else self.memory()
        return Session(
            self.backend,
            memory=memory,
            system_prompt=system_prompt,
            device_lock=self.device_lock,
            mirror=mirror,
        )

    def resume_session(self, directory, *, mirror=None, **overrides) -> Session:
        """Reopen a session from its directory (``Session.resume``)."""
        return Session.resume(directory, self, mirror=mirror, **overrides)

    def memory(self, **options) -> MemoryConfig:
        """``MemoryConfig(**options)``, the options not given taken from what the model's
        checkpoint recommends (``models/recommended.py``), else ``MemoryConfig``'s defaults."""
        return self.backend.default_memory(**options)
