"""LangChain core: the callback handler turns real runnables, fake chat models, LLMs and tools
into GenAI spans with the right parents, sync and async; instrument() installs it for every
thread; errors are recorded; atlas models run as LangChain chat models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import orjson
import pytest
from atlas_middleware.integrations import langchain as lc
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import get_tracer
from atlas_middleware.telemetry import schema as s
from tests.helpers import plain_messages


@pytest.fixture(autouse=True)
def _no_global_hook() -> Iterator[None]:
    yield
    lc.uninstrument()


def chat(*answers: str) -> FakeMessagesListChatModel:
    return FakeMessagesListChatModel(
        responses=[
            AIMessage(a, usage_metadata={"input_tokens": 9, "output_tokens": 3, "total_tokens": 12})
            for a in answers
        ]
    )


def chain(llm):
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{question}")])
    return prompt | llm | StrOutputParser()


def named(exporter, name):
    return [x for x in exporter.get_finished_spans() if x.name == name]


def test_chat_and_chain_spans_nest_under_the_current_span(memory):
    handler = lc.AtlasCallbackHandler()
    with get_tracer().start_as_current_span("session") as outer:
        answer = chain(chat("42")).invoke({"question": "12 + 30?"}, {"callbacks": [handler]})
    assert answer == "42"
    [sequence] = named(memory, "chain RunnableSequence")
    [model] = named(memory, "chat FakeMessagesListChatModel")
    [prompt] = named(memory, "chain ChatPromptTemplate")
    assert sequence.parent.span_id == outer.get_span_context().span_id
    assert model.parent.span_id == sequence.context.span_id
    assert prompt.parent.span_id == sequence.context.span_id
    a = model.attributes
    assert a[s.GEN_AI_OPERATION_NAME] == s.OP_CHAT
    assert a[s.GEN_AI_REQUEST_MODEL] == "FakeMessagesListChatModel"
    assert a[s.GEN_AI_PROVIDER_NAME] == "fakemessageslistchatmodel"
    assert (a[s.GEN_AI_USAGE_INPUT_TOKENS], a[s.GEN_AI_USAGE_OUTPUT_TOKENS]) == (9, 3)
    # The GenAI conventions' message shape: parts, and a finish reason on outputs.
    assert orjson.loads(a[s.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "12 + 30?"}]},
    ]
    [output] = orjson.loads(a[s.GEN_AI_OUTPUT_MESSAGES])
    assert output["role"] == "assistant"
    assert output["parts"] == [{"type": "text", "content": "42"}]
    # OpenInference's names for the same call, for Phoenix.
    assert a[s.OPENINFERENCE_SPAN_KIND] == s.OI_KIND_LLM
    assert a[s.OI_LLM_MODEL_NAME] == "FakeMessagesListChatModel"
    assert (a[s.OI_LLM_TOKEN_COUNT_PROMPT], a[s.OI_LLM_TOKEN_COUNT_COMPLETION]) == (9, 3)
    assert a["llm.input_messages.1.message.content"] == "12 + 30?"
    assert a["llm.output_messages.0.message.content"] == "42"
    assert a[s.OI_OUTPUT_VALUE] == "42" and "12 + 30?" in a[s.OI_INPUT_VALUE]
    assert a[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT
    assert model.kind.name == "CLIENT" and model.end_time >= model.start_time


def test_content_capture_can_be_switched_off(memory, monkeypatch):
    monkeypatch.setenv(s.CAPTURE_CONTENT_ENV, "false")
    chain(chat("42")).invoke({"question": "secret"}, {"callbacks": [lc.AtlasCallbackHandler()]})
    for span in memory.get_finished_spans():
        assert "secret" not in orjson.dumps(dict(span.attributes)).decode()
    [model] = named(memory, "chat FakeMessagesListChatModel")
    assert model.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] == 9


def test_a_top_level_chain_is_a_workflow_root(memory):
    chain(chat("42")).invoke({"question": "q"}, {"callbacks": [lc.AtlasCallbackHandler()]})
    [root] = named(memory, "invoke_workflow RunnableSequence")
    assert root.parent is None
    assert root.attributes[s.GEN_AI_OPERATION_NAME] == s.OP_INVOKE_WORKFLOW


def test_tools_llms_and_errors(memory):
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @tool
    def broken(x: str) -> str:
        """Always fails."""
        raise RuntimeError("database unreachable")

    handler = lc.AtlasCallbackHandler()
    with get_tracer().start_as_current_span("session"):
        assert add.invoke({"a": 12, "b": 30}, {"callbacks": [handler]}) == 42
        with pytest.raises(RuntimeError):
            broken.invoke({"x": "y"}, {"callbacks": [handler]})
        assert FakeListLLM(responses=["ok"]).invoke("hi", {"callbacks": [handler]}) == "ok"
    [ok] = named(memory, "execute_tool add")
    assert ok.attributes[s.GEN_AI_OPERATION_NAME] == s.OP_EXECUTE_TOOL
    assert ok.attributes[s.GEN_AI_TOOL_NAME] == "add" and ok.attributes[s.OI_OUTPUT_VALUE] == "42"
    [bad] = named(memory, "execute_tool broken")
    assert bad.attributes[s.ERROR_TYPE] == "RuntimeError" and not bad.status.is_ok
    assert any(e.name == "exception" for e in bad.events)
    [llm] = named(memory, "text_completion FakeListLLM")
    assert llm.attributes[s.GEN_AI_OPERATION_NAME] == s.OP_TEXT_COMPLETION


def test_a_failing_step_marks_its_span_and_its_parents(memory):
    def explode(_: object) -> str:
        raise ValueError("bad step")

    failing = chain(chat("42")) | RunnableLambda(explode, name="explode")
    with pytest.raises(ValueError):
        failing.invoke({"question": "q"}, {"callbacks": [lc.AtlasCallbackHandler()]})
    [step] = named(memory, "chain explode")
    [root] = named(memory, "invoke_workflow RunnableSequence")
    assert step.attributes[s.ERROR_TYPE] == "ValueError" and not step.status.is_ok
    assert step.parent.span_id == root.context.span_id and not root.status.is_ok


def test_async_runs_and_concurrent_sessions_keep_their_parents(memory):
    handler = lc.AtlasCallbackHandler()

    async def one(i: int) -> tuple[int, str]:
        with get_tracer().start_as_current_span(f"session {i}") as span:
            await chain(chat(f"a{i}")).ainvoke({"question": f"q{i}"}, {"callbacks": [handler]})
            return span.get_span_context().trace_id, f"a{i}"

    async def main():
        return await asyncio.gather(*(one(i) for i in range(4)))

    results = asyncio.run(main())
    models = named(memory, "chat FakeMessagesListChatModel")
    assert len(models) == 4
    for trace_id, answer in results:
        [model] = [m for m in models if m.context.trace_id == trace_id]
        assert answer in model.attributes[s.GEN_AI_OUTPUT_MESSAGES]
    assert not handler._runs  # every run ended and was forgotten


def test_instrument_traces_every_thread_until_uninstrumented(memory):
    assert lc.instrument() is lc.instrument()  # idempotent
    assert lc.is_instrumented()
    done = threading.Event()

    def work() -> None:
        chain(chat("42")).invoke({"question": "q"})  # no callbacks passed
        done.set()

    threading.Thread(target=work).start()
    assert done.wait(30)
    assert len(named(memory, "chat FakeMessagesListChatModel")) == 1

    lc.uninstrument()
    chain(chat("42")).invoke({"question": "q"})
    assert len(named(memory, "chat FakeMessagesListChatModel")) == 1
    # A handler passed by hand still works, and never twice when also installed.
    lc.instrument()
    handler = lc.instrument()
    chain(chat("42")).invoke({"question": "q"}, {"callbacks": [handler]})
    assert len(named(memory, "chat FakeMessagesListChatModel")) == 2


def test_session_usage_counts_langchain_model_calls(memory):
    @atlas.supervise(agent="calc", lane="auto", reward=False)
    def solve(question: str) -> str:
        return chain(chat("42")).invoke({"question": question})

    lc.instrument()
    assert solve("12 + 30?") == "42"
    [root] = named(memory, "invoke_agent calc")
    [model] = named(memory, "chat FakeMessagesListChatModel")
    assert model.context.trace_id == root.context.trace_id
    assert root.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] == 9
    assert root.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 3


def test_an_atlas_model_as_a_langchain_chat_model(memory):
    model = ScriptedModel(replies=["42"], name="smol")
    llm = lc.AtlasChatModel(model=model, max_tokens=8)
    handler = lc.AtlasCallbackHandler()
    with get_tracer().start_as_current_span("session"):
        answer = chain(llm).invoke({"question": "12 + 30?"}, {"callbacks": [handler]})

        async def run() -> str:
            return await llm.ainvoke([HumanMessage("again")], {"callbacks": [handler]})

        again = asyncio.run(run())
    assert answer == "42" and again.content == "42"
    assert model.calls[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "12 + 30?"},
    ]
    # One chat span per call (the atlas model's own), under the LangChain step that called it.
    chats = named(memory, "chat smol")
    assert len(chats) == 2
    [sequence] = named(memory, "chain RunnableSequence")
    assert chats[0].parent.span_id == sequence.context.span_id
    assert chats[0].attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] >= 1


GUIDANCE = "Add the tens first, then the ones."


def guided_chain(llm):
    """The documented way to give a chain the teacher's guidance: a with_guidance step."""
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{question}")])
    return prompt | lc.with_guidance | llm | StrOutputParser()


