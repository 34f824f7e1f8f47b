"""LlamaIndex: supervised ``Workflow`` runs and steps, OpenTelemetry spans for the instrumentation
dispatcher, and the teacher's guidance in every LLM call of a supervised run.

    from atlas_middleware.integrations.llama_index import supervise_workflow

    flow = supervise_workflow(ResearchFlow(timeout=120), agent="research", teacher="embedded")
    handler = flow.run(query="...")      # one supervised session, like Workflow.run()
    async for event in handler.stream_events():
        ...
    result = await handler

    class ResearchFlow(Workflow):
        @step
        @supervise_step(agent="answer", reference=lambda ev: ev.expected)  # one step alone
        async def answer(self, ev: QuestionEvent) -> StopEvent: ...

    instrument()  # tracing only: workflow runs, steps, LLM and tool calls become spans

Guidance reaches the model through LlamaIndex's own LLM classes: the supervising wrappers (never
:func:`instrument`, which only traces) wrap the chat and completion methods of the ``LLM`` classes
so that, while a supervised run is in progress, the rendered guidance is merged into the first
system message (or prepended as one) and put before completion prompts. Outside a supervised run
the wrappers call the original method with exactly the caller's arguments, positional or
keyword. See docs/integrations/llama-index.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

from atlas_middleware.integrations._common import require

require("llama_index.core", "llama-index")

from atlas_middleware.integrations._base import (  # noqa: E402
    Instrumentor,
    openinference_active,
)
from llama_index.core.base.llms.base import BaseLLM  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events import BaseEvent  # noqa: E402
from llama_index.core.instrumentation.events.exception import ExceptionEvent  # noqa: E402
from llama_index.core.instrumentation.events.llm import (  # noqa: E402
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.events.span import SpanDropEvent  # noqa: E402
from llama_index.core.instrumentation.span import BaseSpan, active_span_id  # noqa: E402
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler  # noqa: E402
from llama_index.core.llms import CustomLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback  # noqa: E402
from llama_index.core.tools.types import BaseTool  # noqa: E402
from llama_index.core.workflow import Event, StopEvent, Workflow  # noqa: E402
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.trace import Status, StatusCode  # noqa: E402
from pydantic import Field, PrivateAttr  # noqa: E402

from atlas_middleware.guidance import guided_system_prompt, rendered_guidance  # noqa: E402
from atlas_middleware.supervise import answer_text, supervise  # noqa: E402
from atlas_middleware.telemetry import genai, get_tracer, usage  # noqa: E402
from atlas_middleware.telemetry import schema as s  # noqa: E402

__all__ = [
    "AtlasLLM",
    "SupervisedHandler",
    "SupervisedWorkflow",
    "instrument",
    "supervise_step",
    "supervise_workflow",
    "uninstrument",
]

_CHAT_METHODS = ("chat", "achat", "stream_chat", "astream_chat")
_COMPLETION_METHODS = ("complete", "acomplete", "stream_complete", "astream_complete")
_TOOL_METHODS = ("call", "acall", "__call__")
_RECENT_SPANS = 256  # exited spans kept for late events (a stream's end arrives after its exit)


# --- answers and tasks -------------------------------------------------------------------------
def _event_fields(event: Event) -> dict[str, Any]:
    """An event's data: declared fields plus the free-form ones (``StartEvent(query=...)``)."""
    fields = {name: getattr(event, name, None) for name in type(event).model_fields}
    fields.update(getattr(event, "_data", None) or {})
    return fields


def _answer(result: Any) -> str:
    """The answer text of a workflow result or a step's output event (what validation and the
    reward read): for an agent's output (``FunctionAgent``, ``AgentWorkflow``: an
    ``AgentOutput``), the text of its final message, the text the user saw."""
    if isinstance(result, StopEvent):
        return _answer(result.result)
    message = getattr(result, "response", None)
    if isinstance(result, Event) and isinstance(message, ChatMessage):
        return message.content or ""
    if isinstance(result, Event):
        fields = _event_fields(result)
        if len(fields) == 1:
            return _answer(next(iter(fields.values())))
        return answer_text(
            {k: v if isinstance(v, str | int | float) else str(v) for k, v in fields.items()}
        )
    if isinstance(result, str | dict | list) or result is None:
        return answer_text(result)
    return str(result)  # LlamaIndex responses and agent outputs print as their text


def _event_task(event: Event, field: str | None) -> str:
    fields = _event_fields(event)
    if field is not None and field in fields:
        return str(fields[field])
    for value in fields.values():
        if isinstance(value, str) and value:
            return value
    return answer_text({k: str(v) for k, v in fields.items()})


