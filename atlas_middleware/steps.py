"""Steps and process rewards: a reward for one step of a session, from inside it. ::

    def act(state):                         # a LangGraph node, a LlamaIndex step, a tool, ...
        result = do_the_thing(state)
        atlas.reward(0.8 if result.ok else 0.2, name="tool_ok", rationale="the API answered")
        atlas.reward(1.0, name="milestone", scope="session")   # the session, not this step
        return result

A **step** is a LangGraph node run, a LlamaIndex workflow step, an OpenAI Agents turn or tool
call, or a LangChain tool call inside a session. Each step's span carries ``atlas.step.kind``
(and ``atlas.step.parent_id`` when it runs inside another step); the store keeps one ``steps``
row per step (name, input, output, status, error, tokens, rewards) beside its session.

:func:`reward` attaches a ``gen_ai.evaluation.result`` to the innermost step running here (or,
with ``scope="session"``, to the session): an evaluation span that is the step's child, carrying
``atlas.reward.scope=step`` and ``atlas.step.id``. Keep :func:`current_step` to reward a step
after it ended (``atlas.reward(0.5, step=handle)``). Outside a supervised call, :func:`reward`
does nothing (and says so in the log once).

The :class:`StepTracker` span processor (installed by :func:`atlas_middleware.telemetry.configure`)
marks step spans when they start, adds the tokens of model calls inside a step to it, and keeps
the finished steps of recent sessions for the session's reward (RIM on steps, the aggregated
session reward).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanContext, TraceFlags

from atlas_middleware.telemetry import schema as s

__all__ = [
    "StepHandle",
    "StepRecord",
    "StepTracker",
    "current_step",
    "register_resolver",
    "reward",
    "session_steps",
]

log = logging.getLogger("atlas.steps")

_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_OPEN_SPANS = 200_000  # spans tracked at once; beyond it the oldest (never ended) are forgotten
_TRACES = 2_000  # sessions whose finished steps are kept in memory
_STEPS_PER_TRACE = 500


@dataclass(frozen=True, slots=True)
class StepHandle:
    """One step: what :func:`reward` needs to score it, also after it ended."""

    trace_id: str  # 32 hex digits: its session's trace
    span_id: str  # 16 hex digits: its span
    name: str
    kind: str


@dataclass(slots=True)
class StepRecord:
    """A finished step as this process saw it (for the session's reward)."""

    span_id: str
    parent_id: str | None
    name: str
    kind: str
    started_ns: int
    ended_ns: int
    status: str  # ok / error
    error: str | None
    input: str | None
    output: str | None
    rewards: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Step:
    span: Any  # the live SDK span
    kind: str
    outer: int | None  # span id of the enclosing step
    tokens: list[int] = field(default_factory=lambda: [0, 0])


def _name_of(attributes: Any, fallback: str) -> str:
    for key in (s.ATLAS_NODE_NAME, s.ATLAS_STEP_NAME, s.GEN_AI_TOOL_NAME, s.GEN_AI_AGENT_NAME):
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback


_MODEL_CALLS: tuple[object, ...] = (s.OP_CHAT, s.OP_TEXT_COMPLETION)


class StepTracker(SpanProcessor):
    """Marks step spans at their start, sums model-call tokens into the steps they ran in, and
    remembers the finished steps (and step rewards) of recent sessions. Only spans inside a step
    are tracked (a dict entry from start to end); nothing is exported from here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[int, int] = {}  # open span inside a step -> its nearest step
        self._steps: dict[int, _Step] = {}  # open steps
        self._finished: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self._rewards: OrderedDict[int, dict[str, dict[str, float]]] = OrderedDict()

    # --- span processor -----------------------------------------------------------------------
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        try:
            self._started(span)
        except Exception:  # never break a span
            log.debug("step tracking failed", exc_info=True)

    def _started(self, span: Any) -> None:
        # The SDK span's own mapping when it has one: ``span.attributes`` wraps it in a new
        # read-only proxy on every read (0.2 µs, on every span). Only read here.
        attributes = getattr(span, "_attributes", None)
        if attributes is None:
            attributes = span.attributes
        if attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_SESSION:
            return  # a session inside a step starts afresh (its own trace)
        span_id = span.get_span_context().span_id
        parent = span.parent
        outer = self._owner.get(parent.span_id) if parent is not None else None
        kind = s.step_kind(attributes)
        if kind is None:
            if outer is not None:
                with self._lock:
                    self._owner[span_id] = outer
                    self._bound()
            return
        with self._lock:
            self._steps[span_id] = _Step(span, kind, outer)
            self._owner[span_id] = span_id
            self._bound()
        span.set_attribute(s.ATLAS_STEP_KIND, kind)
        if outer is not None:
            span.set_attribute(s.ATLAS_STEP_PARENT_ID, format(outer, "016x"))

    def _bound(self) -> None:
        if len(self._owner) > _OPEN_SPANS:  # spans that never ended must not pile up
            forgotten = next(iter(self._owner))
            del self._owner[forgotten]
            self._steps.pop(forgotten, None)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            context = span.get_span_context()
            # (the SDK's spans always have a context) Most spans were never inside a step.
            if context is not None and context.span_id in self._owner:
                self._ended(span, context)
        except Exception:
            log.debug("step tracking failed", exc_info=True)

    def _ended(self, span: ReadableSpan, context: Any) -> None:
        span_id = context.span_id
        with self._lock:
            owner = self._owner.pop(span_id, None)
            step = self._steps.pop(span_id, None)
        attributes = span.attributes or {}
        if owner is not None and attributes.get(s.GEN_AI_OPERATION_NAME) in _MODEL_CALLS:
            self._count(owner, attributes)
        if step is None:
            return
        with self._lock:
            steps = self._finished.get(context.trace_id)
            if steps is None:
                steps = self._finished[context.trace_id] = []
                while len(self._finished) > _TRACES:
                    self._finished.popitem(last=False)
            if len(steps) < _STEPS_PER_TRACE:
                steps.append(span)

    def _count(self, step: int | None, attributes: Any) -> None:
        tokens_in = _int(attributes.get(s.GEN_AI_USAGE_INPUT_TOKENS))
        tokens_out = _int(attributes.get(s.GEN_AI_USAGE_OUTPUT_TOKENS))
        if tokens_in is None and tokens_out is None:
            return
        updates = []
        with self._lock:
            while step is not None:
                entry = self._steps.get(step)
                if entry is None:
                    break
                entry.tokens[0] += tokens_in or 0
                entry.tokens[1] += tokens_out or 0
                updates.append((entry.span, tuple(entry.tokens)))
                step = entry.outer
        for span, (total_in, total_out) in updates:  # open spans: still writable
            span.set_attribute(s.GEN_AI_USAGE_INPUT_TOKENS, total_in)
            span.set_attribute(s.GEN_AI_USAGE_OUTPUT_TOKENS, total_out)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # --- lookups ------------------------------------------------------------------------------
    def step_of(self, span_id: int) -> Any | None:
        """The live span of the nearest open step at or above span ``span_id``."""
        with self._lock:
            owner = self._owner.get(span_id)
            step = self._steps.get(owner) if owner is not None else None
            return step.span if step is not None else None

    def describe(self, span: Any) -> StepHandle:
        context = span.get_span_context()
        with self._lock:
            step = self._steps.get(context.span_id)
        attributes = span.attributes or {}
        return StepHandle(
            format(context.trace_id, "032x"),
            format(context.span_id, "016x"),
            _name_of(attributes, span.name),
            step.kind if step is not None else str(attributes.get(s.ATLAS_STEP_KIND) or ""),
        )

    def rewarded(self, trace_id: int, span_id: str, name: str, score: float) -> None:
        with self._lock:
            rewards = self._rewards.get(trace_id)
            if rewards is None:
                rewards = self._rewards[trace_id] = {}
                while len(self._rewards) > _TRACES:
                    self._rewards.popitem(last=False)
            rewards.setdefault(span_id, {})[name] = score

    def finished(self, trace_id: int) -> list[StepRecord]:
        """The steps of trace ``trace_id`` that ended in this process, with their rewards given
        here, in the order they ended."""
        with self._lock:
            spans = list(self._finished.get(trace_id, ()))
            rewards = {k: dict(v) for k, v in self._rewards.get(trace_id, {}).items()}
        records = [_record(span) for span in spans]
        for record in records:
            record.rewards = rewards.get(record.span_id, {})
        return records


def _record(span: ReadableSpan) -> StepRecord:
    context = span.get_span_context()
    assert context is not None  # a finished SDK span has one
    attributes = span.attributes or {}
    error = None
    status = span.status
    if status is not None and status.status_code.name == "ERROR":
        error = status.description or str(attributes.get(s.ERROR_TYPE) or "error")
    return StepRecord(
        span_id=format(context.span_id, "016x"),
        parent_id=_text(attributes.get(s.ATLAS_STEP_PARENT_ID)),
        name=_name_of(attributes, span.name),
        kind=str(attributes.get(s.ATLAS_STEP_KIND) or ""),
        started_ns=span.start_time or 0,
        ended_ns=span.end_time or 0,
        status="error" if error is not None else "ok",
        error=error,
        input=_text(
            attributes.get(s.OI_INPUT_VALUE) or attributes.get(s.GEN_AI_TOOL_CALL_ARGUMENTS)
        ),
        output=_text(
            attributes.get(s.OI_OUTPUT_VALUE) or attributes.get(s.GEN_AI_TOOL_CALL_RESULT)
        ),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


_tracker = StepTracker()


def tracker() -> StepTracker:
    """The process's step tracker (the processor :func:`atlas_middleware.telemetry.configure`
    installs)."""
    return _tracker


def session_steps(trace_id: str | int) -> list[StepRecord]:
    """The finished steps of a session (by trace id) as this process saw them."""
    return _tracker.finished(int(trace_id, 16) if isinstance(trace_id, str) else trace_id)


# --- the current step ---------------------------------------------------------------------------
# Frameworks that do not make their step spans current (LangChain callbacks, the OpenAI Agents
# SDK's own span stack) register a resolver: the span (live SDK span) running here, or None.
_resolvers: list[Callable[[], Any]] = []


def register_resolver(resolver: Callable[[], Any]) -> None:
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def _candidates() -> list[Any]:
    found = []
    current = trace.get_current_span()
    if current.get_span_context().is_valid:
        found.append(current)
    for resolver in list(_resolvers):
        try:
            span = resolver()
        except Exception:
            span = None
        if span is not None:
            found.append(span)
    steps = []
    for span in found:
        step = _tracker.step_of(span.get_span_context().span_id)
        if step is not None:
            steps.append(step)
    return steps


def _current_step_span(trace_id: int | None) -> Any | None:
    """The innermost open step running here (the one that started last), in ``trace_id``'s
    trace when given."""
    steps = [
        span
        for span in _candidates()
        if trace_id is None or span.get_span_context().trace_id == trace_id
    ]
    if not steps:
        return None
    return max(steps, key=lambda span: getattr(span, "start_time", 0) or 0)


def current_step() -> StepHandle | None:
    """The innermost step running here (a node, a workflow step, an agent turn, a tool call) of
    the current session, or None. Keep it to reward the step after it ended."""
    from atlas_middleware.supervise import current_session

    session = current_session()
    span = _current_step_span(int(session.trace_id, 16) if session is not None else None)
    return _tracker.describe(span) if span is not None else None


# --- rewards ------------------------------------------------------------------------------------
_logged: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(message + " (logged once)", *args)


def _check(score: Any, name: Any, scope: Any) -> float:
    if isinstance(score, bool):
        score = 1.0 if score else 0.0
    if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0:
        raise ValueError(f"reward score must be a number within [0, 1], got {score!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("reward name must be a non-empty string")
    if scope not in (s.SCOPE_STEP, s.SCOPE_SESSION):
        raise ValueError(f"reward scope must be 'step' or 'session', got {scope!r}")
    return float(score)


def reward(
    score: float,
    *,
    name: str = s.DEFAULT_REWARD_NAME,
    rationale: str | None = None,
    scope: str = s.SCOPE_STEP,
    step: StepHandle | str | None = None,
    session: Any = None,
) -> StepHandle | Any | None:
    """Reward the current step (``scope="step"``, the default) or the current session
    (``scope="session"``) with ``score`` (0..1; ``True``/``False`` mean 1/0).

    ``step``: a step that may have ended (a :class:`StepHandle` from :func:`current_step`, or its
    span id with ``session=`` the session's handle, id or trace id, default the current or
    last session). A later reward with the same ``name`` replaces the earlier one. Inside a session
    but outside any step, a step reward goes to the session (logged once).

    Returns the step (:class:`StepHandle`) or session (:class:`SessionHandle`) rewarded, or None
    outside a supervised call. Raises ``ValueError`` for a score outside [0, 1], an empty name
    or an unknown scope."""
    value = _check(score, name, scope)
    from atlas_middleware.supervise import SessionHandle, current_session, last_session
    from atlas_middleware.telemetry import get_tracer

    if step is not None:
        handle = _step_handle(
            step, session if session is not None else current_session() or last_session()
        )
        _safely(_record_step, get_tracer(), handle, value, name, rationale)
        return handle
    active = current_session()
    if active is None:
        _log_once(
            "outside",
            "atlas.reward() called outside a supervised call: nothing recorded",
        )
        return None
    if scope == s.SCOPE_STEP:
        span = _current_step_span(int(active.trace_id, 16))
        if span is not None:
            handle = _tracker.describe(span)
            _safely(_record_step, get_tracer(), handle, value, name, rationale)
            return handle
        _log_once(
            "no-step",
            "atlas.reward() called in session %s outside any step: recorded on the session",
            active.session_id,
        )
    _safely(_record_session, get_tracer(), active, value, name, rationale)
    assert isinstance(active, SessionHandle)
    return active


def _safely(record: Callable[..., None], *args: Any) -> None:
    """Fail open: a reward that cannot be recorded (a tracing failure) never breaks the step
    that gave it; the log says so once per kind."""
    try:
        record(*args)
    except Exception as exc:
        _log_once(
            f"record:{type(exc).__name__}",
            "atlas.reward() could not be recorded (%s: %s); the agent goes on",
            type(exc).__name__,
            exc,
        )


def _step_handle(step: StepHandle | str, session: Any) -> StepHandle:
    if isinstance(step, StepHandle):
        return step
    if not isinstance(step, str) or not _SPAN_ID.match(step):
        raise ValueError(f"step must be a StepHandle or a span id (16 hex digits), got {step!r}")
    trace_id = session if isinstance(session, str) else getattr(session, "trace_id", None)
    if isinstance(session, str) and session:
        # A session id or a trace id (session ids are 32 hex digits too): this process's
        # sessions, else the configured store's, else a trace id as given.
        from atlas_middleware.config import AtlasConfig
        from atlas_middleware.feedback import resolve_session

        try:
            trace_id = resolve_session(session, AtlasConfig.load()).trace_id
        except LookupError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(trace_id, str) or not _TRACE_ID.match(trace_id):
        raise ValueError(
            "a step given by span id needs its session: pass session= (a SessionHandle, the "
            "session id or the session's trace id)"
        )
    return StepHandle(trace_id, step, "", "")


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def _record_step(
    tracer: Any, handle: StepHandle, score: float, name: str, rationale: str | None
) -> None:
    s.record_evaluation(
        tracer,
        _context(handle.trace_id, handle.span_id),
        name=name,
        score=score,
        explanation=rationale,
        step_id=handle.span_id,
    )
    _tracker.rewarded(int(handle.trace_id, 16), handle.span_id, name, score)


def _record_session(
    tracer: Any, session: Any, score: float, name: str, rationale: str | None
) -> None:
    s.record_evaluation(
        tracer,
        _context(session.trace_id, session.span_id),
        name=name,
        score=score,
        explanation=rationale,
    )
