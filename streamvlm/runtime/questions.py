"""Question validation shared by the session, the CLI and the servers."""

from __future__ import annotations

from ..errors import InvalidQuestionError


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
