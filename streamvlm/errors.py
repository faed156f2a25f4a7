"""Typed errors. Every message is one line that names the problem and the fix.

The CLI prints ``error: <message>`` and exits with code 2 for any ``StreamVLMError``;
servers send the message on the socket. Nothing else in streamvlm should let a raw
library exception reach a user for bad input.
"""


class StreamVLMError(Exception):
    """Base class for errors caused by input or configuration, not by bugs."""


class ModelNotFoundError(StreamVLMError):
    """A model name or path could not be resolved to weights."""


class VideoOpenError(StreamVLMError):
    """A video source could not be opened or is not a video."""


class EmptyVideoError(StreamVLMError):
    """A video source opened but yielded no decodable frame."""


class InvalidFrameError(StreamVLMError):
    """A frame has the wrong shape, dtype or timestamp."""


class InvalidQuestionError(StreamVLMError):
    """A question is empty or longer than the configured limit."""


class ConfigError(StreamVLMError):
    """An option has a value that cannot work."""


class QuestionTimeoutError(StreamVLMError):
    """A question waited too long for the frames received before it to be encoded."""
