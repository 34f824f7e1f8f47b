"""OpenAI Agents SDK: supervised agent runs, and the SDK's own traces as OpenTelemetry spans.

::

    from agents import Agent
    from atlas_middleware.integrations.openai_agents import supervise_agent

    agent = Agent(name="calc", instructions="Answer with a number.", model=...)
    calc = supervise_agent(agent, teacher="embedded", reference=lambda task, **_: "42")
    result = calc.run_sync("What is 12 + 30?")          # a RunResult, as Runner.run_sync returns
    result = await calc.run("What is 12 + 30?")
    streamed = calc.run_streamed("What is 12 + 30?")     # async for e in streamed.stream_events()

Or, without touching call sites::

    instrument(supervise=[agent], teacher="embedded")   # agents, or agent names
    result = await Runner.run(agent, "What is 12 + 30?")  # now one supervised session

Each run is one supervised session (probe → lane → guidance → run → validation → guided retry,
see :mod:`atlas_middleware.supervise`). Guidance reaches the model through the agent's
instructions for that run only: the run uses ``agent.clone(instructions=...)``; the user's agent
is never changed. :class:`AtlasTracingProcessor` (installed by :func:`instrument`, and by the
first supervised run) turns the SDK's traces into spans under the current session; when the
SDK's tracing is disabled (``set_tracing_disabled(True)``, ``RunConfig(tracing_disabled=True)``),
supervised runs record their model and tool calls through run hooks instead.
"""

from __future__ import annotations

import asyncio
import copy
import functools
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
from atlas_middleware.supervise import (
    SessionHandle,
    SupervisionOptions,
    answer_text,
    current_session,
    supervise,
)
from atlas_middleware.telemetry import genai, get_tracer, usage
from atlas_middleware.telemetry import schema as s

from ._base import Instrumentor, openinference_active
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

        def student(input: Any, **kwargs: Any) -> Any:
            return _runner("run_sync")(guided_agent(self.agent), input, **_with_hooks(kwargs))

        return runtime.run_sync(student, (input,), kwargs, options)

    async def run(self, input: Any, **kwargs: Any) -> RunResult:
        """``await Runner.run(agent, input, **kwargs)`` as one supervised session."""
        runtime, options = self._prepare()

        async def student(input: Any, **kwargs: Any) -> Any:
            return await _runner("run")(guided_agent(self.agent), input, **_with_hooks(kwargs))

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
        self._session: SessionHandle | None = None
        self._task = asyncio.get_running_loop().create_task(
            self._drive(runtime, options, input, kwargs)
        )

    async def _drive(
        self, runtime: Supervisor, options: SupervisionOptions, input: Any, kwargs: dict[str, Any]
    ) -> Any:
        async def student(input: Any, **kwargs: Any) -> Any:
            # Runs inside the session: its root span is the current span here.
            otel_trace.get_current_span().set_attribute(s.ATLAS_STREAMED, True)
            self._session = current_session()
            result = _runner("run_streamed")(
                guided_agent(self._agent), input, **_with_hooks(kwargs)
            )
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

    @property
    def session(self) -> SessionHandle | None:
        """The run's session (for ``atlas.feedback``), once the run has started."""
        return self._session

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
    """``agent`` for a supervised run: a clone whose instructions end with the current rendered
    guidance (string, None or callable instructions alike), and so do the agents it can hand
    off to, so whichever agent answers reads it. The clones also ask streamed Chat Completions
    for their token usage (``ModelSettings.include_usage``, unless the agent set it), so a
    streamed session's tokens are known. No agent passed in is modified."""
    return _guided(agent, rendered_guidance(), {})


