"""``atlas serve-model`` speaks OpenAI tool calling (issue 12, finding 11): ``tools`` reach the
model in its tool-calling format, its calls come back as ``tool_calls`` (also streamed), and
``role: tool`` results are accepted; a reply that is not a valid call stays text. Read by the
official OpenAI client, as agent frameworks do."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from openai import AsyncOpenAI

from atlas_middleware.cli.serve_model import create_app
from atlas_middleware.models import ScriptedModel
from atlas_middleware.models.tool_calls import Tool, parse_reply
from tests.models.servers import serve

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
USER = [{"role": "user", "content": "What is 12 + 30?"}]
CALL = '<tool_call>[{"name": "add", "arguments": {"a": 12, "b": 30}}]</tool_call>'
# The model called add(12, 30) and the tool answered 42: the turns an agent sends back.
TOOL_TURN = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
]


async def _ask(url: str, *, stream: bool = False, **options):
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    try:
        if not stream:
            return await client.chat.completions.create(model="scripted", **options)
        chunks = await client.chat.completions.create(model="scripted", stream=True, **options)
        return [chunk async for chunk in chunks]
    finally:
        await client.close()


def _run(model, **options):
    async def run():
        async with serve(create_app(model)) as url:
            return await _ask(url, **options)

    return asyncio.run(run())


def test_a_tool_call_comes_back_as_tool_calls_and_the_model_saw_the_tools():
    model = ScriptedModel(replies=[CALL])
    response = _run(model, messages=USER, tools=[ADD], max_tokens=64)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 12, "b": 30}
    [sent] = model.calls
    system, user = sent
    assert system["role"] == "system" and "<tools>" in system["content"]
    listed = system["content"].split("<tools>")[1].split("</tools>")[0]
    assert json.loads(listed)[0]["parameters"] == ADD["function"]["parameters"]
    assert user == USER[0]


def test_streamed_tool_calls_assemble_like_openais():
    chunks = _run(
        ScriptedModel(replies=[CALL]),
        stream=True,
        messages=USER,
        tools=[ADD],
        stream_options={"include_usage": True},
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls: dict[int, dict] = {}
    for delta in deltas:
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or part.id
            entry["name"] += (part.function.name or "") if part.function else ""
            entry["arguments"] += (part.function.arguments or "") if part.function else ""
    [call] = calls.values()
    assert call["name"] == "add" and json.loads(call["arguments"]) == {"a": 12, "b": 30}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_tool_results_are_accepted_and_rendered_as_tool_responses():
    model = ScriptedModel(replies=["The answer is 42."])
    history = [
        {"role": "system", "content": "You are a calculator."},
        *USER,
        *TOOL_TURN,
    ]
    response = _run(model, messages=history, tools=[ADD])
    assert response.choices[0].message.content == "The answer is 42."
    assert response.choices[0].finish_reason == "stop"
    assert not response.choices[0].message.tool_calls
    [sent] = model.calls
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert (
        sent[0]["content"].startswith("You are a calculator.") and "<tools>" in sent[0]["content"]
    )
    assert sent[2]["content"] == (
        '<tool_call>[{"name": "add", "arguments": {"a": 12, "b": 30}}]</tool_call>'
    )
    assert sent[3]["content"] == "<tool_response>\n42\n</tool_response>"


@pytest.mark.parametrize(
    ("reply", "calls"),
    [
        (CALL, [("add", {"a": 12, "b": 30})]),
        (
            '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}]',
            [("add", {"a": 1, "b": 2})],
        ),
        ('{"name": "add", "arguments": {"a": 1, "b": 2}}', [("add", {"a": 1, "b": 2})]),
        (
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}',
            [("add", {"a": 1, "b": 2})],
        ),
        ("Let me add.\n" + CALL, [("add", {"a": 12, "b": 30})]),
        # not valid calls: they stay text
        ('<tool_call>[{"name": "multiply", "arguments": {"a": 1, "b": 2}}]</tool_call>', []),
        ('<tool_call>[{"name": "add", "arguments": {"a": 1}}]</tool_call>', []),
        ('<tool_call>[{"name": "add", "arguments": [1, 2]}]</tool_call>', []),
        ("<tool_call>add(12, 30)</tool_call>", []),
        ("<tool_call>[{", []),
        ("12 + 30 = 42", []),
        ("[1, 2, 3]", []),
    ],
)
def test_replies_are_calls_only_when_they_are_valid_calls(reply, calls):
    tools = [Tool("add", "", ADD["function"]["parameters"])]
    text, parsed = parse_reply(reply, tools)
    assert [(c.name, c.arguments) for c in parsed] == calls
    if not calls:
        assert text == reply


def test_tool_choice_none_offers_no_tools_and_bad_tools_are_one_line_errors():
    model = ScriptedModel(replies=[CALL])
    response = _run(model, messages=USER, tools=[ADD], tool_choice="none")
    assert (
        response.choices[0].message.content == CALL and not response.choices[0].message.tool_calls
    )
    assert model.calls == [USER]

    async def bad():
        async with (
            serve(create_app(ScriptedModel(replies=["x"]))) as url,
            httpx.AsyncClient() as http,
        ):
            out = []
            for body in (
                {"messages": USER, "tools": {"add": 1}},
                {"messages": USER, "tools": [{"type": "function", "function": {}}]},
                {"messages": USER, "tools": [ADD], "tool_choice": "always"},
                {"messages": [{"role": "assistant", "tool_calls": [{"x": 1}]}]},
            ):
                response = await http.post(f"{url}/chat/completions", json=body)
                out.append((response.status_code, response.json()["error"]["message"]))
            return out

    errors = asyncio.run(bad())
    assert [status for status, _ in errors] == [400] * 4
    assert "'tools' must be a list" in errors[0][1]
    assert "tools[0].function.name" in errors[1][1]
    assert "'tool_choice'" in errors[2][1]
    assert "tool_calls must be a list of function calls" in errors[3][1]


@pytest.mark.model
def test_the_embedded_model_answers_a_tool_request_either_way(model_server: str):
    """Whatever SmolLM2 decides, the answer is well-formed: valid calls of the declared tool, or
    text; and the tool result turn is accepted."""

    async def run():
        name = httpx.get(f"{model_server}/v1/models").json()["data"][0]["id"]
        client = AsyncOpenAI(base_url=f"{model_server}/v1", api_key="none", max_retries=0)
        try:
            first = await client.chat.completions.create(
                model=name, messages=USER, tools=[ADD], max_tokens=48, temperature=0
            )
            history = [*USER, *TOOL_TURN]
            second = await client.chat.completions.create(
                model=name, messages=history, tools=[ADD], max_tokens=16, temperature=0
            )
            return first, second
        finally:
            await client.close()

    first, second = asyncio.run(run())
    for response in (first, second):
        choice = response.choices[0]
        if choice.finish_reason == "tool_calls":
            for call in choice.message.tool_calls:
                assert call.function.name == "add"
                assert set(json.loads(call.function.arguments)) >= {"a", "b"}
        else:
            assert isinstance(choice.message.content, str) and not choice.message.tool_calls
