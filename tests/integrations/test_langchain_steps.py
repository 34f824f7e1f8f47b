"""LangChain tool calls inside a plain @atlas.supervise function are steps: each is a steps row
with its reward (atlas.reward() inside the tool), a failing tool with its error, and a reward
outside any step goes to the session (logged once)."""

from __future__ import annotations

import contextlib
import logging

import pytest
from atlas_middleware.integrations import langchain as lc
from langchain_core.tools import tool

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.storage import open_store


@pytest.fixture(autouse=True)
def _instrumented():
    lc.instrument()
    yield
    lc.uninstrument()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    atlas.reward(1.0, name="tool_ok", rationale="added")
    return a + b


@tool
def divide(a: int, b: int) -> float:
    """Divide a by b."""
    return a / b


def test_langchain_tool_calls_in_a_supervised_function_are_steps(store_url, caplog, monkeypatch):
    from atlas_middleware import steps as steps_module

    monkeypatch.setattr(steps_module, "_logged", set())  # "once" is per process
    caplog.set_level(logging.WARNING, logger="atlas.steps")
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)

    @atlas.supervise(agent="calc", lane="auto", reward=False)
    def solve(task: str) -> str:
        total = add.invoke({"a": 12, "b": 30})
        with contextlib.suppress(ZeroDivisionError):
            divide.invoke({"a": 1, "b": 0})
        atlas.reward(0.5, name="outside_steps")  # no step runs here: the session gets it
        return str(total)

    assert solve("What is 12 + 30?") == "42"
    telemetry.shutdown()
    with open_store(store_url) as store:
        [row] = list(store.iter_sessions())
        steps = store.steps_for(row.trace_id)
    assert [(x.kind, x.name, x.status) for x in steps] == [
        ("tool", "add", "ok"),
        ("tool", "divide", "error"),
    ]
    assert steps[0].evaluations["tool_ok"]["score"] == 1.0 and steps[0].output == "42"
    assert steps[1].error_type == "ZeroDivisionError" and steps[1].reward_score is None
    assert row.evaluations["outside_steps"]["score"] == 0.5
    assert any("outside any step" in r.message for r in caplog.records)
