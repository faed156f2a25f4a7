"""Configuration dataclasses. Every option is documented here, once."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass
class MemoryConfig:
    """How a session encodes frames and what it keeps.

    window:
        Frames of recent KV that each new chunk attends to while it is encoded, besides
        the sinks (the system prompt). Per-frame encode cost is bounded by this, not by
        the stream length. The default covers 32 frames (32 s at 1 fps).
    chunk_frames:
        Frames encoded together into one block. ``None`` uses the model's natural unit:
        one temporal patch (2 frames) for Qwen2.5-VL, 1 frame for LLaVA-OneVision. For
        Qwen2.5-VL it must be a multiple of the temporal patch size.
    answer_blocks:
        Blocks attended when answering, besides sinks: ``None`` means every stored block
        (lossless), ``N`` the N most recent ones.
    max_question_chars:
        Questions longer than this are rejected with ``InvalidQuestionError``.
    """

    window: int = 32
    chunk_frames: int | None = None
    answer_blocks: int | None = None
    max_question_chars: int = 2000

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ConfigError(f"window must be >= 0 frames, got {self.window}")
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.answer_blocks is not None and self.answer_blocks < 0:
            raise ConfigError(f"answer_blocks must be >= 0 or None, got {self.answer_blocks}")
        if self.max_question_chars < 1:
            raise ConfigError(f"max_question_chars must be >= 1, got {self.max_question_chars}")