def _run_task(field: str | None) -> Callable[..., str]:
    """The session's task for ``run(**kwargs)``: the named keyword, else the first text one."""

    def task(ctx: Any = None, start_event: Any = None, **kwargs: Any) -> str:
        instrument()
        _install_guidance()  # cheap when done; picks up LLM classes defined since the last run
        if isinstance(start_event, Event):
            return _event_task(start_event, field)
        if field is not None and field in kwargs:
            return str(kwargs[field])
        for value in kwargs.values():
            if isinstance(value, str) and value:
                return value
        return answer_text({k: str(v) for k, v in kwargs.items()})

    return task


# --- guidance into LlamaIndex LLM calls --------------------------------------------------------
def _guided_messages(messages: Any, text: str) -> Any:
    """A new message list carrying ``text`` in its first system message; the caller's list and
    messages are never modified. Already guided (a nested call of the same run): unchanged."""
    guided = list(messages)
    for i, message in enumerate(guided):
        if not isinstance(message, ChatMessage) or message.role != MessageRole.SYSTEM:
            continue
        content = message.content or ""
        if text in content:
            return messages
        if all(isinstance(block, TextBlock) for block in message.blocks):
            blocks: list[Any] = [TextBlock(text=guided_system_prompt(content or None) or text)]
        else:  # images or documents in the system message: keep them, add a text part
            blocks = [*message.blocks, TextBlock(text=text)]
        guided[i] = message.model_copy(update={"blocks": blocks})
        return guided
    if any(isinstance(m, ChatMessage) and text in (m.content or "") for m in guided):
        return messages
    return [ChatMessage(role=MessageRole.SYSTEM, content=text), *guided]


def _guided_prompt(prompt: Any, text: str) -> Any:
    if not isinstance(prompt, str) or text in prompt:
        return prompt
    return f"{text}\n\n{prompt}"


def _guided_method(original: Any, name: str) -> Callable[..., Any]:
    chat = name in _CHAT_METHODS
    guide = _guided_messages if chat else _guided_prompt
    # The messages/prompt parameter: the first after self, passed by position or by name
    # (FunctionAgent calls ``astream_chat(messages=...)``).
    try:
        parameter = list(inspect.signature(original).parameters)[1]
    except (TypeError, ValueError, IndexError):
        parameter = "messages" if chat else "prompt"

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = original.__get__(self, type(self))
        text = rendered_guidance()
        if text is None:  # not in a supervised run: the caller's arguments, untouched
            return bound(*args, **kwargs)
        if args:
            args = (guide(args[0], text), *args[1:])
        elif parameter in kwargs:
            kwargs = {**kwargs, parameter: guide(kwargs[parameter], text)}
        return bound(*args, **kwargs)

    if name.startswith("a"):

        async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await call(self, *args, **kwargs)

        method: Callable[..., Any] = acall
    else:
        method = call
    method.__name__ = name
    method.__qualname__ = getattr(original, "__qualname__", name)
    method.__doc__ = getattr(original, "__doc__", None)
    method.__wrapped__ = original  # type: ignore[attr-defined]
    method._atlas_guided = True  # type: ignore[attr-defined]
    return method


_patch_lock = threading.Lock()
_patched: dict[tuple[type, str], Any] = {}  # (class, method) -> the original class attribute


def _llm_classes() -> list[type]:
    found: list[type] = []
    pending = [BaseLLM]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return found


def _install_guidance() -> None:
    """Wrap the chat/completion methods that each LLM class defines itself (inherited ones are
    wrapped where they are defined). Idempotent; classes defined later are wrapped on the next
    supervised run."""
    with _patch_lock:
        for cls in _llm_classes():
            for name in (*_CHAT_METHODS, *_COMPLETION_METHODS):
                original = cls.__dict__.get(name)
                if (
                    original is None
                    or getattr(original, "__isabstractmethod__", False)
                    or getattr(original, "_atlas_guided", False)
                ):
                    continue
                setattr(cls, name, _guided_method(original, name))
                _patched[(cls, name)] = original


def _remove_guidance() -> None:
    with _patch_lock:
        for (cls, name), original in _patched.items():
            setattr(cls, name, original)
        _patched.clear()


# --- dispatcher spans and events as OpenTelemetry spans -----------------------------------------
class _Span(BaseSpan):
    """One dispatcher span and the OpenTelemetry span standing for it."""

    otel: Any = None
    kind: str = "other"  # workflow, step, llm, tool, other
    owner: int = 0  # id() of the LLM/tool instance
    alias: bool = False  # a nested call on the same LLM/tool: shares the outer span
    streaming: bool = False  # ends when the stream's end event arrives
    has_input: bool = False
    counted: bool = False  # its tokens are in the session's tally


