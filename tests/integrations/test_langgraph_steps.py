"""Step-level rewards in a real LangGraph graph: nodes call atlas.reward(), one node fails once
(a RetryPolicy runs it again), a tool inside a node fails; the store holds one session with its
steps, their rewards, the error, and the session reward."""

from __future__ import annotations

import logging

import orjson
import pytest
from atlas_middleware.integrations import langchain as lc
from atlas_middleware.integrations.langgraph import supervise_graph
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import RetryPolicy

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s

TASK = "What is 12 + 30?"


def judge(score: float = 0.9) -> RIMReward:
    reply = orjson.dumps(
        {
            "principles": [{"name": "correct", "weight": 1.0}],
            "score": score,
            "rationale": "checked",
            "uncertainty": 0.05,
        }
    ).decode()
    return RIMReward(ScriptedModel(replies=[reply], name="judge"), judges=["accuracy"], samples=1)


@pytest.fixture(autouse=True)
def _no_global_hook():
    yield
    lc.uninstrument()


@tool
def lookup(key: str) -> str:
    """Look a key up (fails for a missing key)."""
    raise KeyError(f"no such key {key!r}")


def step_graph(llm):
    attempts = {"act": 0}
    handles = {}

    def plan(state: MessagesState) -> dict:
        reply = llm.invoke(state["messages"])
        atlas.reward(0.8, name="plan_quality", rationale="a plan with two steps")
        handles["plan"] = atlas.current_step()
        handles["session"] = atlas.current_session()
        return {"messages": [reply]}

    def act(state: MessagesState) -> dict:
        attempts["act"] += 1
        try:
            lookup.invoke({"key": "missing"})
        except KeyError:
            atlas.reward(0.0, name="tool_ok", rationale="the lookup failed")
        if attempts["act"] == 1:
            atlas.reward(0.1, name="act_ok", rationale="about to fail")
            raise ConnectionError("flaky backend")
        atlas.reward(1.0, name="act_ok")
        atlas.reward(0.7, name="milestone", scope="session")
        return {"messages": [AIMessage("42")]}

    builder = StateGraph(MessagesState)
    builder.add_node("plan", plan)
    builder.add_node("act", act, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", END)
    return builder.compile(), handles


def test_a_graph_with_step_rewards_and_a_failing_node_is_one_session_with_steps(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    llm = FakeMessagesListChatModel(
        responses=[
            AIMessage(
                "add them",
                usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
            )
        ]
    )
    graph, handles = step_graph(llm)
    app = supervise_graph(
        graph,
        agent="calc",
        lane="auto",
        teacher=ScriptedModel(replies=["NONE"], name="teacher"),
        reward=judge(0.9),
        reward_inline=True,
    )
    out = app.invoke({"messages": [HumanMessage(TASK)]})
    assert out["messages"][-1].content == "42"
    session = atlas.last_session()
    # A reward for a step that ended, by its handle.
    atlas.reward(0.6, name="late", step=handles["plan"])
    telemetry.shutdown()

    with open_store(store_url) as store:
        [row] = list(store.iter_sessions())
        steps = store.steps_for(row.trace_id)
    assert row.trace_id == session.trace_id
    assert row.reward_score == pytest.approx(0.9)
    assert row.evaluations["milestone"]["score"] == pytest.approx(0.7)
    assert "plan_quality" not in row.evaluations and "act_ok" not in row.evaluations

    names = [(x.kind, x.name, x.status) for x in steps]
    assert names == [
        ("node", "plan", "ok"),
        ("node", "act", "error"),
        ("tool", "lookup", "error"),
        ("node", "act", "ok"),
        ("tool", "lookup", "error"),
    ] or sorted(names) == sorted(
        [
            ("node", "plan", "ok"),
            ("node", "act", "error"),
            ("tool", "lookup", "error"),
            ("node", "act", "ok"),
            ("tool", "lookup", "error"),
        ]
    )
    plan = next(x for x in steps if x.name == "plan")
    assert plan.evaluations["plan_quality"]["score"] == pytest.approx(0.8)
    assert plan.evaluations["plan_quality"]["explanation"] == "a plan with two steps"
    assert plan.evaluations["late"]["score"] == pytest.approx(0.6)
    assert plan.reward_score == pytest.approx(0.7)  # mean of its rewards
    assert (plan.input_tokens, plan.output_tokens) == (7, 3)
    assert plan.output and "add them" in plan.output
    failed, passed = [x for x in steps if x.name == "act"]
    if failed.status == "ok":
        failed, passed = passed, failed
    assert failed.error_type == "ConnectionError" and "flaky backend" in failed.error
    assert failed.evaluations["act_ok"]["score"] == pytest.approx(0.1)
    assert passed.evaluations["act_ok"]["score"] == pytest.approx(1.0)
    tools = [x for x in steps if x.kind == "tool"]
    assert {x.parent_id for x in tools} == {failed.span_id, passed.span_id}
    # The tool's reward went to the node (the tool had ended when the node rewarded).
    assert all(x.evaluations["tool_ok"]["score"] == 0.0 for x in (failed, passed))
    assert all(x.error_type == "KeyError" for x in tools)


def test_reward_outside_a_supervised_call_is_a_no_op_logged_once(caplog, memory, monkeypatch):
    from atlas_middleware import steps as steps_module

    monkeypatch.setattr(steps_module, "_logged", set())  # "once" is per process
    caplog.set_level(logging.WARNING, logger="atlas.steps")
    assert atlas.reward(0.5) is None
    assert atlas.reward(0.5, scope="session") is None
    assert len([r for r in caplog.records if "outside a supervised call" in r.message]) == 1
    assert not [x for x in memory.get_finished_spans() if x.attributes.get(s.ATLAS_SPAN_ROLE)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score": 1.5}, "within \\[0, 1\\]"),
        ({"score": 0.5, "name": ""}, "non-empty"),
        ({"score": 0.5, "scope": "trace"}, "'step' or 'session'"),
        ({"score": 0.5, "step": "xyz"}, "16 hex digits"),
    ],
)
def test_bad_reward_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        atlas.reward(**kwargs)


def test_rim_on_steps_scores_steps_and_a_mixed_session_reward_keeps_its_components(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    llm = FakeMessagesListChatModel(responses=[AIMessage("add them")])
    graph, _ = step_graph(llm)
    app = supervise_graph(
        graph,
        agent="calc",
        lane="auto",
        teacher=ScriptedModel(replies=["NONE"], name="teacher"),
        reward=judge(0.6),
        reward_inline=True,
        step_sample_rate=1.0,
        session_reward="mix",
        step_weight=0.5,
    )
    app.invoke({"messages": [HumanMessage(TASK)]})
    telemetry.shutdown()

    with open_store(store_url) as store:
        [row] = list(store.iter_sessions())
        steps = store.steps_for(row.trace_id)
    # Every step has RIM's reward: the judge's for those that ran, 0 and the error for the failed.
    assert all(s.PRIMARY_EVALUATION in x.evaluations for x in steps)
    failed = [x for x in steps if x.status == "error"]
    assert failed and all(x.evaluations[s.PRIMARY_EVALUATION]["score"] == 0.0 for x in failed)
    assert all(x.reward_score == 0.0 for x in failed)
    [act] = [x for x in failed if x.name == "act"]
    assert "flaky backend" in act.evaluations[s.PRIMARY_EVALUATION]["explanation"]
    passed = [x for x in steps if x.status == "ok"]
    assert all(x.reward_score == pytest.approx(0.6) for x in passed)
    # The session: the final judge (0.6) mixed half and half with the mean step reward.
    mean = (0.6 * len(passed)) / len(steps)
    assert row.evaluations[s.PRIMARY_EVALUATION]["score"] == pytest.approx(0.6)
    aggregate = row.evaluations[s.AGGREGATE_EVALUATION]
    assert row.reward_score == pytest.approx(0.5 * 0.6 + 0.5 * mean)
    assert aggregate["payload"]["final"] == pytest.approx(0.6)
    assert aggregate["payload"]["step_mean"] == pytest.approx(mean)
    assert len(aggregate["payload"]["steps"]) == len(steps)


def test_async_graph_steps_sessions_show_and_a_reward_by_session_id(sqlite_url):
    import asyncio
    import json

    from tests.helpers import atlas_cli

    telemetry.configure(exporter="atlas", store=sqlite_url, batch=False, set_global=False)
    graph, handles = step_graph(FakeMessagesListChatModel(responses=[AIMessage("add them")]))
    app = supervise_graph(
        graph,
        agent="calc",
        lane="auto",
        teacher=ScriptedModel(replies=["NONE"], name="teacher"),
        reward=judge(0.9),
        reward_inline=True,
    )
    asyncio.run(app.ainvoke({"messages": [HumanMessage(TASK)]}))
    session = handles["session"]
    atlas.reward(0.3, name="audit", step=handles["plan"].span_id, session=session.session_id)
    telemetry.shutdown()

    out = atlas_cli("sessions", "show", session.trace_id, "--store", sqlite_url).stdout
    assert "Steps (5)" in out
    assert "ConnectionError: flaky backend" in out and "plan_quality=0.80" in out
    [shown] = [
        json.loads(line)
        for line in atlas_cli(
            "sessions", "show", session.session_id, "--json", "--store", sqlite_url
        ).stdout.splitlines()
    ]
    plan = next(x for x in shown["steps"] if x["name"] == "plan")
    assert plan["evaluations"]["audit"]["score"] == pytest.approx(0.3)
    assert plan["evaluations"]["plan_quality"]["score"] == pytest.approx(0.8)
    assert [x["status"] for x in shown["steps"] if x["name"] == "act"].count("error") == 1


def test_the_ui_session_page_shows_the_steps(sqlite_url):
    import httpx

    from tests.ui.conftest import serving

    telemetry.configure(exporter="atlas", store=sqlite_url, batch=False, set_global=False)
    graph, handles = step_graph(FakeMessagesListChatModel(responses=[AIMessage("add them")]))
    supervise_graph(
        graph,
        agent="calc",
        lane="auto",
        teacher=ScriptedModel(replies=["NONE"], name="teacher"),
        reward=False,
    ).invoke({"messages": [HumanMessage(TASK)]})
    telemetry.shutdown()
    with serving(sqlite_url) as base, httpx.Client(base_url=base) as web:
        page = web.get(f"/sessions/{handles['session'].trace_id}")
    assert page.status_code == 200
    steps = page.text.split('data-testid="steps"', 1)[1].split("</section>", 1)[0]
    assert "Steps <span" in steps and steps.count("<tr>") == 1 + 5  # the header and five steps
    assert "ConnectionError: flaky backend" in steps and "plan_quality 0.80" in steps


def test_a_reward_that_cannot_be_recorded_never_breaks_the_node(memory, monkeypatch, caplog):
    from atlas_middleware import steps as steps_module

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(steps_module.s, "record_evaluation", broken)
    monkeypatch.setattr(steps_module, "_logged", set())
    caplog.set_level(logging.WARNING, logger="atlas.steps")
    graph, handles = step_graph(FakeMessagesListChatModel(responses=[AIMessage("add them")]))
    app = supervise_graph(graph, agent="calc", lane="auto", reward=False)
    out = app.invoke({"messages": [HumanMessage(TASK)]})
    assert out["messages"][-1].content == "42"
    assert handles["plan"].name == "plan"
    assert sum("could not be recorded" in r.message for r in caplog.records) == 1
