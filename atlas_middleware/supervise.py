"""``@atlas.supervise``: probe → lane → run → (validate → guided retry) → reward → spans → store.

The call flow is written once, as a generator that yields *steps* (ask the teacher, run the
agent). Two drivers execute the steps: a sync one (the agent runs in the caller's thread; the
teacher's async calls run on the portal loop) and an async one (everything in the caller's
loop). So sync and async agents get the same behaviour from the same code.

Fail-open everywhere: a teacher, judge or store failure is recorded on the session span
(``atlas.failures``) and logged once; the agent's own result or exception is never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

from opentelemetry import context as otel_context
from opentelemetry import trace

from atlas_middleware import driver, plugins, telemetry
from atlas_middleware.config import LANES, config_field_problem, lane_by_threshold
from atlas_middleware.driver import Ask, Call, Failed, Invoke, Outcome, log_once, step_timeout
from atlas_middleware.guidance import no_guidance, use_guidance
from atlas_middleware.models.base import ChatModel, ModelError, ModelUnavailable
from atlas_middleware.prompts import DEFAULT_PROMPTS, TeacherPrompts
from atlas_middleware.rim.judges import reference_match
from atlas_middleware.teacher import Teacher, Validation, Verdict
from atlas_middleware.telemetry import get_tracer, usage
from atlas_middleware.telemetry import schema as s

log = logging.getLogger("atlas")
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
_Q = ParamSpec("_Q")
_R = TypeVar("_R")
_S = TypeVar("_S")
_LESSONS_TTL_S = 30.0


@dataclass(frozen=True)
class SupervisionOptions:
    """Everything one supervised function needs; per-call overrides replace fields."""

    agent: str
    learning_key: str | None = None
    lane: str | None = None  # forced lane; None lets the probe decide
    # Probe even when ``lane`` forces one: the confidence is recorded on the session, the forced
    # lane still runs (shows what the probe would have chosen; calibrates the probe).
    always_probe: bool = False
    fallback_lane: str = "paired"  # when the probe fails
    auto_threshold: float = 0.85
    paired_threshold: float = 0.65
    max_retries: int = 1
    teacher_timeout_s: float = 30.0
    probe_timeout_s: float = 10.0
    # All teacher work of one call (probe, guidance, validation, retry guidance) within this many
    # seconds; a step that would start past it is skipped (fail open). None: no budget.
    teacher_budget_s: float | None = None
    # The teacher endpoint's circuit breaker: open after this many failures in a row (0: no
    # breaker), skip the teacher for the cool-down, then one trial call.
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    supervision_rate: float = 1.0
    reward_rate: float = 1.0
    reward_inline: bool = False
    # Steps (atlas_middleware.rim.steps): RIM on a sample of the steps, and how the session's
    # reward combines the final judge with the step rewards ("final" or "mix").
    step_sample_rate: float = 0.0
    session_reward: str = "final"
    step_weight: float = 0.3
    reference: Any = None  # str, or callable(*args, **kwargs) -> str | None
    # False: the reference is kept for the reward and the session record only; validation in
    # the paired/coach lanes is the verifier's or the teacher's own (no peeking at the key).
    reference_validates: bool = True
    verifier: Callable[[str, str, str | None], Any] | None = None
    task: Any = None  # callable(*args, **kwargs) -> str, or a parameter name
    # Reads the answer text out of the agent's result (adapters whose frameworks return result
    # objects: a RunResult, a graph state); None uses answer_text.
    answer: Callable[[Any], str] | None = None


class TeacherUnavailable(RuntimeError):
    """A teacher step was skipped: its endpoint's circuit breaker is open, or the call's teacher
    budget is spent. The call fails open (the lane that runs is recorded as ``auto``)."""


# Lane steps: the teacher work a paired or coach lane consists of (the probe only chooses one).
_LANE_STEPS = frozenset({"guidance", "validate"})
# A step with less than this left of the budget is not started: it could not finish anyway.
_MIN_STEP_S = 0.05


class _TeacherGate:
    """Per call: the teacher budget, the endpoint's breaker, and which steps ran or were
    skipped (to record the lane that actually ran)."""

    def __init__(self, options: SupervisionOptions, breaker: Any) -> None:
        self.budget_s = options.teacher_budget_s
        self.breaker = breaker
        self.spent = 0.0
        self.attempted: set[str] = set()
        self.skipped: set[str] = set()

    def unavailable(self) -> str | None:
        breaker = self.breaker
        if breaker is not None:
            wait = breaker.retry_in()
            if wait > 0:
                return (
                    f"circuit open for {breaker.endpoint} after {breaker.threshold} failures "
                    f"in a row; next try in {wait:.0f}s"
                )
        if self.budget_s is not None and self.budget_s - self.spent < _MIN_STEP_S:
            return f"teacher budget of {self.budget_s:g}s spent"
        return None

    def ask(
        self,
        step: str,
        make: Callable[[], Awaitable[Any]],
        timeout: float,
        *,
        needs_teacher: bool = True,
    ) -> Generator[Ask, Any, Any]:
        """Yield the step for the driver, or return a Failed at once when the teacher is
        unavailable; ``needs_teacher=False`` for steps answered without it (a verifier)."""
        if not needs_teacher:
            value = yield Ask(step, make, timeout)
            self.attempted.add(step)
            return value
        reason = self.unavailable()
        if reason is not None:
            self.skipped.add(step)
            _stats.teacher_skipped += 1
            return Failed(step, TeacherUnavailable(reason))
        if self.budget_s is not None:
            timeout = min(timeout, self.budget_s - self.spent)
        started = time.monotonic()
        value = yield Ask(step, self._guarded(make), timeout)
        self.spent += time.monotonic() - started
        if isinstance(value, Failed) and isinstance(value.error, TeacherUnavailable):
            self.skipped.add(step)  # another call holds the breaker's trial
        else:
            self.attempted.add(step)
        if (
            self.breaker is not None
            and isinstance(value, Failed)
            and isinstance(value.error, TimeoutError)
        ):
            # Counted here, in the caller's order: the cancelled request may take a while to
            # unwind on the event loop, and the next call must already see this failure.
            self.breaker.failure()
        return value

    def _guarded(self, make: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        breaker = self.breaker
        if breaker is None:
            return make

        async def call() -> Any:
            if not breaker.allow():
                raise TeacherUnavailable(f"circuit half-open for {breaker.endpoint}: trial running")
            try:
                result = await make()
            except ModelError as exc:
                # The endpoint answered (a 4xx): not down. Unavailable ones (5xx, timeouts,
                # refused connections) are ModelUnavailable, a ModelError too.
                if isinstance(exc, ModelUnavailable):
                    breaker.failure()
                else:
                    breaker.success()
                raise
            except asyncio.CancelledError:
                # Timed out (the flow counts that failure) or the caller went away.
                breaker.abandoned()
                raise
            except BaseException:
                breaker.failure()
                raise
            breaker.success()
            return result

        return call

    def lane_ran(self, lane: str) -> str:
        """The lane that actually ran: a paired or coach lane none of whose teacher steps could
        even be attempted ran as auto."""
        if (
            lane in ("paired", "coach")
            and self.skipped & _LANE_STEPS
            and not (self.attempted & _LANE_STEPS)
        ):
            return "auto"
        return lane


@dataclass(slots=True)
class SessionHandle:
    """One supervised session: what :func:`atlas_middleware.feedback` needs to attach a score
    to it later, and the key of its row in the store (``atlas sessions show <session_id>``)."""

    session_id: str
    trace_id: str  # 32 hex digits: the session's trace
    span_id: str  # 16 hex digits: its root span
    agent: str


_active: contextvars.ContextVar[SessionHandle | None] = contextvars.ContextVar(
    "atlas_session", default=None
)
_last: contextvars.ContextVar[SessionHandle | None] = contextvars.ContextVar(
    "atlas_last_session", default=None
)
_last_in_thread = threading.local()
# Recent sessions of this process by session id, so feedback given by id needs no store lookup.
_recent: OrderedDict[str, SessionHandle] = OrderedDict()
_RECENT_SESSIONS = 10_000
_recent_lock = threading.Lock()


def current_session() -> SessionHandle | None:
    """The supervised session this code runs in (inside a supervised function, a node, a tool
    of a supervised agent run), or None outside any."""
    return _active.get()


def last_session() -> SessionHandle | None:
    """The session that the last supervised call made from here ran as: read it right after
    the call returns to keep its id for feedback. "Here" is this task or thread's context; when
    no call was made from it, the last session this thread ran (so a script's
    ``asyncio.run(solve(task))`` followed by ``last_session()`` works too)."""
    return _last.get() or getattr(_last_in_thread, "handle", None)


def recent_session(key: str) -> SessionHandle | None:
    """A session this process ran recently, by session id or trace id."""
    with _recent_lock:
        found = _recent.get(key)
        if found is None and len(key) == 32:  # rare (feedback by trace id): a scan will do
            found = next((h for h in _recent.values() if h.trace_id == key), None)
        return found


def _remember(handle: SessionHandle) -> None:
    with _recent_lock:
        _recent[handle.session_id] = handle
        if len(_recent) > _RECENT_SESSIONS:
            _recent.popitem(last=False)


@dataclass
class SupervisionStats:
    """Process-wide counts of what supervision could not do (each is also logged, once per kind,
    and listed on the affected session spans)."""

    setup_failures: int = 0  # parts of atlas's set-up that failed (store, tracing, teacher, ...)
    internal_failures: int = 0  # atlas's own errors while running a call (the agent ran anyway)
    teacher_skipped: int = 0  # teacher steps skipped: breaker open or teacher budget spent


_stats = SupervisionStats()


def supervision_stats() -> SupervisionStats:
    """A snapshot of :class:`SupervisionStats` for this process."""
    return replace(_stats)


def _setup_failure(stage: str, error: BaseException, consequence: str) -> str:
    """Count and log (once per kind) a failed part of the set-up; the note for session spans."""
    _stats.setup_failures += 1
    note = str(Failed(f"set-up: {stage}", error))
    key = f"set-up:{stage}:{type(error).__name__}"
    driver.warn_once(
        key, "atlas: %s (%s; the agent runs unchanged; logged once)", note, consequence
    )
    return note


def answer_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict | list):
        from atlas_middleware.storage.records import json_dumps

        return json_dumps(result)
    return repr(result)


class Supervisor:
    """The runtime behind one supervised function (built on its first call)."""

    def __init__(
        self,
        options: SupervisionOptions,
        *,
        teacher: ChatModel | None,
        reward: Any = None,
        signature: inspect.Signature | None = None,
        probe_max_tokens: int = 50,
        teacher_max_tokens: int = 160,
        teacher_temperature: float = 0.0,
        teacher_validation: Validation = "auto",
        store_url: str | None = None,
        prompts: TeacherPrompts | None = None,
        setup_failures: list[str] | None = None,
    ) -> None:
        self.options = options
        # What failed while this supervisor was built: listed on every session it records.
        self.setup_failures = list(setup_failures or ())
        self.prompts = prompts or DEFAULT_PROMPTS
        self.teacher = (
            Teacher(
                teacher,
                prompts=self.prompts,
                probe_max_tokens=probe_max_tokens,
                guidance_max_tokens=teacher_max_tokens,
                temperature=teacher_temperature,
                validation=teacher_validation,
            )
            if teacher is not None
            else None
        )
        self.reward = reward
        self.signature = signature
        self._first_text = _first_parameter(signature)
        self.breaker = None
        # Local teachers (embedded, hf:, a vLLM engine) get none: they cannot be down, only slow, and their
        # step timeouts bound that; a breaker would silently turn evaluations' lanes to auto.
        if teacher is not None and options.breaker_failures > 0 and not teacher.runs_locally:
            from atlas_middleware.breaker import breaker_for

            self.breaker = breaker_for(
                teacher.endpoint,
                failures=options.breaker_failures,
                cooldown_s=options.breaker_cooldown_s,
            )
        self.store_url = store_url
        self._store: Any = None
        self._lessons: dict[str, tuple[float, list[str]]] = {}

    # --- learning memory -------------------------------------------------------------------
    def _playbook(self, key: str) -> Any:
        from atlas_middleware.playbook import Playbook
        from atlas_middleware.storage import open_store

        if self._store is None:
            self._store = open_store(self.store_url)
        return Playbook(self._store, key)

    def lessons(self, key: str) -> list[str]:
        """The prompts' standing playbook, then the key's learned lessons (cached briefly: they
        sit on the call path of supervised calls)."""
        standing = self.prompts.lessons()
        return standing + [x for x in self._learned(key) if x not in standing]

    def _learned(self, key: str) -> list[str]:
        cached = self._lessons.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _LESSONS_TTL_S:
            return cached[1]
        try:
            lessons: list[str] = self._playbook(key).lessons()
        except Exception as exc:  # the store is down: supervise without memory
            log_once(Failed("playbook", exc))
            lessons = cached[1] if cached else []
        self._lessons[key] = (now, lessons)
        return lessons

    # --- per-call facts --------------------------------------------------------------------
    def _call(
        self, options: SupervisionOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call:
        task = self._task(options, args, kwargs)
        reference = options.reference
        if callable(reference):
            reference = reference(*args, **kwargs)
        return Call(options, task, None if reference is None else str(reference))

    def _task(
        self, options: SupervisionOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        if callable(options.task):
            return str(options.task(*args, **kwargs))
        first = self._first_text
        if first is not None and args and not kwargs and type(args[0]) is str:
            # The common call, ``agent("task text", ...)``: what binding the signature would give
            # (the first bound value, a str), without binding it on every call.
            name, max_args = first
            if len(args) <= max_args and (options.task is None or options.task == name):
                return args[0]
        if self.signature is not None:
            try:
                bound = self.signature.bind_partial(*args, **kwargs)
            except TypeError:
                bound = None
            if bound is not None:
                values = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
                if isinstance(options.task, str) and options.task in values:
                    return str(values[options.task])
                for value in values.values():
                    if isinstance(value, str):
                        return value
                return answer_text(values)
        return answer_text([*args, kwargs] if kwargs else list(args))

    # --- the flow --------------------------------------------------------------------------
    def flow(self, call: Call) -> Generator[Ask | Invoke, Any, Outcome]:
        o = call.options
        failures: list[str] = list(self.setup_failures)
        gate = _TeacherGate(o, self.breaker)

        def failed(value: Any) -> bool:
            if isinstance(value, Failed):
                failures.append(str(value))
                log_once(value)
                return True
            return False

        with _Session(call, failures) as session:
            root = session.root
            teacher = self.teacher
            supervised = teacher is not None and (
                o.supervision_rate >= 1.0 or random.random() < o.supervision_rate
            )
            lane: str | None = o.lane if o.lane in LANES else None
            if lane is None and not supervised:
                lane = "auto"
            if lane in ("paired", "coach") and teacher is None:
                failures.append(f"lane {lane}: no teacher configured, ran auto")
                lane = "auto"
            confidence = None
            lessons: list[str] = []
            forced = lane
            # A resumed session (parent set) keeps the lane it began with: no second probe.
            probe = lane is None or (
                o.always_probe and supervised and teacher is not None and call.parent is None
            )
            key = o.learning_key or o.agent
            if probe or (teacher is not None and lane in ("paired", "coach")):
                # The playbook reaches the teacher's guidance in a forced lane too.
                lessons = self.lessons(key)
            if probe:
                assert teacher is not None
                context = {"agent": o.agent, "learning_key": key, "lessons": lessons}
                value = _plugin(failures, "probe plugin", plugins.probe, call.task, context)
                if value is None:
                    value = yield from gate.ask(
                        "probe",
                        lambda: teacher.probe(call.task, lessons),
                        step_timeout("probe", o),
                    )
                if failed(value) or value is None:
                    # No confidence is recorded rather than a guessed one: "unparsed" when the
                    # reply had no confidence field, "failed" when the call itself failed.
                    status = s.PROBE_UNPARSED if value is None else s.PROBE_FAILED
                    root.set_attribute(s.ATLAS_PROBE_STATUS, status)
                    if value is None:
                        failures.append("probe: no confidence in the teacher's reply")
                    lane = forced or o.fallback_lane
                else:
                    confidence = float(value)
                    root.set_attribute(s.ATLAS_PROBE_CONFIDENCE, confidence)
                    if forced is None:
                        lane = _plugin(
                            failures,
                            "lane plugin",
                            plugins.plugin_lane,
                            confidence,
                            call.task,
                            context,
                        )
                        if lane is None:
                            lane = threshold_lane(confidence, o)
            assert lane is not None  # a probe ran whenever no lane was set
            root.set_attribute(s.ATLAS_LANE, lane)
            call.lessons = lessons

            guidance = None
            if lane == "coach":
                assert teacher is not None
                value = yield from gate.ask(
                    "guidance",
                    lambda: teacher.guidance(call.task, lessons),
                    step_timeout("guidance", o),
                )
                if not failed(value) and value:
                    guidance = value

            result = yield Invoke(_with_lessons(guidance, lessons))
            read = session.read
            answer = read(result)
            retries = 0
            if lane in ("paired", "coach"):
                verdict = yield from gate.ask(
                    "validate",
                    lambda: self._validate(call, answer, guidance),
                    step_timeout("validate", o),
                    needs_teacher=self._validates_with_teacher(call),
                )
                checked = not failed(verdict)
                if checked:
                    root.set_attributes(
                        {
                            s.ATLAS_VALIDATION_VALID: verdict.valid,
                            s.ATLAS_VALIDATION_SOURCE: verdict.source,
                        }
                    )
                if checked and not verdict.valid and lane == "paired" and o.max_retries > 0:
                    assert teacher is not None
                    value = yield from gate.ask(
                        "guidance",
                        lambda: teacher.guidance(call.task, attempt=answer, problem=verdict.reason),
                        step_timeout("guidance", o),
                    )
                    if not failed(value) and value:
                        retries = 1
                        try:
                            retried = yield Invoke(_with_lessons(value, lessons))
                        except Exception as exc:  # the agent failed only because we retried it
                            failed(Failed("guided retry", exc))
                        else:
                            result, answer, guidance = retried, read(retried), value
            ran = gate.lane_ran(lane)
            if ran != lane:  # the store keeps the lane that ran, and why it was not the one chosen
                lane = ran
                root.set_attribute(s.ATLAS_LANE, lane)
                root.set_attribute(s.ATLAS_LANE_REASON, s.LANE_REASON_TEACHER_UNAVAILABLE)
            return session.close(result, answer, lane, guidance, retries)

    def _validates_with_teacher(self, call: Call) -> bool:
        o = call.options
        return o.verifier is None and not (call.reference is not None and o.reference_validates)

    async def _validate(self, call: Call, answer: str, guidance: str | None = None) -> Verdict:
        verifier = call.options.verifier
        if verifier is not None:
            ok = verifier(call.task, answer, call.reference)
            return Verdict(bool(ok), "" if ok else "the verifier rejected the answer", "verifier")
        if call.reference is not None and call.options.reference_validates:
            ok = bool(reference_match(call.task, answer, call.reference))
            return Verdict(ok, "" if ok else "does not match the reference", "reference")
        assert self.teacher is not None
        # The coach lane's guidance is the teacher's plan for this task: compute validation
        # reuses it rather than asking again.
        return await self.teacher.validate(call.task, answer, plan=guidance)

    # --- rewards ---------------------------------------------------------------------------
    def reward_job(self, outcome: Outcome) -> Callable[[], Awaitable[None]] | None:
        o = outcome.call.options
        if self.reward is None or (o.reward_rate < 1.0 and random.random() >= o.reward_rate):
            return None
        reward = self.reward
        tracer = get_tracer()  # the session's: its reward lands where the session did

        async def judge() -> None:
            call = outcome.call
            # With a reference and no verifier, accuracy is a match against the reference: exact
            # and cheap, and it holds even when the judge model is too small to answer in form.
            verifier = o.verifier
            if verifier is None and call.reference is not None:
                verifier = reference_match
            # The judges' and the lesson's model calls join the session's trace (under its root,
            # which has ended: OpenTelemetry allows that), not traces of their own.
            token = otel_context.attach(
                trace.set_span_in_context(trace.NonRecordingSpan(outcome.session))
            )
            try:
                with telemetry.pinned(tracer):
                    with usage.acting(s.ROLE_JUDGE):
                        result = await reward.evaluate(
                            call.task, outcome.answer, call.reference, verifier=verifier
                        )
                    from atlas_middleware.rim import record

                    record(result, outcome.session)
                    from atlas_middleware.rim.steps import judge_steps

                    await judge_steps(reward, call, outcome.session, result)
                    if result.score is None or self.teacher is None:
                        return
                    # Learning memory: account the lessons this session was shown, and let a
                    # clearly good or bad session teach a new one.
                    key = o.learning_key or o.agent
                    try:
                        playbook = self._playbook(key)
                        playbook.record(call.lessons, result.score)
                    except Exception as exc:  # the store is down or never opened: no memory
                        log_once(Failed("playbook", exc))
                        return
                    with usage.acting(s.ROLE_TEACHER, "lesson"):
                        await playbook.learn(
                            self.teacher.model,
                            task=call.task,
                            answer=outcome.answer,
                            reward=result.score,
                            trace_id=format(outcome.session.trace_id, "032x"),
                        )
                    self._lessons.pop(key, None)
            finally:
                otel_context.detach(token)

        return judge

    # --- the auto lane, when nothing of it needs the teacher ------------------------------------
    def _auto_only(self, o: SupervisionOptions) -> bool:
        """Whether the flow would run this call's auto lane with no teacher step, plugin or
        random draw: no teacher and no lane that needs one, or the auto lane forced, not probed
        and supervised at a rate of 1. Such a call runs in an :class:`_AutoSession`, without
        the flow's driver (there is nothing to drive)."""
        if self.teacher is None:
            return o.lane not in ("paired", "coach")
        return o.lane == "auto" and not o.always_probe and o.supervision_rate >= 1.0

    # --- drivers ---------------------------------------------------------------------------
    # Both drivers fail open for atlas's own errors too: if anything of atlas's raises while a
    # call is being driven (a span that cannot be made, a broken plugin hook, a bug), the agent's
    # outcome is what the caller gets: its result if it ran, its exception if it raised, and a
    # plain call of the agent if atlas failed before running it.
    def run_sync(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: SupervisionOptions,
    ) -> Any:
        agent = _AgentOutcome()
        try:
            call = self._call(options, args, kwargs)
            if self._auto_only(options):
                with _AutoSession(call, list(self.setup_failures), agent) as session:
                    outcome = session.done(agent.returned(_invoke(fn, args, kwargs, _AUTO)))
            else:
                invoke = functools.partial(_invoke, fn, args, kwargs)
                outcome = driver.run(self.flow(call), options, invoke, agent=agent)
            agent.final(outcome.result)
            if self.reward is not None:
                driver.submit(self.reward_job(outcome), options)
            return outcome.result
        except Exception as exc:
            if exc is agent.error:
                raise
            result = agent.recover(exc)
            return fn(*args, **kwargs) if result is _RUN_AGENT else result

    async def run_async(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: SupervisionOptions,
    ) -> Any:
        agent = _AgentOutcome()
        try:
            call = self._call(options, args, kwargs)
            if self._auto_only(options):
                async with _AutoSession(call, list(self.setup_failures), agent) as session:
                    outcome = session.done(agent.returned(await _ainvoke(fn, args, kwargs, _AUTO)))
            else:
                invoke = functools.partial(_ainvoke, fn, args, kwargs)
                outcome = await driver.arun(self.flow(call), options, invoke, agent=agent)
            agent.final(outcome.result)
            if self.reward is not None:
                await driver.asubmit(self.reward_job(outcome), options)
            return outcome.result
        except Exception as exc:
            if exc is agent.error:
                raise
            result = agent.recover(exc)
            return await fn(*args, **kwargs) if result is _RUN_AGENT else result


