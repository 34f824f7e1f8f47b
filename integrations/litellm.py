"""litellm: direct ``litellm.completion`` / ``acompletion`` calls as ``chat {model}`` spans.

::

    from atlas_middleware.integrations import litellm as atlas_litellm

    atlas_litellm.instrument()
    litellm.completion(model="openai/gpt-4o-mini", messages=[...])  # a chat span with usage

Each chat completion becomes one span under the OpenTelemetry span current when the call was made
(a supervised session's root, a tool span, ...), with the provider, the requested and answering
model, token usage and, under atlas's content-capture switch, the messages. Calls made inside a
span that already is a chat span (atlas's own litellm backend, any instrumentation that traces the
call itself) get no second span.

litellm reports finished calls from a background thread or logging task, so a span may land a
moment after the call returned; its times are the call's own.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from atlas_middleware.integrations._base import Instrumentor
from atlas_middleware.integrations._common import require
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from atlas_middleware.models.litellm_backend import import_litellm, provider_of
from atlas_middleware.telemetry import genai, get_tracer, usage
from atlas_middleware.telemetry import schema as s

__all__ = ["AtlasLiteLLMCallback", "flush", "instrument", "uninstrument"]

# A core dependency (no extra), imported only here and in atlas's litellm backend, never by
# `import atlas_middleware`. import_litellm first points litellm at its bundled cost map.
try:
    litellm = import_litellm()
except ImportError:
    require("litellm", None, install="'litellm>=1.83' (a core dependency of atlas-middleware)")
    raise
from litellm.integrations.custom_logger import CustomLogger

from atlas_middleware.errors import one_line

# litellm's call types that are chat completions; embeddings, images, … are not traced here.
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
_REMEMBERED = 10_000  # bound on calls in flight / recently finished that we keep ids of


class AtlasLiteLLMCallback(CustomLogger):
    """The litellm callback behind :func:`instrument` (usable alone in ``litellm.callbacks``)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self._lock = threading.Lock()
        # litellm_call_id → what the call's report needs from where it was made (litellm
        # reports it from another thread or task): its context, its role, its session's tally.
        self._pending: OrderedDict[str, _Call] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._writing = 0  # reports being turned into spans right now
        # call id → the event loop of an async call: its report comes from litellm's logging
        # worker on that loop, so never once the loop is closed.
        self._loops: dict[str, asyncio.AbstractEventLoop] = {}

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every call seen starting has been reported and its span ended (litellm
        reports from a background thread or its logging worker); False on timeout, e.g. for a
        stream nobody finished reading. Async calls whose event loop has closed are given up
        (their report can no longer come); inside a running loop, await litellm's
        ``GLOBAL_LOGGING_WORKER.flush()`` instead: this call would block the worker."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for call_id in [c for c, loop in self._loops.items() if loop.is_closed()]:
                    self._pending.pop(call_id, None)
                    del self._loops[call_id]
                if not self._pending and not self._writing:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        call_id = kwargs.get("litellm_call_id")
        if not self.enabled or call_id is None or kwargs.get("call_type") not in CHAT_CALL_TYPES:
            return
        skip = _inside_chat_span()
        # A call traced by atlas's own model (or another instrumentation) is counted there.
        entry = _Call(
            otel_context.get_current(),
            skip,
            usage.role_attributes(),
            None if skip else usage.expect(),
        )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending[call_id] = entry
            _trim(self._pending)
            if loop is not None and kwargs.get("call_type") == "acompletion":
                self._loops[call_id] = loop
                while len(self._loops) > _REMEMBERED:
                    del self._loops[next(iter(self._loops))]

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any):
        self._record(kwargs, response_obj, start_time, end_time, None)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, start_time, end_time, None)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any):
        self._record(kwargs, None, start_time, end_time, kwargs.get("exception") or "error")

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, None, start_time, end_time, kwargs.get("exception") or "error")

    def _record(
        self, kwargs: dict[str, Any], response: Any, start_time: Any, end_time: Any, error: Any
    ) -> None:
        call_id = kwargs.get("litellm_call_id")
        with self._lock:
            if call_id in self._done:  # litellm reported this call already
                return
            entry = self._pending.pop(call_id, None) if call_id is not None else None
            if call_id is not None:
                self._loops.pop(call_id, None)
            if error is None and call_id is not None:
                self._done[call_id] = None
                _trim(self._done)
            self._writing += 1
        try:
            self._write(kwargs, response, start_time, end_time, error, entry)
        finally:
            with self._lock:
                self._writing -= 1

    def _write(
        self,
        kwargs: dict[str, Any],
        response: Any,
        start_time: Any,
        end_time: Any,
        error: Any,
        entry: _Call | None,
    ) -> None:
        if entry is None:  # no pre-call seen (instrumented mid-call): litellm kept our context
            if not self.enabled or kwargs.get("call_type") not in CHAT_CALL_TYPES:
                return
            skip = _inside_chat_span()
            entry = _Call(otel_context.get_current(), skip, usage.role_attributes(), None)
        if entry.skip:
            return
        model = str(kwargs.get("model") or "unknown")
        provider = kwargs.get("custom_llm_provider") or provider_of(model)
        content = s.capture_content()
        attributes = genai.llm_attributes(
            model=model,
            provider=str(provider),
            messages=genai.openai_messages(kwargs.get("messages") or []),
            content=content,
        )
        attributes.update(entry.role)  # whose call it was, where it was made
        span = get_tracer().start_span(
            s.chat_span_name(model),
            context=entry.context,
            kind=SpanKind.CLIENT,
            start_time=_ns(start_time),
            attributes=attributes,
        )
        tokens: tuple[int | None, int | None] = (None, None)
        try:
            if error is not None:
                kind = type(error).__name__ if isinstance(error, BaseException) else "error"
                span.set_attribute(s.ERROR_TYPE, kind)
                span.set_status(Status(StatusCode.ERROR, one_line(error, 500)))
            elif response is not None:
                tokens = _response(span, response, content)
        finally:
            span.end(end_time=_ns(end_time))
            if entry.pending is not None:
                entry.pending.count(*tokens, model)


