"""LangGraph: real StateGraphs, LangChain's fake chat models as the student and a scripted
teacher: one session per run in the real store, node spans under the session root, guidance in
the messages the chat model received, checkpointers, interrupts/resume, stream modes, failing
open; one run against the real SmolLM2 through langchain-openai."""

from __future__ import annotations

import asyncio
import operator
import os
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import orjson
import pytest
from atlas_middleware.integrations import langchain as lc
from atlas_middleware.integrations.langgraph import (
    GUIDANCE_MESSAGE_ID,
    supervise_graph,
    supervise_node,
)
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import plain_messages, scripted_teacher

GUIDANCE = "Add the tens first, then the ones."
TASK = "What is 12 + 30?"


@pytest.fixture(autouse=True)
def _no_global_hook() -> Iterator[None]:
    yield
    lc.uninstrument()


def teacher(
    *, probe: str = "0.3", validate: str = "VALID", guidance: str = GUIDANCE
) -> ScriptedModel:
    return scripted_teacher(probe=probe, validate=validate, guidance=guidance)


def judge(score: float = 0.9) -> RIMReward:
    reply = orjson.dumps(
        {
            "principles": [{"name": "correct", "weight": 1.0}],
            "score": score,
            "rationale": "checked",
            "uncertainty": 0.05,
        }
    ).decode()
    return RIMReward(ScriptedModel(replies=[reply], name="judge"), judges=["accuracy"], samples=1)


def student(*answers: str) -> FakeMessagesListChatModel:
    return FakeMessagesListChatModel(
        responses=[
            AIMessage(
                a, usage_metadata={"input_tokens": 11, "output_tokens": 2, "total_tokens": 13}
            )
            for a in answers
        ]
    )


def agent_graph(llm: Any, *, checkpointer: Any = None, approve: bool = False) -> Any:
    """model → (approve: a human-in-the-loop interrupt) → format."""

    def model(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    def ask(state: MessagesState) -> dict:
        verdict = interrupt({"question": "send this answer?"})
        return {"messages": [AIMessage(f"{state['messages'][-1].content} ({verdict})")]}

    def fmt(state: MessagesState) -> dict:
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("format", fmt)
    builder.add_edge(START, "model")
    if approve:
        builder.add_node("ask", ask)
        builder.add_edge("model", "ask")
        builder.add_edge("ask", "format")
    else:
        builder.add_edge("model", "format")
    builder.add_edge("format", END)
    return builder.compile(checkpointer=checkpointer)


def by_name(spans, name):
    return [x for x in spans if x.name == name]


def texts(state) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in state["messages"]]


def read_store(url: str):
    with open_store(url) as store:
        sessions = list(store.iter_sessions())
        spans = store.spans_for([x.trace_id for x in sessions])
    return sessions, spans


# --- one session per run, in the real store --------------------------------------------------
def test_a_graph_run_is_one_session_with_node_spans_reward_and_guidance(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    llm = student("42")
    app = supervise_graph(
        agent_graph(llm), agent="calc", teacher=teacher(), reward=judge(0.9), reward_inline=True
    )

    out = app.invoke({"messages": [HumanMessage(TASK)]})
    assert texts(out)[-1] == ("ai", "42")
    # The guidance entered the state's messages as a system message, ahead of the task.
    assert out["messages"][0].type == "system" and out["messages"][0].id == GUIDANCE_MESSAGE_ID
    assert GUIDANCE in out["messages"][0].content
    telemetry.shutdown()

    [session], spans = read_store(store_url)
    assert (session.agent_name, session.lane, session.task) == ("calc", "coach", TASK)
    assert session.final_answer == "42" and session.guidance == GUIDANCE
    assert session.reward_score == pytest.approx(0.9)
    tree = spans[session.trace_id]
    [root] = [x for x in tree if x.name == "invoke_agent calc"]
    nodes = {x.name: x for x in tree if x.name.startswith("node ")}
    assert set(nodes) == {"node model", "node format"}
    assert all(x.parent_span_id == root.span_id for x in nodes.values())
    assert all(x.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_FRAMEWORK for x in nodes.values())
    assert all(
        x.attributes[s.ATLAS_FRAMEWORK_SPAN_TYPE] == s.FRAMEWORK_NODE for x in nodes.values()
    )
    [chat] = [x for x in tree if x.name == "chat FakeMessagesListChatModel"]
    assert chat.parent_span_id == nodes["node model"].span_id
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] == 11
    assert chat.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    # What the chat model was given: the guidance as a system message, then the task.
    received = plain_messages(chat.attributes[s.GEN_AI_INPUT_MESSAGES])
    assert received[0]["role"] == "system" and GUIDANCE in received[0]["content"]
    assert received[1] == {"role": "user", "content": TASK}
    # No span for the graph's own outer chain: the session root stands for it.
    assert not [x for x in tree if x.name.startswith("chain ")]
    [evaluation] = [x for x in tree if x.name == "evaluate atlas.rim"]
    assert evaluation.parent_span_id == root.span_id


