"""Direct litellm calls traced by atlas's callback: real ``litellm.completion`` / ``acompletion``
against a scripted OpenAI server on loopback (and once against ``atlas serve-model``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import litellm
import pytest
from atlas_middleware.integrations import litellm as atlas_litellm
from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import LiteLLMModel, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import free_port, plain_messages
from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI, system_text

USER = [{"role": "user", "content": "What is 12 + 30?"}]
GUIDANCE = "Add the numbers."


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[atlas_litellm.AtlasLiteLLMCallback]:
    callback = atlas_litellm.instrument()
    yield callback
    atlas_litellm.uninstrument()


@pytest.fixture
def spans(memory: InMemorySpanExporter) -> InMemorySpanExporter:
    return memory


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    def respond(body: dict) -> str:
        return "42" if GUIDANCE in system_text(body) else "The answer is 42."

    with ScriptedOpenAI(respond) as scripted:
        yield scripted


def chats(exporter: InMemorySpanExporter, count: int = 1, prefix: str = "chat ") -> list:
    """The chat spans, once ``count`` have landed: litellm reports calls from a background
    thread or task, a moment after they return."""
    deadline = time.monotonic() + 15
    while True:
        found = [x for x in exporter.get_finished_spans() if x.name.startswith(prefix)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def call(server: ScriptedOpenAI, messages=USER, **kwargs):
    return litellm.completion(
        model=f"openai/{MODEL}", messages=messages, api_base=server.url, api_key="none", **kwargs
    )


def test_completion_in_a_supervised_session_is_a_chat_span_with_usage(store_url, server):
    provider = telemetry.configure(exporter="atlas", store=store_url, batch=False)
    landed = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(landed))
    judge = ScriptedModel(
        replies=[json.dumps({"principles": [], "score": 0.9, "rationale": "ok"})], name="judge"
    )

    @atlas.supervise(
        agent="calc",
        teacher=ScriptedModel(replies=[GUIDANCE], name="teacher"),
        reward=RIMReward(judge, judges=["accuracy"], samples=1),
        reward_inline=True,
        lane="coach",
        reference="42",
    )
    def solve(task: str) -> str:
        messages = atlas.with_guidance([{"role": "user", "content": task}])
        return call(server, messages).choices[0].message.content

    assert solve(USER[0]["content"]) == "42"
    [chat] = chats(landed, prefix=f"chat {MODEL}")
    telemetry.shutdown()

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.lane == "coach" and session.final_answer == "42"
    assert session.reward_score is not None
    [root] = [x for x in spans if x.attributes.get(s.ATLAS_SESSION_ID)]
    [stored] = [x for x in spans if x.name == f"chat {MODEL}"]
    assert stored.span_id == format(chat.context.span_id, "016x")
    assert stored.parent_span_id == root.span_id
    attributes = stored.attributes
    assert attributes[s.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[s.GEN_AI_PROVIDER_NAME] == "openai"
    assert attributes[s.GEN_AI_REQUEST_MODEL] == MODEL
    assert attributes[s.GEN_AI_RESPONSE_MODEL] == MODEL
    assert attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 7
    # The guidance the function merged into its messages is what litellm sent.
    assert GUIDANCE in attributes[s.GEN_AI_INPUT_MESSAGES]
    assert plain_messages(attributes[s.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "content": "42"}
    ]
    assert stored.start_ns >= root.start_ns and stored.end_ns <= root.end_ns
    # The student's litellm call is in the session's tokens, apart from the teacher's.
    assert attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT
    assert session.student_input_tokens == attributes[s.GEN_AI_USAGE_INPUT_TOKENS]
    assert session.student_output_tokens == 7
    assert session.teacher_input_tokens and session.teacher_output_tokens
    assert session.input_tokens == session.student_input_tokens + session.teacher_input_tokens
    assert session.model == MODEL


def test_acompletion_and_streams_are_traced_under_the_current_span(spans, server):
    tracer = telemetry.get_tracer()

    async def run():
        with tracer.start_as_current_span("outer"):
            await litellm.acompletion(
                model=f"openai/{MODEL}", messages=USER, api_base=server.url, api_key="none"
            )
            stream = await litellm.acompletion(
                model=f"openai/{MODEL}",
                messages=USER,
                api_base=server.url,
                api_key="none",
                stream=True,
                stream_options={"include_usage": True},
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await GLOBAL_LOGGING_WORKER.flush()
        return text

    assert asyncio.run(run()).strip() == "The answer is 42."
    found = chats(spans, 2)
    [outer] = [x for x in spans.get_finished_spans() if x.name == "outer"]
    assert len(found) == 2
    for chat in found:
        assert chat.parent.span_id == outer.context.span_id
        assert chat.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 7


def test_atlas_litellm_backend_calls_get_no_second_span(spans, server):
    model = LiteLLMModel(f"openai/{MODEL}", api_base=server.url, api_key="none")
    assert asyncio.run(model.chat(USER)).text == "The answer is 42."
    call(server)  # a direct call beside it is traced
    found = chats(spans, 2)
    assert sorted(x.name for x in found) == [f"chat openai/{MODEL}", f"chat {MODEL}"]


def test_a_failed_call_is_an_error_span(spans):
    # litellm reports a refused connection as APIConnectionError or InternalServerError.
    with pytest.raises((litellm.APIConnectionError, litellm.InternalServerError)) as raised:
        litellm.completion(
            model=f"openai/{MODEL}",
            messages=USER,
            api_base=f"http://127.0.0.1:{free_port()}/v1",
            api_key="none",
            num_retries=0,
            max_retries=0,
        )
    [chat] = chats(spans)
    assert chat.attributes[s.ERROR_TYPE] == type(raised.value).__name__
    assert chat.status.status_code.name == "ERROR"


def test_content_capture_switch_keeps_messages_off(spans, server, monkeypatch):
    monkeypatch.setenv(s.CAPTURE_CONTENT_ENV, "false")
    call(server)
    [chat] = chats(spans)
    assert s.GEN_AI_INPUT_MESSAGES not in chat.attributes
    assert s.GEN_AI_OUTPUT_MESSAGES not in chat.attributes
    assert chat.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 7


def test_instrument_is_idempotent_and_uninstrument_removes_the_callback(spans, server):
    callback = atlas_litellm.instrument()
    assert atlas_litellm.instrument() is callback
    assert litellm.callbacks.count(callback) == 1
    call(server)
    assert len(chats(spans)) == 1
    atlas_litellm.uninstrument()
    lists = (litellm.callbacks, litellm.success_callback, litellm._async_success_callback)
    assert not any(callback in entries for entries in lists)
    assert callback.enabled is False
    assert atlas_litellm.instrument() is callback and litellm.callbacks.count(callback) == 1


def test_flush_waits_until_every_started_call_has_its_span(spans, server):
    for _ in range(3):
        call(server)
    assert atlas_litellm.flush(10)
    assert len([x for x in spans.get_finished_spans() if x.name.startswith("chat ")]) == 3
    # A stream nobody has finished reading is not reported yet: flush says so when it times out.
    stream = call(server, stream=True)
    assert atlas_litellm.flush(0.3) is False
    assert "".join(c.choices[0].delta.content or "" for c in stream).strip() == "The answer is 42."
    assert atlas_litellm.flush(10)
    assert len([x for x in spans.get_finished_spans() if x.name.startswith("chat ")]) == 4


@pytest.mark.model
def test_a_supervised_completion_on_the_embedded_model(model_server, sqlite_url):
    """litellm's ``openai/`` provider against SmolLM2 behind ``atlas serve-model``, through a
    recording proxy, in a coached, rewarded session: the session row and reward in the store,
    the chat span under the session root, and the guidance in what the model received. The
    teacher is scripted (the point is the student path); the served model is the RIM judge."""
    from atlas_middleware.models import OpenAICompatibleModel
    from tests.integrations.recording_proxy import RecordingProxy, system_texts

    name = httpx.get(f"{model_server}/v1/models", timeout=30).json()["data"][0]["id"]
    provider = telemetry.configure(exporter="atlas", store=sqlite_url, batch=False)
    landed = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(landed))
    judge_model = OpenAICompatibleModel(f"{model_server}/v1", name)
    with RecordingProxy(model_server) as proxy:

        @atlas.supervise(
            agent="smol",
            teacher=ScriptedModel(replies=[GUIDANCE], name="teacher"),
            reward=RIMReward(judge_model, judges=["accuracy"], samples=1, max_tokens=48),
            reward_inline=True,
            lane="coach",
            reference="42",
        )
        def solve(task: str) -> str:
            messages = atlas.with_guidance(
                [
                    {"role": "system", "content": "Answer with a number only."},
                    {"role": "user", "content": task},
                ]
            )
            response = litellm.completion(
                model=f"openai/{name}",
                messages=messages,
                api_base=proxy.url,
                api_key="none",
                max_tokens=8,
                temperature=0,
            )
            return response.choices[0].message.content

        answer = solve("What is 12 + 30?")
        # litellm reports the call from a background thread: wait for its span to land.
        [chat] = chats(landed, prefix=f"chat {name}")
    telemetry.shutdown()
    assert isinstance(answer, str)

    [body] = proxy.bodies
    [system] = system_texts(body)
    assert system.startswith("Answer with a number only.") and GUIDANCE in system
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert (session.agent_name, session.lane, session.guidance) == ("smol", "coach", GUIDANCE)
    assert session.final_answer == answer
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    [root] = [x for x in spans if x.attributes.get(s.ATLAS_SESSION_ID)]
    [student] = [x for x in spans if x.span_id == format(chat.context.span_id, "016x")]
    assert student.name == f"chat {name}" and student.parent_span_id == root.span_id
    assert student.attributes[s.GEN_AI_PROVIDER_NAME] == "openai"
    assert student.attributes[s.GEN_AI_RESPONSE_MODEL]
    assert student.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert 0 < student.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] <= 8
    assert GUIDANCE in student.attributes[s.GEN_AI_INPUT_MESSAGES]
    [evaluation] = [x for x in spans if x.name == "evaluate atlas.rim"]
    assert evaluation.parent_span_id == root.span_id