def _invoke(fn: Callable[..., Any], args: Any, kwargs: Any, step: Invoke) -> Any:
    """Run the agent with the step's guidance as the current guidance."""
    guidance = step.guidance
    if guidance is None and no_guidance():
        return fn(*args, **kwargs)  # nothing to set or clear (the auto lane)
    with use_guidance(guidance):
        return fn(*args, **kwargs)


async def _ainvoke(fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any, step: Invoke) -> Any:
    """:func:`_invoke` for an async agent."""
    guidance = step.guidance
    if guidance is None and no_guidance():
        return await fn(*args, **kwargs)
    with use_guidance(guidance):
        return await fn(*args, **kwargs)


_AUTO = Invoke(None)  # the auto lane's one step
_SessionT = TypeVar("_SessionT", bound="_Session")


class _Session:
    """The session one supervised call runs in, entered alike by the flow and by the auto lane
    run without it: its root span (current while it runs), its usage tally (on the span when it
    ends) and its handle (:func:`current_session` while it runs, :func:`last_session` after).
    ``lane``: the lane when it is known before the span starts (then among its first
    attributes). Like ``with (span, tally, handle):``, in one object: it is on every call's path."""

    __slots__ = (
        "_active",
        "_span",
        "_usage",
        "_usage_token",
        "call",
        "content",
        "failures",
        "handle",
        "lane",
        "root",
    )

    def __init__(self, call: Call, failures: list[str], lane: str | None = None) -> None:
        self.call, self.failures, self.lane = call, failures, lane

    def __enter__(self: _SessionT) -> _SessionT:
        call = self.call
        o = call.options
        first: dict[str, Any] = {}
        if self.failures:  # set-up failures, recorded even if the agent raises (the end updates it)
            first[s.ATLAS_FAILURES] = self.failures
        if call.reference is not None:
            # Kept with the session so training can score guidance against it later.
            first[s.ATLAS_REFERENCE] = call.reference
        if self.lane is not None:
            first[s.ATLAS_LANE] = self.lane
        self.content = content = s.capture_content()  # once per call: span and final answer
        self._span = span = s.session_span(
            get_tracer(),
            agent=o.agent,
            session_id=call.session_id,
            task=call.task,
            learning_key=o.learning_key or o.agent,
            parent=call.parent,
            content=content,
            extra=first,
        )
        self.root = root = span.__enter__()
        try:
            # The usage tally (on the span when the session ends, if a call was counted), then
            # the handle (current_session() while it runs, last_session() after): kept here
            # rather than in two context managers of their own, as this is every call's path.
            self._usage = tally = usage.SessionUsage()
            self._usage_token = usage.open_tally(tally)
            try:
                context = root.get_span_context()
                self.handle = handle = SessionHandle(
                    call.session_id,
                    format(context.trace_id, "032x"),
                    format(context.span_id, "016x"),
                    o.agent,
                )
                _remember(handle)
                self._active = _active.set(handle)
            except BaseException:
                self._close_usage()
                raise
        except BaseException as exc:
            span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _close_usage(self) -> None:
        tally = self._usage
        if usage.close_tally(tally, self._usage_token):
            self.root.set_attributes(tally.attributes())

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            try:
                handle = self.handle
                # A stream abandoned mid-run may be closed from another context (by the GC):
                # the session still ends, only the variable cannot be reset there.
                # (Not contextlib.suppress: this is on every call's path.)
                try:  # noqa: SIM105
                    _active.reset(self._active)
                except ValueError:
                    pass
                _last.set(handle)
                _last_in_thread.handle = handle
            finally:
                self._close_usage()
        except BaseException as failure:  # atlas's own: the span ends with it
            self._span.__exit__(type(failure), failure, failure.__traceback__)
            raise
        self._span.__exit__(exc_type, exc, tb)

    def read(self, result: Any) -> str:
        """The answer text of the agent's ``result``."""
        return (self.call.options.answer or answer_text)(result)

    def close(
        self, result: Any, answer: str, lane: str, guidance: str | None, retries: int
    ) -> Outcome:
        """The session's outcome. Its closing attributes go on the span in one call (one lock,
        one pass), the final answer with them; ``atlas_session_end`` plugins hear of it first."""
        call, root, failures = self.call, self.root, self.failures
        closing: dict[str, Any] = {s.ATLAS_GUIDANCE: guidance} if guidance else {}
        closing[s.ATLAS_RETRIES] = retries
        if plugins.has_session_end():
            o = call.options
            _plugin(
                failures,
                "session_end plugin",
                plugins.session_end,
                plugins.SessionEnd(
                    session_id=call.session_id,
                    trace_id=format(root.get_span_context().trace_id, "032x"),
                    agent=o.agent,
                    learning_key=o.learning_key or o.agent,
                    lane=lane,
                    task=call.task,
                    answer=answer,
                    guidance=guidance,
                    retries=retries,
                    failures=tuple(failures),
                ),
            )
        if failures:
            closing[s.ATLAS_FAILURES] = failures
        s.set_final_answer(root, answer, content=self.content, first=closing)
        return Outcome(result, answer, root.get_span_context(), call)