def _guided(agent: Agent[Any], text: str | None, memo: dict[int, Agent[Any]]) -> Agent[Any]:
    if id(agent) in memo:  # handoff graphs may loop back (triage ⇄ specialist)
        return memo[id(agent)]
    settings = agent.model_settings
    if settings.include_usage is None:
        settings = replace(settings, include_usage=True)
    instructions = agent.instructions
    if text is None:
        clone = agent.clone(model_settings=settings)
    elif callable(instructions):
        original = instructions

        async def guided(context: Any, run_agent: Any) -> str:
            base = original(context, run_agent)
            if inspect.isawaitable(base):
                base = await base
            return _joined(base, text)

        clone = agent.clone(instructions=guided, model_settings=settings)
    elif instructions is None or isinstance(instructions, str):
        clone = agent.clone(instructions=_joined(instructions, text), model_settings=settings)
    else:
        clone = agent.clone(model_settings=settings)  # the SDK rejects other kinds itself
    memo[id(agent)] = clone
    # The clone's own list: the user's agent keeps its handoffs untouched.
    clone.handoffs = [_guided_handoff(h, text, memo) for h in agent.handoffs]
    return clone


def _guided_handoff(item: Any, text: str | None, memo: dict[int, Agent[Any]]) -> Any:
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


class AtlasTracingProcessor(agents.tracing.TracingProcessor):  # type: ignore[name-defined]  # ditto
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
        if not self.enabled or openinference_active("openai_agents"):
            return  # (OpenInference's own processor traces the SDK: no second span tree)
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
        if trace_entry is None and openinference_active("openai_agents"):
            return
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
                # The SDK's message is generic ("Error running tool"); its data says what.
                data = error.get("data")
                detail = data.get("error") if isinstance(data, dict) else None
                if detail:
                    message = f"{message}: {detail}"
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
        return s.agent_span_name(data.name), SpanKind.INTERNAL, genai.agent_attributes(data.name)
    if kind in ("generation", "response"):
        model = getattr(data, "model", None) or _response_model(data)
        attributes = genai.llm_attributes(model=model or "unknown", provider="openai")
        if not model:
            del attributes[s.GEN_AI_REQUEST_MODEL], attributes[s.OI_LLM_MODEL_NAME]
        return s.chat_span_name(model or "unknown"), SpanKind.CLIENT, attributes
    if kind == "function":
        return s.tool_span_name(data.name), SpanKind.INTERNAL, genai.tool_attributes(data.name)
    if kind == "handoff":
        attributes = genai.framework_attributes(kind)
        return s.handoff_span_name(data.to_agent or "?"), SpanKind.INTERNAL, attributes
    if kind == "guardrail":
        attributes = genai.framework_attributes(kind)
        return s.guardrail_span_name(data.name), SpanKind.INTERNAL, attributes
    name = getattr(data, "name", None) or getattr(data, "server", None)
    return s.framework_span_name(kind, name), SpanKind.INTERNAL, genai.framework_attributes(kind)


def _finish(span: otel_trace.Span, data: Any, content: bool) -> None:
    """The attributes only known when the SDK span ends (usage, outputs, handoff target)."""
    kind = data.type
    if kind == "agent":
        if data.tools is not None:
            span.set_attribute(s.ATLAS_AGENT_TOOLS, list(data.tools))
        if data.handoffs is not None:
            span.set_attribute(s.ATLAS_AGENT_HANDOFFS, list(data.handoffs))
    elif kind == "generation":
        tokens = _tokens(data.usage)
        if content and data.input is not None:
            span.set_attributes(genai.input_attributes(genai.openai_messages(data.input)))
        output = genai.openai_messages(data.output or [])
        reply = output[-1] if output else {}
        genai.set_llm_response(
            span,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            text=genai.text_of(reply.get("content")),
            tool_calls=reply.get("tool_calls") or [],
            content=content,
            has_output=data.output is not None,
        )
        usage.count(*tokens, getattr(data, "model", None))
    elif kind == "response":
        response = data.response
        model = _response_model(data)
        if model:
            span.update_name(s.chat_span_name(model))
            span.set_attribute(s.GEN_AI_REQUEST_MODEL, model)
            span.set_attribute(s.OI_LLM_MODEL_NAME, model)
        if content and data.input is not None:
            span.set_attributes(genai.input_attributes(genai.openai_messages(data.input)))
        tokens = (None, None)
        if response is not None:
            tokens = _answered(span, response, response.id, model, content)
        usage.count(*tokens, model)
    elif kind == "function":
        if content and data.input is not None:
            span.set_attribute(s.GEN_AI_TOOL_CALL_ARGUMENTS, str(data.input))
            span.set_attributes(genai.io_attributes(s.OI_INPUT_VALUE, str(data.input)))
        genai.set_tool_result(span, None if data.output is None else str(data.output))
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


