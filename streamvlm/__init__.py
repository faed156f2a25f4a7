"""streamvlm: stream video into a vision-language model without end, ask about anything it has seen."""

from .config import MemoryConfig
from .errors import (
    ConfigError,
    EmptyVideoError,
    InvalidFrameError,
    InvalidQuestionError,
    ModelNotFoundError,
    StreamVLMError,
    VideoOpenError,
)
from .runtime.answer import Answer, BlockRef, SessionStats, Timings
from .runtime.engine import StreamVLM
from .runtime.session import Session

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BlockRef",
    "ConfigError",
    "EmptyVideoError",
    "InvalidFrameError",
    "InvalidQuestionError",
    "MemoryConfig",
    "ModelNotFoundError",
    "Session",
    "SessionStats",
    "StreamVLM",
    "StreamVLMError",
    "Timings",
    "VideoOpenError",
    "__version__",
]
