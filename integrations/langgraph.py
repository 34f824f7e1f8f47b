"""LangGraph: supervise a compiled graph (each run is one session) or a single node.

    from atlas_middleware.integrations.langgraph import supervise_graph, supervise_node

    app = supervise_graph(builder.compile(checkpointer=InMemorySaver()), agent="support")
    app.invoke({"messages": [("user", "Where is my order?")]}, {"configurable": {"thread_id": "1"}})

    builder.add_node("solve", supervise_node(solve, agent="solver"))   # or @supervise_node(...)

Each ``invoke``/``ainvoke``/``stream``/``astream`` of a supervised graph is one session of
:mod:`atlas_middleware.supervise` (probe → lane → guidance → run → validation → one guided
retry → RIM reward), with the graph as the student:

- **Guidance** enters the run's input as a ``SystemMessage`` (id ``atlas-guidance``) at the head
  of the input ``messages`` when the graph's state has a ``messages`` channel; on a thread it is
  the one such message and stays first (replaced by id, removed on unguided runs, moved to the
  head by a rewrite when the thread does not start with it). It is always available to nodes
  through :func:`atlas_middleware.guidance` as well.
- **Task**: the last human message of the input (or of the thread's state), or ``task=`` (a
  string key of the input, or a callable receiving the input). **Answer**: the last AI message
  of the final state, or ``answer=`` (a callable receiving the final state).
- **Spans**: the session root ``invoke_agent {agent}`` stands for the graph; every node is a
  ``node {name}`` child of it, model and tool calls inside nodes nest below (see
  :mod:`atlas_middleware.integrations.langchain`).
- **Checkpointers and interrupts**: a run that stops at ``interrupt()`` ends its segment of the
  session (``atlas.interrupted``, no validation, no reward yet). Resuming the thread
  (``Command(resume=...)`` or ``None`` as input) continues the *same* session: same session id,
  same trace (the resumed segment's root is a child of the first one), the lane and guidance
  chosen at the start, then validation and the reward on the final state. The session's ids
  travel in the checkpoint metadata (``atlas_session_id``, ``atlas_session_span``), so a resume
  from another process, hours later, continues the same session row.
- **Paired retry on a thread** forks from the checkpoint the run started from, so the retry
  does not see the rejected attempt; the thread's latest state is the retry's.
- **Streams** yield every chunk as the graph produces it. Nothing can be taken back once
  yielded, so a streamed session never retries: ``coach`` guidance comes up front, ``paired``
  validates (and is rewarded) without the retry.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from atlas_middleware.integrations._common import require
from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags

from atlas_middleware import driver
from atlas_middleware.driver import Ask, Call, Failed, Invoke, Outcome, log_once
from atlas_middleware.guidance import rendered_guidance, use_guidance
from atlas_middleware.supervise import (
    SupervisionOptions,
    Supervisor,
    answer_text,
    build_supervisor,
    check_options,
    supervise,
)
from atlas_middleware.teacher import Verdict
from atlas_middleware.telemetry import schema as s

require("langgraph", "langgraph")  # first: its hint names the extra that also brings LangChain

from atlas_middleware.integrations.langchain import traced  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    BaseMessage,
    RemoveMessage,
    SystemMessage,
    convert_to_messages,
)
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages  # noqa: E402
from langgraph.types import Command  # noqa: E402

__all__ = ["GUIDANCE_MESSAGE_ID", "SupervisedGraph", "supervise_graph", "supervise_node"]

GUIDANCE_MESSAGE_ID = "atlas-guidance"
# Checkpoint metadata that carries a session across an interrupt (and across processes).
_META_SESSION = "atlas_session_id"
_META_SPAN = "atlas_session_span"  # "<trace id hex>:<span id hex>" of the first segment's root
_META_LANE = "atlas_lane"
_META_GUIDANCE = "atlas_guidance"
_META_SEGMENT = "atlas_segment"


class _Answer(str):
    """The answer text handed to the supervision flow, carrying the graph's final state."""

    value: Any

    def __new__(cls, text: str, value: Any) -> _Answer:
        self = super().__new__(cls, text)
        self.value = value
        return self


