"""Step-level rewards in a real LlamaIndex Workflow: steps call atlas.reward(), one step fails
once (a retry policy runs it again), a FunctionTool runs inside a step; the store holds one
session with its steps, their rewards, the error, and the session reward."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from atlas_middleware.integrations import llama_index as li
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step
from workflows.retry_policy import retry_policy, stop_after_attempt, wait_none

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.storage import open_store
from tests.integrations.test_llama_index import ScriptedLLM, judge


@pytest.fixture(autouse=True)
def _no_handlers_left() -> Iterator[None]:
    yield
    li.uninstrument()


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Draft(Event):
    text: str


class Steps(Workflow):
    def __init__(self, llm: ScriptedLLM) -> None:
        super().__init__(timeout=30)
        self.llm = llm
        self.tool = FunctionTool.from_defaults(add)
        self.attempts = 0

    @step
    async def plan(self, ev: StartEvent) -> Draft:
        reply = await self.llm.achat([ChatMessage(role="user", content=ev.question)])
        atlas.reward(0.8, name="plan_quality", rationale="short plan")
        return Draft(text=reply.message.content)

    @step(retry_policy=retry_policy(wait=wait_none(), stop=stop_after_attempt(2)))
    async def act(self, ev: Draft) -> StopEvent:
        self.attempts += 1
        if self.attempts == 1:
            atlas.reward(0.1, name="act_ok")
            raise ConnectionError("flaky backend")
        total = await self.tool.acall(a=12, b=30)
        atlas.reward(1.0, name="act_ok", rationale="the tool answered")
        atlas.reward(0.7, name="milestone", scope="session")
        return StopEvent(result=str(total.content))


def test_a_workflow_with_step_rewards_and_a_failing_step_is_one_session_with_steps(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    flow = li.supervise_workflow(
        Steps(ScriptedLLM(respond=lambda messages: "add them")),
        agent="solver",
        lane="auto",
        teacher=ScriptedModel(replies=["NONE"], name="teacher"),
        reward=judge(0.9),
        reward_inline=True,
    )

    async def main():
        handler = flow.run(question="What is 12 + 30?")
        return await handler

    assert asyncio.run(main()) == "42"
    telemetry.shutdown()

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        steps = store.steps_for(session.trace_id)
    assert session.reward_score == pytest.approx(0.9)
    assert session.evaluations["milestone"]["score"] == pytest.approx(0.7)
    assert "act_ok" not in session.evaluations
    kinds = sorted((x.kind, x.name, x.status) for x in steps)
    assert kinds == [
        ("step", "act", "error"),
        ("step", "act", "ok"),
        ("step", "plan", "ok"),
        ("tool", "add", "ok"),
    ]
    [plan] = [x for x in steps if x.name == "plan"]
    assert plan.evaluations["plan_quality"]["score"] == pytest.approx(0.8)
    assert (plan.input_tokens, plan.output_tokens) == (11, 2)
    [failed] = [x for x in steps if x.name == "act" and x.status == "error"]
    [passed] = [x for x in steps if x.name == "act" and x.status == "ok"]
    assert failed.error_type == "ConnectionError" and "flaky backend" in failed.error
    assert failed.reward_score == pytest.approx(0.1)
    assert passed.evaluations["act_ok"]["explanation"] == "the tool answered"
    [tool] = [x for x in steps if x.kind == "tool"]
    assert tool.parent_id == passed.span_id and tool.output == "42"
