"""The supervision protocol and the one driver that runs it.

A supervised call is a *flow*: a generator (:meth:`Supervisor.flow`) that decides the lane and
yields what it needs done, one step at a time:

- :class:`Ask`: call the teacher (probe, guidance, validation); the driver sends back the result,
  or a :class:`Failed` when the call raised or timed out (the flow fails open);
- :class:`Invoke`: run the agent with this guidance in context; the driver sends back its result,
  or throws its exception into the flow;

and returns an :class:`Outcome` (the call's result, its answer text, the session's span).

:func:`steps` holds every rule of driving a flow (timeouts, failing open, closing the flow on
any exit, settling late token reports), so there is one copy of them. What differs between
callers is only *how to run the agent* (with the step's guidance in context) and whether to wait or await: :func:`run` and
:func:`arun` take an ``invoke`` callable; :func:`run_streaming` / :func:`arun_streaming` take one
that also streams chunks to the caller (a LangGraph ``stream``). ``@atlas.supervise`` and the
LangGraph node wrapper both drive their flows through these; see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.trace import SpanContext

from atlas_middleware.portal import get_portal
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry import usage

if TYPE_CHECKING:
    from atlas_middleware.supervise import SupervisionOptions

log = logging.getLogger("atlas")

T = TypeVar("T")


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_session_id() -> str:
    """A random version-4 UUID as 32 hex digits, like ``uuid.uuid4().hex``, from the process's
    PRNG (reseeded in forked children) instead of ``os.urandom``: that system call releases the
    GIL on every supervised call, which hands it to the span exporter's thread."""
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


@dataclass
class Call:
    """One supervised call as the flow sees it: its options, task and reference."""

    options: SupervisionOptions
    task: str
    reference: str | None
    session_id: str = field(default_factory=new_session_id)
    lessons: list[str] = field(default_factory=list)
    # The root span of an earlier part of this session (a resumed graph): continue its trace.
    parent: SpanContext | None = None


class Failed:
    """What a teacher step returns instead of raising: the flow decides how to fail open."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error

    def __str__(self) -> str:
        from atlas_middleware.errors import first_line
        from atlas_middleware.redaction import scrub_text

        # Model errors name their endpoint; one given with credentials must not leak them into
        # atlas.failures or the log.
        message = scrub_text(first_line(str(self.error)))
        return f"{self.step}: {type(self.error).__name__}" + (
            f": {message[:200]}" if message else ""
        )


@dataclass
class Ask:
    """Ask the teacher: the driver sends back ``make()``'s result or a :class:`Failed`."""

    step: str  # probe, guidance, validate
    make: Callable[[], Awaitable[Any]]
    timeout: float | None = None  # None: the options' timeout for this step

    def __post_init__(self) -> None:
        # Whatever drives the step, the model calls it makes are the teacher's, marked so on
        # their spans and in the session's tokens.
        make, step = self.make, self.step

        async def as_teacher() -> Any:
            with usage.acting(s.ROLE_TEACHER, step):
                return await make()

        self.make = as_teacher

    def seconds(self, options: SupervisionOptions) -> float:
        """How long the driver waits for this step."""
        if self.timeout is not None:  # the step's own, within the call's teacher budget
            return self.timeout
        return step_timeout(self.step, options)


@dataclass
class Invoke:
    """Run the agent with this guidance in context."""

    guidance: str | None


@dataclass
class Outcome:
    result: Any
    answer: str
    session: SpanContext
    call: Call


Flow = Generator["Ask | Invoke", Any, Outcome]


def step_timeout(step: str, options: SupervisionOptions) -> float:
    return options.probe_timeout_s if step == "probe" else options.teacher_timeout_s