def _label(id_: str) -> str:
    """``MyFlow.answer-<uuid4>`` → ``MyFlow.answer``."""
    return id_[:-37] if len(id_) > 37 and id_[-37] == "-" else id_


def _model_name(llm: Any) -> str:
    for attribute in ("model", "model_name"):
        value = getattr(llm, attribute, None)
        if isinstance(value, str) and value:
            return value
    try:
        name = llm.metadata.model_name
    except Exception:
        name = None
    return name if isinstance(name, str) and name and name != "unknown" else type(llm).__name__


def _plain_messages(messages: Any) -> list[dict[str, Any]]:
    """LlamaIndex chat messages in the plain shape atlas's span helpers take."""
    out = []
    for message in messages:
        entry: dict[str, Any] = {
            "role": str(getattr(message.role, "value", message.role)),
            "content": message.content or "",
            "tool_calls": _tool_calls(message),
        }
        extra = getattr(message, "additional_kwargs", None) or {}
        if extra.get("tool_call_id"):
            entry["tool_call_id"] = extra["tool_call_id"]
        out.append(entry)
    return out


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    """The tool calls a message carries: ``ToolCallBlock`` blocks, or the OpenAI-style
    ``additional_kwargs["tool_calls"]`` older LLM classes put there."""
    calls = [
        {"id": b.tool_call_id, "name": b.tool_name, "arguments": b.tool_kwargs}
        for b in getattr(message, "blocks", None) or []
        if getattr(b, "block_type", None) == "tool_call"
    ]
    if calls:
        return calls
    for call in (getattr(message, "additional_kwargs", None) or {}).get("tool_calls") or []:
        get = call.get if isinstance(call, dict) else lambda k, c=call: getattr(c, k, None)
        function = get("function")
        fget = (
            function.get
            if isinstance(function, dict)
            else lambda k, f=function: getattr(f, k, None)
        )
        calls.append({"id": get("id"), "name": fget("name"), "arguments": fget("arguments")})
    return calls


def _usage(response: Any) -> tuple[int | None, int | None]:
    """Token counts from a ChatResponse/CompletionResponse: the OpenAI-style counts LlamaIndex
    puts in ``additional_kwargs``, else the provider's raw ``usage``."""
    extra = getattr(response, "additional_kwargs", None) or {}
    prompt, completion = extra.get("prompt_tokens"), extra.get("completion_tokens")
    if prompt is None and completion is None:
        raw = getattr(response, "raw", None)
        usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
        if isinstance(usage, Mapping):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        elif usage is not None:
            prompt = getattr(usage, "prompt_tokens", None)
            completion = getattr(usage, "completion_tokens", None)
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def _finish_reason(raw: Any) -> Any:
    """The provider's finish reason from a response's raw payload (OpenAI-style), if any."""
    choices = raw.get("choices") if isinstance(raw, Mapping) else getattr(raw, "choices", None)
    if not choices:
        return None
    first = choices[0]
    return (
        first.get("finish_reason")
        if isinstance(first, Mapping)
        else getattr(first, "finish_reason", None)
    )


def _response_model(response: Any) -> str | None:
    raw = getattr(response, "raw", None)
    model = raw.get("model") if isinstance(raw, Mapping) else getattr(raw, "model", None)
    return model if isinstance(model, str) else None


def _parent_context(parent: Any) -> Any:
    """The context to start a child of dispatcher span ``parent`` in: the parent's, unless an
    OpenTelemetry span was opened inside it since (a supervised step's session root), which is
    then the nearer parent; None (the current context) without a parent."""
    if parent is None:
        return None
    current = trace.get_current_span()
    started = getattr(current, "start_time", None)
    if current.is_recording() and started and started > parent.start_time:
        return None
    return trace.set_span_in_context(parent)