def _tokens(reported: Any) -> tuple[int | None, int | None]:
    """(input, output) tokens of an SDK usage record, or (None, None) when the provider reported
    none: the SDK writes 0/0 for a call it knows happened but got no usage for (a stream
    without ``include_usage``), and a model call never reads zero tokens."""
    if reported is None:
        return None, None
    get = reported.get if isinstance(reported, dict) else lambda k: getattr(reported, k, None)
    input_tokens, output_tokens = get("input_tokens"), get("output_tokens")
    if not input_tokens and not output_tokens:
        return None, None
    return input_tokens, output_tokens


def _answered(
    span: otel_trace.Span, response: Any, response_id: Any, model: str | None, content: bool
) -> tuple[int | None, int | None]:
    """Fill a model-call span from a Responses API response or a ModelResponse (``output``
    items and ``usage``); returns its tokens (None when unreported)."""
    tokens = _tokens(response.usage)
    text, calls = _output(response.output)
    genai.set_llm_response(
        span,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        response_model=model,
        response_id=response_id,
        text=text,
        tool_calls=calls,
        content=content,
    )
    return tokens


def _output(items: Any) -> tuple[str, list[dict[str, Any]]]:
    """(text, tool calls) of a model's output items (Responses API items, or a ModelResponse's
    ``output``)."""
    messages = genai.openai_messages(items or [])
    text = "".join(genai.text_of(m.get("content")) for m in messages if m["role"] == "assistant")
    calls = [c for m in messages for c in m.get("tool_calls") or []]
    return text, calls


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


# --- supervised runs with the SDK's tracing off: run hooks --------------------------------------
def _sdk_traced() -> bool:
    """Whether the SDK traces the run in progress into atlas's processor."""
    processor = _processor
    current = agents.tracing.get_current_trace()
    if processor is None or not processor.enabled or current is None:
        return False
    with processor._lock:
        return current.trace_id in processor._traces


def _model_name(agent: Any) -> str:
    model = agent.model
    if isinstance(model, str) and model:
        return model
    return str(getattr(model, "model", None) or type(model).__name__ if model else "unknown")


class _AtlasHooks(agents.RunHooks):  # type: ignore[name-defined]  # agents: require()d at run time
    """The run's own hooks (if any), plus atlas's record of model and tool calls for runs the
    SDK does not trace (``set_tracing_disabled(True)``, ``RunConfig(tracing_disabled=True)``):
    ``chat {model}`` and ``execute_tool {name}`` spans under the session, and the model calls'
    tokens in the session's tally. With the SDK tracing, :class:`AtlasTracingProcessor` does
    both and these hooks only pass events on."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self._llm: dict[int, otel_trace.Span] = {}
        self._tools: dict[Any, otel_trace.Span] = {}

    async def _forward(self, name: str, *args: Any) -> None:
        if self.user is not None:
            await getattr(self.user, name)(*args)

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        await self._forward("on_agent_start", context, agent)

    async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
        await self._forward("on_agent_end", context, agent, output)

    async def on_handoff(self, context: Any, from_agent: Any, to_agent: Any) -> None:
        await self._forward("on_handoff", context, from_agent, to_agent)

    async def on_llm_start(
        self, context: Any, agent: Any, system_prompt: str | None, input_items: Any
    ) -> None:
        if not _sdk_traced() and not openinference_active("openai_agents"):
            model = _model_name(agent)
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages += genai.openai_messages(input_items)
            span = get_tracer().start_span(
                s.chat_span_name(model),
                kind=SpanKind.CLIENT,
                attributes=genai.llm_attributes(model=model, messages=messages),
            )
            self._llm[id(agent)] = span
        await self._forward("on_llm_start", context, agent, system_prompt, input_items)

    async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
        span = self._llm.pop(id(agent), None)
        if span is not None:
            tokens = _answered(span, response, response.response_id, None, s.capture_content())
            span.end()
            usage.count(*tokens, _model_name(agent))
        await self._forward("on_llm_end", context, agent, response)

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        if not _sdk_traced() and not openinference_active("openai_agents"):
            key = getattr(context, "tool_call_id", None) or id(tool)
            self._tools[key] = get_tracer().start_span(
                s.tool_span_name(tool.name),
                attributes=genai.tool_attributes(
                    tool.name,
                    call_id=getattr(context, "tool_call_id", None),
                    arguments=getattr(context, "tool_arguments", None),
                ),
            )
        await self._forward("on_tool_start", context, agent, tool)

    async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
        key = getattr(context, "tool_call_id", None) or id(tool)
        span = self._tools.pop(key, None)
        if span is not None:
            genai.set_tool_result(span, None if result is None else str(result))
            span.end()
        await self._forward("on_tool_end", context, agent, tool, result)


def _with_hooks(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run's keyword arguments with atlas's hooks wrapped around the caller's."""
    return {**kwargs, "hooks": _AtlasHooks(kwargs.get("hooks"))}


