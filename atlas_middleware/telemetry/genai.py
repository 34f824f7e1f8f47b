"""The attributes of model, tool and agent spans, written the same way by every integration.

Integrations hand over what their framework knows in one plain shape — messages as
``{"role", "content", "tool_calls": [{"id", "name", "arguments"}], "tool_call_id"}`` — and these
helpers write it in both vocabularies atlas emits:

- OpenTelemetry GenAI: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` as the semantic
  conventions' ``parts`` messages (text, ``tool_call``, ``tool_call_response``; outputs carry a
  ``finish_reason``), ``gen_ai.usage.*``, ``gen_ai.tool.*``;
- OpenInference (Phoenix): ``openinference.span.kind``, ``input.value`` / ``output.value``,
  ``llm.model_name``, ``llm.provider``, ``llm.token_count.*``,
  ``llm.input_messages.<i>.message.*`` / ``llm.output_messages.<i>.message.*``, ``tool.name``,
  ``agent.name``;

plus ``atlas.span.role`` (whose call it is: :mod:`atlas_middleware.telemetry.usage`). Message
content follows the capture switch (:func:`schema.capture_content`); names, models and token
counts are always written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import Span

from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry import usage

# Roles as frameworks spell them → the conventions' roles.
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}
# Finish reasons as providers spell them → the conventions' values.
_FINISH = {"tool_calls": "tool_call", "function_call": "tool_call", "end_turn": "stop"}


def _json(value: Any) -> str:
    from atlas_middleware.storage.records import json_dumps

    return json_dumps(value)


def role_of(role: Any) -> str:
    text = str(getattr(role, "value", role) or "user").lower()
    return _ROLES.get(text, text)


def finish_reason(reason: Any) -> str | None:
    if reason is None or reason == "":
        return None
    text = str(getattr(reason, "value", reason)).lower()
    return _FINISH.get(text, text)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a part list (OpenAI,
    LangChain and GenAI part shapes alike)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        content = [content]
    texts = []
    for part in content if isinstance(content, Iterable) else [content]:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type", "text") in (
            "text",
            "input_text",
            "output_text",
        ):
            value = part.get("text", part.get("content"))
            if isinstance(value, str):
                texts.append(value)
    return "".join(texts)


def message_text(message: Any) -> str:
    """The text of one recorded message, whichever shape it was stored in (GenAI ``parts`` or
    an older ``{"role", "content"}``): what readers of stored spans use."""
    if not isinstance(message, Mapping):
        return ""
    if "parts" in message:
        return text_of(message.get("parts"))
    return text_of(message.get("content"))


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def openai_tool_call(call: Any) -> dict[str, Any]:
    """An OpenAI tool call (a dict or the client's object) as ``{"id", "name", "arguments"}``."""
    function = _get(call, "function")
    if function is None:  # a Responses API function_call item
        return {
            "id": _get(call, "call_id") or _get(call, "id"),
            "name": _get(call, "name"),
            "arguments": _get(call, "arguments"),
        }
    return {
        "id": _get(call, "id"),
        "name": _get(function, "name"),
        "arguments": _get(function, "arguments"),
    }


def openai_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped messages in the plain shape these helpers take: Chat Completions messages
    (``tool_calls``, ``role: tool``) and Responses API input/output items (``message``,
    ``function_call``, ``function_call_output``), as dicts or the client's objects."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    out: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, Iterable) else ():
        if hasattr(item, "model_dump"):
            item = item.model_dump(mode="json", exclude_none=True)
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if item.get("object") == "response" and isinstance(item.get("output"), list):
            out.extend(openai_messages(item["output"]))  # a whole Responses API response
        elif kind == "function_call":
            out.append({"role": "assistant", "content": "", "tool_calls": [openai_tool_call(item)]})
        elif kind == "function_call_output":
            out.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")}
            )
        elif "role" in item:
            out.append(
                {
                    "role": item.get("role"),
                    "content": item.get("content"),
                    "name": item.get("name"),
                    "tool_call_id": item.get("tool_call_id"),
                    "tool_calls": [openai_tool_call(c) for c in item.get("tool_calls") or ()],
                }
            )
    return out


def _parts(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    role = role_of(message.get("role"))
    parts: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if role == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": text}
        )
        return parts
    if text:
        parts.append({"type": "text", "content": text})
    for call in message.get("tool_calls") or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call.get("name"),
                "arguments": call.get("arguments"),
            }
        )
    return parts