class _SpanHandler(BaseSpanHandler[_Span]):
    """Dispatcher spans → OpenTelemetry spans, parented like the dispatcher's tree; the outermost
    ones under whatever OpenTelemetry span is current (a supervised session's root).

    Spans are started without becoming the current context: LlamaIndex may end a span in another
    task or callback than the one that started it."""

    _recent: OrderedDict[str, _Span] = PrivateAttr(default_factory=OrderedDict)

    @classmethod
    def class_name(cls) -> str:
        return "AtlasSpanHandler"

    def lookup(self, span_id: str | None) -> _Span | None:
        if span_id is None:
            return None
        return self.open_spans.get(span_id) or self._recent.get(span_id)

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> _Span | None:
        parent = self.open_spans.get(parent_span_id) if parent_span_id else None
        label = _label(id_)
        method = label.rsplit(".", 1)[-1]
        content = s.capture_content()
        attributes: dict[str, Any] = {}
        kind = "other"
        owner = id(instance) if instance is not None else 0
        if isinstance(instance, AtlasLLM):
            # The atlas model records its own chat span (with usage); this placeholder only
            # tells it where it hangs (see AtlasLLM._parent).
            return _Span(
                id_=id_,
                parent_id=parent_span_id,
                otel=parent.otel if parent is not None else None,
                kind="atlas",
                alias=True,
            )
        if isinstance(instance, BaseLLM) and method in (*_CHAT_METHODS, *_COMPLETION_METHODS):
            kind = "llm"
            model = _model_name(instance)
            chat = method in _CHAT_METHODS
            name = s.chat_span_name(model) if chat else s.text_completion_span_name(model)
            attributes = genai.llm_attributes(
                model=model,
                provider=instance.class_name(),
                operation=s.OP_CHAT if chat else s.OP_TEXT_COMPLETION,
            )
        elif isinstance(instance, BaseTool) and method in _TOOL_METHODS:
            kind = "tool"
            try:
                tool = instance.metadata.get_name()
            except Exception:
                tool = type(instance).__name__
            name = s.tool_span_name(tool)
            arguments = {k: v for k, v in bound_args.arguments.items() if k not in ("self", "args")}
            arguments.update(arguments.pop("kwargs", None) or {})
            if bound_args.arguments.get("args"):
                arguments["args"] = list(bound_args.arguments["args"])
            attributes = genai.tool_attributes(tool, arguments=arguments, content=content)
        elif isinstance(instance, Workflow) and method == "run":
            kind = "workflow"
            workflow = instance._workflow_name or type(instance).__name__
            name = s.workflow_span_name(workflow)
            start = bound_args.arguments.get("start_event")
            task = _event_task(start, None) if isinstance(start, Event) else None
            if task is None and bound_args.arguments.get("kwargs"):
                task = _run_task(None)(**bound_args.arguments["kwargs"])
            attributes = genai.agent_attributes(workflow, input=task, content=content)
            # A workflow (or agent) run: a session of its own in the store when nothing
            # encloses it, the agent's run inside a supervised session otherwise.
            attributes[s.GEN_AI_OPERATION_NAME] = s.OP_INVOKE_WORKFLOW
        elif parent is not None and parent.kind == "workflow" and instance is None:
            kind = "step"
            name = s.step_span_name(method)
            attributes = genai.framework_attributes(s.FRAMEWORK_STEP)
            attributes[s.ATLAS_STEP_NAME] = method
            event = (tags or {}).get("llamaindex.step.input_event")
            if event:
                attributes[s.ATLAS_STEP_INPUT_EVENT] = event
        else:
            name = label
            attributes = genai.framework_attributes("call")  # another instrumented call
        if (
            parent is not None
            and kind in ("llm", "tool")
            and parent.kind == kind
            and parent.owner == owner
        ):  # achat → chat → complete on one LLM: one span
            return _Span(
                id_=id_,
                parent_id=parent_span_id,
                otel=parent.otel,
                kind=kind,
                owner=owner,
                alias=True,
                has_input=parent.has_input,
            )
        if openinference_active("llama_index"):
            # OpenInference's LlamaIndex instrumentor traces these calls already: no second
            # span; the placeholder still lets the model call count in the session's tokens.
            return _Span(id_=id_, parent_id=parent_span_id, kind=kind, owner=owner)
        context = _parent_context(parent.otel if parent is not None else None)
        otel = get_tracer().start_span(name, context=context, attributes=attributes)
        return _Span(id_=id_, parent_id=parent_span_id, otel=otel, kind=kind, owner=owner)

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> _Span | None:
        span = self.open_spans.get(id_)
        if span is None:
            return None
        self._remember(span)
        if span.alias or span.otel is None:
            return span
        content = s.capture_content()
        if span.kind == "llm" and (
            inspect.isgenerator(result) or inspect.isasyncgen(result)
        ):  # a stream: its end event finishes the span
            span.streaming = True
            return span
        if span.kind == "tool":
            if getattr(result, "is_error", False):
                span.otel.set_status(Status(StatusCode.ERROR))
            if result is not None:
                genai.set_tool_result(
                    span.otel, str(getattr(result, "content", result)), content=content
                )
        elif span.kind in ("workflow", "step") and result is not None:
            genai.set_output(span.otel, _answer(result), content=content)
        span.otel.end()
        return span

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> _Span | None:
        span = self.open_spans.get(id_)
        if span is None:
            return None
        self._remember(span)
        if not span.alias and span.otel is not None:
            _fail(span.otel, err)
            span.otel.end()
        return span

    def _remember(self, span: _Span) -> None:
        with self.lock:
            self._recent[span.id_] = span
            while len(self._recent) > _RECENT_SPANS:
                _, old = self._recent.popitem(last=False)
                if old.streaming and not old.alias:  # a stream nobody finished reading
                    old.streaming = False
                    old.otel.end()

    def close(self) -> None:
        for span in [*self.open_spans.values(), *self._recent.values()]:
            if not span.alias and span.otel is not None and span.otel.is_recording():
                span.otel.end()
        self.open_spans.clear()
        self._recent.clear()