def test_with_guidance_puts_the_teachers_guidance_in_the_models_input(memory):
    teacher = ScriptedModel(replies=[GUIDANCE], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, lane="coach", reward=False)
    def solve(question: str) -> str:
        return guided_chain(chat("42")).invoke({"question": question})

    lc.instrument()
    assert solve("12 + 30?") == "42"
    assert guided_chain(chat("42")).invoke({"question": "unsupervised"}) == "42"
    guided, plain = named(memory, "chat FakeMessagesListChatModel")
    [root] = named(memory, "invoke_agent calc")
    assert guided.context.trace_id == root.context.trace_id
    system, user = plain_messages(guided.attributes[s.GEN_AI_INPUT_MESSAGES])
    assert system["role"] == "system" and user == {"role": "user", "content": "12 + 30?"}
    assert system["content"].startswith("Be brief.\n\n") and GUIDANCE in system["content"]
    # Outside a supervised call the step changes nothing.
    assert plain_messages(plain.attributes[s.GEN_AI_INPUT_MESSAGES])[0] == {
        "role": "system",
        "content": "Be brief.",
    }
    # Without a system message of its own, the guidance comes first as one.
    with atlas.use_guidance(GUIDANCE):
        [first, second] = lc.with_guidance([HumanMessage("hi")])
    assert first.type == "system" and GUIDANCE in first.content and second.content == "hi"


