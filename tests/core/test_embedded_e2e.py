"""One supervised session end to end with the real embedded SmolLM2 as student, teacher and judge:
it answers, is rewarded, and lands in the store with its spans; the teacher's guidance reaches
the student model's input."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry.genai import message_text

pytestmark = pytest.mark.model


def test_supervised_session_with_the_embedded_model(embedded, private_store):
    telemetry.configure(exporter="atlas", store=private_store, service_name="e2e")
    rim = RIMReward(embedded, judges=["accuracy", "helpfulness"], samples=1, max_tokens=64)

    # A reference no answer can match: the paired lane's validation fails, so the teacher's
    # guidance and the guided retry are exercised on every run, whatever the model says.
    @atlas.supervise(
        agent="smol-calc",
        teacher=embedded,
        reward=rim,
        reward_inline=True,
        lane="paired",
        reference="no-answer-matches-this",
    )
    async def solve(task: str) -> str:
        messages = atlas.with_guidance([{"role": "user", "content": task}])
        reply = await embedded.chat(messages, max_tokens=12)
        return reply.text

    answer = asyncio.run(solve("What is 12 + 30? Answer with a number."))
    assert isinstance(answer, str) and answer.strip()
    telemetry.shutdown()

    with open_store(private_store) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "smol-calc"
    assert session.model == "smollm2-135m-instruct"  # the student's model, from its calls
    assert session.lane == "paired"
    assert session.final_answer == answer
    assert session.guidance  # the teacher wrote guidance for the retry
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    judges = session.evaluations["atlas.rim"]["payload"]["judges"]
    assert set(judges) == {"accuracy", "helpfulness"}

    names = [span.name for span in spans]
    assert names.count("chat smollm2-135m-instruct") >= 4  # 2 student tries, guidance, judges
    assert "evaluate atlas.rim" in names
    # The retry's student call carried the guidance in its input messages.
    student_inputs = [
        orjson.loads(span.attributes[s.GEN_AI_INPUT_MESSAGES])
        for span in spans
        if span.name.startswith("chat ")
        and span.parent_span_id == session_root(spans).span_id
        and span.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT
    ]
    assert len(student_inputs) == 2  # the attempt and the guided retry
    assert any(
        session.guidance in message_text(message) for inputs in student_inputs for message in inputs
    )
    # The teacher's calls are marked as such, and the tokens are split the same way.
    steps = [
        span.attributes.get(s.ATLAS_TEACHER_STEP)
        for span in spans
        if span.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_TEACHER
    ]
    assert "guidance" in steps
    assert session.student_input_tokens and session.teacher_input_tokens
    assert session.input_tokens == session.student_input_tokens + session.teacher_input_tokens
    assert session.output_tokens == session.student_output_tokens + session.teacher_output_tokens


def session_root(spans):
    return next(span for span in spans if span.name == "invoke_agent smol-calc")