def _fail(otel: Any, err: BaseException | None) -> None:
    if err is None:
        otel.set_status(Status(StatusCode.ERROR))
        return
    otel.record_exception(err)
    otel.set_attribute(s.ERROR_TYPE, type(err).__qualname__)
    otel.set_status(Status(StatusCode.ERROR, str(err)[:200] or None))


class _EventHandler(BaseEventHandler):
    """LLM events fill in the LLM spans (messages, usage, response model); other events become
    span events on the span they were dispatched in."""

    spans: Any = None

    @classmethod
    def class_name(cls) -> str:
        return "AtlasEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, LLMChatInProgressEvent | LLMCompletionInProgressEvent | SpanDropEvent):
            return  # one per streamed token, or already seen as the span's drop
        span = self.spans.lookup(event.span_id) if self.spans is not None else None
        if span is None or span.kind == "atlas":
            return  # an atlas model counts and traces its own calls
        ended = isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent)
        reported = getattr(event, "response", None) if ended else None
        if span.kind == "llm" and reported is not None:
            # The student's model call, in this session's tokens (unknown if it reported none);
            # once per call, whichever of its nested methods reports first.
            owner = self._owner(span)
            if not owner.counted:
                owner.counted = True
                model = _response_model(reported)
                if model is None and span.otel is not None:
                    attributes = getattr(span.otel, "attributes", None) or {}
                    model = attributes.get(s.GEN_AI_REQUEST_MODEL)
                usage.count(*_usage(reported), model)
        if span.otel is None or not span.otel.is_recording():
            return
        otel = span.otel
        content = s.capture_content()
        if isinstance(event, LLMChatStartEvent | LLMCompletionStartEvent):
            if content and not span.has_input:
                if isinstance(event, LLMChatStartEvent):
                    messages = _plain_messages(event.messages)
                else:
                    messages = [{"role": "user", "content": event.prompt}]
                otel.set_attributes(genai.input_attributes(messages, content=content))
                span.has_input = True
        elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
            response = event.response
            if response is None:
                return
            tokens = _usage(response)
            model = _response_model(response)
            chat = isinstance(event, LLMChatEndEvent)
            message = response.message if chat else None  # type: ignore[union-attr]
            raw = getattr(response, "raw", None)
            genai.set_llm_response(
                otel,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                response_model=model,
                # (a chat response has a message, a completion response text)
                text=(message.content if message is not None else response.text) or "",  # type: ignore[union-attr]
                tool_calls=_tool_calls(message) if message is not None else [],
                finish=_finish_reason(raw),
                content=content,
            )
            self._finish_stream(span)
        elif isinstance(event, ExceptionEvent):
            _fail(otel, event.exception)
            self._finish_stream(span)
        else:
            otel.add_event(event.class_name())

    def _owner(self, span: _Span) -> _Span:
        """The outermost span of a model call (nested calls on one LLM are its aliases)."""
        while span.alias:
            parent = self.spans.lookup(span.parent_id)
            if parent is None or parent.kind != span.kind:
                break
            span = parent
        return span

    def _finish_stream(self, span: _Span) -> None:
        target = span
        if span.alias:  # the outer span owns the stream
            target = self.spans.lookup(span.parent_id) or span
        if target.streaming and not target.alias:
            target.streaming = False
            target.otel.end()


_instrument_lock = threading.Lock()
_handlers: tuple[_SpanHandler, _EventHandler] | None = None


class LlamaIndexInstrumentor(Instrumentor):
    def _instrument(self) -> None:
        global _handlers
        with _instrument_lock:
            spans = _SpanHandler()
            events = _EventHandler(spans=spans)
            root = get_dispatcher()
            root.add_span_handler(spans)
            root.add_event_handler(events)
            _handlers = (spans, events)

    def _uninstrument(self) -> None:
        global _handlers
        with _instrument_lock:
            handlers, _handlers = _handlers, None
            if handlers is not None:
                spans, events = handlers
                root = get_dispatcher()
                root.span_handlers = [h for h in root.span_handlers if h is not spans]
                root.event_handlers = [h for h in root.event_handlers if h is not events]
                spans.close()