# --- the real model ----------------------------------------------------------------------------
@pytest.mark.model
def test_a_supervised_chain_on_the_real_model_through_chat_openai(model_server, sqlite_url):
    """ChatOpenAI (langchain-openai) against SmolLM2 behind ``atlas serve-model``, through a
    recording proxy: the session row and reward in the store, the chain's spans under the
    session, and the teacher's guidance in what the model received. The teacher is scripted
    (the point is the student path); the served model is the RIM judge."""
    import httpx
    from langchain_openai import ChatOpenAI

    from atlas_middleware import telemetry
    from atlas_middleware.models import OpenAICompatibleModel
    from atlas_middleware.rim import RIMReward
    from atlas_middleware.storage import open_store
    from tests.integrations.recording_proxy import RecordingProxy, system_texts

    name = httpx.get(f"{model_server}/v1/models", timeout=30).json()["data"][0]["id"]
    telemetry.configure(exporter="atlas", store=sqlite_url, batch=False, set_global=False)
    judge_model = OpenAICompatibleModel(f"{model_server}/v1", name)
    with RecordingProxy(model_server) as proxy:
        llm = ChatOpenAI(
            base_url=proxy.url, api_key="none", model=name, max_tokens=16, temperature=0
        )

        @atlas.supervise(
            agent="smol-chain",
            teacher=ScriptedModel(replies=[GUIDANCE], name="teacher"),
            reward=RIMReward(judge_model, judges=["accuracy"], samples=1, max_tokens=48),
            reward_inline=True,
            lane="coach",
            reference="42",
        )
        def solve(question: str) -> str:
            return guided_chain(llm).invoke({"question": question})

        lc.instrument()
        answer = solve("What is 12 + 30? Answer with a number.")
    telemetry.shutdown()
    assert isinstance(answer, str)

    [body] = proxy.bodies
    assert body["model"] == name
    [system] = system_texts(body)
    assert system.startswith("Be brief.") and GUIDANCE in system
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert (session.agent_name, session.lane, session.guidance) == ("smol-chain", "coach", GUIDANCE)
    assert session.final_answer == answer
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    by_id = {x.span_id: x for x in spans}
    [root] = [x for x in spans if x.name == "invoke_agent smol-chain"]
    [sequence] = [x for x in spans if x.name == "chain RunnableSequence"]
    assert sequence.parent_span_id == root.span_id
    [student] = [
        x for x in spans if x.name == f"chat {name}" and x.parent_span_id == sequence.span_id
    ]
    assert student.attributes[s.GEN_AI_PROVIDER_NAME] == "openai"
    assert student.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert student.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    received = plain_messages(student.attributes[s.GEN_AI_INPUT_MESSAGES])
    assert received[0]["role"] == "system" and GUIDANCE in received[0]["content"]
    [evaluation] = [x for x in spans if x.name == "evaluate atlas.rim"]
    assert by_id[evaluation.parent_span_id] is root