class _AutoSession(_Session):
    """The flow's auto lane as one ``with`` block (see :meth:`Supervisor._auto_only`): the agent
    runs inside the session, which ends as the flow's would. As the driver does, it keeps the
    agent's exception (one raised before the agent returned is the agent's) and lets late usage
    reports settle once the agent has run (at the block's end, before the tally goes on the span;
    not after a BaseException)."""

    __slots__ = ("agent",)

    def __init__(self, call: Call, failures: list[str], agent: driver.AgentLog) -> None:
        super().__init__(call, failures, "auto")
        self.agent = agent

    def done(self, result: Any) -> Outcome:
        return self.close(result, self.read(result), "auto", None, 0)

    def _ran(self, exc: BaseException | None) -> bool:
        """Whether to settle: the agent ran to a result or an exception (kept as the agent's)."""
        if exc is None:
            return True
        if not isinstance(exc, Exception):
            return False
        if not self.agent.ran:
            self.agent.raised(exc)
        return True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._ran(exc):
            usage.settle()  # usage reported late (litellm) joins this session
        super().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> _AutoSession:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._ran(exc):
            await usage.asettle()
        super().__exit__(exc_type, exc, tb)


_NOTHING: Any = object()
_RUN_AGENT: Any = object()  # atlas failed before the agent ran: run it without atlas