def instrument() -> None:
    """Turn LlamaIndex's instrumentation into OpenTelemetry spans (on atlas's tracer).
    Idempotent; :func:`uninstrument` undoes it. Tracing only: nothing about the calls changes.

    Workflow runs become ``invoke_workflow {name}`` spans (a session of their own when nothing
    encloses them), steps ``step {name}``, LLM calls ``chat {model}`` with messages and token
    usage, tool calls ``execute_tool {name}``; other instrumented calls keep LlamaIndex's name.
    """
    LlamaIndexInstrumentor().instrument()


def uninstrument() -> None:
    """Remove the span and event handlers, and the guidance wrappers supervision installed."""
    LlamaIndexInstrumentor().uninstrument()
    _remove_guidance()


# --- any atlas model as a LlamaIndex LLM ---------------------------------------------------------
class AtlasLLM(CustomLLM):
    """Any atlas :class:`~atlas_middleware.models.ChatModel` (the embedded SmolLM2, a litellm
    model, an OpenAI-compatible endpoint) as a LlamaIndex LLM, so a workflow can run offline:
    ``AtlasLLM(model=build_model("embedded"), max_tokens=64)``.

    Text in, text out (no tool calling). The atlas model records its own ``chat {model}`` span
    with usage, under the step that called it."""

    model: Any = Field(exclude=True)
    max_tokens: int = 256
    temperature: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        return "AtlasLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            model_name=getattr(self.model, "name", "atlas"),
            is_chat_model=True,
            num_output=self.max_tokens,
        )

    async def _chat(self, messages: Any) -> ChatResponse:
        context = _dispatcher_context()
        token = otel_context.attach(context) if context is not None else None
        try:
            result = await self.model.chat(
                [{"role": str(m.role.value), "content": m.content or ""} for m in messages],
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        finally:
            if token is not None:
                otel_context.detach(token)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
            additional_kwargs={
                "prompt_tokens": result.input_tokens,
                "completion_tokens": result.output_tokens,
            },
        )

    @llm_chat_callback()
    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return await self._chat(messages)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        from atlas_middleware.portal import get_portal

        # The portal runs it in a copy of this context: the guidance and the current span go along.
        return get_portal().call(lambda: self._chat(messages))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        reply = self.chat([ChatMessage(role=MessageRole.USER, content=prompt)])
        return CompletionResponse(text=reply.message.content or "")

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        reply = await self._chat([ChatMessage(role=MessageRole.USER, content=prompt)])
        return CompletionResponse(text=reply.message.content or "")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        response = self.complete(prompt, formatted=formatted)
        yield CompletionResponse(text=response.text, delta=response.text)


def _dispatcher_context() -> Any:
    """Where an atlas model called from inside a LlamaIndex span hangs its chat span."""
    handlers = _handlers
    if handlers is None:
        return None
    span = handlers[0].lookup(active_span_id.get())
    if span is None or span.otel is None:
        return None
    return _parent_context(span.otel)


def _active_otel_span() -> Any:
    """The OpenTelemetry span of the dispatcher span in progress here (a workflow step, a tool
    call), or None: how :func:`atlas_middleware.reward` finds the current step."""
    handlers = _handlers
    if handlers is None:
        return None
    span = handlers[0].lookup(active_span_id.get())
    return span.otel if span is not None else None


def _register_step_resolver() -> None:
    from atlas_middleware.steps import register_resolver

    register_resolver(_active_otel_span)


_register_step_resolver()


