"""OpenAI Agents SDK: supervised agent runs, and the SDK's own traces as OpenTelemetry spans.

::

    from agents import Agent
    from atlas_middleware.integrations.openai_agents import supervise_agent

    agent = Agent(name="calc", instructions="Answer with a number.", model=...)
    calc = supervise_agent(agent, teacher="embedded", reference=lambda task, **_: "42")
    result = calc.run_sync("What is 12 + 30?")          # a RunResult, as Runner.run_sync returns
    result = await calc.run("What is 12 + 30?")
    streamed = calc.run_streamed("What is 12 + 30?")     # async for e in streamed.stream_events()

Each run is one supervised session (probe → lane → guidance → run → validation → guided retry,
see :mod:`atlas_middleware.supervise`). Guidance reaches the model through the agent's
instructions for that run only: the run uses ``agent.clone(instructions=...)``; the user's agent
is never changed. :class:`AtlasTracingProcessor` (installed by :func:`instrument`, and by the
first supervised run) turns the SDK's traces into spans under the current session.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from atlas_middleware.guidance import rendered_guidance
from atlas_middleware.supervise import SupervisionOptions, answer_text, supervise
from atlas_middleware.telemetry import get_tracer, usage
from atlas_middleware.telemetry import schema as s

from ._common import require

if TYPE_CHECKING:
    from agents import Agent, RunResult, RunResultStreaming
    from agents.tracing import Span, Trace

    from atlas_middleware.supervise import Supervisor

EXTRA = "openai-agents"
# Importing this module is asking for the SDK; without it, one line names the extra to install.
agents = require("agents", EXTRA)

__all__ = [
    "AtlasTracingProcessor",
    "SupervisedAgent",
    "SupervisedRunStreaming",
    "instrument",
    "supervise_agent",
    "uninstrument",
]


# --- supervised runs --------------------------------------------------------------------------
def supervise_agent(
    agent: Agent[Any],
    *,
    name: str | None = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    trace_sdk: bool = True,
    **options: Any,
) -> SupervisedAgent:
    """Supervise every run of ``agent``: ``run``, ``run_sync`` and ``run_streamed`` mirror
    :class:`agents.Runner`'s (without the agent argument) and return what it returns.

    ``name`` is the session's agent name (default: ``agent.name``); ``teacher``, ``reward``,
    ``config`` and ``**options`` are :func:`atlas_middleware.supervise`'s. ``task`` and
    ``reference`` callables receive the run's arguments (``input``, then Runner's keywords).
    ``trace_sdk`` installs :class:`AtlasTracingProcessor` on the first run so the SDK's agent,
    model, tool and handoff spans join the session's trace.
    """
    if not isinstance(agent, agents.Agent):
        raise TypeError(
            f"supervise_agent() takes an agents.Agent, got {type(agent).__name__}: "
            "wrap the agent you pass to Runner.run"
        )
    options.setdefault("task", _task_text)
    options.setdefault("answer", _answer_text)
    # The public decorator builds the Supervisor (config defaults, telemetry, teacher, RIM) on
    # first use; the three run methods share it.
    decorated = supervise(
        _unused, agent=name or agent.name, teacher=teacher, reward=reward, config=config, **options
    )
    return SupervisedAgent(agent, decorated.supervisor, {}, trace_sdk)


def _unused(input: Any, **kwargs: Any) -> Any:  # the supervised callables are SupervisedAgent's
    raise AssertionError("not called")


class SupervisedAgent:
    """The supervised form of one agent; see :func:`supervise_agent`."""

    def __init__(
        self,
        agent: Agent[Any],
        supervisor: Callable[[], Supervisor],
        overrides: dict[str, Any],
        trace_sdk: bool,
    ) -> None:
        self.agent = agent
        self._supervisor = supervisor
        self._overrides = overrides
        self._trace_sdk = trace_sdk

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor()

    def options(self, **overrides: Any) -> SupervisedAgent:
        """The same supervised agent with some options changed for the calls made through it:
        ``calc.options(reference="42").run_sync(task)``."""
        unknown = set(overrides) - set(SupervisionOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"options() got unknown option(s) {', '.join(sorted(unknown))}; "
                f"options: {', '.join(sorted(SupervisionOptions.__dataclass_fields__))}"
            )
        return SupervisedAgent(
            self.agent, self._supervisor, {**self._overrides, **overrides}, self._trace_sdk
        )

    def _prepare(self, **forced: Any) -> tuple[Supervisor, SupervisionOptions]:
        if self._trace_sdk:
            instrument()
        runtime = self._supervisor()
        overrides = {**self._overrides, **forced}
        return runtime, (replace(runtime.options, **overrides) if overrides else runtime.options)

    def run_sync(self, input: Any, **kwargs: Any) -> RunResult:
        """``Runner.run_sync(agent, input, **kwargs)`` as one supervised session."""
        runtime, options = self._prepare()
        runner = agents.Runner

        def student(input: Any, **kwargs: Any) -> Any:
            return runner.run_sync(guided_agent(self.agent), input, **kwargs)

        return runtime.run_sync(student, (input,), kwargs, options)

    async def run(self, input: Any, **kwargs: Any) -> RunResult:
        """``await Runner.run(agent, input, **kwargs)`` as one supervised session."""
        runtime, options = self._prepare()
        runner = agents.Runner

        async def student(input: Any, **kwargs: Any) -> Any:
            return await runner.run(guided_agent(self.agent), input, **kwargs)

        return await runtime.run_async(student, (input,), kwargs, options)

    def run_streamed(self, input: Any, **kwargs: Any) -> SupervisedRunStreaming:
        """``Runner.run_streamed(agent, input, **kwargs)`` as one supervised session; call it
        inside a running event loop, as the SDK's.

        The events reach the caller while the agent runs, so a paired-lane answer the
        validation rejects cannot be taken back: streamed runs are validated and recorded but
        never retried (``max_retries`` is 0 for them). The coach lane's guidance still comes
        first.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "run_streamed() needs a running event loop: call it from async code "
                "(or use run_sync)"
            ) from None
        runtime, options = self._prepare(max_retries=0)
        return SupervisedRunStreaming(self.agent, runtime, options, input, kwargs)

    def __repr__(self) -> str:
        return f"SupervisedAgent({self.agent.name!r})"