def test_paired_retry_on_a_thread_forks_from_where_the_run_started(memory):
    llm = student("41", "42")
    app = supervise_graph(
        agent_graph(llm, checkpointer=InMemorySaver()),
        agent="calc",
        teacher=teacher(probe="0.7"),
        reward=False,
        reference="42",
    )
    config = {"configurable": {"thread_id": "t-1"}}

    out = app.invoke({"messages": [HumanMessage(TASK)]}, config)
    # The rejected first attempt is not part of the retry's history, nor of the thread's state.
    assert [c for t, c in texts(out) if t == "ai"] == ["42"]
    assert [c for t, c in texts(app.get_state(config).values) if t == "ai"] == ["42"]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_LANE] == "paired" and root.attributes[s.ATLAS_RETRIES] == 1
    assert root.attributes[s.ATLAS_THREAD_ID] == "t-1"
    assert root.attributes[s.GEN_AI_CONVERSATION_ID] == "t-1"
    chats = by_name(memory.get_finished_spans(), "chat FakeMessagesListChatModel")
    first, retry = (plain_messages(c.attributes[s.GEN_AI_INPUT_MESSAGES]) for c in chats)
    assert [m["role"] for m in first] == ["user"]
    assert [m["role"] for m in retry] == ["system", "user"] and GUIDANCE in retry[0]["content"]

    # The next turn on the thread runs without guidance (auto): the old guidance leaves the
    # state instead of steering a turn it was not written for.
    llm.responses, llm.i = [AIMessage("7")], 0
    out = app.options(lane="auto").invoke({"messages": [HumanMessage("And 3 + 4?")]}, config)
    assert GUIDANCE_MESSAGE_ID not in [m.id for m in out["messages"]]
    assert texts(out)[-1] == ("ai", "7")