# --- instrumentation --------------------------------------------------------------------------
def _running_span() -> Any:
    """The OpenTelemetry span of the SDK span in progress here (an agent's turn, a function
    tool call), or None: how :func:`atlas_middleware.reward` finds the current step."""
    processor = _processor
    if processor is None:
        return None
    current = agents.tracing.get_current_span()
    if current is None:
        return None
    with processor._lock:
        entry = processor._spans.get(current.span_id)
    if entry is None:
        return None
    if entry.span is not None:
        return entry.span
    span = otel_trace.get_current_span(entry.context)
    return span if span.get_span_context().is_valid else None


def _register_step_resolver() -> None:
    from atlas_middleware.steps import register_resolver

    register_resolver(_running_span)


_register_step_resolver()
_install_lock = threading.Lock()
_processor: AtlasTracingProcessor | None = None
_added = False
_RUNNER_METHODS = ("run", "run_sync", "run_streamed")
_originals: dict[str, Any] = {}  # Runner's own classmethods, while atlas supervises through them
# What instrument(supervise=...) named: agents by id, agent names; with the options for each.
_by_agent: dict[int, tuple[Any, dict[str, Any]]] = {}
_by_name: dict[str, dict[str, Any]] = {}
_supervised: dict[int, SupervisedAgent] = {}  # built on first run, per agent object


class OpenAIAgentsInstrumentor(Instrumentor):
    def _instrument(self, exclusive: bool = False) -> AtlasTracingProcessor:
        global _processor, _added
        tracing = agents.tracing
        if _processor is None:
            _processor = AtlasTracingProcessor()
        if exclusive:
            tracing.set_trace_processors([_processor])
        elif not _registered(tracing, _processor):
            tracing.add_trace_processor(_processor)
            _added = True
        _processor.enabled = True
        return _processor

    def _uninstrument(self) -> None:
        if _processor is not None:
            _processor.enabled = False
        for name, original in _originals.items():
            setattr(agents.Runner, name, original)
        _originals.clear()
        _by_agent.clear()
        _by_name.clear()
        _supervised.clear()