_END = object()


class SupervisedRunStreaming:
    """What :meth:`SupervisedAgent.run_streamed` returns: ``stream_events()`` yields the SDK's
    stream events; once the stream ends, every other attribute (``final_output``,
    ``new_items``, ``last_agent``, …) is the underlying ``RunResultStreaming``'s."""

    def __init__(
        self,
        agent: Agent[Any],
        runtime: Supervisor,
        options: SupervisionOptions,
        input: Any,
        kwargs: dict[str, Any],
    ) -> None:
        self._agent = agent
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._current: RunResultStreaming | None = None
        self._cancelled = False
        self._task = asyncio.get_running_loop().create_task(
            self._drive(runtime, options, input, kwargs)
        )

    async def _drive(
        self, runtime: Supervisor, options: SupervisionOptions, input: Any, kwargs: dict[str, Any]
    ) -> Any:
        runner = agents.Runner

        async def student(input: Any, **kwargs: Any) -> Any:
            # Runs inside the session: its root span is the current span here.
            otel_trace.get_current_span().set_attribute(s.ATLAS_STREAMED, True)
            result = runner.run_streamed(guided_agent(self._agent), input, **kwargs)
            self._current = result
            async for event in result.stream_events():
                self._queue.put_nowait(event)
            return result

        try:
            return await runtime.run_async(student, (input,), kwargs, options)
        finally:
            self._queue.put_nowait(_END)

    async def stream_events(self) -> AsyncIterator[Any]:
        """The run's stream events; raises what the run raised once they are all delivered.
        After :meth:`cancel` the stream just ends, as the SDK's own does."""
        while True:
            event = await self._queue.get()
            if event is _END:
                break
            yield event
        if self._cancelled:
            await asyncio.wait([self._task])  # never raises, unlike awaiting the task
            if self._task.cancelled():
                return
        self._current = await self._task

    @property
    def is_complete(self) -> bool:
        return self._task.done()

    def cancel(self, mode: str = "immediate") -> None:
        """Stop the run and its supervision (no validation, no retry, no reward); the stream
        of :meth:`stream_events` ends."""
        self._cancelled = True
        if self._current is not None:
            self._current.cancel(mode=mode)  # type: ignore[arg-type]
        self._task.cancel()

    def __getattr__(self, name: str) -> Any:
        current = self.__dict__.get("_current")
        if current is None:
            raise AttributeError(f"{name!r}: the streamed run has not started yet")
        return getattr(current, name)


# --- guidance into the instructions -----------------------------------------------------------
def guided_agent(agent: Agent[Any]) -> Agent[Any]:
    """``agent`` for a run under the current guidance: a clone whose instructions end with the
    rendered guidance (string, None or callable instructions alike), and so do the agents it
    can hand off to, so whichever agent answers reads it; ``agent`` itself when there is no
    guidance. No agent passed in is modified."""
    text = rendered_guidance()
    if text is None:
        return agent
    return _guided(agent, text, {})