class _AgentOutcome(driver.AgentLog):
    """The agent's log, plus how a call recovers from atlas's own failure."""

    def __init__(self) -> None:
        super().__init__()
        self.result = _NOTHING  # the agent's latest result (the call's, once decided)

    def final(self, result: Any) -> None:
        self.returned(result)

    def recover(self, failure: Exception) -> Any:
        """After atlas's own ``failure``: the agent's exception or its result (when it ran),
        else ``_RUN_AGENT``: the caller runs it plainly."""
        _stats.internal_failures += 1
        log_once(Failed("supervise (internal)", failure))
        if self.error is not None:
            raise self.error
        return self.result if self.ran else _RUN_AGENT


def _first_parameter(signature: inspect.Signature | None) -> tuple[str, float] | None:
    """(name, how many positional arguments bind) when the first parameter takes the first
    positional argument and is not ``self``/``cls``, else None."""
    if signature is None:
        return None
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional or params[0].name in ("self", "cls"):
        return None
    max_args: float = 0
    for param in params:
        if param.kind in positional:
            max_args += 1
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            max_args = float("inf")
            break
        else:
            break
    return params[0].name, max_args


def threshold_lane(confidence: float, options: SupervisionOptions) -> str:
    """The lane the probe's confidence gives by the options' thresholds (no plugin, no force)."""
    return lane_by_threshold(confidence, options.auto_threshold, options.paired_threshold)


