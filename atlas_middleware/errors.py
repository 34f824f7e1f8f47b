"""How atlas words an error in one line: log lines, span attributes, CLI messages."""

from __future__ import annotations

from typing import Any


def one_line(error: BaseException | Any, limit: int | None = None) -> str:
    """``error``'s message with its whitespace collapsed (a multi-line message reads as one line),
    cut at ``limit`` characters; an exception with no message gives its type's name."""
    text = " ".join(str(error).split())
    if limit is not None:
        text = text[:limit]
    if not text and isinstance(error, BaseException):
        return type(error).__name__
    return text


def first_line(error: BaseException | Any, limit: int | None = None) -> str:
    """The first line of ``error``'s message (the rest is a hint or a traceback), cut at
    ``limit``; an exception with no message gives its type's name, other empty text ""."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if limit is not None:
        line = line[:limit]
    if not line and isinstance(error, BaseException):
        return type(error).__name__
    return line