def _guided(agent: Agent[Any], text: str, memo: dict[int, Agent[Any]]) -> Agent[Any]:
    if id(agent) in memo:  # handoff graphs may loop back (triage ⇄ specialist)
        return memo[id(agent)]
    instructions = agent.instructions
    if callable(instructions):
        original = instructions

        async def guided(context: Any, run_agent: Any) -> str:
            base = original(context, run_agent)
            if inspect.isawaitable(base):
                base = await base
            return _joined(base, text)

        clone = agent.clone(instructions=guided)
    elif instructions is None or isinstance(instructions, str):
        clone = agent.clone(instructions=_joined(instructions, text))
    else:
        clone = agent.clone()  # the SDK rejects other instruction types itself
    memo[id(agent)] = clone
    # The clone's own list: the user's agent keeps its handoffs untouched.
    clone.handoffs = [_guided_handoff(h, text, memo) for h in agent.handoffs]
    return clone


def _guided_handoff(item: Any, text: str, memo: dict[int, Agent[Any]]) -> Any:
    if isinstance(item, agents.Agent):
        return _guided(item, text, memo)
    if isinstance(item, agents.Handoff):
        invoke = item.on_invoke_handoff

        async def on_invoke_handoff(context: Any, arguments: str) -> Any:
            target = await invoke(context, arguments)
            return _guided(target, text, memo) if isinstance(target, agents.Agent) else target

        wrapped = copy.copy(item)
        wrapped.on_invoke_handoff = on_invoke_handoff
        return wrapped
    return item


def _joined(base: str | None, text: str) -> str:
    # The same layout as guidance.guided_system_prompt, for a base only known at run time.
    return base.rstrip() + "\n\n" + text if base else text


def _task_text(input: Any, **_: Any) -> str:
    """The session's task: the input string, or the text of the last user message of an input
    item list (a resumed RunState has no task text of its own)."""
    if isinstance(input, str):
        return input
    if isinstance(input, list):
        for item in reversed(input):
            if isinstance(item, dict) and item.get("role", "user") == "user":
                content = item.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    texts = [p.get("text", "") for p in content if isinstance(p, dict)]
                    return "".join(t for t in texts if isinstance(t, str))
        return answer_text(input)
    return type(input).__name__


def _answer_text(result: Any) -> str:
    output = getattr(result, "final_output", result)
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    dump = getattr(output, "model_dump", None)  # a pydantic output_type
    if callable(dump):
        return answer_text(dump(mode="json"))
    return answer_text(output)


# --- the SDK's traces as OpenTelemetry spans --------------------------------------------------
@dataclass
class _Open:
    trace_id: str
    context: Context  # what the SDK span's children are parented to
    span: otel_trace.Span | None = None  # None: collapsed into its parent, or not ours to end


