"""Who is calling a model, and what a supervised session's model calls cost.

Every model call inside a session adds its tokens to the session's tally, split by whose call it
was: the **student** (the supervised agent's own model calls, whatever framework makes them) or
the **teacher** (probe, guidance, validation, lessons). When the session ends, its root span
carries ``gen_ai.usage.input_tokens`` / ``output_tokens`` (student + teacher) and the split
(``atlas.usage.student.*``, ``atlas.usage.teacher.*``). A part is only recorded when it is known:
a call that reported no usage, or a student nobody observed, leaves it (and the total) unset
rather than guessed. Judges, which run after the session, report on their own spans.

Whose call it is comes from :func:`acting`: atlas marks its teacher and judge calls; a call made
anywhere else inside a session is the student's.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from atlas_middleware.telemetry import schema as s


@dataclass(slots=True)
class Part:
    """The calls of one role: their token sums, and whether every call reported its usage."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    unknown: int = 0  # calls whose usage was not reported

    def add(self, input_tokens: int | None, output_tokens: int | None) -> None:
        self.calls += 1
        if input_tokens is None and output_tokens is None:
            self.unknown += 1
            return
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0

    def known(self, *, required: bool) -> bool:
        """Whether the sums are the whole truth: no unreported call, and (``required``) at
        least one call seen (a student that was never observed is unknown, not free)."""
        return self.unknown == 0 and (self.calls > 0 or not required)


_NO_PENDING: tuple[Pending, ...] = ()


class SessionUsage:
    """One session's tally. Its parts and its pending list are made on first use: most sessions
    see no model call that atlas counts (a plain class with slots: it is made on every
    supervised call)."""

    __slots__ = ("_pending", "_student", "_teacher", "model")

    def __init__(self) -> None:
        self._student: Part | None = None
        self._teacher: Part | None = None
        self.model: str | None = None  # the first model the student called
        self._pending: list[Pending] | tuple[Pending, ...] = _NO_PENDING

    @property
    def student(self) -> Part:
        part = self._student
        if part is None:
            part = self._student = Part()
        return part

    @property
    def teacher(self) -> Part:
        part = self._teacher
        if part is None:
            part = self._teacher = Part()
        return part

    @property
    def calls(self) -> int:
        student, teacher = self._student, self._teacher
        return (0 if student is None else student.calls) + (0 if teacher is None else teacher.calls)

    @property
    def input_tokens(self) -> int:
        return self.student.input_tokens + self.teacher.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.student.output_tokens + self.teacher.output_tokens

    def attributes(self) -> dict[str, int | str]:
        """The root span's usage attributes: only what is known (see the module doc)."""
        out: dict[str, int | str] = {}
        student = self.student.known(required=True)
        teacher = self.teacher.known(required=False)
        if student:
            out[s.ATLAS_USAGE_STUDENT_INPUT_TOKENS] = self.student.input_tokens
            out[s.ATLAS_USAGE_STUDENT_OUTPUT_TOKENS] = self.student.output_tokens
        if teacher:
            out[s.ATLAS_USAGE_TEACHER_INPUT_TOKENS] = self.teacher.input_tokens
            out[s.ATLAS_USAGE_TEACHER_OUTPUT_TOKENS] = self.teacher.output_tokens
        if student and teacher:
            out[s.GEN_AI_USAGE_INPUT_TOKENS] = self.input_tokens
            out[s.GEN_AI_USAGE_OUTPUT_TOKENS] = self.output_tokens
        if self.model:
            out[s.GEN_AI_REQUEST_MODEL] = self.model
        return out


class Pending:
    """A model call whose usage will be reported later, from another thread or task (litellm
    reports finished calls from a logging worker). The session waits a moment for it."""

    __slots__ = ("_done", "_lock", "_loop", "_tally", "role")

    def __init__(self, tally: SessionUsage, role: str, loop: asyncio.AbstractEventLoop | None):
        self._tally = tally
        self._done = False
        self._lock = threading.Lock()
        self._loop = loop
        self.role = role

    def count(
        self, input_tokens: int | None, output_tokens: int | None, model: str | None = None
    ) -> None:
        """The call's usage (once: a report after the session gave up waiting is ignored)."""
        with self._lock:
            if self._done:
                return
            self._done = True
            _add(self._tally, self.role, input_tokens, output_tokens, model)

    def abandoned(self) -> bool:
        """Whether the report can no longer come (its event loop closed)."""
        return self._loop is not None and self._loop.is_closed()

    @property
    def done(self) -> bool:
        return self._done


_current: contextvars.ContextVar[SessionUsage | None] = contextvars.ContextVar(
    "atlas_session_usage", default=None
)
_role: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "atlas_span_role", default=None
)