# The config field that checks each keyword option: one source of truth for its type and range.
_CHECKED_AS: dict[str, tuple[str, str]] = {
    "lane": ("lanes", "forced_lane"),
    "fallback_lane": ("lanes", "fallback_lane"),
    "auto_threshold": ("lanes", "auto_threshold"),
    "paired_threshold": ("lanes", "paired_threshold"),
    "max_retries": ("lanes", "max_retries"),
    "probe_timeout_s": ("lanes", "probe_timeout_s"),
    "teacher_timeout_s": ("teacher", "timeout_s"),
    "teacher_budget_s": ("teacher", "budget_s"),
    "breaker_failures": ("teacher", "breaker_failures"),
    "breaker_cooldown_s": ("teacher", "breaker_cooldown_s"),
    "supervision_rate": ("supervision", "rate"),
    "reward_rate": ("rim", "reward_rate"),
    "step_sample_rate": ("rim", "step_sample_rate"),
    "session_reward": ("rim", "session_reward"),
    "step_weight": ("rim", "step_weight"),
}


def check_options(
    options: Mapping[str, Any],
    where: str = "supervise()",
    also: Iterable[str] = (),
    noun: str = "option",
) -> None:
    """Options given as keywords (to ``supervise``, ``.options()``, the integrations' wrappers,
    which may accept ``also`` names of their own) get the config's checks: an unknown name is a
    TypeError, a bad value a ValueError, each naming what is valid."""
    known = set(SupervisionOptions.__dataclass_fields__) - {"agent"} | set(also)
    unknown = set(options) - known
    if unknown:
        raise TypeError(
            f"{where} got unknown {noun}(s) {', '.join(sorted(unknown))}; "
            f"options: {', '.join(sorted(known))}"
        )
    for name, value in options.items():
        checked = _CHECKED_AS.get(name)
        if checked is None:
            continue
        section, field_name = checked
        if name == "lane" and value is not None and value not in LANES:
            raise ValueError(
                f"{where}: lane={value!r} is not a lane; choose one of {', '.join(LANES)} "
                "(or None to let the probe decide)"
            )
        problem = config_field_problem(section, field_name, value)
        if problem:
            raise ValueError(f"{where}: {name}={value!r}: {problem}")
    auto, paired = options.get("auto_threshold"), options.get("paired_threshold")
    if auto is not None and paired is not None and paired > auto:
        raise ValueError(
            f"{where}: paired_threshold ({paired:g}) must not exceed auto_threshold ({auto:g})"
        )