class AtlasTracingProcessor(agents.tracing.TracingProcessor):
    """An ``agents.tracing.TracingProcessor`` that mirrors the SDK's spans as OpenTelemetry
    spans, parented to the OpenTelemetry span current when the run started (a supervised
    session's root), else to an ``invoke_workflow {trace name}`` root of its own.

    agent → ``invoke_agent {agent}``; generation / response → ``chat {model}`` with token usage;
    function → ``execute_tool {tool}``; handoff → ``handoff {to agent}`` (from/to attributes);
    guardrail → ``guardrail {name}``; anything else → ``{type} {name}``. The SDK's per-run
    ``task`` and per-turn ``turn`` spans are folded into their parents unless
    ``include_task_and_turn_spans``. Prompts, outputs and tool arguments follow atlas's content
    capture switch (and the SDK's ``trace_include_sensitive_data``).
    """

    def __init__(self, *, include_task_and_turn_spans: bool = False) -> None:
        self.include_task_and_turn_spans = include_task_and_turn_spans
        self.enabled = True
        self._lock = threading.Lock()
        self._traces: dict[str, _Open] = {}
        self._spans: dict[str, _Open] = {}

    # traces
    def on_trace_start(self, trace: Trace) -> None:
        if not self.enabled:
            return
        current = otel_trace.get_current_span()
        if current.get_span_context().is_valid:
            entry = _Open(trace.trace_id, otel_trace.set_span_in_context(current))
        else:
            root = get_tracer().start_span(
                s.workflow_span_name(trace.name),
                context=otel_trace.set_span_in_context(otel_trace.INVALID_SPAN),
                attributes={
                    s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_WORKFLOW,
                    s.ATLAS_FRAMEWORK_TRACE_ID: trace.trace_id,
                    s.ATLAS_FRAMEWORK_SPAN_TYPE: "trace",
                },
            )
            entry = _Open(trace.trace_id, otel_trace.set_span_in_context(root), root)
        with self._lock:
            self._traces[trace.trace_id] = entry

    def on_trace_end(self, trace: Trace) -> None:
        with self._lock:
            entry = self._traces.pop(trace.trace_id, None)
            # Spans the SDK never finished (a cancelled run) end with their trace.
            leftovers = [k for k, v in self._spans.items() if v.trace_id == trace.trace_id]
            orphans = [self._spans.pop(k) for k in leftovers]
        for orphan in orphans:
            if orphan.span is not None:
                orphan.span.end()
        if entry is not None and entry.span is not None:
            entry.span.end()

    # spans
    def on_span_start(self, span: Span[Any]) -> None:
        if not self.enabled:
            return
        data = span.span_data
        with self._lock:
            parent = self._spans.get(span.parent_id or "")
            trace_entry = self._traces.get(span.trace_id)
        if parent is not None:
            context = parent.context
        else:
            # A top-level span: under the session that is running now, even when the SDK trace
            # was opened earlier, outside it (``with agents.trace(...)`` around several runs).
            current = otel_trace.get_current_span()
            if current.get_span_context().is_valid or trace_entry is None:
                context = otel_trace.set_span_in_context(current)
            else:
                context = trace_entry.context
        if data.type in ("task", "turn") and not self.include_task_and_turn_spans:
            entry = _Open(span.trace_id, context)
        else:
            name, kind, attributes = _start(data)
            attributes[s.ATLAS_FRAMEWORK_SPAN_TYPE] = data.type
            attributes[s.ATLAS_FRAMEWORK_TRACE_ID] = span.trace_id
            started = get_tracer().start_span(
                name, context=context, kind=kind, attributes=attributes
            )
            entry = _Open(span.trace_id, otel_trace.set_span_in_context(started), started)
        with self._lock:
            self._spans[span.span_id] = entry

    def on_span_end(self, span: Span[Any]) -> None:
        with self._lock:
            entry = self._spans.pop(span.span_id, None)
        if entry is None or entry.span is None:
            return
        otel_span = entry.span
        try:
            _finish(otel_span, span.span_data, s.capture_content())
            error = span.error
            if error:
                message = str(error.get("message") or "error")
                otel_span.set_attribute(s.ERROR_TYPE, message[:200])
                otel_span.set_status(Status(StatusCode.ERROR, message))
        finally:
            otel_span.end()

    def shutdown(self) -> None:
        with self._lock:
            entries = [*self._spans.values(), *self._traces.values()]
            self._spans.clear()
            self._traces.clear()
        for entry in entries:
            if entry.span is not None:
                entry.span.end()

    def force_flush(self) -> None:
        """Nothing is buffered here: spans go to atlas's OpenTelemetry pipeline as they end."""


def _start(data: Any) -> tuple[str, SpanKind, dict[str, Any]]:
    kind = data.type
    if kind == "agent":
        return (
            s.agent_span_name(data.name),
            SpanKind.INTERNAL,
            {s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT, s.GEN_AI_AGENT_NAME: data.name},
        )
    if kind in ("generation", "response"):
        model = getattr(data, "model", None) or _response_model(data)
        attributes = {s.GEN_AI_OPERATION_NAME: s.OP_CHAT, s.GEN_AI_PROVIDER_NAME: "openai"}
        if model:
            attributes[s.GEN_AI_REQUEST_MODEL] = model
        return s.chat_span_name(model or "unknown"), SpanKind.CLIENT, attributes
    if kind == "function":
        return (
            s.tool_span_name(data.name),
            SpanKind.INTERNAL,
            {s.GEN_AI_OPERATION_NAME: s.OP_EXECUTE_TOOL, s.GEN_AI_TOOL_NAME: data.name},
        )
    if kind == "handoff":
        return s.handoff_span_name(data.to_agent or "?"), SpanKind.INTERNAL, {}
    if kind == "guardrail":
        return s.guardrail_span_name(data.name), SpanKind.INTERNAL, {}
    name = getattr(data, "name", None) or getattr(data, "server", None)
    return s.framework_span_name(kind, name), SpanKind.INTERNAL, {}


