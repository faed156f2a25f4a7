"""streamvlm: stream video into a vision-language model without end, ask about anything it has seen.

The engine and session are imported on first use, so ``import streamvlm`` (and every
``streamvlm`` command's start-up) does not pay for torch and transformers until a model
is needed.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from .config import MemoryConfig
from .errors import (
    ConfigError,
    EmptyVideoError,
    InvalidFrameError,
    InvalidQuestionError,
    ModelNotFoundError,
    QuestionTimeoutError,
    StreamVLMError,
    VideoOpenError,
)

__version__ = "0.1.0"

_LAZY = {
    "StreamVLM": "streamvlm.runtime.engine",
    "Session": "streamvlm.runtime.session",
    "Answer": "streamvlm.runtime.answer",
    "BlockRef": "streamvlm.runtime.answer",
    "SessionStats": "streamvlm.runtime.answer",
    "Timings": "streamvlm.runtime.answer",
    "AnswerPlan": "streamvlm.runtime.plan",
    "AnswerStream": "streamvlm.runtime.answering",
    "StreamState": "streamvlm.runtime.state",
    "BlockMemory": "streamvlm.memory.manager",
}

if TYPE_CHECKING:
    from .memory.manager import BlockMemory
    from .runtime.answer import Answer, BlockRef, SessionStats, Timings
    from .runtime.answering import AnswerStream
    from .runtime.engine import StreamVLM
    from .runtime.plan import AnswerPlan
    from .runtime.session import Session
    from .runtime.state import StreamState


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "Answer",
    "AnswerPlan",
    "AnswerStream",
    "BlockMemory",
    "BlockRef",
    "ConfigError",
    "EmptyVideoError",
    "InvalidFrameError",
    "InvalidQuestionError",
    "MemoryConfig",
    "ModelNotFoundError",
    "QuestionTimeoutError",
    "Session",
    "SessionStats",
    "StreamVLM",
    "StreamVLMError",
    "StreamState",
    "Timings",
    "VideoOpenError",
    "__version__",
]