_logged: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning the first time ``key`` is seen in this process."""
    if key not in _logged:
        _logged.add(key)
        log.warning(message, *args)


def log_once(failure: Failed) -> None:
    """Log a failure of atlas's (not the agent's) once per kind, at warning level."""
    key = f"{failure.step}:{type(failure.error).__name__}"
    warn_once(key, "atlas: %s (failing open; logged once per kind)", failure)


class AgentLog:
    """What the agent did during one call, kept by the driver: atlas's own failures fall back on
    it (the caller gets the agent's result or exception, never atlas's)."""

    def __init__(self) -> None:
        self.ran = False
        self.result: Any = None
        self.error: BaseException | None = None

    def returned(self, result: T) -> T:
        self.ran, self.result, self.error = True, result, None
        return result

    def raised(self, error: BaseException) -> BaseException:
        self.ran, self.error = True, error
        return error

    def handled(self) -> None:
        """The flow took the agent's exception in its stride (a failed guided retry): the call's
        outcome is the earlier result."""
        self.error = None


# A teacher step the caller answers itself (see ``answer``), else the teacher is asked.
ASK_TEACHER: Any = object()


@dataclass(frozen=True)
class _Wait:  # the runner waits for the teacher step
    ask: Ask
    seconds: float


@dataclass(frozen=True)
class _Run:  # the runner runs the agent
    invoke: Invoke


_SETTLE: Any = object()  # the runner lets late usage reports join the session


def steps(
    flow: Flow,
    options: SupervisionOptions,
    agent: AgentLog,
    answer: Callable[[Ask], Any] | None = None,
) -> Generator[_Wait | _Run | object, Any, Outcome]:
    """The protocol: drive ``flow`` to its outcome, yielding what a runner must do.

    ``answer(ask)`` may answer a teacher step itself (a resumed graph's guidance) or return
    :data:`ASK_TEACHER`. The flow is closed on any exit, in the caller's context, so its session
    span ends cleanly even when a BaseException (KeyboardInterrupt) escapes."""
    send: Any = None
    throw: BaseException | None = None
    with contextlib.closing(flow):
        while True:
            try:
                step = flow.throw(throw) if throw is not None else flow.send(send)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if throw is not None:
                agent.handled()
            send, throw = None, None
            if isinstance(step, Ask):
                send = answer(step) if answer is not None else ASK_TEACHER
                if send is ASK_TEACHER:
                    try:
                        send = yield _Wait(step, step.seconds(options))
                    except Exception as exc:
                        send = Failed(step.step, exc)
                continue
            try:
                send = agent.returned((yield _Run(step)))
            except Exception as exc:
                throw = agent.raised(exc)
            yield _SETTLE


_DONE: Any = object()


class _Exchange:
    """A runner's side of :func:`steps`: the next request (or ``_DONE``, with ``outcome``
    set), after sending back the previous one's ``reply`` or throwing its ``error``."""

    def __init__(self, driver: Generator[Any, Any, Outcome]) -> None:
        self.driver = driver
        self.reply: Any = None
        self.error: BaseException | None = None
        self.outcome: Any = None

    def next(self) -> Any:
        reply, error = self.reply, self.error
        self.reply, self.error = None, None
        try:
            return self.driver.throw(error) if error is not None else self.driver.send(reply)
        except StopIteration as done:
            self.outcome = done.value
            return _DONE


def _no_chunks(invoke: Callable[[Invoke], Any]) -> Callable[[Invoke], Generator[Any, None, Any]]:
    def run(step: Invoke) -> Generator[Any, None, Any]:
        return invoke(step)
        yield  # a generator that streams nothing

    return run


def run_streaming(
    flow: Flow,
    options: SupervisionOptions,
    invoke: Callable[[Invoke], Generator[Any, None, Any]],
    *,
    agent: AgentLog | None = None,
    answer: Callable[[Ask], Any] | None = None,
) -> Generator[Any, None, Outcome]:
    """Drive ``flow``, waiting: ``invoke(step)`` is a generator whose chunks pass through to the
    caller and whose return value is the agent's result."""
    portal = get_portal()
    # Closing the protocol closes the flow: an exit by BaseException or an abandoned stream
    # still ends the session span here, not in the garbage collector.
    with contextlib.closing(steps(flow, options, agent or AgentLog(), answer)) as driver:
        protocol = _Exchange(driver)
        while (request := protocol.next()) is not _DONE:
            try:
                if isinstance(request, _Wait):
                    protocol.reply = portal.call(request.ask.make, timeout=request.seconds)
                elif isinstance(request, _Run):
                    protocol.reply = yield from invoke(request.invoke)
                else:
                    usage.settle()  # usage reported late (litellm) joins this session
            except Exception as exc:
                protocol.error = exc
        outcome: Outcome = protocol.outcome
        return outcome


