"""The session root carries the tokens of every model call made inside the session."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry import usage


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()


def teacher() -> ScriptedModel:
    def respond(messages):
        system = messages[0]["content"]
        if system.startswith("You check"):
            return "INVALID: the sum is wrong"
        return "Add the two numbers, then check the sum twice."

    return ScriptedModel(respond=respond, name="teacher")


def roots(exporter: InMemorySpanExporter):
    return [x for x in exporter.get_finished_spans() if x.name.startswith("invoke_agent")]


def test_root_usage_is_the_sum_of_teacher_and_student_calls(spans):
    coach, student = teacher(), ScriptedModel(respond=lambda m: "I think it is 7", name="student")

    @atlas.supervise(agent="calc", teacher=coach, reward=False, lane="paired")
    def solve(task: str) -> str:
        messages = atlas.with_guidance([{"role": "user", "content": task}])
        return asyncio.run(student.chat(messages)).text

    solve("What is 2 + 3?")
    [root] = roots(spans)
    calls = coach.usage.calls + student.usage.calls
    assert calls == 4  # validate, guidance, two student tries
    assert root.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] == (
        coach.usage.input_tokens + student.usage.input_tokens
    )
    assert root.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == (
        coach.usage.output_tokens + student.usage.output_tokens
    )


def test_framework_calls_report_through_count_and_sessions_do_not_mix(spans):
    @atlas.supervise(
        agent="calc", teacher=ScriptedModel(respond=lambda m: "0.99"), reward=False, lane="auto"
    )
    async def solve(task: str, tokens: int) -> str:
        usage.count(tokens, 1)  # what an integration does for a call outside atlas models
        await asyncio.sleep(0)
        usage.count(tokens, 2)
        return "5"

    async def both():
        await asyncio.gather(solve("a", 10), solve("b", 100))

    asyncio.run(both())
    totals = sorted(
        (r.attributes[s.GEN_AI_USAGE_INPUT_TOKENS], r.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS])
        for r in roots(spans)
    )
    assert totals == [(20, 3), (200, 3)]
    usage.count(5, 5)  # outside any session: counted nowhere, no error


def test_no_usage_attribute_when_no_model_was_called(spans):
    @atlas.supervise(
        agent="calc", teacher=ScriptedModel(respond=lambda m: "0.99"), reward=False, lane="auto"
    )
    def solve(task: str) -> str:
        return "5"

    solve("What is 2 + 3?")
    [root] = roots(spans)
    assert s.GEN_AI_USAGE_INPUT_TOKENS not in root.attributes


def test_the_reference_is_kept_on_the_session_root(spans):
    @atlas.supervise(
        agent="calc", teacher=ScriptedModel(replies=["0.99"]), reward=False, lane="auto"
    )
    def solve(task: str) -> str:
        return "5"

    solve.options(reference="5")("What is 2 + 3?")
    solve("What is 2 + 2?")
    with_ref, without = sorted(roots(spans), key=lambda r: s.ATLAS_REFERENCE in r.attributes)[::-1]
    assert with_ref.attributes[s.ATLAS_REFERENCE] == "5"
    assert s.ATLAS_REFERENCE not in without.attributes
