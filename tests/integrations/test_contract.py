"""The integration contract (issue 12): every integration, run as each framework's own docs
write agents (``contract_shapes.SHAPES``), records exactly what happened.

For each supervised run the store holds one session whose final answer is the text the user saw;
its reward; a span tree whose every span says whose work it is (``atlas.span.role``), with the
teacher's calls apart from the student's; the session's tokens split the same way and equal to
what its model-call spans say; the teacher's guidance in the student model's input; model calls
in the GenAI ``parts`` shape and with OpenInference's attributes. It holds with atlas's own
pipeline and with atlas joined to an application's tracer provider; ``instrument()`` twice
changes nothing and ``uninstrument()`` leaves no trace.

Runs go to the scripted OpenAI server (deterministic: the tool path is always taken) and to the
embedded SmolLM2 behind ``atlas serve-model`` (marked ``model``): there, whatever the model
decides, the same contract holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry.genai import message_text
from tests.integrations.contract_shapes import (
    GUIDANCE,
    SHAPES,
    TOOL_SHAPES,
    Endpoint,
    Outcome,
)
from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI, tool_call

LLM_ROLES = {s.ROLE_STUDENT, s.ROLE_TEACHER, s.ROLE_JUDGE}


# --- the scripted model -----------------------------------------------------------------------
def _called(body: dict[str, Any]) -> set[str]:
    return {
        call["function"]["name"]
        for message in body["messages"]
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
    }


def scripted_reply(body: dict[str, Any]):
    """Every shape's tool path: hand off when a handoff is offered, call add_numbers once, then
    answer."""
    offered = {t["function"]["name"] for t in body.get("tools") or []}
    called = _called(body)
    if "transfer_to_math" in offered and "transfer_to_math" not in called:
        return [tool_call("transfer_to_math", {})]
    if "add_numbers" in offered and "add_numbers" not in called:
        return [tool_call("add_numbers", {"a": 12, "b": 30})]
    return "The answer is 42."


def teacher() -> ScriptedModel:
    def respond(messages):
        system = messages[0]["content"]
        if system.startswith("You judge"):
            return "Confidence: 0.4"
        if system.startswith("You check"):
            return "VALID"
        return GUIDANCE

    return ScriptedModel(respond=respond, name="scripted-teacher")


def supervision() -> dict[str, Any]:
    judge = ScriptedModel(replies=['{"principles": [], "score": 0.5}'], name="judge")
    return {
        "teacher": teacher(),
        # With a reference, accuracy is a match against it: the reward is deterministic.
        "reward": RIMReward(judge, judges=["accuracy"], samples=1),
        "reward_inline": True,
        "lane": "coach",  # guidance up front, every run
        "always_probe": True,
        "reference": "42",
        "max_retries": 0,
        "teacher_timeout_s": 120,
        "probe_timeout_s": 120,
    }


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _frameworks_restored() -> Iterator[None]:
    yield
    from agents.tracing import set_trace_processors
    from atlas_middleware.integrations import langchain, litellm, llama_index, openai_agents

    for module in (langchain, litellm, llama_index, openai_agents):
        module.uninstrument()
    set_trace_processors([])


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI(scripted_reply) as server:
        yield server


def _endpoint(request: pytest.FixtureRequest, backend: str) -> Endpoint:
    if backend == "scripted":
        server = request.getfixturevalue("scripted_server")
        return Endpoint(server.url, MODEL, scripted=True)
    import httpx

    base = request.getfixturevalue("model_server")
    name = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    return Endpoint(f"{base}/v1", name, scripted=False)


# --- the contract -----------------------------------------------------------------------------
def _messages(span: Any, key: str) -> list[dict[str, Any]]:
    return orjson.loads(span.attributes[key])


def check_session(store_url: str, handle: atlas.SessionHandle, answer: str | None, error: Any):
    with open_store(store_url) as store:
        session = store.get_session(handle.session_id)
        assert session is not None, f"no session row for {handle}"
        spans = store.spans_for([session.trace_id])[session.trace_id]

    # The answer stored is the text the user saw (or the agent's error, when it raised).
    if error is None:
        assert session.final_answer == answer
        assert session.status == "ok"
    else:
        assert session.status == "error" and session.error_type == type(error).__qualname__

    # The reward, scored against the reference.
    assert session.evaluations[s.PRIMARY_EVALUATION]["score"] is not None
    assert session.reward_score is not None

    # Roles: one root; every model call is the student's or the teacher's (judges ran after).
    by_id = {x.span_id: x for x in spans}
    [root] = [x for x in spans if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_SESSION]
    assert root.parent_span_id is None
    for span in spans:
        role = span.attributes.get(s.ATLAS_SPAN_ROLE)
        assert role in s.SPAN_ROLES, f"{span.name} has role {role!r}"
        if span is not root:  # everything hangs under the session
            parent = by_id.get(span.parent_span_id)
            assert parent is not None, f"{span.name} is detached from the session's tree"
    llm = [x for x in spans if x.attributes.get(s.OPENINFERENCE_SPAN_KIND) == s.OI_KIND_LLM]
    assert {x.attributes[s.ATLAS_SPAN_ROLE] for x in llm} <= LLM_ROLES - {s.ROLE_JUDGE}
    student = [x for x in llm if x.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT]
    teacher_spans = [x for x in llm if x.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_TEACHER]
    assert student, "the student's model calls are missing"
    # On the request path the teacher probed and guided (the reference validated); a lesson
    # written from the reward afterwards is in the trace too, but not in the session's tokens.
    steps = {x.attributes[s.ATLAS_TEACHER_STEP] for x in teacher_spans}
    assert steps - {"lesson"} == {"probe", "guidance"}
    teacher_calls = [x for x in teacher_spans if x.attributes[s.ATLAS_TEACHER_STEP] != "lesson"]
    assert all(x.attributes.get(s.GEN_AI_OPERATION_NAME) == s.OP_CHAT for x in llm)

    # OpenInference and the GenAI message shape on every model call.
    for span in llm:
        a = span.attributes
        assert a[s.OI_LLM_MODEL_NAME] == a[s.GEN_AI_REQUEST_MODEL]
        sent = _messages(span, s.GEN_AI_INPUT_MESSAGES)
        assert sent and all("parts" in m and "content" not in m for m in sent)
        assert a[s.OI_INPUT_VALUE]
        assert f"{s.OI_LLM_INPUT_MESSAGES}.0.{s.OI_MESSAGE_ROLE}" in a
        if s.GEN_AI_OUTPUT_MESSAGES in a:
            [out] = _messages(span, s.GEN_AI_OUTPUT_MESSAGES)
            assert out["role"] == "assistant" and "parts" in out
            assert f"{s.OI_LLM_OUTPUT_MESSAGES}.0.{s.OI_MESSAGE_ROLE}" in a
        if s.GEN_AI_USAGE_INPUT_TOKENS in a:
            assert a[s.OI_LLM_TOKEN_COUNT_PROMPT] == a[s.GEN_AI_USAGE_INPUT_TOKENS]
    for span in spans:
        if span.attributes.get(s.GEN_AI_OPERATION_NAME) in s.SESSION_OPERATIONS:  # agents
            assert span.attributes[s.OPENINFERENCE_SPAN_KIND] == s.OI_KIND_AGENT
    for tool in (
        x for x in spans if x.attributes.get(s.GEN_AI_OPERATION_NAME) == s.OP_EXECUTE_TOOL
    ):
        assert tool.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_TOOL
        assert tool.attributes[s.OPENINFERENCE_SPAN_KIND] == s.OI_KIND_TOOL
        assert tool.attributes[s.OI_TOOL_NAME] == tool.attributes[s.GEN_AI_TOOL_NAME]

    # The guidance reached the student model's input.
    assert any(
        GUIDANCE in message_text(m) for x in student for m in _messages(x, s.GEN_AI_INPUT_MESSAGES)
    ), "the teacher's guidance never reached the student's model"

    # Tokens: split student / teacher, each the sum of its calls' spans (unknown stays unknown).
    def total(calls: list[Any], key: str) -> int | None:
        values = [x.attributes.get(key) for x in calls]
        return None if any(v is None for v in values) else sum(values)

    assert session.teacher_input_tokens == total(teacher_calls, s.GEN_AI_USAGE_INPUT_TOKENS)
    assert session.teacher_output_tokens == total(teacher_calls, s.GEN_AI_USAGE_OUTPUT_TOKENS)
    assert session.student_input_tokens == total(student, s.GEN_AI_USAGE_INPUT_TOKENS)
    assert session.student_output_tokens == total(student, s.GEN_AI_USAGE_OUTPUT_TOKENS)
    if session.student_input_tokens is not None:
        assert session.input_tokens == session.student_input_tokens + session.teacher_input_tokens
        assert session.model == student[0].attributes[s.GEN_AI_REQUEST_MODEL]
    else:
        assert session.input_tokens is None
    assert root.attributes.get(s.GEN_AI_REQUEST_MODEL) == session.model
    return session, spans, student


def run_shape(shape: str, endpoint: Endpoint, store_url: str, pipeline: str) -> Outcome:
    app = None
    if pipeline == "attached":  # an application's own SDK provider, set up before atlas
        app = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(app))
        telemetry.attach(provider, exporter="atlas", store=store_url, batch=False)
    else:
        telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    _, run = SHAPES[shape]
    outcome = run(endpoint, supervision())
    telemetry.shutdown()
    if app is not None:
        names = {x.name for x in app.get_finished_spans()}
        assert any(n.startswith("invoke_agent ") for n in names), "the application saw nothing"
    return outcome


def _check(shape: str, endpoint: Endpoint, store_url: str, outcome: Outcome) -> None:
    assert outcome.runs, "the shape ran nothing"
    # Every stored span belongs to a session's trace: no stray one-span traces (the teacher's
    # lesson calls used to make those).
    with open_store(store_url) as store:
        rows = list(store.iter_sessions())
        assert len(rows) == len(outcome.runs)
        in_sessions = sum(len(v) for v in store.spans_for([r.trace_id for r in rows]).values())
        assert store.count_spans() == in_sessions
    for answer, handle, error in outcome.runs:
        assert handle is not None, "no session handle for the run"
        if endpoint.scripted:
            assert error is None, error
        session, _, _ = check_session(store_url, handle, answer, error)
        if endpoint.scripted:
            assert session.student_input_tokens is not None  # the scripted server reports usage
            assert "42" in (answer or "")
    if endpoint.scripted and shape in TOOL_SHAPES:
        assert outcome.tool_called
        # The tool path is in the tree: a tool span, and a model call that read its result.
        with open_store(store_url) as store:
            rows = list(store.iter_sessions())
            spans = [x for row in rows for x in store.spans_for([row.trace_id])[row.trace_id]]
        tools = [x for x in spans if x.attributes.get(s.GEN_AI_OPERATION_NAME) == s.OP_EXECUTE_TOOL]
        if not shape.startswith("litellm"):  # litellm runs no tools: the user's code does
            assert any(x.attributes[s.GEN_AI_TOOL_NAME] == "add_numbers" for x in tools)
        responses = [
            part
            for x in spans
            if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_STUDENT
            for m in _messages(x, s.GEN_AI_INPUT_MESSAGES)
            for part in m["parts"]
            if part["type"] == "tool_call_response"
        ]
        assert any(part["response"] == "42" for part in responses)
        calls = [
            part
            for x in spans
            if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_STUDENT
            and s.GEN_AI_OUTPUT_MESSAGES in x.attributes
            for m in _messages(x, s.GEN_AI_OUTPUT_MESSAGES)
            for part in m["parts"]
            if part["type"] == "tool_call"
        ]
        assert any(c["name"] == "add_numbers" for c in calls)


@pytest.mark.parametrize("pipeline", ["own", "attached"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_contract_scripted(shape, pipeline, request, sqlite_url):
    endpoint = _endpoint(request, "scripted")
    outcome = run_shape(shape, endpoint, sqlite_url, pipeline)
    _check(shape, endpoint, sqlite_url, outcome)


@pytest.mark.model
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_contract_embedded_model(shape, request, sqlite_url):
    endpoint = _endpoint(request, "embedded")
    outcome = run_shape(shape, endpoint, sqlite_url, "own")
    _check(shape, endpoint, sqlite_url, outcome)


# --- instrument twice, uninstrument -------------------------------------------------------------
def _plain_llm_calls(integration: str, endpoint: Endpoint) -> None:
    """One unsupervised model call through the integration's framework."""
    if integration in ("langchain", "langgraph"):
        from langchain_openai import ChatOpenAI

        ChatOpenAI(base_url=endpoint.url, api_key="none", model=endpoint.model).invoke("hi")
    elif integration == "litellm":
        import litellm

        litellm.completion(
            model=f"openai/{endpoint.model}",
            api_base=endpoint.url,
            api_key="none",
            messages=[{"role": "user", "content": "hi"}],
        )
        from atlas_middleware.integrations import litellm as atlas_litellm

        atlas_litellm.flush()
    elif integration == "llama_index":
        import asyncio

        from llama_index.core.base.llms.types import ChatMessage

        from tests.integrations.contract_shapes import _llama_llm

        llm = _llama_llm(endpoint)
        asyncio.run(llm.achat(messages=[ChatMessage(role="user", content="hi")]))
    else:
        from agents import Runner

        from tests.integrations.contract_shapes import _agents

        Runner.run_sync(_agents(endpoint), "hi", max_turns=2)


