"""Token usage per supervised session: every model call inside the session adds to its tally.

The session root span (``invoke_agent``) then carries the session's total
``gen_ai.usage.input_tokens`` / ``output_tokens`` — student, teacher and any framework model
calls that report here — so the session row holds what the whole session cost. Judges that run
after the session ended report on their own evaluation spans instead.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class SessionUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


_current: contextvars.ContextVar[SessionUsage | None] = contextvars.ContextVar(
    "atlas_session_usage", default=None
)


@contextmanager
def session_usage(
    on_end: Callable[[SessionUsage], None] | None = None,
) -> Iterator[SessionUsage]:
    """Tally the model calls made inside this block (nested blocks tally separately).

    ``on_end`` gets the tally when the block ends, also when it raises (a session whose agent
    failed still spent its teacher's tokens), and only if a call was counted."""
    tally = SessionUsage()
    token = _current.set(tally)
    try:
        yield tally
    finally:
        _current.reset(token)
        if on_end is not None and tally.calls:
            on_end(tally)


def count(input_tokens: int | None, output_tokens: int | None) -> None:
    """Add one model call's tokens to the current session's tally (no-op outside sessions).

    Integrations call this for model calls that do not go through an atlas ``ChatModel``."""
    tally = _current.get()
    if tally is not None:
        tally.calls += 1
        tally.input_tokens += input_tokens or 0
        tally.output_tokens += output_tokens or 0
