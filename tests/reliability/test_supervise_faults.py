"""@supervise never changes what the wrapped agent returns or raises, whatever the teacher, the
judges and the store do: a hypothesis property over random failure injection, sync and async."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from atlas_middleware.otel_exporters import StoreSpanExporter
from atlas_middleware.otel_exporters.spool import RetryingSpanExporter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ModelUnavailable, ScriptedModel
from atlas_middleware.rim import RIMReward

TEACHER_FAULTS = ["ok", "raise", "unavailable", "runtime", "timeout", "garbage", "empty", "nan"]
JUDGE_FAULTS = ["ok", "raise", "runtime", "garbage", "nan", "timeout"]
DEAD_STORE = "postgresql://postgres@127.0.0.1:9/atlas"  # port 9: refused at once


@dataclass
class FaultyModel(ScriptedModel):
    """Each call takes the next fault of ``plan`` (the last repeats)."""

    plan: tuple[str, ...] = ("ok",)
    ok_reply: str = "0.7"

    async def _complete(self, messages, *, max_tokens, temperature, stop):
        fault = self.plan[min(len(self.calls), len(self.plan) - 1)]
        self.calls.append(list(messages))
        if fault == "timeout":
            await asyncio.sleep(0.3)  # past every timeout below
        reply = {
            "ok": self.ok_reply,
            "raise": ModelError("teacher refused"),
            "unavailable": ModelUnavailable("down"),
            "runtime": RuntimeError("bug in a backend"),
            "timeout": self.ok_reply,
            "garbage": "\x00{{not json]] ∞ NaN",
            "empty": "",
            "nan": '{"score": NaN, "principles": [], "rationale": "x"}',
        }[fault]
        if isinstance(reply, BaseException):
            raise reply
        from atlas_middleware.models.base import ChatResult

        return ChatResult(reply, self.name, 1, 1, "stop")


class AgentError(Exception):
    pass


plans = st.tuples(*[st.sampled_from(TEACHER_FAULTS)] * 4)
judge_plans = st.tuples(*[st.sampled_from(JUDGE_FAULTS)] * 2)


@pytest.fixture
def store_mode(tmp_path, monkeypatch):
    """Sets ATLAS_STORE_URL per example (the playbook reads it) and configures spans."""

    def apply(mode: str) -> None:
        url = f"sqlite:///{tmp_path / 'atlas.db'}" if mode == "up" else DEAD_STORE
        monkeypatch.setenv("ATLAS_STORE_URL", url)
        # The retrying exporter in front, as configure() builds it, with a short shutdown
        # deadline: each example replaces the provider, and a dead store would hold that
        # shutdown for the default deadline.
        exporter = RetryingSpanExporter(StoreSpanExporter(url), shutdown_timeout_s=0.05)
        telemetry.configure(exporter=exporter, set_global=False)

    yield apply
    telemetry.shutdown()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    teacher_plan=plans,
    judge_plan=judge_plans,
    store=st.sampled_from(["up", "down"]),
    agent_raises=st.booleans(),
    is_async=st.booleans(),
    inline=st.booleans(),
    lane=st.sampled_from([None, "auto", "paired", "coach"]),
)
def test_the_agent_result_and_exception_pass_through_untouched(
    store_mode, teacher_plan, judge_plan, store, agent_raises, is_async, inline, lane
):
    store_mode(store)
    teacher = FaultyModel(respond=lambda m: "", plan=teacher_plan, name="teacher")
    judge = FaultyModel(
        respond=lambda m: "",
        plan=judge_plan,
        name="judge",
        ok_reply='{"principles": [{"name": "c", "weight": 1}], "score": 0.8, '
        '"rationale": "ok", "uncertainty": 0.1}',
    )
    returned: list[object] = []
    raised = AgentError("the agent's own failure")

    def body(task: str) -> object:
        if agent_raises:
            raise raised
        answer = {"answer": task, "n": len(returned)}  # a fresh object every call
        returned.append(answer)
        return answer

    options = {
        "agent": "prop",
        "teacher": teacher,
        "reward": RIMReward(judge, judges=["accuracy"], samples=1),
        "reward_inline": inline,
        "probe_timeout_s": 0.05,
        "teacher_timeout_s": 0.05,
        "lane": lane,
    }
    if is_async:

        @atlas.supervise(**options)
        async def solve(task: str) -> object:
            await asyncio.sleep(0)
            return body(task)

        call = lambda: asyncio.run(solve("What is 2 + 3?"))  # noqa: E731
    else:

        @atlas.supervise(**options)
        def solve(task: str) -> object:
            return body(task)

        call = lambda: solve("What is 2 + 3?")  # noqa: E731

    if agent_raises:
        with pytest.raises(AgentError) as info:
            call()
        assert info.value is raised  # the very exception object, not a wrapper
        assert info.value.__traceback__ is not None
    else:
        result = call()
        assert any(result is r for r in returned)  # one of the agent's own answers, unchanged
        assert result == {"answer": "What is 2 + 3?", "n": returned.index(result)}
        assert 1 <= len(returned) <= 2  # at most one guided retry


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("broken", ["session_span", "set_final_answer"])
def test_atlas_internal_errors_never_reach_the_agent(monkeypatch, is_async, broken):
    """atlas itself fails while driving a call (here: making the session span, or recording the
    answer after the agent ran): the agent runs exactly once and its result is returned, its
    exception raised; the failure is counted."""
    from atlas_middleware.supervise import s as schema_module

    def boom(*args, **kwargs):
        raise RuntimeError(f"atlas bug in {broken}")

    monkeypatch.setattr(schema_module, broken, boom)
    telemetry.configure(exporter="none", set_global=False)
    runs: list[object] = []
    before = atlas.supervision_stats().internal_failures

    def body(task: str) -> object:
        if task == "raise":
            raise AgentError("the agent's own failure")
        runs.append({"task": task})
        return runs[-1]

    options = {"agent": "internal", "lane": "auto", "reward": False}
    if is_async:

        @atlas.supervise(**options)
        async def solve(task: str) -> object:
            return body(task)

        call = lambda task: asyncio.run(solve(task))  # noqa: E731
    else:

        @atlas.supervise(**options)
        def solve(task: str) -> object:
            return body(task)

        call = solve
    try:
        result = call("t")
        assert result is runs[-1] and len(runs) == 1  # ran once, its own object returned
        with pytest.raises(AgentError, match="own failure"):
            call("raise")
    finally:
        telemetry.shutdown()
    assert atlas.supervision_stats().internal_failures > before