# --- messages, tasks and answers ---------------------------------------------------------------
def _messages(value: Any) -> list[BaseMessage]:
    if value is None:
        return []
    if isinstance(value, BaseMessage | str | tuple | dict):
        value = [value]
    try:
        return convert_to_messages(list(value))
    except Exception:  # not messages after all: no task or answer from them
        return []


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = [
        p.get("text", "") if isinstance(p, Mapping) else str(p)
        for p in content
        if not isinstance(p, Mapping) or p.get("type") in (None, "text")
    ]
    return "".join(parts)


def _last(messages: list[BaseMessage], kind: str) -> str | None:
    for message in reversed(messages):
        if message.type == kind:
            return _text(message)
    return None


def _state_text(state: Any) -> str:
    if isinstance(state, Mapping):
        state = {k: v for k, v in state.items() if not str(k).startswith("__")}
        if "messages" in state:
            state = {**state, "messages": [_text(m) for m in _messages(state["messages"])]}
    return answer_text(state)


def _task_of(value: Any, task: Any, fallback: Any = None) -> str:
    if callable(task):
        return str(task(value))
    if isinstance(task, str) and isinstance(value, Mapping) and task in value:
        return str(value[task])
    for source in (value, fallback):
        if isinstance(source, Mapping):
            found = _last(_messages(source.get("messages")), "human")
            if found is not None:
                return found
    return _state_text(value if value is not None else fallback)


def _answer_of(state: Any, answer: Callable[[Any], Any] | None) -> str:
    if answer is not None:
        return str(answer(state))
    if isinstance(state, Mapping):
        found = _last(_messages(state.get("messages")), "ai")
        if found is not None:
            return found
    return _state_text(state)


def _guided_messages(messages: Any, text: str) -> list[Any]:
    if messages is None:
        messages = []
    elif not isinstance(messages, list | tuple):
        messages = [messages]
    return [SystemMessage(content=text, id=GUIDANCE_MESSAGE_ID), *messages]


# --- the graph wrapper -------------------------------------------------------------------------
@dataclass
class _Run:
    """One call of the supervised graph: what the flow and the drivers share."""

    call: Call
    options: SupervisionOptions
    input: Any
    config: dict[str, Any]
    stream: bool
    checkpointed: bool = False
    segment: int = 0
    resume_guidance: str | None = None
    first_span: str | None = None  # the session's first root, "<trace>:<span>"
    fork_from: str | None = None  # checkpoint id a paired retry starts from
    history: list[BaseMessage] = field(default_factory=list)  # the thread's messages before
    attempts: int = 0
    interrupted: bool = False
    state: Any = None