# --- beside OpenInference's instrumentor (Phoenix users) ---------------------------------------
def test_beside_openinference_each_model_call_is_traced_once_and_still_counted(sqlite_url):
    """Finding 3's other half: with OpenInference's LangChain instrumentor on the application's
    provider, atlas makes no second span per step; the session still gets its row, the student's
    tokens and a role on OpenInference's model-call span."""
    from langchain_openai import ChatOpenAI
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.integrations.scripted_openai import ScriptedOpenAI

    phoenix = InMemorySpanExporter()  # what the application's own backend receives
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(phoenix))
    openinference = LangChainInstrumentor()
    openinference.instrument(tracer_provider=provider)
    try:
        telemetry.attach(provider, exporter="atlas", store=sqlite_url, batch=False)
        lc.instrument()
        with ScriptedOpenAI(lambda body: "42") as server:
            llm = ChatOpenAI(base_url=server.url, api_key="none", model="scripted-gpt")

            @atlas.supervise(agent="calc", teacher=ScriptedModel(replies=["0.95"]), reward=False)
            def solve(question: str) -> str:
                return chain(llm).invoke({"question": question})

            assert solve("12 + 30?") == "42"
        telemetry.shutdown()
    finally:
        openinference.uninstrument()
        lc.uninstrument()
    llm_spans = [
        x
        for x in phoenix.get_finished_spans()
        if x.attributes.get(s.OPENINFERENCE_SPAN_KIND) == s.OI_KIND_LLM
        and x.attributes.get(s.ATLAS_SPAN_ROLE) != s.ROLE_TEACHER
    ]
    assert len(llm_spans) == 1  # OpenInference's; atlas added none of its own
    assert llm_spans[0].instrumentation_scope.name.startswith("openinference")
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    [student] = [x for x in spans if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_STUDENT]
    assert student.span_id == format(llm_spans[0].context.span_id, "016x")
    assert session.final_answer == "42" and session.student_input_tokens
    assert session.student_input_tokens == student.attributes["llm.token_count.prompt"]