# --- supervised workflow runs -------------------------------------------------------------------
class _RunState:
    """What one supervised run shares between its attempts and its handler."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.current: Any = None  # the attempt's WorkflowHandler
        self.started = asyncio.Event()
        self.trace_id: str | None = None
        self.session_id: str | None = None

    async def follow(self, inner: Any) -> None:
        self.current = inner
        self.started.set()
        root = trace.get_current_span()
        if root.get_span_context().is_valid:
            self.trace_id = format(root.get_span_context().trace_id, "032x")
            self.session_id = (getattr(root, "attributes", None) or {}).get(s.ATLAS_SESSION_ID)
        # The caller streams from the supervised handler; each attempt's events pass through it,
        # its StopEvent only when supervision is done with the run (a retry may follow).
        with contextlib.suppress(Exception):  # the run's own error surfaces from awaiting it
            async for event in inner.stream_events(expose_internal=True):
                if isinstance(event, StopEvent):
                    break
                self.queue.put_nowait(event)


_current_run: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar(
    "atlas_llama_index_run", default=None
)
_END = object()


class SupervisedHandler(Awaitable[Any]):
    """The handler of one supervised run, shaped like LlamaIndex's ``WorkflowHandler``: await it
    for the result, ``stream_events()`` for the events of every attempt (one ``StopEvent`` at the
    end), ``ctx`` / ``send_event`` / ``cancel_run`` act on the attempt in progress."""

    def __init__(self, state: _RunState, task: asyncio.Task[Any]) -> None:
        self._state = state
        self._task = task
        self._consumed = False
        task.add_done_callback(lambda _: state.queue.put_nowait(_END))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    @property
    def ctx(self) -> Any:
        """The current attempt's workflow Context (None until the first attempt starts)."""
        inner = self._state.current
        return inner.ctx if inner is not None else None

    @property
    def run_id(self) -> str | None:
        inner = self._state.current
        return inner.run_id if inner is not None else None

    @property
    def trace_id(self) -> str | None:
        """The session's trace id (hex), the key of its row in the store; known once the first
        attempt started."""
        return self._state.trace_id

    @property
    def session_id(self) -> str | None:
        return self._state.session_id

    def is_done(self) -> bool:
        return self._task.done()

    def get_stop_event(self) -> StopEvent | None:
        inner = self._state.current
        return inner.get_stop_event() if inner is not None and self._task.done() else None

    async def stream_events(self, expose_internal: bool = False) -> Any:
        """Events of the run as they happen, ending with its final ``StopEvent``. The run's own
        exception is raised here too when it fails."""
        if self._consumed:
            from workflows.errors import WorkflowRuntimeError

            raise WorkflowRuntimeError("All the streamed events have already been consumed.")
        self._consumed = True
        from workflows.events import InternalDispatchEvent

        while True:
            event = await self._state.queue.get()
            if event is _END:
                break
            if isinstance(event, InternalDispatchEvent) and not expose_internal:
                continue
            yield event
        await self._task  # raises the run's exception
        stop = self.get_stop_event()
        if stop is not None:
            yield stop

    async def send_event(self, event: Event, step: str | None = None) -> None:
        """Send an event into the attempt in progress (human-in-the-loop replies)."""
        await self._state.started.wait()
        await self._state.current.send_event(event, step)

    async def cancel_run(self, *, timeout: float = 5.0) -> None:
        inner = self._state.current
        if inner is not None:
            await inner.cancel_run(timeout=timeout)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)


