"""Step rewards over the collector: a LangGraph run exported over OTLP/HTTP (the official
exporter) to a real atlas-collector lands with its steps and step rewards, including a reward
given by span id after the run (and its step) ended."""

from __future__ import annotations

import pytest
from atlas_middleware.integrations.langgraph import supervise_graph
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.storage import open_store
from tests.helpers import Collector
from tests.integrations.test_langgraph_steps import TASK, judge, step_graph


def test_step_rewards_reach_the_store_through_the_collector(store_url):
    with Collector(store_url) as collector:
        telemetry.configure(
            exporter=OTLPSpanExporter(endpoint=collector.traces_url), batch=False, set_global=False
        )
        graph, handles = step_graph(FakeMessagesListChatModel(responses=[AIMessage("add them")]))
        app = supervise_graph(
            graph,
            agent="calc",
            lane="auto",
            teacher=ScriptedModel(replies=["NONE"], name="teacher"),
            reward=judge(0.9),
            reward_inline=True,
        )
        app.invoke({"messages": [HumanMessage(TASK)]})
        session = atlas.last_session()
        # Later, elsewhere: the step by its span id, the session by its trace id.
        atlas.reward(0.4, name="review", step=handles["plan"].span_id, session=session.trace_id)
        telemetry.shutdown()

    with open_store(store_url) as store:
        [row] = list(store.iter_sessions())
        steps = store.steps_for(row.trace_id)
    assert row.trace_id == session.trace_id and row.reward_score == pytest.approx(0.9)
    assert row.evaluations["milestone"]["score"] == pytest.approx(0.7)
    [plan] = [x for x in steps if x.name == "plan"]
    assert plan.span_id == handles["plan"].span_id
    assert plan.evaluations["plan_quality"]["score"] == pytest.approx(0.8)
    assert plan.evaluations["review"]["score"] == pytest.approx(0.4)
    assert plan.reward_score == pytest.approx(0.6)
    assert [x.status for x in steps if x.name == "act"].count("error") == 1