def _instrument(integration: str) -> Any:
    from atlas_middleware.integrations import langchain, litellm, llama_index, openai_agents

    module = {
        "langchain": langchain,
        "langgraph": langchain,  # LangGraph's model and tool calls are LangChain runs
        "litellm": litellm,
        "llama_index": llama_index,
        "openai_agents": openai_agents,
    }[integration]
    return module


@pytest.mark.parametrize("integration", ["langchain", "litellm", "llama_index", "openai_agents"])
def test_instrument_twice_traces_once_and_uninstrument_leaves_nothing(
    integration, scripted_server, memory
):
    endpoint = Endpoint(scripted_server.url, MODEL, scripted=True)
    module = _instrument(integration)
    first = module.instrument()
    assert module.instrument() is first  # idempotent
    before = len(scripted_server.bodies)
    with telemetry.get_tracer().start_as_current_span("outer"):
        _plain_llm_calls(integration, endpoint)
    requests = len(scripted_server.bodies) - before
    chats = [x for x in memory.get_finished_spans() if x.name.startswith("chat ")]
    assert requests >= 1 and len(chats) == requests  # one span per model call, no duplicate
    assert all(x.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT for x in chats)
    memory.clear()
    module.uninstrument()
    module.uninstrument()  # twice: a no-op
    with telemetry.get_tracer().start_as_current_span("outer"):
        _plain_llm_calls(integration, endpoint)
    assert [x.name for x in memory.get_finished_spans()] == ["outer"]
    if integration == "openai_agents":
        from agents import Runner

        assert "atlas" not in repr(Runner.__dict__["run"].__func__.__module__)
    if integration == "llama_index":
        from llama_index.llms.openai import OpenAI

        assert not getattr(OpenAI.__dict__["achat"], "_atlas_guided", False)


def test_the_scripted_server_is_called_with_the_guidance(scripted_server, sqlite_url):
    """The guidance in the span is the guidance the model was sent (for one shape per
    framework family; the span check runs for all)."""
    scripted_server.bodies.clear()
    run_shape("openai_agents-run", Endpoint(scripted_server.url, MODEL, True), sqlite_url, "own")
    systems = [
        m.get("content") or ""
        for body in scripted_server.bodies
        for m in body["messages"]
        if m["role"] in ("system", "developer")
    ]
    assert any(GUIDANCE in text for text in systems)
    assert json.dumps(scripted_server.bodies[0]).count(GUIDANCE) == 1