def input_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the GenAI conventions' ``parts`` shape (``gen_ai.input.messages``)."""
    out = []
    for message in messages:
        entry: dict[str, Any] = {"role": role_of(message.get("role")), "parts": _parts(message)}
        if message.get("name"):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def output_messages(
    text: str | None,
    tool_calls: Sequence[Mapping[str, Any]] = (),
    finish: Any = None,
) -> list[dict[str, Any]]:
    """One assistant output message (``gen_ai.output.messages``) with its ``finish_reason``."""
    entry: dict[str, Any] = {
        "role": "assistant",
        "parts": _parts({"role": "assistant", "content": text, "tool_calls": tool_calls}),
    }
    reason = finish_reason(finish) or ("tool_call" if tool_calls else None)
    if reason is not None:
        entry["finish_reason"] = reason
    return [entry]


def _oi_messages(prefix: str, messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, message in enumerate(messages):
        out[s.oi_message_key(prefix, i, s.OI_MESSAGE_ROLE)] = role_of(message.get("role"))
        text = text_of(message.get("content"))
        if text:
            out[s.oi_message_key(prefix, i, s.OI_MESSAGE_CONTENT)] = text
        if message.get("tool_call_id"):
            out[s.oi_message_key(prefix, i, s.OI_MESSAGE_TOOL_CALL_ID)] = str(
                message["tool_call_id"]
            )
        for j, call in enumerate(message.get("tool_calls") or ()):
            arguments = call.get("arguments")
            if call.get("id"):
                out[s.oi_tool_call_key(prefix, i, j, s.OI_TOOL_CALL_ID)] = str(call["id"])
            out[s.oi_tool_call_key(prefix, i, j, s.OI_TOOL_CALL_FUNCTION_NAME)] = str(
                call.get("name") or ""
            )
            out[s.oi_tool_call_key(prefix, i, j, s.OI_TOOL_CALL_FUNCTION_ARGUMENTS)] = (
                arguments if isinstance(arguments, str) else _json(arguments)
            )
    return out


def _plain(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as plain JSON for ``input.value`` (role, text, tool calls)."""
    out = []
    for message in messages:
        entry: dict[str, Any] = {
            "role": role_of(message.get("role")),
            "content": text_of(message.get("content")),
        }
        if message.get("tool_calls"):
            entry["tool_calls"] = [dict(c) for c in message["tool_calls"]]
        if message.get("tool_call_id"):
            entry["tool_call_id"] = message["tool_call_id"]
        out.append(entry)
    return out


# --- model calls ----------------------------------------------------------------------------
def llm_attributes(
    *,
    model: str,
    provider: str | None = None,
    operation: str = s.OP_CHAT,
    messages: Sequence[Mapping[str, Any]] | None = None,
    content: bool | None = None,
) -> dict[str, Any]:
    """The start attributes of a ``chat {model}`` span, with the caller's role."""
    attributes: dict[str, Any] = {
        s.GEN_AI_OPERATION_NAME: operation,
        s.GEN_AI_REQUEST_MODEL: model,
        s.OPENINFERENCE_SPAN_KIND: s.OI_KIND_LLM,
        s.OI_LLM_MODEL_NAME: model,
        **usage.role_attributes(),
    }
    if provider:
        attributes[s.GEN_AI_PROVIDER_NAME] = provider
        attributes[s.OI_LLM_PROVIDER] = provider
    if messages is not None:
        attributes.update(input_attributes(messages, content=content))
    return attributes


def input_attributes(
    messages: Sequence[Mapping[str, Any]], *, content: bool | None = None
) -> dict[str, Any]:
    """The request messages of a model call (nothing when content capture is off)."""
    if not (s.capture_content() if content is None else content):
        return {}
    messages = list(messages)
    return {
        s.GEN_AI_INPUT_MESSAGES: _json(input_messages(messages)),
        s.OI_INPUT_VALUE: _json(_plain(messages)),
        s.OI_INPUT_MIME_TYPE: s.MIME_JSON,
        **_oi_messages(s.OI_LLM_INPUT_MESSAGES, messages),
    }


def set_llm_response(
    span: Span,
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    response_model: str | None = None,
    response_id: str | None = None,
    text: str | None = None,
    tool_calls: Sequence[Mapping[str, Any]] = (),
    finish: Any = None,
    content: bool | None = None,
    has_output: bool = True,
) -> None:
    """What a model call answered: usage (when reported), the response model and id, and
    (content capture on, ``has_output``) the output message."""
    set_tokens(span, input_tokens, output_tokens)
    if response_model:
        span.set_attribute(s.GEN_AI_RESPONSE_MODEL, str(response_model))
    if response_id:
        span.set_attribute(s.GEN_AI_RESPONSE_ID, str(response_id))
    if not has_output or not (s.capture_content() if content is None else content):
        return
    calls = [dict(c) for c in tool_calls]
    span.set_attribute(s.GEN_AI_OUTPUT_MESSAGES, _json(output_messages(text, calls, finish)))
    message = {"role": "assistant", "content": text or "", "tool_calls": calls}
    for key, value in _oi_messages(s.OI_LLM_OUTPUT_MESSAGES, [message]).items():
        span.set_attribute(key, value)
    if text or not calls:
        span.set_attribute(s.OI_OUTPUT_VALUE, text or "")
        span.set_attribute(s.OI_OUTPUT_MIME_TYPE, s.MIME_TEXT)
    else:
        span.set_attribute(s.OI_OUTPUT_VALUE, _json(calls))
        span.set_attribute(s.OI_OUTPUT_MIME_TYPE, s.MIME_JSON)


def set_tokens(span: Span, input_tokens: int | None, output_tokens: int | None) -> None:
    """Token usage in both vocabularies; nothing for what was not reported."""
    if input_tokens is not None:
        span.set_attribute(s.GEN_AI_USAGE_INPUT_TOKENS, int(input_tokens))
        span.set_attribute(s.OI_LLM_TOKEN_COUNT_PROMPT, int(input_tokens))
    if output_tokens is not None:
        span.set_attribute(s.GEN_AI_USAGE_OUTPUT_TOKENS, int(output_tokens))
        span.set_attribute(s.OI_LLM_TOKEN_COUNT_COMPLETION, int(output_tokens))
    if input_tokens is not None and output_tokens is not None:
        span.set_attribute(s.OI_LLM_TOKEN_COUNT_TOTAL, int(input_tokens) + int(output_tokens))


# --- tools, agents, framework steps ------------------------------------------------------------
def tool_attributes(
    name: str,
    *,
    call_id: str | None = None,
    arguments: Any = None,
    content: bool | None = None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        s.GEN_AI_OPERATION_NAME: s.OP_EXECUTE_TOOL,
        s.GEN_AI_TOOL_NAME: name,
        s.ATLAS_SPAN_ROLE: s.ROLE_TOOL,
        s.OPENINFERENCE_SPAN_KIND: s.OI_KIND_TOOL,
        s.OI_TOOL_NAME: name,
    }
    if call_id:
        attributes[s.GEN_AI_TOOL_CALL_ID] = str(call_id)
    if arguments is not None and (s.capture_content() if content is None else content):
        text = arguments if isinstance(arguments, str) else _json(arguments)
        attributes[s.GEN_AI_TOOL_CALL_ARGUMENTS] = text
        attributes[s.OI_INPUT_VALUE] = text
        attributes[s.OI_INPUT_MIME_TYPE] = (
            s.MIME_JSON
            if not isinstance(arguments, str)
            else (s.MIME_JSON if text[:1] in "{[" else s.MIME_TEXT)
        )
    return attributes


def set_tool_result(span: Span, result: Any, *, content: bool | None = None) -> None:
    if result is None or not (s.capture_content() if content is None else content):
        return
    text = result if isinstance(result, str) else _json(result)
    span.set_attribute(s.GEN_AI_TOOL_CALL_RESULT, text)
    span.set_attribute(s.OI_OUTPUT_VALUE, text)


def agent_attributes(
    name: str, *, input: Any = None, content: bool | None = None
) -> dict[str, Any]:
    """A framework agent's (or workflow's) run inside a session: ``invoke_agent {name}``."""
    attributes: dict[str, Any] = {
        s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT,
        s.GEN_AI_AGENT_NAME: name,
        s.ATLAS_SPAN_ROLE: s.ROLE_AGENT,
        s.OPENINFERENCE_SPAN_KIND: s.OI_KIND_AGENT,
        s.OI_AGENT_NAME: name,
    }
    attributes.update(io_attributes(s.OI_INPUT_VALUE, input, content=content))
    return attributes


def framework_attributes(
    kind: str, *, input: Any = None, content: bool | None = None
) -> dict[str, Any]:
    """A framework step that is not a model, tool or agent (a graph node, a chain, a step)."""
    attributes: dict[str, Any] = {
        s.ATLAS_SPAN_ROLE: s.ROLE_FRAMEWORK,
        s.ATLAS_FRAMEWORK_SPAN_TYPE: kind,
        s.OPENINFERENCE_SPAN_KIND: s.OI_KIND_CHAIN,
    }
    attributes.update(io_attributes(s.OI_INPUT_VALUE, input, content=content))
    return attributes


def io_attributes(key: str, value: Any, *, content: bool | None = None) -> dict[str, Any]:
    """``input.value`` / ``output.value`` (``key``) with its mime type; nothing when the
    value is None or content capture is off."""
    if value is None or not (s.capture_content() if content is None else content):
        return {}
    mime = s.OI_INPUT_MIME_TYPE if key == s.OI_INPUT_VALUE else s.OI_OUTPUT_MIME_TYPE
    if isinstance(value, str):
        return {key: value, mime: s.MIME_TEXT}
    return {key: _json(value), mime: s.MIME_JSON}


def set_output(span: Span, value: Any, *, content: bool | None = None) -> None:
    for key, item in io_attributes(s.OI_OUTPUT_VALUE, value, content=content).items():
        span.set_attribute(key, item)