class _Call:
    __slots__ = ("context", "pending", "role", "skip")

    def __init__(
        self,
        context: otel_context.Context,
        skip: bool,
        role: dict[str, str],
        pending: usage.Pending | None,
    ) -> None:
        self.context = context
        self.skip = skip
        self.role = role
        self.pending = pending


def _response(span: otel_trace.Span, response: Any, content: bool) -> tuple[int | None, int | None]:
    """Fill the span from a ModelResponse; returns its (input, output) tokens when reported."""
    reported = getattr(response, "usage", None)
    tokens = (
        (getattr(reported, "prompt_tokens", None), getattr(reported, "completion_tokens", None))
        if reported is not None
        else (None, None)
    )
    choices = getattr(response, "choices", None) or []
    message = getattr(choices[0], "message", None) if choices else None
    genai.set_llm_response(
        span,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        response_model=getattr(response, "model", None),
        response_id=getattr(response, "id", None),
        text=getattr(message, "content", None) if message is not None else None,
        tool_calls=[genai.openai_tool_call(c) for c in getattr(message, "tool_calls", None) or []],
        finish=getattr(choices[0], "finish_reason", None) if choices else None,
        content=content,
        has_output=message is not None,
    )
    return tokens


def _inside_chat_span() -> bool:
    """Whether the call is already traced where it is made: atlas's own litellm backend's chat
    span, or an OpenInference instrumentor's LLM span (Phoenix users)."""
    attributes = getattr(otel_trace.get_current_span(), "attributes", None) or {}
    return (
        attributes.get(s.GEN_AI_OPERATION_NAME) == s.OP_CHAT
        or attributes.get(s.OPENINFERENCE_SPAN_KIND) == s.OI_KIND_LLM
    )


def _ns(moment: Any) -> int | None:
    if isinstance(moment, datetime):
        return int(moment.timestamp() * 1e9)
    if isinstance(moment, int | float):
        return int(moment * 1e9)
    return None  # now


def _trim(entries: OrderedDict[str, Any]) -> None:
    while len(entries) > _REMEMBERED:
        entries.popitem(last=False)


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, ensure_ascii=False)


# --- instrumentation --------------------------------------------------------------------------
_install_lock = threading.Lock()
_callback: AtlasLiteLLMCallback | None = None


class LiteLLMInstrumentor(Instrumentor):
    def _instrument(self) -> AtlasLiteLLMCallback:
        global _callback
        with _install_lock:
            if _callback is None:
                _callback = AtlasLiteLLMCallback()
            _callback.enabled = True
            if _callback not in litellm.callbacks:
                litellm.logging_callback_manager.add_litellm_callback(_callback)
            return _callback

    def _uninstrument(self) -> None:
        with _install_lock:
            if _callback is not None:
                _callback.enabled = False
                litellm.logging_callback_manager.remove_callback_from_all_lists(_callback)


def instrument() -> AtlasLiteLLMCallback:
    """Add atlas's callback to ``litellm.callbacks`` (idempotent); returns it."""
    return LiteLLMInstrumentor().instrument()


def flush(timeout: float = 5.0) -> bool:
    """Wait (up to ``timeout`` seconds) until the spans of the litellm calls made so far have
    landed; call it before ``atlas.shutdown()`` in short scripts. True when nothing is left."""
    callback = _callback
    return True if callback is None else callback.flush(timeout)


def uninstrument() -> None:
    """Remove atlas's callback from litellm (from every list litellm copied it into)."""
    LiteLLMInstrumentor().uninstrument()
