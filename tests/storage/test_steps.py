"""The steps table on both stores: steps from step spans (atlas's own, marked with
atlas.step.kind, and other producers' tool spans), step rewards merged by name in any order and
across batches, re-sent spans stored once, bad scores rejected, and the session left alone."""

from __future__ import annotations

import dataclasses

import pytest

from atlas_middleware.storage import SpanEvent, SpanRecord
from atlas_middleware.telemetry import schema as s
from tests.storage.factories import BASE_NS, evaluation, root, tid


def step_span(
    trace: str, span: str, name: str, *, kind: str | None = "node", **attrs
) -> SpanRecord:
    attributes = {s.ATLAS_SPAN_ROLE: s.ROLE_FRAMEWORK, s.ATLAS_FRAMEWORK_SPAN_TYPE: "node"}
    if kind is not None:
        attributes[s.ATLAS_STEP_KIND] = kind
    attributes.update(attrs)
    return SpanRecord(
        trace_id=trace,
        span_id=span,
        parent_span_id=trace[-16:],
        name=f"node {name}",
        kind="INTERNAL",
        start_ns=BASE_NS + int(span, 16),
        end_ns=BASE_NS + int(span, 16) + 100,
        attributes={s.ATLAS_NODE_NAME: name, **attributes},
        scope="tests",
    )


def step_reward(trace: str, step: str, name: str, score, start: int = 0) -> SpanRecord:
    record = evaluation(trace, score, name=name, start_ns=BASE_NS + 10_000 + start)
    record.parent_span_id = step
    record.attributes[s.ATLAS_REWARD_SCOPE] = s.SCOPE_STEP
    record.attributes[s.ATLAS_STEP_ID] = step
    return record


def test_steps_and_their_rewards_in_any_order(store):
    trace = tid(1)
    a, b = "00000000000000a1", "00000000000000b2"
    failed = dataclasses.replace(
        step_span(trace, b, "act", **{s.ERROR_TYPE: "ValueError", s.OI_INPUT_VALUE: "in"}),
        status_code="ERROR",
        status_message="bad value",
    )
    # A reward before its step, the step, then the root and more rewards in later batches.
    store.write_spans([step_reward(trace, a, "quality", 0.8)])
    store.write_spans([step_span(trace, a, "plan", **{s.GEN_AI_USAGE_INPUT_TOKENS: 7}), failed])
    result = store.write_spans(
        [
            root(trace),
            evaluation(trace, 0.9),
            step_reward(trace, a, "review", 0.4, start=1),
            step_reward(trace, b, "quality", float("nan"), start=2),
        ]
    )
    assert result.rejected_rewards == 1
    store.write_spans([step_reward(trace, a, "quality", 0.6, start=3)])  # replaces by name
    store.write_spans([step_span(trace, a, "plan")])  # re-sent: nothing changes
    plan, act = store.steps_for(trace)
    assert (plan.name, plan.kind, plan.status, plan.input_tokens) == ("plan", "node", "ok", 7)
    assert set(plan.evaluations) == {"quality", "review"}
    assert plan.evaluations["quality"]["score"] == 0.6
    assert plan.reward_score == pytest.approx(0.5)
    assert (act.status, act.error_type, act.error, act.input) == (
        "error",
        "ValueError",
        "bad value",
        "in",
    )
    assert act.reward_score is None and "score" not in act.evaluations["quality"]
    [session] = store.iter_sessions()
    assert session.reward_score == pytest.approx(0.9)
    assert set(session.evaluations) == {s.PRIMARY_EVALUATION}  # step rewards stay with steps
    assert store.steps_of([trace, tid(2)]) == {trace: [plan, act], tid(2): []}


def test_other_producers_tool_spans_are_steps_and_the_root_is_not(store):
    trace = tid(3)
    tool = dataclasses.replace(
        step_span(trace, "00000000000000c3", "x", kind=None),
        attributes={
            s.GEN_AI_OPERATION_NAME: s.OP_EXECUTE_TOOL,
            s.ATLAS_SPAN_ROLE: s.ROLE_TOOL,
            s.GEN_AI_TOOL_NAME: "search",
            s.GEN_AI_TOOL_CALL_ARGUMENTS: '{"q": 1}',
            s.GEN_AI_TOOL_CALL_RESULT: "found",
        },
    )
    chat = dataclasses.replace(
        tool,
        span_id="00000000000000c4",
        attributes={s.GEN_AI_OPERATION_NAME: s.OP_CHAT},
        events=[SpanEvent("x", BASE_NS, {})],
    )
    store.write_spans([root(trace), tool, chat])
    [step] = store.steps_for(trace)
    assert (step.kind, step.name, step.input, step.output) == (
        "tool",
        "search",
        '{"q": 1}',
        "found",
    )
