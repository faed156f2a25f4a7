"""Question validation shared by the session, the CLI and the servers."""

from __future__ import annotations

import math

from ..errors import ConfigError, InvalidQuestionError


def validate_question(question: object, max_chars: int) -> str:
    """Return the stripped question, or raise ``InvalidQuestionError`` with a one-line reason."""
    if not isinstance(question, str):
        raise InvalidQuestionError(f"question must be text, got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise InvalidQuestionError("question is empty; ask something, e.g. 'what is happening?'")
    if len(text) > max_chars:
        raise InvalidQuestionError(
            f"question is {len(text)} characters, over the limit of {max_chars}; shorten it "
            "or raise MemoryConfig.max_question_chars"
        )
    return text


def check_time_range(since: float | None, until: float | None, latest: float | None) -> None:
    """Refuse a ``since`` / ``until`` span no block can be in, with ``ConfigError``.

    Times are stream seconds on the clock of the frames: neither may be negative or
    not finite, ``since`` may not be after ``until``, and a span must have begun: ``since``
    after ``latest`` (the time of the latest frame received) asks about the future. The
    one check of a question's span: the Python API, the CLI and the servers all get it
    through ``Session.answer``.
    """
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number of stream seconds, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name}={value:g} s is negative; stream times are seconds >= 0")
    if since is not None and until is not None and since > until:
        raise ConfigError(f"since={since:g} s is after until={until:g} s; swap them or leave one out")
    if since is not None and latest is not None and since > latest:
        raise ConfigError(
            f"since={since:g} s is after the latest frame received ({latest:g} s): the span has not "
            "begun; ask about seconds already streamed, or leave since out"
        )