def run(
    flow: Flow,
    options: SupervisionOptions,
    invoke: Callable[[Invoke], Any],
    *,
    agent: AgentLog | None = None,
    answer: Callable[[Ask], Any] | None = None,
) -> Outcome:
    """Drive ``flow`` to its outcome, waiting; ``invoke(step)`` runs the agent."""
    driving = run_streaming(flow, options, _no_chunks(invoke), agent=agent, answer=answer)
    try:
        while True:
            next(driving)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Returned:
    """The last item of an async streaming ``invoke``: the agent's result (an async generator
    cannot return a value)."""

    value: Any


async def arun_streaming(
    flow: Flow,
    options: SupervisionOptions,
    invoke: Callable[[Invoke], AsyncGenerator[Any, None]],
    *,
    outcome: list[Outcome],
    agent: AgentLog | None = None,
    answer: Callable[[Ask], Any] | None = None,
) -> AsyncGenerator[Any, None]:
    """Drive ``flow``, awaiting: ``invoke(step)`` is an async generator whose chunks pass through
    to the caller and whose last item is :class:`Returned`; the outcome is appended to
    ``outcome``."""
    with contextlib.closing(steps(flow, options, agent or AgentLog(), answer)) as driver:
        protocol = _Exchange(driver)
        while (request := protocol.next()) is not _DONE:
            try:
                if isinstance(request, _Wait):
                    protocol.reply = await asyncio.wait_for(request.ask.make(), request.seconds)
                elif isinstance(request, _Run):
                    # Closed here when the caller abandons the stream, so the agent's context
                    # managers exit in this task, innermost first, before the flow's.
                    async with contextlib.aclosing(invoke(request.invoke)) as chunks:
                        async for chunk in chunks:
                            if isinstance(chunk, Returned):
                                protocol.reply = chunk.value
                            else:
                                yield chunk
                else:
                    await usage.asettle()
            except Exception as exc:
                protocol.error = exc
        outcome.append(protocol.outcome)


async def arun(
    flow: Flow,
    options: SupervisionOptions,
    invoke: Callable[[Invoke], Awaitable[Any]],
    *,
    agent: AgentLog | None = None,
    answer: Callable[[Ask], Any] | None = None,
) -> Outcome:
    """Drive ``flow`` to its outcome, awaiting; ``await invoke(step)`` runs the agent."""

    async def no_chunks(step: Invoke) -> AsyncGenerator[Any, None]:
        yield Returned(await invoke(step))

    outcome: list[Outcome] = []
    driving = arun_streaming(flow, options, no_chunks, outcome=outcome, agent=agent, answer=answer)
    async with contextlib.aclosing(driving):
        async for _ in driving:
            pass
    return outcome[0]


def submit(job: Callable[[], Awaitable[None]] | None, options: SupervisionOptions) -> None:
    """Run a session's reward job: inline (waiting, bounded) when asked, else in the background."""
    if job is None:
        return
    portal = get_portal()
    if options.reward_inline:
        try:
            portal.call(job, timeout=options.teacher_timeout_s * 4)
        except Exception as exc:
            log_once(Failed("reward", exc))
    else:
        portal.background(job, what="reward")


async def asubmit(job: Callable[[], Awaitable[None]] | None, options: SupervisionOptions) -> None:
    """:func:`submit`, awaiting an inline reward."""
    if job is None:
        return
    if options.reward_inline:
        try:
            await asyncio.wait_for(job(), options.teacher_timeout_s * 4)
        except Exception as exc:
            log_once(Failed("reward", exc))
    else:
        get_portal().background(job, what="reward")
