"""OpenAI tool calling for models that only chat in text (``atlas serve-model``).

An OpenAI request with ``tools`` becomes a plain conversation in the function-calling format
SmolLM2-Instruct was trained on (its SFT data, Argilla's Synth-APIGen; the format its published
chat templates use): the tools as JSON inside ``<tools>…</tools>`` in the system message, the
model's calls as ``<tool_call>[{"name": …, "arguments": {…}}]</tool_call>``, and tool results as
``<tool_response>…</tool_response>`` turns. The embedded model's own chat template (read from
its tokenizer config) has no tool section, so this module renders the tool parts itself and the
model's template renders the rest.

The model's reply is read back robustly: a ``<tool_call>`` block (closed or cut off by
``max_tokens``), or a bare JSON call at the start of the reply, naming a declared tool with an
object of arguments that has every required one. Anything else stays text, as a model that
chose not to call a tool.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOLS_INTRO = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. Based on the question, you may need to make one or more function/tool calls "
    "to achieve the purpose. If none of the functions is needed, answer the question directly "
    "in plain text.\nYou have access to the following tools:\n<tools>"
)
TOOLS_OUTRO = (
    "</tools>\nTo call tools, reply with only this, and no other text:\n"
    '<tool_call>[{"name": "func_name", "arguments": {"argument1": "value1"}}]</tool_call>'
)
_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


class ToolRequestError(ValueError):
    """A request whose tools or tool messages are malformed (the message says which field)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        required = self.parameters.get("required") or []
        return [str(x) for x in required] if isinstance(required, list) else []


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


def parse_tools(raw: Any) -> list[Tool]:
    """The request's ``tools`` (OpenAI ``[{"type": "function", "function": {…}}]``)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ToolRequestError("'tools' must be a list")
    tools = []
    for i, entry in enumerate(raw):
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("type", "function") != "function":
            raise ToolRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{…}}}}")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolRequestError(f"tools[{i}].function.name must be a string")
        parameters = function.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ToolRequestError(f"tools[{i}].function.parameters must be a JSON schema object")
        tools.append(Tool(function["name"], str(function.get("description") or ""), parameters))
    return tools


def tool_choice_allows(choice: Any, index: int = 0) -> bool:
    """Whether the request lets the model call tools. ``"none"`` does not; ``"auto"``,
    ``"required"`` and a named function do (a text-only model cannot be forced to call one:
    they all mean "the tools are offered")."""
    if choice is None or choice in ("auto", "required"):
        return True
    if choice == "none":
        return False
    if isinstance(choice, dict) and choice.get("type") == "function":
        return True
    raise ToolRequestError("'tool_choice' must be 'none', 'auto', 'required' or a function")


def render(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool]) -> list[dict[str, str]]:
    """The conversation as plain ``{"role", "content"}`` turns in SmolLM2's tool format.
    ``messages`` are OpenAI-shaped (assistant ``tool_calls``, ``role: tool`` results)."""
    out: list[dict[str, str]] = []
    if tools:
        listed = json.dumps(
            [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in tools
            ]
        )
        instructions = TOOLS_INTRO + listed + TOOLS_OUTRO
        head = messages[0] if messages else None
        if head is not None and head.get("role") == "system" and head.get("content"):
            instructions = str(head["content"]).rstrip() + "\n\n" + instructions
            messages = messages[1:]
        out.append({"role": "system", "content": instructions})
    for message in messages:
        role = message.get("role")
        if role == "tool":
            response = (
                "<tool_response>\n" + str(message.get("content") or "") + "\n</tool_response>"
            )
            if (
                out
                and out[-1]["role"] == "user"
                and out[-1]["content"].endswith("</tool_response>")
            ):
                out[-1]["content"] += "\n" + response  # results of one turn's calls together
            else:
                out.append({"role": "user", "content": response})
            continue
        content = str(message.get("content") or "")
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            rendered = [
                {"name": c["function"]["name"], "arguments": _arguments(c["function"])}
                for c in calls
            ]
            content = (content + "\n" if content else "") + (
                "<tool_call>" + json.dumps(rendered) + "</tool_call>"
            )
        out.append({"role": str(role), "content": content})
    return out


def _arguments(function: Mapping[str, Any]) -> Any:
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def parse_reply(text: str, tools: Sequence[Tool]) -> tuple[str | None, list[ToolCall]]:
    """(text content, tool calls) of a model reply. Calls only when the reply holds valid calls
    of declared tools; otherwise the whole reply is the text and there are no calls."""
    if not tools:
        return text, []
    block = _CALL.search(text)
    if block is not None:
        payload, before = block.group(1), text[: block.start()]
    else:
        stripped = text.lstrip()
        if not stripped.startswith(("[", "{")):
            return text, []
        payload, before = stripped, ""
    calls = _calls(payload, {t.name: t for t in tools})
    if not calls:
        return text, []
    return (before.strip() or None), calls


def _calls(payload: str, tools: Mapping[str, Tool]) -> list[ToolCall]:
    value = _first_json(payload)
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in tools:
            return []
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return []
        if not isinstance(arguments, dict):
            return []
        if any(name not in arguments for name in tools[item["name"]].required):
            return []
        calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", item["name"], arguments))
    return calls


def _first_json(payload: str) -> Any:
    """The first JSON value in ``payload`` (text may follow it); None when there is none."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(payload):
        if char in "[{":
            try:
                value, _ = decoder.raw_decode(payload[start:])
            except ValueError:
                continue
            return value
    return None