def instrument(
    *,
    exclusive: bool = False,
    supervise: Any = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    **options: Any,
) -> AtlasTracingProcessor:
    """Bridge the SDK's traces into atlas's OpenTelemetry spans (idempotent), and supervise the
    runs of the agents you name, without changing a call site.

    - The processor is added beside the SDK's own (which exports to the OpenAI platform when
      ``OPENAI_API_KEY`` is set); ``exclusive=True`` makes it the only one, stopping that
      export. ``set_tracing_disabled(True)`` stops the SDK from tracing, and so this bridge;
      supervised runs then record their model and tool calls through run hooks instead.
    - ``supervise``: agents (``Agent`` objects) or agent names whose ``Runner.run``,
      ``Runner.run_sync`` and ``Runner.run_streamed`` become supervised sessions, with
      ``teacher``, ``reward``, ``config`` and the other options of
      :func:`supervise_agent`; calling again adds more. Other agents' runs, and runs started
      inside an already supervised session, go to the SDK untouched.
    """
    with _install_lock:
        processor = OpenAIAgentsInstrumentor().instrument(exclusive=exclusive)
        if exclusive:
            agents.tracing.set_trace_processors([processor])
        processor.enabled = True
        if supervise is not None:
            settings = {"teacher": teacher, "reward": reward, "config": config, **options}
            targets = supervise if isinstance(supervise, list | tuple | set) else [supervise]
            for target in targets:
                if isinstance(target, agents.Agent):
                    _by_agent[id(target)] = (target, settings)
                    _supervised.pop(id(target), None)
                elif isinstance(target, str):
                    _by_name[target] = settings
                else:
                    raise TypeError(
                        f"instrument(supervise=...) takes agents or agent names, got "
                        f"{type(target).__name__}"
                    )
            _patch_runner()
        return processor


def uninstrument() -> None:
    """Stop bridging (new SDK traces make no OpenTelemetry spans; spans already open still end)
    and stop supervising through ``Runner``. The SDK has no public call to remove one
    processor, so it stays registered, idle."""
    with _install_lock:
        OpenAIAgentsInstrumentor().uninstrument()


def _registered(tracing: Any, processor: Any) -> bool:
    # Private in the SDK (0.20): when it moves, assume registered rather than add twice.
    multi = getattr(tracing.get_trace_provider(), "_multi_processor", None)
    processors = getattr(multi, "_processors", None)
    if processors is None:
        return _added
    return processor in processors


def _runner(name: str) -> Any:
    """``Runner.<name>`` as the SDK defines it (atlas's supervising wrapper bypassed)."""
    original = _originals.get(name)
    return (
        original.__get__(None, agents.Runner)
        if original is not None
        else getattr(agents.Runner, name)
    )


def _supervised_for(agent: Any) -> SupervisedAgent | None:
    """The supervised form of ``agent`` when instrument(supervise=...) named it, unless a
    session is already running here (its own runs belong to that session)."""
    if current_session() is not None or not isinstance(agent, agents.Agent):
        return None
    with _install_lock:
        found = _supervised.get(id(agent))
        if found is not None and found.agent is agent:
            return found
        entry = _by_agent.get(id(agent))
        settings = entry[1] if entry is not None and entry[0] is agent else _by_name.get(agent.name)
        if settings is None:
            return None
        found = _supervised[id(agent)] = supervise_agent(agent, **settings)
        return found


def _patch_runner() -> None:
    for name in _RUNNER_METHODS:
        if name not in _originals:
            original = agents.Runner.__dict__[name]
            _originals[name] = original
            setattr(agents.Runner, name, classmethod(_supervising(name, original.__func__)))


def _supervising(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if name == "run":

        async def run(cls: Any, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
            supervised = _supervised_for(starting_agent)
            if supervised is None:
                return await func(cls, starting_agent, input, **kwargs)
            return await supervised.run(input, **kwargs)

        wrapper: Callable[..., Any] = run
    elif name == "run_sync":

        def run_sync(cls: Any, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
            supervised = _supervised_for(starting_agent)
            if supervised is None:
                return func(cls, starting_agent, input, **kwargs)
            return supervised.run_sync(input, **kwargs)

        wrapper = run_sync
    else:

        def run_streamed(cls: Any, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
            supervised = _supervised_for(starting_agent)
            if supervised is None:
                return func(cls, starting_agent, input, **kwargs)
            return supervised.run_streamed(input, **kwargs)

        wrapper = run_streamed
    return functools.wraps(func)(wrapper)
