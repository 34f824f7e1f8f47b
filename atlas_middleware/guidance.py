"""The teacher's guidance for the call in progress, readable from anywhere inside the agent.

The supervisor (or an adapter) sets it around the student's run; the agent, or the integration
that builds its prompt, reads it::

    with use_guidance("Check units before answering."):
        await agent.run(task)

    # inside the agent
    messages = with_guidance([{"role": "user", "content": task}])
    system = guided_system_prompt("You are a careful analyst.")

It lives in a :class:`contextvars.ContextVar`, so concurrent sessions never see each other's
guidance: each asyncio task has its own copy of the context (tasks created inside
``use_guidance`` inherit it) and each thread starts without any. Code handing work to a thread
pool can carry it along with ``contextvars.copy_context().run`` (``asyncio.to_thread`` does).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Type-only: this module stays stdlib-only so the package can import it eagerly.
    from atlas_middleware.models.base import ChatMessage


class _Active:
    """The guidance of one ``use_guidance`` block; rendered on first read only."""

    __slots__ = ("_rendered", "task", "text")

    def __init__(self, text: str, task: str | None) -> None:
        self.text = text
        self.task = task
        self._rendered: str | None = None

    def rendered(self) -> str:
        if self._rendered is None:
            from atlas_middleware.plugins import render_guidance

            self._rendered = render_guidance(self.text, self.task)
        return self._rendered


_current: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "atlas_guidance", default=None
)


def guidance() -> str | None:
    """The raw guidance text for the current call, or None when there is none."""
    active = _current.get()
    return active.text if active is not None else None


def rendered_guidance() -> str | None:
    """The guidance as the student should read it (through the ``atlas_render_guidance``
    hook: by default ``Guidance from your teacher:\\n<guidance>``), or None."""
    active = _current.get()
    return active.rendered() if active is not None else None


def no_guidance() -> bool:
    """Whether no guidance is current here (``use_guidance(None)`` would change nothing)."""
    return _current.get() is None


class use_guidance:  # lower-case: used like contextlib's context managers
    """Make ``text`` the current guidance inside a ``with`` or ``async with`` block.

    ``None`` or empty text clears guidance inside the block (e.g. the auto lane nested in a
    guided run). The previous value is restored on exit even when the block raises. One
    instance is not re-entrant; create one per block.
    """

    __slots__ = ("_task", "_text", "_token")

    def __init__(self, text: str | None, *, task: str | None = None) -> None:
        self._text = text
        self._task = task
        self._token: contextvars.Token[_Active | None] | None = None

    def __enter__(self) -> str | None:
        if self._token is not None:
            raise RuntimeError("use_guidance(...) is already active; create one per block")
        active = _Active(self._text, self._task) if self._text else None
        self._token = _current.set(active)
        return self._text or None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)

    async def __aenter__(self) -> str | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def guided_system_prompt(base: str | None) -> str | None:
    """``base`` with the rendered guidance appended (a blank line between); ``base`` unchanged
    when there is no guidance; the guidance alone when ``base`` is empty."""
    text = rendered_guidance()
    if text is None:
        return base
    if not base:
        return text
    return base.rstrip() + "\n\n" + text


def with_guidance(messages: Iterable[Mapping[str, Any]]) -> list[ChatMessage]:
    """A new message list carrying the current guidance; the input is never modified.

    The guidance is merged into the first system message when there is one (appended after
    its text), else prepended as a new system message. Messages whose ``content`` is a list of
    parts (OpenAI multi-part format) get a text part appended. Without guidance the result is
    a shallow copy of ``messages``.
    """
    result: list[Any] = [dict(m) for m in messages]
    text = rendered_guidance()
    if text is None:
        return result
    for i, message in enumerate(result):
        if message.get("role") != "system":
            continue
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [*content, {"type": "text", "text": text}]
        else:
            message["content"] = guided_system_prompt(content or None)
        result[i] = message
        return result
    return [{"role": "system", "content": text}, *result]