def test_interrupt_and_resume_continue_one_session(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    saver = InMemorySaver()
    graph = agent_graph(student("42"), checkpointer=saver, approve=True)
    the_teacher = teacher(probe="0.3")
    options = {"agent": "calc", "teacher": the_teacher, "reward": judge(0.8), "reward_inline": True}
    config = {"configurable": {"thread_id": "t-9"}}

    paused = supervise_graph(graph, **options).invoke({"messages": [HumanMessage(TASK)]}, config)
    assert paused["__interrupt__"][0].value == {"question": "send this answer?"}
    # Resumed by another wrapper (as another process would): the ids travel in the checkpoint.
    done = supervise_graph(graph, **options).invoke(Command(resume="yes"), config)
    assert texts(done)[-1] == ("ai", "42 (yes)")
    # Probed and guided once, when the session began; the resume only validated the answer.
    kinds = [c[0]["content"].split()[1] for c in the_teacher.calls]
    assert (kinds.count("judge"), kinds.count("are"), kinds.count("check")) == (1, 1, 1)
    telemetry.shutdown()

    [session], spans = read_store(store_url)
    assert session.final_answer == "42 (yes)"
    assert session.lane == "coach" and session.guidance == GUIDANCE
    assert session.reward_score == pytest.approx(0.8)
    tree = spans[session.trace_id]
    first, second = sorted(
        (x for x in tree if x.name == "invoke_agent calc"), key=lambda x: x.start_ns
    )
    assert first.attributes[s.ATLAS_INTERRUPTED] is True
    assert (first.attributes[s.ATLAS_SEGMENT], second.attributes[s.ATLAS_SEGMENT]) == (0, 1)
    assert second.parent_span_id == first.span_id
    assert first.attributes[s.ATLAS_SESSION_ID] == second.attributes[s.ATLAS_SESSION_ID]
    # The interrupted node is not an error; it ran again on resume, under the second segment.
    asks = sorted(by_name(tree, "node ask"), key=lambda x: x.start_ns)
    assert [x.parent_span_id for x in asks] == [first.span_id, second.span_id]
    assert asks[0].status_code != "ERROR" and asks[0].attributes[s.ATLAS_INTERRUPTED] is True
    assert len(by_name(tree, "evaluate atlas.rim")) == 1  # judged once, on the final answer


def test_later_guided_turns_on_a_thread_keep_one_guidance_message_at_the_head(memory):
    """Turns on one checkpointed thread (InMemorySaver, add_messages): guided, guided, unguided,
    guided, then a paired retry. Each time the model sees at most one guidance message, the
    current one, first; the rest of the conversation in order, with its ids."""
    hints: list[str] = []

    def respond(messages):
        system = messages[0]["content"]
        if system.startswith("You judge whether"):
            return "0.5"
        if system.startswith("You check"):
            return "VALID"
        hints.append(f"hint {len(hints) + 1}")
        return hints[-1]

    llm = student("a1", "a2", "a3", "a4", "wrong", "a5")
    app = supervise_graph(
        agent_graph(llm, checkpointer=InMemorySaver()),
        agent="calc",
        teacher=ScriptedModel(respond=respond, name="teacher"),
        reward=False,
    )
    config = {"configurable": {"thread_id": "t-turns"}}
    turns = [("coach", "q1"), ("coach", "q2"), ("auto", "q3"), ("coach", "q4"), ("paired", "q5")]
    for lane, question in turns:
        options = {"lane": lane}
        if lane == "paired":
            options["reference"] = "a5"  # the first answer is rejected: one guided retry
        app.options(**options).invoke({"messages": [HumanMessage(question)]}, config)

    chats = by_name(memory.get_finished_spans(), "chat FakeMessagesListChatModel")
    seen = [plain_messages(c.attributes[s.GEN_AI_INPUT_MESSAGES]) for c in chats]
    assert len(seen) == 6  # five turns, one of them retried
    conversation: list[dict] = []
    expected_hints = ["hint 1", "hint 2", None, "hint 3", None, "hint 4"]
    questions = ["q1", "q2", "q3", "q4", "q5", "q5"]
    for received, hint, question in zip(seen, expected_hints, questions, strict=True):
        systems = [i for i, m in enumerate(received) if m["role"] == "system"]
        if hint is None:
            assert systems == []
        else:
            assert systems == [0] and received[0]["content"].endswith(hint)
        rest = [m for m in received if m["role"] != "system"]
        assert rest == [*conversation, {"role": "user", "content": question}]
        if question != "q5" or hint is not None:  # the rejected attempt is not kept
            answer = {"q1": "a1", "q2": "a2", "q3": "a3", "q4": "a4", "q5": "a5"}[question]
            conversation = [*rest, {"role": "assistant", "content": answer}]

    # The thread: one guidance message (the last one), first; the history otherwise untouched.
    state = app.get_state(config).values["messages"]
    guidance = [m for m in state if m.id == GUIDANCE_MESSAGE_ID]
    assert len(guidance) == 1 and state[0] is guidance[0]
    assert guidance[0].content.endswith("hint 4")
    assert [(m.type, m.content) for m in state[1:]] == [
        ("human" if x["role"] == "user" else "ai", x["content"]) for x in conversation
    ]
    # Every message kept its id through the rewrites: the ids of the first turn's messages are
    # those of the thread's oldest checkpoint that holds them.
    oldest = list(app.get_state_history(config))[::-1]
    first_turn = next(x for x in oldest if len(x.values.get("messages", [])) >= 3).values
    assert [m.id for m in first_turn["messages"][1:3]] == [m.id for m in state[1:3]]
    roots = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert [r.attributes[s.ATLAS_RETRIES] for r in roots] == [0, 0, 0, 0, 1]


def test_an_abandoned_stream_ends_its_session_without_validation_or_reward(memory):
    the_teacher = teacher()
    app = supervise_graph(
        agent_graph(student("42")),
        agent="calc",
        teacher=the_teacher,
        reward=judge(),
        reward_inline=True,
    )
    for chunk in app.stream({"messages": [HumanMessage(TASK)]}, stream_mode="updates"):
        assert next(iter(chunk)) == "model"
        break  # the generator is closed here

    async def abandon_async() -> None:
        stream = app.astream({"messages": [HumanMessage(TASK)]}, stream_mode="updates")
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(abandon_async())
    spans = memory.get_finished_spans()
    roots = by_name(spans, "invoke_agent calc")
    assert len(roots) == 2
    for root in roots:
        assert root.attributes[s.ERROR_TYPE] == "GeneratorExit"
        assert s.ATLAS_FINAL_ANSWER not in root.attributes
    assert not by_name(spans, "node format")  # the graph stopped where the caller did
    assert not by_name(spans, "evaluate atlas.rim")
    kinds = [c[0]["content"].split()[1] for c in the_teacher.calls]
    assert "check" not in kinds and kinds.count("are") == 2  # guided, never validated


def test_a_static_breakpoint_pauses_and_resumes_one_session(sqlite_url):
    telemetry.configure(exporter="atlas", store=sqlite_url, batch=False, set_global=False)
    builder = StateGraph(MessagesState)
    llm = student("42")
    builder.add_node("model", lambda state: {"messages": [llm.invoke(state["messages"])]})
    builder.add_node("format", lambda state: {})
    builder.add_edge(START, "model")
    builder.add_edge("model", "format")
    builder.add_edge("format", END)
    graph = builder.compile(checkpointer=InMemorySaver(), interrupt_before=["format"])
    app = supervise_graph(
        graph, agent="calc", teacher=teacher(), reward=judge(0.7), reward_inline=True
    )
    config = {"configurable": {"thread_id": "bp"}}

    paused = app.invoke({"messages": [HumanMessage(TASK)]}, config)
    assert texts(paused)[-1] == ("ai", "42")
    assert app.get_state(config).next == ("format",)
    done = app.invoke(None, config)  # continue past the breakpoint
    assert app.get_state(config).next == ()
    assert texts(done)[-1] == ("ai", "42")
    telemetry.shutdown()

    [session], spans = read_store(sqlite_url)
    assert session.final_answer == "42" and session.reward_score == pytest.approx(0.7)
    tree = spans[session.trace_id]
    first, second = sorted(by_name(tree, "invoke_agent calc"), key=lambda x: x.start_ns)
    assert first.attributes[s.ATLAS_INTERRUPTED] is True
    assert s.ATLAS_INTERRUPTED not in second.attributes
    assert second.parent_span_id == first.span_id
    assert [x.parent_span_id for x in by_name(tree, "node model")] == [first.span_id]
    assert [x.parent_span_id for x in by_name(tree, "node format")] == [second.span_id]
    assert len(by_name(tree, "evaluate atlas.rim")) == 1


def writer_graph(llm: Any, checkpointer: Any = None) -> Any:
    """model (writes a custom progress chunk) → format."""

    def model(state: MessagesState) -> dict:
        write = get_stream_writer()
        write({"progress": "thinking"})
        reply = llm.invoke(state["messages"])
        write({"progress": "done"})
        return {"messages": [reply]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("format", lambda state: {})
    builder.add_edge(START, "model")
    builder.add_edge("model", "format")
    builder.add_edge("format", END)
    return builder.compile(checkpointer=checkpointer)


@pytest.mark.parametrize("mode", ["custom", "debug", ["custom", "updates"]])
def test_custom_and_debug_stream_modes_pass_through(memory, mode):
    plain = list(
        writer_graph(student("42")).stream({"messages": [HumanMessage(TASK)]}, stream_mode=mode)
    )
    app = supervise_graph(writer_graph(student("42")), agent="calc", lane="auto", reward=False)
    chunks = list(app.stream({"messages": [HumanMessage(TASK)]}, stream_mode=mode))
    if mode == "debug":
        # Debug chunks carry timestamps and ids: compare what happened, in order.
        def steps(stream):
            return [(c["type"], c["step"], c["payload"].get("name")) for c in stream]

        assert steps(chunks) == steps(plain) and len(chunks) >= 4
    elif mode == "custom":
        assert chunks == plain == [{"progress": "thinking"}, {"progress": "done"}]
    else:  # the model's message ids differ between the two runs: compare shapes and the custom parts
        assert [_shape(c) for c in chunks] == [_shape(c) for c in plain]
        assert [c for c in chunks if c[0] == "custom"] == [
            ("custom", {"progress": "thinking"}),
            ("custom", {"progress": "done"}),
        ]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"
    assert root.attributes[s.ATLAS_STREAMED] is True


def test_version_v2_chunks_pass_through_and_the_answer_comes_from_the_checkpoint(memory):
    def run(graph: Any, thread: str) -> list[Any]:
        return list(
            graph.stream(
                {"messages": [HumanMessage(TASK)]},
                {"configurable": {"thread_id": thread}},
                stream_mode=["updates", "custom"],
                version="v2",
            )
        )

    plain = run(writer_graph(student("42"), InMemorySaver()), "plain")
    app = supervise_graph(
        writer_graph(student("42"), InMemorySaver()), agent="calc", lane="auto", reward=False
    )
    chunks = run(app, "supervised")

    def shape(stream):
        return [(c["type"], c["ns"], _shape(c["data"])) for c in stream]

    assert shape(chunks) == shape(plain)
    assert {c["type"] for c in chunks} == {"updates", "custom"}
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"


@pytest.mark.parametrize(
    "mode", ["values", "updates", "messages", ["updates", "messages"], "subgraphs"]
)
def test_each_stream_mode_passes_through_and_is_one_session(memory, mode):
    kwargs: dict[str, Any] = {"stream_mode": mode}
    if mode == "subgraphs":
        kwargs = {"stream_mode": "updates", "subgraphs": True}
    plain = list(agent_graph(student("42")).stream({"messages": [HumanMessage(TASK)]}, **kwargs))
    app = supervise_graph(
        agent_graph(student("41", "42")),
        agent="calc",
        teacher=teacher(probe="0.7", validate="INVALID: not 42"),
        reward=False,
    )

    chunks = list(app.stream({"messages": [HumanMessage(TASK)]}, **kwargs))
    # The same chunk shapes as the bare graph, as they were produced (paired lane: no guidance).
    assert len(chunks) == len(plain)
    assert [_shape(c) for c in chunks] == [_shape(c) for c in plain]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_STREAMED] is True
    # Nothing can be taken back once streamed: validated, not retried.
    assert root.attributes[s.ATLAS_RETRIES] == 0
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "41"
    assert len(by_name(memory.get_finished_spans(), "chat FakeMessagesListChatModel")) == 1


def _shape(chunk: Any) -> Any:
    if isinstance(chunk, tuple):
        return tuple(_shape(c) for c in chunk)
    if isinstance(chunk, dict):
        return tuple(sorted(chunk))
    return type(chunk).__name__


def test_coach_guidance_reaches_a_streamed_run_up_front(memory):
    app = supervise_graph(agent_graph(student("42")), agent="calc", teacher=teacher(), reward=False)
    chunks = list(app.stream({"messages": [HumanMessage(TASK)]}, stream_mode="values"))
    assert chunks[0]["messages"][0].id == GUIDANCE_MESSAGE_ID
    [chat] = by_name(memory.get_finished_spans(), "chat FakeMessagesListChatModel")
    assert GUIDANCE in chat.attributes[s.GEN_AI_INPUT_MESSAGES]


def test_async_invoke_and_astream(memory):
    app = supervise_graph(
        agent_graph(student("42"), checkpointer=InMemorySaver()),
        agent="calc",
        teacher=teacher(),
        reward=False,
    )

    async def main() -> tuple[Any, list[Any]]:
        out = await app.ainvoke(
            {"messages": [HumanMessage(TASK)]}, {"configurable": {"thread_id": "a"}}
        )
        chunks = [
            c
            async for c in app.astream(
                {"messages": [HumanMessage(TASK)]},
                {"configurable": {"thread_id": "b"}},
                stream_mode="updates",
            )
        ]
        return out, chunks

    out, chunks = asyncio.run(main())
    assert texts(out)[-1] == ("ai", "42")
    assert [next(iter(c)) for c in chunks] == ["model", "format"]
    spans = memory.get_finished_spans()
    roots = by_name(spans, "invoke_agent calc")
    assert len(roots) == 2 and len({r.context.trace_id for r in roots}) == 2
    for root in roots:
        [model] = [
            x for x in by_name(spans, "node model") if x.context.trace_id == root.context.trace_id
        ]
        assert model.parent.span_id == root.context.span_id
        [chat] = [
            x
            for x in by_name(spans, "chat FakeMessagesListChatModel")
            if x.context.trace_id == root.context.trace_id
        ]
        assert chat.parent.span_id == model.context.span_id
        assert GUIDANCE in chat.attributes[s.GEN_AI_INPUT_MESSAGES]


@pytest.mark.parametrize("failure", [ModelError("teacher down"), TimeoutError("slow")])
def test_a_failing_teacher_does_not_break_the_graph(memory, failure):
    broken = ScriptedModel(replies=[failure], name="teacher")
    app = supervise_graph(agent_graph(student("42")), agent="calc", teacher=broken, reward=False)

    out = app.invoke({"messages": [HumanMessage(TASK)]})
    assert texts(out) == [("human", TASK), ("ai", "42")]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_LANE] == "paired"  # the fallback lane
    assert any(f.startswith("probe:") for f in root.attributes[s.ATLAS_FAILURES])
    assert root.status.is_ok


