"""Step-level rewards in a real OpenAI Agents run (Agent, Runner, function tools, a handoff)
against a scripted OpenAI server: tools call atlas.reward(), one tool raises (the SDK hands the
error to the model and the run goes on); the store holds one session with its steps (agent
turns and tool calls), their rewards, the error, and the session reward."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents import Agent, Runner, function_tool
from agents.tracing import set_trace_processors
from atlas_middleware.integrations.openai_agents import instrument, supervise_agent, uninstrument

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from tests.integrations.scripted_openai import ScriptedOpenAI, system_text, tool_call
from tests.integrations.test_openai_agents import _called, chat_model, judge

TASK = "What is 12 + 30?"


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    instrument(exclusive=True)
    yield
    uninstrument()
    set_trace_processors([])


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    atlas.reward(1.0, name="tool_ok", rationale="added")
    atlas.reward(0.7, name="milestone", scope="session")
    return a + b


@function_tool
def lookup(key: str) -> str:
    """Look a key up."""
    atlas.reward(0.2, name="tool_ok", rationale="about to fail")
    raise KeyError(f"no such key {key!r}")


def script(body: dict):
    """triage hands off to math; math calls lookup (fails), then add, then answers."""
    if "Route" in system_text(body):
        return [tool_call("transfer_to_math", {})]
    called = _called(body)
    if "lookup" not in called:
        return [tool_call("lookup", {"key": "x"})]
    if "add" not in called:
        return [tool_call("add", {"a": 12, "b": 30})]
    return "The answer is 42."


def test_an_agents_run_with_tools_is_one_session_with_steps_and_rewards(store_url, monkeypatch):
    monkeypatch.setenv("ATLAS_STORE_URL", store_url)
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    with ScriptedOpenAI(script) as server:
        math = Agent(
            name="math",
            instructions="You are a calculator.",
            tools=[add, lookup],
            model=chat_model(server.url),
        )
        triage = Agent(
            name="triage",
            instructions="Route math questions.",
            handoffs=[math],
            model=chat_model(server.url),
        )
        supervised = supervise_agent(
            triage,
            teacher=ScriptedModel(replies=["NONE"], name="teacher"),
            reward=RIMReward(judge(), judges=["accuracy"], samples=1),
            reward_inline=True,
            lane="auto",
        )
        result = supervised.run_sync(TASK)
        assert isinstance(result.final_output, str) and "42" in result.final_output
    telemetry.shutdown()
    assert Runner is not None

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        steps = store.steps_for(session.trace_id)
    assert session.reward_score == pytest.approx(0.9)
    assert session.evaluations["milestone"]["score"] == pytest.approx(0.7)
    assert "tool_ok" not in session.evaluations
    kinds = sorted((x.kind, x.name, x.status) for x in steps)
    assert kinds == [
        ("agent", "math", "ok"),
        ("agent", "triage", "ok"),
        ("tool", "add", "ok"),
        ("tool", "lookup", "error"),
    ]
    turns = {x.name: x for x in steps if x.kind == "agent"}
    tools = {x.name: x for x in steps if x.kind == "tool"}
    assert tools["add"].parent_id == turns["math"].span_id
    assert tools["add"].evaluations["tool_ok"]["score"] == 1.0
    assert tools["add"].output == "42"
    assert tools["lookup"].reward_score == pytest.approx(0.2)
    assert "no such key" in (tools["lookup"].error or "")
    # The model calls of each turn count in its tokens.
    assert turns["math"].output_tokens and turns["triage"].output_tokens
