"""The OpenAI Agents SDK supervised and traced: real ``Agent``, ``Runner``, ``function_tool``,
handoffs and guardrails, talking through the SDK's own ``OpenAIChatCompletionsModel`` to a scripted
OpenAI server on loopback (and, once, to the embedded SmolLM2 behind ``atlas serve-model``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunItemStreamEvent,
    Runner,
    function_tool,
    handoff,
    input_guardrail,
)
from agents.tracing import set_trace_processors
from atlas_middleware.integrations.openai_agents import (
    AtlasTracingProcessor,
    instrument,
    supervise_agent,
    uninstrument,
)
from openai import AsyncOpenAI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, OpenAICompatibleModel, ScriptedModel
from atlas_middleware.models.base import approx_tokens
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import plain_messages
from tests.integrations.scripted_openai import (
    MODEL,
    ScriptedOpenAI,
    system_text,
    tool_call,
)

GUIDANCE = "Add the two numbers with the add tool."
TASK = "What is 12 + 30?"


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _isolated() -> Iterator[AtlasTracingProcessor]:
    """atlas's processor is the SDK's only one, so nothing is exported to the OpenAI platform
    from tests."""
    processor = instrument(exclusive=True)
    yield processor
    uninstrument()
    set_trace_processors([])


@pytest.fixture
def spans(memory: InMemorySpanExporter) -> InMemorySpanExporter:
    return memory


def _called(body: dict) -> list[str]:
    return [
        call["function"]["name"]
        for message in body["messages"]
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or []
    ]


def triage_script(body: dict):
    """triage hands off to math; math calls add(12, 30), then answers."""
    if "Route" in system_text(body):
        return [tool_call("transfer_to_math", {})]
    if "add" not in _called(body):
        return [tool_call("add", {"a": 12, "b": 30})]
    return "The answer is 42."


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI(triage_script) as scripted:
        yield scripted


def chat_model(url: str, name: str = MODEL) -> OpenAIChatCompletionsModel:
    return OpenAIChatCompletionsModel(
        model=name, openai_client=AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    )


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def agents_for(url: str, **settings) -> tuple[Agent, Agent]:
    model_settings = ModelSettings(**settings)
    math = Agent(
        name="math",
        instructions="You are a calculator.",
        tools=[add],
        model=chat_model(url),
        model_settings=model_settings,
    )
    triage = Agent(
        name="triage",
        instructions="Route math questions.",
        handoffs=[math],
        model=chat_model(url),
        model_settings=model_settings,
    )
    return triage, math


def guiding_teacher(reply: str | BaseException = GUIDANCE) -> ScriptedModel:
    # With a forced lane and a reference, the teacher is only asked for guidance.
    return ScriptedModel(replies=[reply], name="teacher")


def judge() -> ScriptedModel:
    verdict = {
        "principles": [{"name": "correct result", "weight": 1.0}],
        "score": 0.9,
        "rationale": "correct",
        "uncertainty": 0.1,
    }
    return ScriptedModel(replies=[json.dumps(verdict)], name="judge")


def roots(exporter: InMemorySpanExporter) -> list:
    return [x for x in exporter.get_finished_spans() if s.ATLAS_SESSION_ID in x.attributes]


# --- one supervised run, end to end into the store -----------------------------------------------
def test_run_sync_is_one_session_with_the_sdk_spans_reward_and_guidance(
    store_url, server, monkeypatch
):
    monkeypatch.setenv("ATLAS_STORE_URL", store_url)
    telemetry.configure(exporter="atlas", store=store_url, batch=False, service_name="agents")
    triage, math = agents_for(server.url)
    supervised = supervise_agent(
        triage,
        teacher=guiding_teacher(),
        reward=RIMReward(judge(), judges=["accuracy"], samples=1),
        reward_inline=True,
        lane="coach",
        reference="42",
    )

    result = supervised.run_sync(TASK)
    telemetry.shutdown()

    assert result.final_output == "The answer is 42."
    assert result.last_agent.name == "math"
    # Guidance reached every agent's model input, through the instructions of that run only.
    systems = [system_text(body) for body in server.bodies]
    assert len(systems) == 3
    assert all(GUIDANCE in system for system in systems)
    assert systems[0].startswith("Route math questions.")
    assert systems[1].startswith("You are a calculator.")
    assert triage.instructions == "Route math questions."
    assert math.instructions == "You are a calculator."
    assert triage.handoffs == [math]

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "triage"
    assert session.task == TASK
    assert session.lane == "coach"
    assert session.guidance == GUIDANCE
    assert session.final_answer == "The answer is 42."
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    # The session's token total counts the SDK's three model calls (7 output tokens each) and the
    # teacher's guidance.
    assert session.output_tokens == 3 * 7 + approx_tokens(GUIDANCE)

    by_id = {span.span_id: span for span in spans}
    [root] = [x for x in spans if x.attributes.get(s.ATLAS_SESSION_ID)]

    def parent(span):
        return by_id[span.parent_span_id]

    agent_spans = {x.name: x for x in spans if x.attributes.get(s.GEN_AI_AGENT_NAME) and x != root}
    assert set(agent_spans) == {"invoke_agent triage", "invoke_agent math"}
    assert all(parent(x) is root for x in agent_spans.values())
    assert agent_spans["invoke_agent triage"].attributes[s.ATLAS_AGENT_HANDOFFS] == ["math"]
    chats = [x for x in spans if x.name == f"chat {MODEL}"]
    assert len(chats) == 3
    assert {parent(x).name for x in chats} == {"invoke_agent triage", "invoke_agent math"}
    for chat in chats:
        assert chat.attributes[s.GEN_AI_OPERATION_NAME] == "chat"
        assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert chat.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 7
        assert GUIDANCE in chat.attributes[s.GEN_AI_INPUT_MESSAGES]
    [tool] = [x for x in spans if x.name == "execute_tool add"]
    assert parent(tool).name == "invoke_agent math"
    assert tool.attributes[s.GEN_AI_TOOL_NAME] == "add"
    assert json.loads(tool.attributes[s.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"a": 12, "b": 30}
    assert tool.attributes[s.GEN_AI_TOOL_CALL_RESULT] == "42"
    [handoff] = [x for x in spans if x.name == "handoff math"]
    assert parent(handoff).name == "invoke_agent triage"
    assert handoff.attributes[s.ATLAS_HANDOFF_FROM] == "triage"
    assert handoff.attributes[s.ATLAS_HANDOFF_TO] == "math"
    assert any(x.name == "evaluate atlas.rim" and parent(x) is root for x in spans)
    # The SDK's bookkeeping task/turn spans are folded away.
    assert not any(x.name.split(" ")[0] in ("task", "turn") for x in spans)


# --- run and run_streamed -------------------------------------------------------------------------
def test_run_and_run_streamed_each_make_exactly_one_session(spans, server):
    triage, _ = agents_for(server.url, include_usage=True)
    supervised = supervise_agent(
        triage, teacher=guiding_teacher(), reward=False, lane="coach", reference="42"
    )

    async def both():
        first = await supervised.run([{"role": "user", "content": TASK}])
        streamed = supervised.run_streamed(TASK)
        events = [event async for event in streamed.stream_events()]
        return first, streamed, events

    first, streamed, events = asyncio.run(both())
    assert first.final_output == "The answer is 42."
    assert streamed.is_complete
    assert streamed.final_output.strip() == "The answer is 42."
    assert streamed.last_agent.name == "math"
    items = [e.item.type for e in events if isinstance(e, RunItemStreamEvent)]
    assert "tool_call_item" in items and "handoff_output_item" in items

    sessions = roots(spans)
    assert len(sessions) == 2
    assert len({x.context.trace_id for x in sessions}) == 2
    assert all(x.attributes[s.ATLAS_TASK] == TASK for x in sessions)  # also from input items
    for root in sessions:
        trace_spans = [
            x for x in spans.get_finished_spans() if x.context.trace_id == root.context.trace_id
        ]
        chats = [x for x in trace_spans if x.name == f"chat {MODEL}"]
        assert len(chats) == 3
        # Streamed chat completions carry usage too (include_usage asks the server for it).
        assert all(x.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0 for x in chats)
    assert all(GUIDANCE in system_text(body) for body in server.bodies)
    assert all(body.get("stream") for body in server.bodies[3:])


def test_handoff_objects_lead_to_a_guided_agent_too(spans, server):
    triage, math = agents_for(server.url)
    triage_with_object = triage.clone(handoffs=[handoff(math)])
    supervised = supervise_agent(
        triage_with_object, teacher=guiding_teacher(), reward=False, lane="coach"
    )
    result = supervised.run_sync(TASK)
    assert result.final_output == "The answer is 42." and result.last_agent.name == "math"
    assert result.last_agent is not math
    assert [GUIDANCE in system_text(body) for body in server.bodies] == [True, True, True]
    assert triage_with_object.handoffs[0].agent_name == "math"
    assert math.instructions == "You are a calculator."


def test_run_sync_twice_gives_two_sessions_and_the_agent_stays_reusable(spans, server):
    triage, _ = agents_for(server.url)
    supervised = supervise_agent(triage, reward=False, lane="auto")
    assert supervised.run_sync(TASK).final_output == "The answer is 42."
    assert Runner.run_sync(triage, TASK).final_output == "The answer is 42."  # unsupervised
    assert supervised.run_sync(TASK).final_output == "The answer is 42."
    assert len(roots(spans)) == 2
    # The auto lane gives no guidance: the user's own instructions went to the model untouched.
    assert [system_text(b) for b in server.bodies[:1]] == ["Route math questions."]


# --- lanes through the instructions --------------------------------------------------------------
def guided_or_wrong(body: dict) -> str:
    return "42" if GUIDANCE in system_text(body) else "41"


def test_paired_lane_retries_once_with_the_guidance_in_the_instructions(spans):
    with ScriptedOpenAI(guided_or_wrong) as server:
        calc = Agent(
            name="calc", instructions="Answer with a number.", model=chat_model(server.url)
        )
        supervised = supervise_agent(
            calc, teacher=guiding_teacher(), reward=False, lane="paired", reference="42"
        )
        result = supervised.run_sync(TASK)
    assert result.final_output == "42"
    first, retry = (system_text(body) for body in server.bodies)
    assert first == "Answer with a number."
    assert retry.startswith("Answer with a number.\n\n") and GUIDANCE in retry
    [root] = roots(spans)
    assert root.attributes[s.ATLAS_RETRIES] == 1
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"
    assert calc.instructions == "Answer with a number."


def test_callable_instructions_are_wrapped_and_per_call_options_apply(spans):
    async def instructions(context, agent) -> str:
        return f"You are {agent.name}. Answer with a number."

    with ScriptedOpenAI(guided_or_wrong) as server:
        calc = Agent(name="calc", instructions=instructions, model=chat_model(server.url))
        supervised = supervise_agent(calc, teacher=guiding_teacher(), reward=False, lane="auto")
        result = supervised.options(lane="coach", reference="42").run_sync(TASK)
    assert result.final_output == "42"
    [body] = server.bodies
    assert system_text(body).startswith("You are calc. Answer with a number.\n\n")
    assert GUIDANCE in system_text(body)
    assert calc.instructions is instructions
    [root] = roots(spans)
    assert root.attributes[s.ATLAS_LANE] == "coach"


def test_streamed_runs_are_validated_but_never_retried(spans):
    with ScriptedOpenAI(guided_or_wrong) as server:
        calc = Agent(
            name="calc", instructions="Answer with a number.", model=chat_model(server.url)
        )
        supervised = supervise_agent(
            calc, teacher=guiding_teacher(), reward=False, lane="paired", reference="42"
        )

        async def stream():
            run = supervised.run_streamed(TASK)
            async for _ in run.stream_events():
                pass
            return run.final_output

        assert asyncio.run(stream()).strip() == "41"
    assert len(server.bodies) == 1
    [root] = roots(spans)
    assert root.attributes[s.ATLAS_RETRIES] == 0
    assert root.attributes[s.ATLAS_STREAMED] is True


def test_cancel_stops_a_streamed_run_and_its_supervision(spans, server):
    triage, _ = agents_for(server.url)
    supervised = supervise_agent(
        triage,
        teacher=guiding_teacher(),
        reward=RIMReward(judge(), judges=["accuracy"], samples=1),
        reward_inline=True,
        lane="coach",
        reference="42",
    )

    async def cancel_at_the_first_item():
        run = supervised.run_streamed(TASK)
        seen = []
        async for event in run.stream_events():  # ends, as the SDK's own stream does
            seen.append(event)
            if isinstance(event, RunItemStreamEvent):
                run.cancel()
        return run, seen

    run, seen = asyncio.run(cancel_at_the_first_item())
    assert run.is_complete
    assert isinstance(seen[-1], RunItemStreamEvent)
    # The run stopped after its first model call (the full run makes three).
    assert len(server.bodies) == 1
    finished = spans.get_finished_spans()
    [root] = roots(spans)
    assert root.attributes[s.ATLAS_STREAMED] is True
    assert s.ERROR_TYPE in root.attributes  # the session ended early, not with an answer
    assert s.ATLAS_FINAL_ANSWER not in root.attributes
    assert not [x for x in finished if x.name.startswith("evaluate ")]  # not rewarded


def test_run_streamed_outside_an_event_loop_says_what_to_do(server):
    triage, _ = agents_for(server.url)
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        supervise_agent(triage, reward=False).run_streamed(TASK)


def test_only_agents_can_be_supervised():
    with pytest.raises(TypeError, match=r"takes an agents\.Agent"):
        supervise_agent(lambda task: task)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown option"):
        supervise_agent(Agent(name="a"), reward=False).options(refrence="42")


# --- failing open, and the agent's own failures --------------------------------------------------
def test_a_failing_teacher_fails_open_and_is_recorded(spans):
    with ScriptedOpenAI(guided_or_wrong) as server:
        calc = Agent(
            name="calc", instructions="Answer with a number.", model=chat_model(server.url)
        )
        teacher = guiding_teacher(ModelError("teacher down"))
        supervised = supervise_agent(calc, teacher=teacher, reward=False, reference="42")
        result = supervised.run_sync(TASK)
    assert result.final_output == "41"  # the student's own answer, unchanged
    assert all(GUIDANCE not in system_text(body) for body in server.bodies)
    [root] = roots(spans)
    assert root.attributes[s.ATLAS_LANE] == "paired"  # the fallback lane
    failures = root.attributes[s.ATLAS_FAILURES]
    assert any(f.startswith("probe:") for f in failures)
    assert any(f.startswith("guidance:") for f in failures)


def test_a_tripped_guardrail_propagates_and_is_traced(spans, server):
    @input_guardrail
    def no_homework(context, agent, input) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info="homework", tripwire_triggered=True)

    triage, _ = agents_for(server.url)
    guarded = triage.clone(input_guardrails=[no_homework])
    with pytest.raises(InputGuardrailTripwireTriggered):
        supervise_agent(guarded, reward=False, lane="auto").run_sync(TASK)
    [root] = roots(spans)
    assert root.attributes[s.ERROR_TYPE].endswith("InputGuardrailTripwireTriggered")
    [guardrail] = [x for x in spans.get_finished_spans() if x.name == "guardrail no_homework"]
    assert guardrail.attributes[s.ATLAS_GUARDRAIL_TRIGGERED] is True
    assert guardrail.context.trace_id == root.context.trace_id


# --- the tracing processor alone -----------------------------------------------------------------
def test_instrumented_runs_without_supervision_get_a_workflow_root(spans, server):
    triage, _ = agents_for(server.url)
    Runner.run_sync(triage, TASK)
    finished = spans.get_finished_spans()
    [root] = [x for x in finished if x.parent is None]
    assert root.name == "invoke_workflow Agent workflow"
    assert root.attributes[s.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert root.attributes[s.ATLAS_FRAMEWORK_TRACE_ID].startswith("trace_")
    assert {x.context.trace_id for x in finished} == {root.context.trace_id}
    agent_spans = [x for x in finished if x.name.startswith("invoke_agent ")]
    assert all(x.parent.span_id == root.context.span_id for x in agent_spans)

    spans.clear()
    uninstrument()
    Runner.run_sync(triage, TASK)
    assert spans.get_finished_spans() == ()
    instrument()  # idempotent: back on, still registered once
    Runner.run_sync(triage, TASK)
    assert len([x for x in spans.get_finished_spans() if x.parent is None]) == 1


def test_content_capture_switch_keeps_prompts_and_tool_arguments_off(spans, server, monkeypatch):
    monkeypatch.setenv(s.CAPTURE_CONTENT_ENV, "false")
    triage, _ = agents_for(server.url)
    Runner.run_sync(triage, TASK)
    for span in spans.get_finished_spans():
        for key in (
            s.GEN_AI_INPUT_MESSAGES,
            s.GEN_AI_OUTPUT_MESSAGES,
            s.GEN_AI_TOOL_CALL_ARGUMENTS,
            s.GEN_AI_TOOL_CALL_RESULT,
        ):
            assert key not in span.attributes
    chats = [x for x in spans.get_finished_spans() if x.name == f"chat {MODEL}"]
    assert chats and all(x.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0 for x in chats)


# --- the real model ------------------------------------------------------------------------------
@pytest.mark.model
def test_streamed_agent_on_the_embedded_model(model_server, tmp_path, monkeypatch):
    """SmolLM2 behind ``atlas serve-model`` is the student and the RIM judge, and the agent
    streams. The teacher is scripted: a real one writes up to 160 tokens of guidance, too slow
    for CI on two shared cores (tests/core/test_embedded_e2e.py covers the real teacher)."""
    store_url = f"sqlite:///{tmp_path / 'real.db'}"
    monkeypatch.setenv("ATLAS_STORE_URL", store_url)
    telemetry.configure(exporter="atlas", store=store_url, batch=False, service_name="agents")
    base = f"{model_server}/v1"
    name = httpx.get(f"{base}/models").json()["data"][0]["id"]
    served = OpenAICompatibleModel(base, name)
    agent = Agent(
        name="smol",
        instructions="Answer with a number only.",
        model=chat_model(base, name),
        model_settings=ModelSettings(max_tokens=16, temperature=0, include_usage=True),
    )
    supervised = supervise_agent(
        agent,
        teacher=guiding_teacher("Compute 12 + 30 and answer with the number."),
        reward=RIMReward(served, judges=["accuracy"], samples=1, max_tokens=48),
        reward_inline=True,
        lane="coach",
        reference="42",
    )

    async def stream():
        run = supervised.run_streamed(TASK)
        events = [event async for event in run.stream_events()]
        return run, events

    run, events = asyncio.run(stream())
    telemetry.shutdown()
    assert events and isinstance(run.final_output, str)

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "smol" and session.lane == "coach"
    assert session.guidance == "Compute 12 + 30 and answer with the number."
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    assert session.final_answer == run.final_output
    [agent_span] = [x for x in spans if x.name == "invoke_agent smol" and x.parent_span_id]
    [student] = [x for x in spans if x.parent_span_id == agent_span.span_id]
    assert student.name == f"chat {name}"
    assert student.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    messages = plain_messages(student.attributes[s.GEN_AI_INPUT_MESSAGES])
    system = next(m["content"] for m in messages if m["role"] == "system")
    assert system.startswith("Answer with a number only.") and session.guidance in system


@pytest.mark.model
def test_the_example_runs_streamed_against_the_served_model(model_server, tmp_path):
    store_url = f"sqlite:///{tmp_path / 'example.db'}"
    example = Path(__file__).resolve().parents[2] / "examples" / "openai_agents" / "main.py"
    # The auto lane keeps it to the student's call: the example's default coach lane adds a
    # 160-token guidance generation, covered above with a scripted teacher.
    args = ["--base-url", f"{model_server}/v1", "--tasks", "1", "--lane", "auto", "--stream"]
    proc = subprocess.run(
        [sys.executable, str(example), *args, "--max-tokens", "8", "--store", store_url],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ATLAS_STORE_URL": store_url, "OPENAI_API_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert "(reference 42)" in proc.stdout
    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "openai-agents-example" and session.lane == "auto"
    assert session.reward_score is not None
    names = {span.name for span in spans}
    assert "invoke_agent openai-agents-example" in names
    assert any(name.startswith("chat smollm2") for name in names)