def test_the_graphs_own_error_propagates_and_is_recorded(memory):
    def boom(state: MessagesState) -> dict:
        raise ValueError("tool failed")

    builder = StateGraph(MessagesState)
    builder.add_node("boom", boom)
    builder.add_edge(START, "boom")
    app = supervise_graph(builder.compile(), agent="calc", lane="auto", reward=False)

    with pytest.raises(ValueError, match="tool failed"):
        app.invoke({"messages": [HumanMessage(TASK)]})
    spans = memory.get_finished_spans()
    [root] = by_name(spans, "invoke_agent calc")
    [node] = by_name(spans, "node boom")
    assert root.attributes[s.ERROR_TYPE] == "ValueError"
    assert node.attributes[s.ERROR_TYPE] == "ValueError" and not node.status.is_ok


class Question(TypedDict):
    question: str
    answer: str
    log: Annotated[list[str], operator.add]


def test_a_graph_without_messages_reads_guidance_from_the_context(memory):
    seen: list[str | None] = []

    def solve(state: Question) -> dict:
        seen.append(atlas.guidance())
        return {"answer": "42", "log": ["solved"]}

    builder = StateGraph(Question)
    builder.add_node("solve", solve)
    builder.add_edge(START, "solve")
    app = supervise_graph(
        builder.compile(),
        agent="calc",
        teacher=teacher(),
        reward=False,
        task="question",
        answer=lambda state: state["answer"],
    )

    out = app.invoke({"question": TASK, "log": []})
    assert out == {"question": TASK, "answer": "42", "log": ["solved"]}
    assert seen == [GUIDANCE]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent calc")
    assert root.attributes[s.ATLAS_TASK] == TASK
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"