def _finish(span: otel_trace.Span, data: Any, content: bool) -> None:
    """The attributes only known when the SDK span ends (usage, outputs, handoff target)."""
    kind = data.type
    if kind == "agent":
        if data.tools is not None:
            span.set_attribute(s.ATLAS_AGENT_TOOLS, list(data.tools))
        if data.handoffs is not None:
            span.set_attribute(s.ATLAS_AGENT_HANDOFFS, list(data.handoffs))
    elif kind == "generation":
        tokens = data.usage or {}
        _usage(span, tokens.get("input_tokens"), tokens.get("output_tokens"))
        if content and data.input is not None:
            span.set_attribute(s.GEN_AI_INPUT_MESSAGES, _json(data.input))
        if content and data.output is not None:
            span.set_attribute(s.GEN_AI_OUTPUT_MESSAGES, _json(data.output))
    elif kind == "response":
        response = data.response
        model = _response_model(data)
        if model:
            span.update_name(s.chat_span_name(model))
            span.set_attribute(s.GEN_AI_REQUEST_MODEL, model)
            span.set_attribute(s.GEN_AI_RESPONSE_MODEL, model)
        if response is not None:
            span.set_attribute(s.GEN_AI_RESPONSE_ID, response.id)
            tokens = response.usage
            if tokens is not None:
                _usage(span, tokens.input_tokens, tokens.output_tokens)
            if content:
                span.set_attribute(s.GEN_AI_OUTPUT_MESSAGES, _json(response.output))
        if content and data.input is not None:
            span.set_attribute(s.GEN_AI_INPUT_MESSAGES, _json(data.input))
    elif kind == "function":
        if content and data.input is not None:
            span.set_attribute(s.GEN_AI_TOOL_CALL_ARGUMENTS, str(data.input))
        if content and data.output is not None:
            span.set_attribute(s.GEN_AI_TOOL_CALL_RESULT, str(data.output))
        if data.mcp_data:
            span.set_attribute(s.ATLAS_FRAMEWORK_DATA, _json(data.mcp_data))
    elif kind == "handoff":
        if data.from_agent:
            span.set_attribute(s.ATLAS_HANDOFF_FROM, data.from_agent)
        if data.to_agent:
            span.set_attribute(s.ATLAS_HANDOFF_TO, data.to_agent)
            span.update_name(s.handoff_span_name(data.to_agent))
    elif kind == "guardrail":
        span.set_attribute(s.ATLAS_GUARDRAIL_NAME, data.name)
        span.set_attribute(s.ATLAS_GUARDRAIL_TRIGGERED, bool(data.triggered))
    elif content:
        exported = data.export()
        payload = exported.get("data", exported) if isinstance(exported, dict) else exported
        span.set_attribute(s.ATLAS_FRAMEWORK_DATA, _json(payload))


def _usage(span: otel_trace.Span, input_tokens: int | None, output_tokens: int | None) -> None:
    s.set_usage(span, input_tokens, output_tokens)
    # The SDK's model calls bypass atlas's ChatModel: report them to the session's token tally
    # (this runs in the run's context, which carries the session's tally).
    usage.count(input_tokens, output_tokens)


def _response_model(data: Any) -> str | None:
    response = getattr(data, "response", None)
    return getattr(response, "model", None) if response is not None else None


def _json(value: Any) -> str:
    try:
        return json.dumps(value, default=_plain, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else repr(value)


# --- instrumentation --------------------------------------------------------------------------
_install_lock = threading.Lock()
_processor: AtlasTracingProcessor | None = None
_added = False


def instrument(*, exclusive: bool = False) -> AtlasTracingProcessor:
    """Bridge the SDK's traces into atlas's OpenTelemetry spans (idempotent).

    The processor is added beside the SDK's own (which exports to the OpenAI platform when
    ``OPENAI_API_KEY`` is set); ``exclusive=True`` makes it the only one, stopping that export.
    ``OPENAI_AGENTS_DISABLE_TRACING=1`` or ``set_tracing_disabled(True)`` stop the SDK from
    tracing at all, and so this bridge too.
    """
    tracing = agents.tracing
    global _processor, _added
    with _install_lock:
        if _processor is None:
            _processor = AtlasTracingProcessor()
        if exclusive:
            tracing.set_trace_processors([_processor])
        elif not _registered(tracing, _processor):
            tracing.add_trace_processor(_processor)
            _added = True
        _processor.enabled = True
        return _processor


def uninstrument() -> None:
    """Stop bridging: new SDK traces make no OpenTelemetry spans (spans already open still end).
    The SDK has no public call to remove one processor, so it stays registered, idle."""
    with _install_lock:
        if _processor is not None:
            _processor.enabled = False


def _registered(tracing: Any, processor: Any) -> bool:
    # Private in the SDK (0.20): when it moves, assume registered rather than add twice.
    multi = getattr(tracing.get_trace_provider(), "_multi_processor", None)
    processors = getattr(multi, "_processors", None)
    if processors is None:
        return _added
    return processor in processors