class SupervisedWorkflow:
    """A Workflow whose every ``run(...)`` is one supervised session (see
    :func:`supervise_workflow`). Other attributes are the workflow's own."""

    def __init__(self, workflow: Workflow, supervised: Any) -> None:
        self.workflow = workflow
        self._supervised = supervised

    def run(self, ctx: Any = None, start_event: Any = None, **kwargs: Any) -> SupervisedHandler:
        """Like ``Workflow.run``: needs a running event loop; returns at once."""
        return self._start(self._supervised, ctx, start_event, kwargs)

    def options(self, **overrides: Any) -> _Runner:
        """Per-run option overrides: ``flow.options(lane="coach", reference="42").run(...)``."""
        return _Runner(self, self._supervised.options(**overrides))

    @property
    def supervisor(self) -> Any:
        return self._supervised.supervisor()

    def _start(
        self, runner: Callable[..., Awaitable[Any]], ctx: Any, start_event: Any, kwargs: dict
    ) -> SupervisedHandler:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "SupervisedWorkflow.run() needs a running event loop, like Workflow.run(): "
                "call it from async code (asyncio.run(main()))"
            ) from None
        call = dict(kwargs)
        if ctx is not None:
            call["ctx"] = ctx
        if start_event is not None:
            call["start_event"] = start_event
        state = _RunState()

        async def main() -> Any:
            _current_run.set(state)  # this task's own context: nothing to reset
            return await runner(**call)

        return SupervisedHandler(state, asyncio.create_task(main()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.workflow, name)

    def __repr__(self) -> str:
        return f"SupervisedWorkflow({self.workflow!r})"


class _Runner:
    def __init__(self, owner: SupervisedWorkflow, runner: Callable[..., Awaitable[Any]]) -> None:
        self._owner = owner
        self._runner = runner

    def run(self, ctx: Any = None, start_event: Any = None, **kwargs: Any) -> SupervisedHandler:
        return self._owner._start(self._runner, ctx, start_event, kwargs)


def supervise_workflow(
    workflow: Workflow,
    *,
    agent: str | None = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    **options: Any,
) -> SupervisedWorkflow:
    """Supervise each ``run(...)`` of ``workflow`` as one session: probe, lane, guidance in every
    LLM call of the run, validation, at most one guided re-run, RIM reward, spans.

    Options are :func:`atlas_middleware.supervise`'s. ``task``: the ``run`` keyword (or start
    event field) holding the task, default the first text one. ``reference`` / ``verifier``
    as in ``supervise``; a callable ``reference`` receives ``run``'s keyword arguments. The
    answer is the run's result as text (``StopEvent.result``). A paired-lane retry runs the
    workflow again: set ``max_retries=0`` for workflows with side effects.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(
            f"supervise_workflow() takes a llama_index Workflow instance, got "
            f"{type(workflow).__name__}; for one step use @supervise_step"
        )
    instrument()
    _install_guidance()
    task = options.pop("task", None)
    if not callable(task):
        task = _run_task(task)

    async def attempt(**call: Any) -> Any:
        state = _current_run.get()
        ctx = call.pop("ctx", None)
        start_event = call.pop("start_event", None)
        inner = workflow.run(ctx=ctx, start_event=start_event, **call)
        if state is not None:
            await state.follow(inner)
        return await inner

    name = agent or workflow._workflow_name or type(workflow).__name__
    attempt.__qualname__ = attempt.__name__ = name
    supervised = supervise(
        attempt,
        agent=name,
        teacher=teacher,
        reward=reward,
        config=config,
        task=task,
        answer=options.pop("answer", _answer),
        **options,
    )
    return SupervisedWorkflow(workflow, supervised)


# --- supervised steps ---------------------------------------------------------------------------
def _step_event(args: tuple, kwargs: dict) -> Event | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Event):
            return value
    return None


def supervise_step(
    fn: Callable[..., Any] | None = None,
    *,
    agent: str | None = None,
    teacher: Any = None,
    reward: Any = None,
    config: Any = None,
    **options: Any,
) -> Any:
    """Supervise one workflow step: each time it runs is one session. Put it under ``@step``::

        @step
        @supervise_step(agent="answer", reference=lambda ev: ev.expected)
        async def answer(self, ev: QuestionEvent) -> StopEvent: ...

    The task is the input event's ``task`` field (a field name) or its first text field; a
    callable ``task`` / ``reference`` receives the input event. The answer is the returned
    event's text (``StopEvent.result``, or the event's only field). A paired-lane retry runs the
    step again: ``max_retries=0`` for steps with side effects (events sent, state written).
    """
    task = options.pop("task", None)
    reference = options.pop("reference", None)

    def task_of(*args: Any, **kwargs: Any) -> str:
        instrument()
        _install_guidance()
        event = _step_event(args, kwargs)
        if callable(task):
            return str(task(event))
        if event is None:
            return answer_text([str(a) for a in args])
        return _event_task(event, task)

    if callable(reference):
        chosen = reference

        def reference_of(*args: Any, **kwargs: Any) -> Any:
            return chosen(_step_event(args, kwargs))

        options["reference"] = reference_of
    elif reference is not None:
        options["reference"] = reference

    def decorate(func: Callable[..., Any]) -> Any:
        instrument()  # the step's workflow runs are traced from the start, not from this step on
        _install_guidance()
        supervised = supervise(
            func,
            agent=agent or func.__name__,
            teacher=teacher,
            reward=reward,
            config=config,
            task=task_of,
            answer=options.get("answer", _answer),
            **{k: v for k, v in options.items() if k != "answer"},
        )
        # The session is a trace of its own; made current around it, the step's span becomes
        # the session root's link (what session_span keeps of the caller's span).
        if inspect.iscoroutinefunction(func):

            @functools.wraps(supervised)
            async def linked_async(*args: Any, **kwargs: Any) -> Any:
                with _inside_step_span():
                    return await supervised(*args, **kwargs)

            return linked_async

        @functools.wraps(supervised)
        def linked(*args: Any, **kwargs: Any) -> Any:
            with _inside_step_span():
                return supervised(*args, **kwargs)

        return linked

    return decorate(fn) if fn is not None else decorate


@contextlib.contextmanager
def _inside_step_span() -> Generator[None, None, None]:
    """Make the dispatcher span in progress (the step's) the current OpenTelemetry span."""
    context = None
    handlers = _handlers
    if handlers is not None:
        span = handlers[0].lookup(active_span_id.get())
        if span is not None and span.otel is not None:
            context = trace.set_span_in_context(span.otel)
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