class SupervisedGraph:
    """A compiled LangGraph graph whose runs are supervised sessions. ``invoke``, ``ainvoke``,
    ``stream`` and ``astream`` take the graph's own arguments; everything else is the graph's
    (``get_state``, ``update_state``, ``get_graph``, …)."""

    def __init__(
        self,
        graph: Any,
        *,
        agent: str | None = None,
        teacher: Any = None,
        reward: Any = None,
        config: Any = None,
        task: Any = None,
        answer: Callable[[Any], Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not hasattr(graph, "invoke") or not hasattr(graph, "stream"):
            raise TypeError(
                f"supervise_graph() needs a compiled graph (StateGraph(...).compile()), "
                f"got {type(graph).__name__}"
            )
        self.graph = graph
        self.agent = agent or getattr(graph, "name", None) or "LangGraph"
        self.task = task
        self.answer = answer
        self._teacher_spec, self._reward_spec, self._settings = teacher, reward, config
        self._options = dict(options or {})
        self._overrides: dict[str, Any] = {}
        self._supervisor: Supervisor | None = None
        self._parent: SupervisedGraph | None = None

    # --- delegation --------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self.graph, name)

    def __repr__(self) -> str:
        return f"SupervisedGraph({self.agent!r}, {self.graph!r})"

    @property
    def supervisor(self) -> Supervisor:
        """The runtime (built on first use: wrapping a graph loads no model)."""
        if self._parent is not None:
            return self._parent.supervisor
        if self._supervisor is None:
            self._supervisor = build_supervisor(
                self.agent,
                self._options,
                self._teacher_spec,
                self._reward_spec,
                self._settings,
                None,
            )
        return self._supervisor

    def options(self, **overrides: Any) -> SupervisedGraph:
        """The same graph with per-call overrides (``app.options(lane="coach").invoke(...)``)."""
        _check_options(overrides)
        other = SupervisedGraph.__new__(SupervisedGraph)
        other.__dict__.update(self.__dict__)
        other._parent = self._parent or self
        other._overrides = {**self._overrides, **overrides}
        return other

    # --- public runs ---------------------------------------------------------------------------
    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        holder: list[Any] = []
        for _ in self._drive(input, config, kwargs, None, holder):
            pass
        return holder[0]

    def stream(
        self, input: Any, config: Any = None, *, stream_mode: Any = None, **kwargs: Any
    ) -> Iterator[Any]:
        return self._drive(input, config, kwargs, _Modes(self.graph, stream_mode, kwargs), [])

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        holder: list[Any] = []
        async for _ in self._adrive(input, config, kwargs, None, holder):
            pass
        return holder[0]

    def astream(
        self, input: Any, config: Any = None, *, stream_mode: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        return self._adrive(input, config, kwargs, _Modes(self.graph, stream_mode, kwargs), [])

    # --- preparing a run -----------------------------------------------------------------------
    def _config(self, config: Any) -> tuple[dict[str, Any], bool]:
        """The caller's config (copied) and whether the run is on a checkpointed thread."""
        config = dict(config or {})
        config["configurable"] = dict(config.get("configurable") or {})
        threaded = config["configurable"].get("thread_id") is not None
        return config, threaded and self.graph.checkpointer not in (None, False)

    def _prepare(self, input: Any, config: dict[str, Any], snapshot: Any, streaming: bool) -> _Run:
        supervisor = self.supervisor
        options = supervisor.options
        if self._overrides:
            options = replace(options, **self._overrides)
        values = snapshot.values if snapshot is not None else None
        meta = (snapshot.metadata or {}) if snapshot is not None else {}
        resuming = (
            snapshot is not None
            and bool(snapshot.next)
            and (input is None or isinstance(input, Command))
            and meta.get(_META_SESSION) is not None
        )
        task = _task_of(input if not resuming else None, self.task, values)
        reference = options.reference
        if callable(reference):
            reference = reference(values if resuming else input)
        call = Call(options, task, None if reference is None else str(reference))
        run = _Run(call, options, input, config, streaming, checkpointed=snapshot is not None)
        if isinstance(values, Mapping):
            run.history = _messages(values.get("messages"))
        if resuming:
            call.session_id = str(meta[_META_SESSION])
            call.parent = _span_context(meta.get(_META_SPAN))
            run.first_span = meta.get(_META_SPAN)
            run.segment = int(meta.get(_META_SEGMENT) or 0) + 1
            run.resume_guidance = meta.get(_META_GUIDANCE)
            lane = meta.get(_META_LANE)
            # The lane was chosen when the session began; re-running the start (the retry)
            # would ask the human again, so a resumed session never retries.
            call.options = replace(options, lane=lane or "auto", max_retries=0)
        elif streaming:
            call.options = replace(options, max_retries=0)
        if snapshot is not None and not resuming:
            run.fork_from = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
        run.options = call.options
        return run

    # --- one attempt ---------------------------------------------------------------------------
    def _attempt_input(self, run: _Run) -> Any:
        if run.segment > 0 or isinstance(run.input, Command) or run.input is None:
            return run.input
        if not isinstance(run.input, Mapping) or "messages" not in getattr(
            self.graph, "channels", {}
        ):
            return run.input
        text = rendered_guidance()
        history = run.history
        had_guidance = any(m.id == GUIDANCE_MESSAGE_ID for m in history)
        removable = _removable(self.graph)
        if text:
            guided = _guided_messages(run.input.get("messages"), text)
            if history and history[0].id != GUIDANCE_MESSAGE_ID and removable:
                # A thread whose conversation does not start with atlas's guidance message:
                # add_messages can only replace in place or append, and appended, the system
                # message would land mid-history (providers such as Anthropic reject a system
                # message after the first turn). Rewrite the thread's messages with the
                # guidance first; every other message keeps its id and place.
                kept = [m for m in history if m.id != GUIDANCE_MESSAGE_ID]
                guidance, *new = guided
                # The input merged into the history as the reducer itself would (replacements
                # and removals by id), since after REMOVE_ALL_MESSAGES it takes the list as is.
                # (langgraph types its argument as a union of invariant lists)
                merged = add_messages(kept, new) if new else kept  # type: ignore[arg-type]
                return {
                    **run.input,
                    "messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), guidance, *merged],
                }
            # A new thread, or one led by an earlier guidance message: that one is replaced in
            # place (same id), so the model sees one guidance message, at the head.
            return {**run.input, "messages": guided}
        if had_guidance and removable:
            # An earlier run's guidance is still in the thread: this run has none.
            messages = run.input.get("messages")
            messages = list(messages) if isinstance(messages, list | tuple) else [messages]
            return {
                **run.input,
                "messages": [RemoveMessage(id=GUIDANCE_MESSAGE_ID), *[m for m in messages if m]],
            }
        return run.input

    def _attempt_config(self, run: _Run, guidance: str | None) -> dict[str, Any]:
        root = trace.get_current_span().get_span_context()  # the session root, during a run
        config = dict(run.config)
        configurable = dict(config["configurable"])
        if run.attempts > 1 and run.checkpointed:
            fork = run.fork_from or self._first_checkpoint(run)
            if fork is not None:
                configurable["checkpoint_id"] = fork
        config["configurable"] = configurable
        if run.checkpointed:
            first = run.first_span or _span_text(root)
            metadata = dict(config.get("metadata") or {})
            metadata.update(
                {
                    _META_SESSION: run.call.session_id,
                    _META_SPAN: first,
                    _META_LANE: _current_lane(run),
                    _META_SEGMENT: run.segment,
                }
            )
            if guidance:
                metadata[_META_GUIDANCE] = guidance
            config["metadata"] = metadata
        return config

    def _first_checkpoint(self, run: _Run) -> str | None:
        """The input checkpoint of the thread's first run (a thread that was new before the
        attempt): forking from it gives the retry a fresh thread state."""
        oldest = None
        try:
            for snapshot in self.graph.get_state_history(run.config):
                oldest = snapshot
        except Exception as exc:
            log_once(Failed("langgraph state", exc))
            return None
        if oldest is None:
            return None
        return oldest.config.get("configurable", {}).get("checkpoint_id")

    async def _afirst_checkpoint(self, run: _Run) -> str | None:
        oldest = None
        try:
            async for snapshot in self.graph.aget_state_history(run.config):
                oldest = snapshot
        except Exception as exc:
            log_once(Failed("langgraph state", exc))
            return None
        if oldest is None:
            return None
        return oldest.config.get("configurable", {}).get("checkpoint_id")

    def _finish(self, run: _Run, state: Any, latest: Any) -> _Answer:
        """The attempt's answer; ``latest`` is the thread's snapshot after it (or None)."""
        run.state = state
        root = trace.get_current_span()
        interrupted = isinstance(state, Mapping) and bool(state.get("__interrupt__"))
        if latest is not None and not interrupted:
            interrupted = bool(latest.next)
        run.interrupted = interrupted
        thread = run.config["configurable"].get("thread_id")
        if thread is not None:
            root.set_attribute(s.ATLAS_THREAD_ID, str(thread))
            root.set_attribute(s.GEN_AI_CONVERSATION_ID, str(thread))
        root.set_attribute(s.ATLAS_SEGMENT, run.segment)
        if interrupted:
            root.set_attribute(s.ATLAS_INTERRUPTED, True)
        if run.stream:
            root.set_attribute(s.ATLAS_STREAMED, True)
        return _Answer(_answer_of(state, self.answer), state)

    def _answer_ask(self, run: _Run, step: Ask) -> Any:
        """A teacher step the graph answers itself, or ``ASK_TEACHER`` to ask the teacher."""
        if step.step == "validate" and run.interrupted:
            return Verdict(True, "", "interrupted")  # nothing final to judge yet
        if step.step == "guidance" and run.segment > 0:
            return run.resume_guidance  # given when the session began; it is in the state
        return driver.ASK_TEACHER

    # --- running: the one supervision driver, with the graph as the agent ----------------------
    def _drive(
        self, input: Any, config: Any, kwargs: dict, modes: _Modes | None, holder: list
    ) -> Iterator[Any]:
        config, threaded = self._config(config)
        snapshot = _safely(self.graph.get_state, config) if threaded else None
        run = self._prepare(input, config, snapshot, modes is not None)

        def invoke(step: Invoke) -> Generator[Any, None, Any]:
            run.attempts += 1
            with use_guidance(step.guidance, task=run.call.task), traced(graph_root=True):
                cfg = self._attempt_config(run, step.guidance)
                inp = self._attempt_input(run)
                if modes is None:
                    state = self.graph.invoke(inp, cfg, **kwargs)
                else:
                    state = None
                    for chunk in self.graph.stream(inp, cfg, **modes.kwargs()):
                        found, out = modes.split(chunk)
                        if found is not None:
                            state = found
                        if out is not _NOTHING:
                            yield out
                latest = _safely(self.graph.get_state, _latest(run)) if run.checkpointed else None
                if state is None and latest is not None:
                    state = latest.values
                return self._finish(run, state, latest)

        flow = self.supervisor.flow(run.call)
        answer = functools.partial(self._answer_ask, run)
        outcome = yield from driver.run_streaming(flow, run.options, invoke, answer=answer)
        driver.submit(self._reward_job(run, outcome), run.options)
        holder.append(_value(outcome))

    async def _adrive(
        self, input: Any, config: Any, kwargs: dict, modes: _Modes | None, holder: list
    ) -> AsyncIterator[Any]:
        config, threaded = self._config(config)
        snapshot = await _asafely(self.graph.aget_state, config) if threaded else None
        run = self._prepare(input, config, snapshot, modes is not None)

        async def invoke(step: Invoke) -> AsyncGenerator[Any, None]:
            run.attempts += 1
            with use_guidance(step.guidance, task=run.call.task), traced(graph_root=True):
                cfg = self._attempt_config(run, step.guidance)
                if run.attempts > 1 and run.checkpointed and run.fork_from is None:
                    run.fork_from = await self._afirst_checkpoint(run)
                    cfg = self._attempt_config(run, step.guidance)
                inp = self._attempt_input(run)
                if modes is None:
                    state = await self.graph.ainvoke(inp, cfg, **kwargs)
                else:
                    state = None
                    async for chunk in self.graph.astream(inp, cfg, **modes.kwargs()):
                        found, out = modes.split(chunk)
                        if found is not None:
                            state = found
                        if out is not _NOTHING:
                            yield out
                latest = (
                    await _asafely(self.graph.aget_state, _latest(run))
                    if run.checkpointed
                    else None
                )
                if state is None and latest is not None:
                    state = latest.values
                yield driver.Returned(self._finish(run, state, latest))

        flow = self.supervisor.flow(run.call)
        answer = functools.partial(self._answer_ask, run)
        outcome: list[Outcome] = []
        # Closed in this task if the caller abandons the stream (see driver.arun_streaming).
        async with contextlib.aclosing(
            driver.arun_streaming(flow, run.options, invoke, outcome=outcome, answer=answer)
        ) as chunks:
            async for out in chunks:
                yield out
        await driver.asubmit(self._reward_job(run, outcome[0]), run.options)
        holder.append(_value(outcome[0]))

    # --- rewards -------------------------------------------------------------------------------
    def _reward_job(self, run: _Run, outcome: Outcome) -> Any:
        if run.interrupted:
            return None  # the session goes on after the resume; it is judged then
        return self.supervisor.reward_job(outcome)


_NOTHING = object()


def _value(outcome: Outcome) -> Any:
    result = outcome.result
    return result.value if isinstance(result, _Answer) else result


def _latest(run: _Run) -> dict[str, Any]:
    """The thread's config without a pinned checkpoint: its latest state."""
    configurable = {k: v for k, v in run.config["configurable"].items() if k != "checkpoint_id"}
    return {"configurable": configurable}


def _safely(get: Callable[[Any], Any], config: Any) -> Any:
    try:
        return get(config)
    except Exception as exc:  # bookkeeping must never break the user's run
        log_once(Failed("langgraph state", exc))
        return None


async def _asafely(get: Callable[[Any], Any], config: Any) -> Any:
    try:
        return await get(config)
    except Exception as exc:
        log_once(Failed("langgraph state", exc))
        return None


def _current_lane(run: _Run) -> str | None:
    span = trace.get_current_span()
    attributes = getattr(span, "attributes", None) or {}
    lane = attributes.get(s.ATLAS_LANE)
    return str(lane) if lane is not None else run.options.lane


def _span_text(context: SpanContext) -> str | None:
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}:{context.span_id:016x}"


def _span_context(text: Any) -> SpanContext | None:
    try:
        trace_hex, span_hex = str(text).split(":")
        return SpanContext(
            int(trace_hex, 16),
            int(span_hex, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except (TypeError, ValueError):
        return None


def _removable(graph: Any) -> bool:
    """Whether the messages channel merges with ``add_messages`` (which understands
    RemoveMessage); other reducers would store the removal as a message."""
    builder = getattr(graph, "builder", None)
    channel = getattr(builder, "channels", {}).get("messages")
    operator = getattr(channel, "operator", None)
    return "add_messages" in getattr(operator, "__qualname__", "")


class _Modes:
    """The caller's ``stream_mode`` plus ``values``, which the session needs for its answer;
    chunks are handed back in exactly the shape the caller asked for."""

    def __init__(self, graph: Any, stream_mode: Any, kwargs: dict[str, Any]) -> None:
        requested = (
            stream_mode if stream_mode is not None else getattr(graph, "stream_mode", "values")
        )
        self.single = isinstance(requested, str)
        self.requested = [requested] if self.single else list(requested)
        self.subgraphs = bool(kwargs.get("subgraphs"))
        self.passthrough = "version" in kwargs  # another chunk format: hand it over untouched
        self._kwargs = kwargs

    def kwargs(self) -> dict[str, Any]:
        if self.passthrough:
            mode: Any = self.requested[0] if self.single else self.requested
            return {**self._kwargs, "stream_mode": mode}
        modes = list(dict.fromkeys([*self.requested, "values"]))
        return {**self._kwargs, "stream_mode": modes}

    def split(self, chunk: Any) -> tuple[Any, Any]:
        """(the final-state candidate or None, what the caller gets or _NOTHING)."""
        if self.passthrough:
            return None, chunk
        if self.subgraphs:
            namespace, mode, data = chunk
        else:
            namespace, (mode, data) = (), chunk
        state = data if mode == "values" and not namespace else None
        if mode not in self.requested:
            return state, _NOTHING
        if self.single:
            return state, (namespace, data) if self.subgraphs else data
        return state, (namespace, mode, data) if self.subgraphs else (mode, data)


def _check_options(options: Mapping[str, Any]) -> None:
    check_options(options, "supervise_graph()", noun="supervision option")


def supervise_graph(
    graph: Any,
    *,
    agent: str | None = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    task: Any = None,
    answer: Callable[[Any], Any] | None = None,
    **options: Any,
) -> SupervisedGraph:
    """Wrap a compiled graph so each ``invoke``/``ainvoke``/``stream``/``astream`` is one
    supervised session (see the module doc). ``agent`` defaults to the graph's name;
    ``teacher``/``reward``/``config`` and the other options are those of
    :func:`atlas_middleware.supervise` (``reference`` may be a callable receiving the input).
    """
    _check_options(options)
    return SupervisedGraph(
        graph,
        agent=agent,
        teacher=teacher,
        reward=reward,
        config=config,
        task=task,
        answer=answer,
        options=options,
    )


# --- the node wrapper --------------------------------------------------------------------------
def supervise_node(
    fn: Callable[..., Any] | None = None,
    *,
    agent: str | None = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    task: Any = None,
    answer: Callable[[Any], Any] | None = None,
    **options: Any,
) -> Any:
    """Make one graph node a supervised session: ``builder.add_node("solve",
    supervise_node(solve))`` or ``@supervise_node(agent="solver")``.

    The node function keeps its signature (LangGraph still passes ``config``, ``runtime``, …).
    It receives the state with the guidance as a leading ``SystemMessage`` in ``messages`` (a
    copy: the guidance is not written back to the graph's state) and through
    :func:`atlas_middleware.guidance`. The task is the state's last human message (or
    ``task=``: a state key or a callable receiving the state); the answer validated and
    rewarded is the last AI message of the node's update (or ``answer=`` on the update). A
    paired retry runs the node function again with the teacher's guidance.
    """
    _check_options(options)

    def decorate(func: Callable[..., Any]) -> Any:
        name = agent or getattr(func, "__name__", "node")

        def guided(state: Any) -> Any:
            text = rendered_guidance()
            if text and isinstance(state, Mapping) and "messages" in state:
                return {**state, "messages": _guided_messages(state["messages"], text)}
            return state

        def reference_of(state: Any, *args: Any, **kwargs: Any) -> Any:
            reference = options.get("reference")
            return reference(state) if callable(reference) else reference

        settings = {
            **options,
            "task": lambda state, *a, **k: _task_of(state, task),
            "reference": reference_of if "reference" in options else None,
        }

        if inspect.iscoroutinefunction(func):

            async def attempt_async(state: Any, *args: Any, **kwargs: Any) -> _Answer:
                with traced():
                    update = await func(guided(state), *args, **kwargs)
                return _Answer(_answer_of(update, answer), update)

            supervised_async = supervise(
                attempt_async,
                agent=name,
                teacher=teacher,
                reward=reward,
                config=config,
                **settings,
            )

            @functools.wraps(func)
            async def node_async(state: Any, *args: Any, **kwargs: Any) -> Any:
                return _unwrap(await supervised_async(state, *args, **kwargs))

            node_async.supervisor = supervised_async.supervisor  # type: ignore[attr-defined]
            return node_async

        def attempt(state: Any, *args: Any, **kwargs: Any) -> _Answer:
            with traced():
                update = func(guided(state), *args, **kwargs)
            return _Answer(_answer_of(update, answer), update)

        supervised = supervise(
            attempt, agent=name, teacher=teacher, reward=reward, config=config, **settings
        )

        @functools.wraps(func)
        def node(state: Any, *args: Any, **kwargs: Any) -> Any:
            return _unwrap(supervised(state, *args, **kwargs))

        node.supervisor = supervised.supervisor  # type: ignore[attr-defined]
        return node

    return decorate(fn) if fn is not None else decorate


def _unwrap(result: Any) -> Any:
    return result.value if isinstance(result, _Answer) else result