class session_usage:  # lower-case: used like contextlib's context managers
    """Tally the model calls made inside this block (nested blocks tally separately).

    ``on_end`` gets the tally when the block ends, also when it raises (a session whose agent
    failed still spent its teacher's tokens), and only if a call was counted. (A class, not a
    generator: it is on every supervised call's path.)"""

    __slots__ = ("_on_end", "_tally", "_token")

    def __init__(self, on_end: Callable[[SessionUsage], None] | None = None) -> None:
        self._on_end = on_end

    def __enter__(self) -> SessionUsage:
        self._tally = tally = SessionUsage()
        self._token = open_tally(tally)
        return tally

    def __exit__(self, *exc: object) -> None:
        tally = self._tally
        if close_tally(tally, self._token) and self._on_end is not None:
            self._on_end(tally)


def open_tally(tally: SessionUsage) -> contextvars.Token[SessionUsage | None]:
    """:class:`session_usage`'s entry, for a caller that keeps the tally itself (a supervised
    session: one object less on every call): model calls made here count in ``tally``."""
    return _current.set(tally)


def close_tally(tally: SessionUsage, token: contextvars.Token[SessionUsage | None]) -> bool:
    """:class:`session_usage`'s exit, for :func:`open_tally`'s token: whether a call was counted
    (then the tally has attributes to record)."""
    _current.reset(token)
    if tally._pending:
        _give_up(tally)  # calls still unreported now are unknown, not free
    return tally.calls > 0


@contextmanager
def acting(role: str, step: str | None = None) -> Iterator[None]:
    """Model calls made inside this block are ``role``'s (``schema.ROLE_TEACHER`` with the
    teacher's ``step``, ``schema.ROLE_JUDGE``); outside any such block they are the student's."""
    token = _role.set((role, step))
    try:
        yield
    finally:
        _role.reset(token)


def current_role() -> tuple[str, str | None]:
    """(role, teacher step) of a model call made here: the student's unless marked."""
    return _role.get() or (s.ROLE_STUDENT, None)


def role_attributes() -> dict[str, str]:
    """``atlas.span.role`` (and ``atlas.teacher.step``) for a model-call span started here."""
    role, step = current_role()
    return (
        {s.ATLAS_SPAN_ROLE: role, s.ATLAS_TEACHER_STEP: step} if step else {s.ATLAS_SPAN_ROLE: role}
    )


def _add(
    tally: SessionUsage,
    role: str,
    input_tokens: int | None,
    output_tokens: int | None,
    model: str | None,
) -> None:
    if role == s.ROLE_TEACHER:
        tally.teacher.add(input_tokens, output_tokens)
    elif role == s.ROLE_STUDENT:
        tally.student.add(input_tokens, output_tokens)
        if model and tally.model is None:
            tally.model = model
    # judges' calls are not the session's (they run after it, on their own spans)


def count(input_tokens: int | None, output_tokens: int | None, model: str | None = None) -> None:
    """Add one model call's tokens to the current session's tally (no-op outside sessions).
    ``None`` for both: the call reported no usage (its role's total becomes unknown).

    Integrations call this for model calls that do not go through an atlas ``ChatModel``."""
    tally = _current.get()
    if tally is not None:
        _add(tally, current_role()[0], input_tokens, output_tokens, model)


def expect() -> Pending | None:
    """Register a call whose usage is reported later (see :class:`Pending`); None outside
    sessions. The session waits for it in :func:`settle` / :func:`asettle`."""
    tally = _current.get()
    if tally is None:
        return None
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    pending = Pending(tally, current_role()[0], loop)
    if isinstance(tally._pending, list):
        tally._pending.append(pending)
    else:
        tally._pending = [pending]
    return pending


SETTLE_TIMEOUT_S = 2.0


def _waiting(tally: SessionUsage | None) -> bool:
    return tally is not None and any(not p.done and not p.abandoned() for p in tally._pending)


def _give_up(tally: SessionUsage | None) -> None:
    if tally is None:
        return
    for pending in tally._pending:
        pending.count(None, None)  # never reported: that part of the session is unknown
    tally._pending = _NO_PENDING


def settle(timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Wait (briefly) for this session's late usage reports, from synchronous code."""
    tally = _current.get()
    if tally is None or not tally._pending:
        return
    deadline = time.monotonic() + timeout
    while _waiting(tally) and time.monotonic() < deadline:
        time.sleep(0.005)
    _give_up(tally)


async def asettle(timeout: float = SETTLE_TIMEOUT_S) -> None:
    """:func:`settle` for async code: reports from the running loop's tasks can arrive."""
    tally = _current.get()
    if tally is None or not tally._pending:
        return
    deadline = time.monotonic() + timeout
    while _waiting(tally) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    _give_up(tally)