def _with_lessons(guidance: str | None, lessons: list[str]) -> str | None:
    """The student's guidance: the teacher's, followed by the learning key's lessons. Only when
    the teacher guides (coach lane, guided retry): the auto lane stays the student alone."""
    if not guidance or not lessons:
        return guidance
    return guidance + "\n\nLessons from earlier sessions:\n" + "\n".join(f"- {x}" for x in lessons)


def _plugin(failures: list[str], what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A plugin hook's answer, or None when it raises (recorded; plugins fail open too)."""
    try:
        return fn(*args)
    except Exception as exc:
        failure = Failed(what, exc)
        failures.append(str(failure))
        log_once(failure)
        return None


class Supervised(Protocol[P, R_co]):
    """What ``@supervise`` returns, for type checkers: the decorated function's own signature (an
    async function's result is still awaited), plus ``options(**overrides)`` for one call and
    ``supervisor()``. On an instance, a supervised method binds ``self`` as any method does."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def options(self, **overrides: Any) -> Callable[P, R_co]: ...

    def supervisor(self) -> Supervisor: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Supervised[P, R_co]: ...

    @overload
    def __get__(
        self: Supervised[Concatenate[_S, _Q], _R], instance: _S, owner: type[Any], /
    ) -> Callable[_Q, _R]: ...


@overload
def supervise(
    fn: Callable[P, R],
    /,
    *,
    agent: str | None = None,
    teacher: ChatModel | str | None = None,
    reward: Any = None,
    config: Any = None,
    prompts: Any = None,
    **options: Any,
) -> Supervised[P, R]: ...


@overload
def supervise(
    fn: None = None,
    /,
    *,
    agent: str | None = None,
    teacher: ChatModel | str | None = None,
    reward: Any = None,
    config: Any = None,
    prompts: Any = None,
    **options: Any,
) -> Callable[[Callable[P, R]], Supervised[P, R]]: ...


def supervise(
    fn: Callable[P, R] | None = None,
    /,
    *,
    agent: str | None = None,
    teacher: ChatModel | str | None = None,
    reward: Any = None,
    config: Any = None,
    prompts: Any = None,
    **options: Any,
) -> Supervised[P, R] | Callable[[Callable[P, R]], Supervised[P, R]]:
    """Make ``fn`` a supervised, rewarded, traced session — same signature, same result type.

    ``@supervise`` or ``@supervise(agent="calc", lane="paired", reference=..., teacher=...)``.
    Works on sync and async functions and methods. Defaults come from ``config`` (an
    :class:`~atlas_middleware.config.AtlasConfig`; by default ``AtlasConfig.load()``: environment
    and ``$ATLAS_CONFIG_FILE``); keyword arguments win. ``teacher``: a ChatModel or a model spec;
    ``reward``: a RIMReward, ``False`` for none, or None for the config's RIM. ``prompts``: a
    :class:`~atlas_middleware.prompts.TeacherPrompts` or the path of a prompts file / an
    ``atlas optimize --out`` directory (None: ``teacher.prompts`` of the config, else the
    built-in prompts). Per call,
    ``fn.options(lane="coach", reference="42")(*args)`` overrides any option.
    See docs/concepts.md.
    """
    check_options(options)

    def decorate(func: Callable[P, R]) -> Supervised[P, R]:
        name = agent or func.__qualname__
        state: dict[str, Supervisor] = {}
        signature = _signature(func)

        def supervisor() -> Supervisor:
            runtime = state.get("runtime")
            if runtime is None:  # built on first use: decorating must not load any model
                try:
                    runtime = build_supervisor(
                        name, options, teacher, reward, config, signature, prompts
                    )
                except Exception as exc:  # a bug: still never the agent's problem
                    note = _setup_failure("supervisor", exc, "calls run unsupervised")
                    runtime = Supervisor(
                        SupervisionOptions(agent=name, lane="auto"),
                        teacher=None,
                        reward=None,
                        signature=signature,
                        setup_failures=[note],
                    )
                state["runtime"] = runtime
            return runtime

        def chosen(overrides: dict[str, Any]) -> SupervisionOptions:
            runtime = supervisor()
            return replace(runtime.options, **overrides) if overrides else runtime.options

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                runtime = supervisor()
                return await runtime.run_async(func, args, kwargs, runtime.options)

            wrapper: Any = async_wrapper

            def with_options_async(**overrides: Any) -> Callable[..., Awaitable[Any]]:
                check_options(overrides, "options()")

                async def call(*args: Any, **kwargs: Any) -> Any:
                    return await supervisor().run_async(func, args, kwargs, chosen(overrides))

                return call

            wrapper.options = with_options_async
        else:

            @functools.wraps(func)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                runtime = supervisor()
                return runtime.run_sync(func, args, kwargs, runtime.options)

            wrapper = sync_wrapper

            def with_options(**overrides: Any) -> Callable[..., Any]:
                check_options(overrides, "options()")
                return lambda *args, **kwargs: supervisor().run_sync(
                    func, args, kwargs, chosen(overrides)
                )

            wrapper.options = with_options
        wrapper.supervisor = supervisor
        return cast("Supervised[P, R]", wrapper)

    return decorate(fn) if fn is not None else decorate


def build_supervisor(
    agent: str,
    explicit: dict[str, Any],
    teacher: ChatModel | str | None,
    reward: Any,
    config: Any,
    signature: inspect.Signature | None,
    prompts: Any = None,
) -> Supervisor:
    """The runtime of one supervised function. Never raises for atlas's own set-up: each part
    that fails (config, store, tracing, teacher, reward, prompts) is left out, counted, logged
    once and listed on the sessions' spans, and the function runs as it would without it."""
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.models import model_from_settings

    setup: list[str] = []
    cfg = config
    defaults_only = False
    if cfg is None:
        try:
            cfg = AtlasConfig.load()
        except Exception as exc:
            setup.append(
                _setup_failure("config", exc, "defaults used, no teacher or reward from config")
            )
            cfg, defaults_only = AtlasConfig.model_construct(), True
    lanes, rim = cfg.lanes, cfg.rim
    from atlas_middleware.portal import set_drain_seconds

    set_drain_seconds(cfg.telemetry.drain_s)
    _set_up_tracing(cfg, setup)
    teacher_model: ChatModel | None = None
    try:
        if teacher is not None:
            teacher_model = _resolve_teacher(teacher)
        elif not defaults_only:
            teacher_model = model_from_settings(cfg.teacher, teacher=True)
    except Exception as exc:
        setup.append(_setup_failure("teacher", exc, "no teacher: calls run the auto lane"))
    defaults = {
        "teacher_budget_s": cfg.teacher.budget_s
        if cfg.teacher.budget_s is not None
        else default_teacher_budget(teacher_model),
        "breaker_failures": cfg.teacher.breaker_failures,
        "breaker_cooldown_s": cfg.teacher.breaker_cooldown_s,
        "lane": lanes.forced_lane,
        "fallback_lane": lanes.fallback_lane,
        "auto_threshold": lanes.auto_threshold,
        "paired_threshold": lanes.paired_threshold,
        "max_retries": lanes.max_retries,
        "teacher_timeout_s": cfg.teacher.timeout_s,
        "probe_timeout_s": lanes.probe_timeout_s,
        "supervision_rate": cfg.supervision.rate,
        "reward_rate": rim.reward_rate,
        "reward_inline": rim.mode == "inline",
        "step_sample_rate": rim.step_sample_rate,
        "session_reward": rim.session_reward,
        "step_weight": rim.step_weight,
    }
    options = SupervisionOptions(agent=agent, **{**defaults, **explicit})
    judge: Any = None
    try:
        if reward is not False and reward is not None:
            judge = reward
        elif reward is None and not defaults_only:
            from atlas_middleware.rim import RIMReward

            small = (
                model_from_settings(cfg.teacher, rim.small_model)
                if rim.small_model
                else judge_model(teacher_model)
            )
            large = model_from_settings(cfg.teacher, rim.large_model) if rim.large_model else None
            if small is not None:  # no judge model: the teacher's failure is already reported
                judge = RIMReward.from_settings(rim, small, large)
    except Exception as exc:
        setup.append(_setup_failure("reward", exc, "sessions get no reward"))
    chosen_prompts = None
    try:
        from atlas_middleware.prompts import as_prompts

        chosen_prompts = as_prompts(prompts if prompts is not None else cfg.teacher.prompts)
    except Exception as exc:
        setup.append(_setup_failure("prompts", exc, "the built-in teacher prompts are used"))
    return Supervisor(
        options,
        teacher=teacher_model,
        reward=judge,
        signature=signature,
        probe_max_tokens=lanes.probe_max_tokens,
        teacher_max_tokens=cfg.teacher.max_tokens,
        teacher_temperature=cfg.teacher.temperature,
        teacher_validation=cfg.teacher.validation,
        store_url=cfg.storage.url,
        prompts=chosen_prompts,
        setup_failures=setup,
    )


def configure_telemetry(cfg: Any) -> list[str]:
    """Set up atlas's tracing from an AtlasConfig, unless it already is (see
    :func:`atlas_middleware.telemetry.ensure_configured`). Never raises: returns what failed
    (each logged once), the spans of a part that failed are dropped."""
    setup: list[str] = []
    _set_up_tracing(cfg, setup)
    return setup


REMOTE_TEACHER_BUDGET_S = 8.0


def judge_model(teacher: ChatModel | None) -> ChatModel | None:
    """The model the sessions' judges use when the config names none: the teacher's, except for
    a trained teacher whose adapter learned guidance only (it offers its base model)."""
    base = getattr(teacher, "judge_model", None)
    return base() if callable(base) else teacher


def default_teacher_budget(teacher: ChatModel | None) -> float | None:
    """The teacher budget when the config sets none: a few seconds for a teacher behind a
    network (which can hang or refuse), none for one computing on this machine (embedded,
    ``hf:``, a vLLM engine: CPU generation is slow but cannot hang on a socket; its step
    timeouts bound it)."""
    if teacher is None or teacher.runs_locally:
        return None
    return REMOTE_TEACHER_BUDGET_S


def _set_up_tracing(cfg: Any, setup: list[str]) -> None:
    """Send atlas's spans where the config says, once per process. A store that cannot open or
    an exporter that cannot be built leaves tracing on with no exporter: spans are dropped, the
    failure is reported, and the next supervised function does not try again."""
    from atlas_middleware import telemetry

    if telemetry.is_configured():
        return
    try:
        s.set_capture_content(cfg.telemetry.capture_content)
    except Exception as exc:  # pragma: no cover - a plain flag; kept for completeness
        setup.append(_setup_failure("tracing", exc, "content capture left as it was"))
    exporter = cfg.telemetry.exporter
    store: Any = cfg.storage.url
    # An empty OTEL_TRACES_EXPORTER means "not set" (the OpenTelemetry convention).
    if exporter in (None, "atlas") and not os.environ.get("OTEL_TRACES_EXPORTER", "").strip():
        try:
            from atlas_middleware.storage import open_store

            # The store that derives sessions applies the config's drift policy.
            store = open_store(cfg.storage.url, drift_policy=cfg.review.policy())
        except Exception as exc:
            setup.append(_setup_failure("store", exc, "spans are not exported"))
            telemetry.ensure_configured(exporter="none")
            return
    try:
        telemetry.ensure_configured(
            exporter=exporter,
            service_name=cfg.telemetry.service_name,
            store=store,
            retry_queue_spans=cfg.telemetry.retry_queue_spans,
            spool_dir=cfg.telemetry.spool_dir,
            spool_max_mb=cfg.telemetry.spool_max_mb,
        )
    except Exception as exc:
        setup.append(_setup_failure("tracing", exc, "spans are not exported"))
        if hasattr(store, "close"):
            with contextlib.suppress(Exception):
                store.close()
        telemetry.ensure_configured(exporter="none")


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _resolve_teacher(model: ChatModel | str | None) -> ChatModel | None:
    if model is None or isinstance(model, ChatModel):
        return model
    from atlas_middleware.models import build_model  # lazy: backends import heavy libraries

    return build_model(model, teacher=True)
