"""LangChain core: chat-model, LLM, tool and chain callbacks become OpenTelemetry GenAI spans.

    from atlas_middleware.integrations import langchain as atlas_langchain

    atlas_langchain.instrument()          # every LangChain run in this process is traced
    chain.invoke(...)                     # spans nest under the current (session) span

    # or per call, without a global hook
    chain.invoke(..., config={"callbacks": [atlas_langchain.AtlasCallbackHandler()]})

Span shapes (names from :mod:`atlas_middleware.telemetry.schema`):

- chat models → ``chat {model}`` (``gen_ai.operation.name=chat``, request/response model,
  provider, ``gen_ai.usage.input_tokens``/``output_tokens``, input/output messages when content
  capture is on); completion LLMs → ``text_completion {model}``;
- tools → ``execute_tool {name}`` (``gen_ai.tool.name``, ``gen_ai.tool.call.id``);
- LangGraph nodes → ``node {name}`` (``atlas.node.name``, ``atlas.node.step``); other chains →
  ``chain {name}``; a top-level chain outside any span → ``invoke_workflow {name}`` (a session
  of its own in the store, like any GenAI workflow root).

Parenting follows LangChain's ``run_id``/``parent_run_id``; a run without a traced parent hangs
under the current OpenTelemetry span. Internal runnables that LangChain marks hidden
(``langsmith:hidden``) get no span; their children hang under the nearest traced ancestor.
Spans are never made "current": callbacks of one run may fire on different threads, and
attaching a context there could not be undone safely.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from atlas_middleware.integrations._base import Instrumentor, openinference_active
from atlas_middleware.integrations._common import require
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from atlas_middleware.telemetry import genai, get_tracer, usage
from atlas_middleware.telemetry import schema as s

require("langchain_core", "langchain")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402

from atlas_middleware.errors import first_line  # noqa: E402

if TYPE_CHECKING:
    from langchain_core.outputs import LLMResult

__all__ = [
    "AtlasCallbackHandler",
    "AtlasChatModel",
    "instrument",
    "is_instrumented",
    "uninstrument",
    "with_guidance",
]

_HIDDEN_TAG = "langsmith:hidden"  # LangChain/LangGraph mark their plumbing runnables with it
# Exceptions LangGraph raises on purpose to pause or re-route a run: not failures.
_CONTROL_FLOW = frozenset({"GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand"})
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_ATLAS_PROVIDER = "atlas-middleware"  # ls_provider of AtlasChatModel: it traces its own calls


@dataclass(slots=True)
class _Run:
    span: Span | None  # None: a run that gets no span of its own (hidden, or the graph root)
    context: otel_context.Context  # where this run's children hang
    count: bool = False  # a model call whose tokens this handler adds to the session's tally


class AtlasCallbackHandler(BaseCallbackHandler):
    """Turns LangChain callback events into OpenTelemetry spans (see the module doc).

    One instance can serve any number of concurrent runs, sync and async: state is keyed by
    ``run_id`` under a lock, and the handler runs inline (span bookkeeping is cheap and must not
    wait for an executor).
    """

    run_inline = True  # async callback managers call it directly, in the event loop
    raise_error = False  # a tracing bug must never break the user's chain

    def __init__(self, *, capture_content: bool | None = None) -> None:
        super().__init__()
        self._capture = capture_content
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    # --- bookkeeping -------------------------------------------------------------------------
    def _content(self) -> bool:
        return s.capture_content() if self._capture is None else self._capture

    def _parent(self, parent_run_id: UUID | None) -> otel_context.Context:
        current = otel_context.get_current()
        if parent_run_id is not None:
            with self._lock:
                parent = self._runs.get(parent_run_id)
            if parent is not None:
                # A session that began inside the parent run (a supervised node) starts a new
                # trace: runs inside it belong to the session, not to the outer graph.
                here = trace.get_current_span(current).get_span_context()
                there = trace.get_current_span(parent.context).get_span_context()
                if not (here.is_valid and there.is_valid and here.trace_id != there.trace_id):
                    return parent.context
        return current

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str,
        attributes: Mapping[str, Any],
        *,
        count: bool = False,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span | None:
        if openinference_active("langchain"):
            # OpenInference's LangChain instrumentor traces this run already: no second span;
            # model calls are still counted in the session's tokens.
            self._skip(run_id, parent_run_id, count=count)
            return None
        parent = self._parent(parent_run_id)
        span = get_tracer().start_span(
            name,
            context=parent,
            kind=kind,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        with self._lock:
            self._runs[run_id] = _Run(span, trace.set_span_in_context(span, parent), count)
        return span

    def _skip(self, run_id: UUID, parent_run_id: UUID | None, *, count: bool = False) -> None:
        parent = self._parent(parent_run_id)
        with self._lock:
            self._runs[run_id] = _Run(None, parent, count)

    def context_of(self, run_id: UUID) -> otel_context.Context | None:
        """Where spans made inside run ``run_id`` belong (None for a run it has not seen)."""
        with self._lock:
            run = self._runs.get(run_id)
        return run.context if run is not None else None

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _end(self, run_id: UUID, error: BaseException | None = None) -> Span | None:
        run = self._pop(run_id)
        if run is None or run.span is None:
            return None
        span = run.span
        if error is not None:
            if _is_control_flow(error):
                span.set_attribute(s.ATLAS_INTERRUPTED, True)
            else:
                span.record_exception(error)
                span.set_attribute(s.ERROR_TYPE, type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, first_line(error, 200)))
        span.end()
        return span

    # --- chains and LangGraph nodes ------------------------------------------------------------
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or _serialized_name(serialized) or "chain"
        metadata = metadata or {}
        if _HIDDEN_TAG in (tags or ()):
            self._skip(run_id, parent_run_id)
            return
        if parent_run_id is None and _take_graph_root():
            # The supervised graph itself: its session root span already stands for it.
            self._skip(run_id, parent_run_id)
            return
        node = metadata.get("langgraph_node")
        content = self._content()
        value = _text(inputs) if content else None
        if node is not None and node == name:
            attributes = genai.framework_attributes(s.FRAMEWORK_NODE, input=value, content=content)
            attributes[s.ATLAS_NODE_NAME] = node
            attributes[s.ATLAS_NODE_STEP] = _int(metadata.get("langgraph_step"))
            span_name = s.node_span_name(node)
        else:
            attributes = genai.framework_attributes(s.FRAMEWORK_CHAIN, input=value, content=content)
            span_name = s.chain_span_name(name)
            top = parent_run_id is None and not trace.get_current_span().get_span_context().is_valid
            if top:  # an unsupervised run of its own: the agent's run, a session in the store
                attributes[s.GEN_AI_OPERATION_NAME] = s.OP_INVOKE_WORKFLOW
                attributes[s.ATLAS_SPAN_ROLE] = s.ROLE_AGENT
                span_name = s.workflow_span_name(name)
        self._start(run_id, parent_run_id, span_name, attributes)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None and run.span is not None and self._content():
            genai.set_output(run.span, _text(outputs))
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # --- models --------------------------------------------------------------------------------
    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if (metadata or {}).get("ls_provider") == _ATLAS_PROVIDER:
            # An atlas ChatModel behind AtlasChatModel records its own chat span (and usage)
            # under this run's parent; a second span here would count the call twice.
            self._skip(run_id, parent_run_id)
            return
        model, provider = _model_of(serialized, metadata, kwargs)
        attributes = genai.llm_attributes(
            model=model,
            provider=provider,
            messages=[_message_dict(m) for m in messages[0]] if messages else None,
            content=self._content(),
        )
        self._start(
            run_id,
            parent_run_id,
            s.chat_span_name(model),
            attributes,
            count=True,
            kind=SpanKind.CLIENT,
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model, provider = _model_of(serialized, metadata, kwargs)
        attributes = genai.llm_attributes(
            model=model,
            provider=provider,
            operation=s.OP_TEXT_COMPLETION,
            messages=[{"role": "user", "content": p} for p in prompts] if prompts else None,
            content=self._content(),
        )
        self._start(
            run_id,
            parent_run_id,
            s.text_completion_span_name(model),
            attributes,
            count=True,
            kind=SpanKind.CLIENT,
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            input_tokens, output_tokens, model = _usage(response)
            if run.count:
                usage.count(input_tokens, output_tokens, model)
            if run.span is not None:
                text, calls, finish = _reply(response)
                genai.set_llm_response(
                    run.span,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    response_model=model,
                    text=text,
                    tool_calls=calls,
                    finish=finish,
                    content=self._content(),
                )
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # --- tools ---------------------------------------------------------------------------------
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or _serialized_name(serialized) or "tool"
        attributes = genai.tool_attributes(
            name,
            call_id=kwargs.get("tool_call_id"),
            arguments=inputs if inputs is not None else input_str,
            content=self._content(),
        )
        self._start(run_id, parent_run_id, s.tool_span_name(name), attributes)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None and run.span is not None:
            call_id = getattr(output, "tool_call_id", None)
            if call_id:
                run.span.set_attribute(s.GEN_AI_TOOL_CALL_ID, str(call_id))
            genai.set_tool_result(
                run.span, _text(getattr(output, "content", output)), content=self._content()
            )
        self._end(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # Retrievers are chain-like steps; trace them as chains so nothing in a run goes missing.
    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or _serialized_name(serialized) or "retriever"
        attributes = genai.framework_attributes(
            s.FRAMEWORK_CHAIN, input=query, content=self._content()
        )
        self._start(run_id, parent_run_id, s.chain_span_name(name), attributes)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)


# --- the teacher's guidance in a chain ------------------------------------------------------
def with_guidance(value: Any) -> list[Any]:
    """The messages of ``value`` (a prompt value, a message list, anything LangChain turns into
    messages) carrying the current supervised call's guidance: merged into the first system
    message (after its text), else prepended as one. Outside a supervised call, or without
    guidance, the messages unchanged. A chain step: ``prompt | with_guidance | llm``."""
    from langchain_core.messages import SystemMessage, convert_to_messages
    from langchain_core.prompt_values import PromptValue

    from atlas_middleware.guidance import guided_system_prompt, rendered_guidance

    if isinstance(value, PromptValue):
        messages = value.to_messages()
    else:
        listed = value if isinstance(value, list | tuple) else [value]
        messages = convert_to_messages(list(listed))
    text = rendered_guidance()
    if text is None:
        return list(messages)
    for i, message in enumerate(messages):
        if message.type != "system":
            continue
        content = message.content
        guided: str | list[str | dict[Any, Any]] | None
        if isinstance(content, str):
            guided = guided_system_prompt(content or None)
        else:
            guided = [*content, {"type": "text", "text": text}]
        return [*messages[:i], message.model_copy(update={"content": guided}), *messages[i + 1 :]]
    return [SystemMessage(text), *messages]


# --- atlas models as LangChain chat models -------------------------------------------------
class AtlasChatModel(BaseChatModel):
    """Any atlas :class:`~atlas_middleware.models.ChatModel` (the embedded SmolLM2, a litellm
    model, an OpenAI-compatible endpoint) as a LangChain chat model, so a LangGraph agent can
    run fully offline: ``AtlasChatModel(model=build_model("embedded"), max_tokens=64)``.

    Text in, text out (no tool calling). The atlas model records its own ``chat {model}`` span
    with usage, hung where LangChain's run would be (under the calling node)."""

    model: Any
    max_tokens: int = 256
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "atlas"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": getattr(self.model, "name", "atlas")}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = _ATLAS_PROVIDER
        params["ls_model_name"] = getattr(self.model, "name", "atlas")
        return params

    def _generate(
        self,
        messages: list[Any],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Any:
        from atlas_middleware.portal import get_portal

        with _inside(run_manager):
            result = get_portal().call(lambda: self._chat(messages, stop))
        return _chat_result(result)

    async def _agenerate(
        self,
        messages: list[Any],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> Any:
        with _inside(run_manager):
            result = await self._chat(messages, stop)
        return _chat_result(result)

    async def _chat(self, messages: list[Any], stop: list[str] | None) -> Any:
        chat = [
            {"role": m["role"], "content": _plain(m["content"])}
            for m in map(_message_dict, messages)
        ]
        return await self.model.chat(
            chat, max_tokens=self.max_tokens, temperature=self.temperature, stop=stop
        )


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content or [])


def _chat_result(result: Any) -> Any:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    usage = None
    if result.input_tokens is not None or result.output_tokens is not None:
        i, o = result.input_tokens or 0, result.output_tokens or 0
        usage = {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}
    message = AIMessage(
        content=result.text,
        usage_metadata=usage,
        response_metadata={"model_name": result.model, "finish_reason": result.finish_reason},
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


@contextlib.contextmanager
def _inside(run_manager: Any) -> Iterator[None]:
    """Make the span context of LangChain run ``run_manager`` current (when an atlas handler
    traces it), so the atlas model's own span hangs where the run would."""
    context = None
    if run_manager is not None:
        for handler in getattr(run_manager, "handlers", ()):
            if isinstance(handler, AtlasCallbackHandler):
                context = handler.context_of(run_manager.run_id)
                if context is not None:
                    break
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


# --- global installation ---------------------------------------------------------------------
class _HandlerHook:
    """What LangChain's configure hook reads (``.get()``): the handler of the current context
    (set by atlas's integrations for the runs they supervise) or the process-wide one installed
    by :func:`instrument`. A plain ContextVar could not be process-wide: threads start with
    empty contexts."""

    def __init__(self) -> None:
        self.var: contextvars.ContextVar[AtlasCallbackHandler | None] = contextvars.ContextVar(
            "atlas_langchain_handler", default=None
        )
        self.installed: AtlasCallbackHandler | None = None

    def get(self) -> AtlasCallbackHandler | None:
        return self.var.get() or self.installed


_hook = _HandlerHook()
_registered = False
_register_lock = threading.Lock()
_default: AtlasCallbackHandler | None = None
# Set by the LangGraph integration around a supervised graph run: that run's outermost chain is
# the graph itself, already represented by the session root span, so it gets no span.
_graph_root: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "atlas_langgraph_root", default=None
)


def _running_span() -> Any:
    """The span of the LangChain run whose code runs here (a LangGraph node, a tool), or None:
    LangChain keeps the config of the running runnable in a context variable, whose callbacks'
    parent is that run. How :func:`atlas_middleware.reward` finds the current step."""
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get()
    callbacks = config.get("callbacks") if config else None
    run_id = getattr(callbacks, "parent_run_id", None)
    if run_id is None:
        return None
    for handler in getattr(callbacks, "handlers", ()):
        if isinstance(handler, AtlasCallbackHandler):
            context = handler.context_of(run_id)
            if context is not None:
                span = trace.get_current_span(context)
                if span.get_span_context().is_valid:
                    return span
    return None


def _register_step_resolver() -> None:
    from atlas_middleware.steps import register_resolver

    register_resolver(_running_span)


_register_step_resolver()


def _register() -> None:
    global _registered
    with _register_lock:
        if _registered:
            return
        from langchain_core.tracers.context import register_configure_hook

        register_configure_hook(_hook, inheritable=True)  # type: ignore[arg-type]
        _registered = True


def default_handler() -> AtlasCallbackHandler:
    """The handler instance atlas uses when none was given (one per process)."""
    global _default
    if _default is None:
        _default = AtlasCallbackHandler()
    return _default


class LangChainInstrumentor(Instrumentor):
    def _instrument(self, handler: AtlasCallbackHandler | None = None) -> AtlasCallbackHandler:
        _register()
        _hook.installed = handler or default_handler()
        return _hook.installed

    def _uninstrument(self) -> None:
        _hook.installed = None


def instrument(handler: AtlasCallbackHandler | None = None) -> AtlasCallbackHandler:
    """Trace every LangChain run in this process (all threads), without passing callbacks.
    Idempotent; returns the installed handler (a later ``handler=`` replaces it)."""
    instrumentor = LangChainInstrumentor()
    installed = instrumentor.instrument(handler=handler)
    if handler is not None and installed is not handler:
        _hook.installed = instrumentor._installed = handler
    return _hook.installed or installed


def uninstrument() -> None:
    """Stop tracing LangChain runs globally (handlers passed explicitly keep working)."""
    LangChainInstrumentor().uninstrument()


def is_instrumented() -> bool:
    return _hook.installed is not None


@contextlib.contextmanager
def traced(
    handler: AtlasCallbackHandler | None = None, *, graph_root: bool = False
) -> Iterator[None]:
    """Trace the LangChain runs started inside this block (this context and tasks/threads that
    copy it). ``graph_root``: the first top-level chain is a graph whose session root span is
    already open, so it gets no span and its nodes hang directly under the session."""
    _register()
    token = _hook.var.set(handler or _hook.installed or default_handler())
    root_token = _graph_root.set([True] if graph_root else None)
    try:
        yield
    finally:
        _graph_root.reset(root_token)
        _hook.var.reset(token)


def _take_graph_root() -> bool:
    pending = _graph_root.get()
    if pending:
        pending.clear()  # only the first top-level chain is the graph
        return True
    return False


# --- conversions -----------------------------------------------------------------------------
def _is_control_flow(error: BaseException) -> bool:
    return any(cls.__name__ in _CONTROL_FLOW for cls in type(error).__mro__)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _serialized_name(serialized: Mapping[str, Any] | None) -> str | None:
    if not serialized:
        return None
    if serialized.get("name"):
        return str(serialized["name"])
    ids = serialized.get("id")
    if isinstance(ids, list) and ids:
        return str(ids[-1])
    return None


def _model_of(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> tuple[str, str | None]:
    """(model name, provider) of a LangChain model run."""
    metadata = metadata or {}
    params = kwargs.get("invocation_params") or {}
    ser_kwargs = (serialized or {}).get("kwargs") or {}
    model = (
        metadata.get("ls_model_name")
        or params.get("model")
        or params.get("model_name")
        or ser_kwargs.get("model")
        or ser_kwargs.get("model_name")
        or _serialized_name(serialized)
        or "unknown"
    )
    provider = metadata.get("ls_provider")
    return str(model), str(provider) if provider else None


def _usage(response: LLMResult) -> tuple[int | None, int | None, str | None]:
    """Token counts and the response model, from the message's ``usage_metadata`` (LangChain's
    standard) or the provider's ``llm_output`` (older integrations)."""
    input_tokens = output_tokens = None
    model = None
    for batch in response.generations:
        for generation in batch:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None)
            if usage:
                input_tokens = (input_tokens or 0) + int(usage.get("input_tokens") or 0)
                output_tokens = (output_tokens or 0) + int(usage.get("output_tokens") or 0)
            meta = getattr(message, "response_metadata", None) or {}
            model = model or meta.get("model_name") or meta.get("model")
    output = response.llm_output or {}
    if input_tokens is None and output_tokens is None:
        usage = output.get("token_usage") or output.get("usage") or {}
        if isinstance(usage, Mapping):
            found_in = usage.get("prompt_tokens", usage.get("input_tokens"))
            found_out = usage.get("completion_tokens", usage.get("output_tokens"))
            input_tokens = _int(found_in)
            output_tokens = _int(found_out)
    model = model or output.get("model_name") or output.get("model")
    return input_tokens, output_tokens, model


def _reply(response: LLMResult) -> tuple[str, list[dict[str, Any]], Any]:
    """(text, tool calls, finish reason) of a model run's first generation."""
    for batch in response.generations[:1]:
        for generation in batch[:1]:
            message = getattr(generation, "message", None)
            info = getattr(generation, "generation_info", None) or {}
            meta = getattr(message, "response_metadata", None) or {}
            finish = (
                info.get("finish_reason") or meta.get("finish_reason") or meta.get("stop_reason")
            )
            if message is None:
                return generation.text, [], finish
            normal = _message_dict(message)
            return genai.text_of(normal["content"]), normal.get("tool_calls", []), finish
    return "", [], None


def _message_dict(message: Any) -> dict[str, Any]:
    """A LangChain message in the plain shape atlas's span helpers take."""
    role = _ROLES.get(getattr(message, "type", ""), getattr(message, "type", "user"))
    out: dict[str, Any] = {"role": role, "content": getattr(message, "content", message)}
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls:
        out["tool_calls"] = [
            {"id": c.get("id"), "name": c.get("name"), "arguments": c.get("args")}
            for c in tool_calls
        ]
    if getattr(message, "tool_call_id", None):
        out["tool_call_id"] = message.tool_call_id
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    from atlas_middleware.storage.records import json_dumps

    if isinstance(value, Mapping):
        value = {k: _jsonable(v) for k, v in value.items()}
    elif isinstance(value, Sequence):
        value = [_jsonable(v) for v in value]
    return json_dumps(value)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "type") and hasattr(value, "content"):
        return _message_dict(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