def test_supervise_node_as_decorator_and_with_add_node(memory):
    llm = student("41", "42")
    received: list[list[str]] = []

    @supervise_node(agent="solver", teacher=teacher(probe="0.7"), reward=False, reference="42")
    def solve(state: MessagesState, config) -> dict:  # LangGraph still passes the config
        assert config["configurable"]["thread_id"] == "n-1"
        received.append([m.type for m in state["messages"]])
        return {"messages": [llm.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("solve", solve)
    builder.add_edge(START, "solve")
    graph = builder.compile(checkpointer=InMemorySaver())

    out = graph.invoke({"messages": [HumanMessage(TASK)]}, {"configurable": {"thread_id": "n-1"}})
    # The retry saw the guidance; the graph's state did not keep it.
    assert received == [["human"], ["system", "human"]]
    assert texts(out) == [("human", TASK), ("ai", "42")]
    spans = memory.get_finished_spans()
    [root] = by_name(spans, "invoke_agent solver")
    assert root.attributes[s.ATLAS_RETRIES] == 1 and root.attributes[s.ATLAS_TASK] == TASK
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"
    chats = by_name(spans, "chat FakeMessagesListChatModel")
    assert {c.parent.span_id for c in chats} == {root.context.span_id}
    assert GUIDANCE in chats[-1].attributes[s.GEN_AI_INPUT_MESSAGES]


def test_supervise_node_async(memory):
    @supervise_node(agent="solver", teacher=teacher(), reward=False)
    async def solve(state: MessagesState) -> dict:
        assert state["messages"][0] == SystemMessage(
            f"Guidance from your teacher:\n{GUIDANCE}", id=GUIDANCE_MESSAGE_ID
        )
        return {"messages": [AIMessage("42")]}

    builder = StateGraph(MessagesState)
    builder.add_node("solve", solve)
    builder.add_edge(START, "solve")
    out = asyncio.run(builder.compile().ainvoke({"messages": [HumanMessage(TASK)]}))
    assert texts(out) == [("human", TASK), ("ai", "42")]
    [root] = by_name(memory.get_finished_spans(), "invoke_agent solver")
    assert root.attributes[s.ATLAS_LANE] == "coach"


def test_wrapper_delegates_and_rejects_bad_input():
    graph = agent_graph(student("42"), checkpointer=InMemorySaver())
    app = supervise_graph(graph, agent="calc", reward=False)
    assert app.get_graph().nodes.keys() == graph.get_graph().nodes.keys()
    assert app.get_state({"configurable": {"thread_id": "x"}}).values == {}
    with pytest.raises(TypeError, match="unknown supervision option\\(s\\) lanee"):
        supervise_graph(graph, lanee="auto")
    with pytest.raises(TypeError, match="needs a compiled graph"):
        supervise_graph(StateGraph(MessagesState))


# --- the real model ----------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.timeout(900)  # a 2-core machine shared with other model tests
def test_a_langgraph_agent_on_the_real_model(model_server, tmp_path):
    import requests
    from langchain_openai import ChatOpenAI

    from atlas_middleware.models import build_model

    base = model_server + "/v1"
    served = requests.get(base + "/models", timeout=10).json()["data"][0]["id"]
    url = f"sqlite:///{tmp_path / 'atlas.db'}"
    telemetry.configure(exporter="atlas", store=url, batch=False, set_global=False)
    model = build_model(f"openai-compatible:{base}|{served}")
    llm = ChatOpenAI(base_url=base, api_key="none", model=served, max_tokens=16, temperature=0)
    app = supervise_graph(
        agent_graph(llm),
        agent="smol-graph",
        teacher=model,
        reward=RIMReward(model, judges=["accuracy"], samples=1, max_tokens=32),
        reward_inline=True,
        lane="coach",
        # The reward's accuracy is then a match against the reference: a model this small rarely
        # answers a judge in form, and the test is about the wiring, not the judge.
        reference="42",
        teacher_timeout_s=300,
    )
    app.supervisor.teacher.guidance_max_tokens = 32  # short guidance: the wiring is under test

    out = app.invoke({"messages": [HumanMessage("What is 12 + 30? Answer with a number.")]})
    answer = out["messages"][-1].content
    assert isinstance(answer, str) and answer.strip()
    telemetry.shutdown()

    [session], spans = read_store(url)
    assert (session.agent_name, session.lane) == ("smol-graph", "coach")
    assert session.guidance and session.final_answer == answer
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    tree = spans[session.trace_id]
    [root] = [x for x in tree if x.name == "invoke_agent smol-graph"]
    [node] = [x for x in tree if x.name == "node model"]
    [chat] = [x for x in tree if x.name == f"chat {served}" and x.parent_span_id == node.span_id]
    assert node.parent_span_id == root.span_id
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    received = plain_messages(chat.attributes[s.GEN_AI_INPUT_MESSAGES])
    assert received[0]["role"] == "system" and session.guidance in received[0]["content"]


@pytest.mark.model
@pytest.mark.timeout(900)
def test_the_example_runs_offline(embedded_cache, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 'example.db'}"
    script = Path(__file__).parents[2] / "examples" / "langgraph" / "main.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            *("--tasks", "1", "--max-tokens", "8", "--lane", "auto"),
            *("--store", url),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache), "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reference 128" in proc.stdout
    [session], spans = read_store(url)
    assert session.agent_name == "langgraph-example" and session.lane == "auto"
    assert session.reward_score is not None
    names = {x.name for x in spans[session.trace_id]}
    assert {"invoke_agent langgraph-example", "node solve", "node extract"} <= names
    assert "chat smollm2-135m-instruct" in names


def test_a_missing_extra_is_a_one_line_install_hint(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "langgraph", None)
    monkeypatch.delitem(sys.modules, "atlas_middleware.integrations.langgraph")
    with pytest.raises(ImportError, match=r"pip install 'atlas-middleware\[langgraph\]'"):
        importlib.import_module("atlas_middleware.integrations.langgraph")
