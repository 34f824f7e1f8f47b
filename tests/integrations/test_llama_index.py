"""LlamaIndex: real Workflows with @steps, a LlamaIndex CustomLLM (the framework's documented way to
fake a model) and a scripted teacher: supervised runs and steps, dispatcher spans, guidance in the
LLM input, failing open; one run against the real SmolLM2 through OpenAILike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from atlas_middleware.integrations import llama_index as li
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from pydantic import Field

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import plain_messages, scripted_teacher

GUIDANCE = "Add the tens first, then the ones."


@pytest.fixture(autouse=True)
def _no_handlers_left() -> Iterator[None]:
    yield
    li.uninstrument()


class ScriptedLLM(CustomLLM):
    """Answers with ``respond(messages)`` and records every message list it was given."""

    respond: Callable[[Sequence[ChatMessage]], str] = Field(exclude=True)
    calls: list[list[ChatMessage]] = Field(default_factory=list, exclude=True)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted-llm", is_chat_model=True)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self.calls.append(list(messages))
        text = self.respond(messages)
        return ChatResponse(
            message=ChatMessage(role="assistant", content=text),
            additional_kwargs={"prompt_tokens": 11, "completion_tokens": 2},
        )

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.respond([ChatMessage(role="user", content=prompt)]))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        yield self.complete(prompt)


def guided(messages: Sequence[ChatMessage]) -> bool:
    return any(m.role == "system" and GUIDANCE in (m.content or "") for m in messages)


def student(messages: Sequence[ChatMessage]) -> str:
    """Wrong alone, right with the teacher's guidance."""
    return "42" if guided(messages) else "41"


class Progress(Event):
    note: str


class Draft(Event):
    text: str


class Solve(Workflow):
    def __init__(self, llm: Any, timeout: float | None = 30, **kwargs: Any) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.llm = llm

    @step
    async def think(self, ctx: Context, ev: StartEvent) -> Draft:
        ctx.write_event_to_stream(Progress(note="thinking"))
        reply = await self.llm.achat([ChatMessage(role="user", content=ev.question)])
        return Draft(text=reply.message.content)

    @step
    async def finish(self, ev: Draft) -> StopEvent:
        return StopEvent(result=ev.text.strip())


def teacher(probe: str = "0.7", validate: str = "VALID", guidance: str = GUIDANCE) -> ScriptedModel:
    return scripted_teacher(probe=probe, validate=validate, guidance=guidance)


def judge(score: float = 0.9) -> RIMReward:
    reply = json.dumps(
        {
            "principles": [{"name": "correct", "weight": 1.0}],
            "score": score,
            "rationale": "checked",
            "uncertainty": 0.05,
        }
    )
    return RIMReward(ScriptedModel(replies=[reply], name="judge"), judges=["accuracy"], samples=1)


def by_name(spans: Sequence[Any], prefix: str) -> list[Any]:
    return [x for x in spans if x.name.startswith(prefix)]


def parent_of(record: Any) -> str | None:
    return getattr(record, "parent_span_id", None)


def test_supervised_run_retries_with_guidance_in_the_llm_input_and_lands_in_the_store(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False)
    llm = ScriptedLLM(respond=student)
    flow = li.supervise_workflow(
        Solve(llm),
        agent="solver",
        teacher=teacher(probe="0.7"),
        reward=judge(),
        reward_inline=True,
        reference="42",
    )

    async def main():
        handler = flow.run(question="What is 12 + 30?")
        return await handler, handler.trace_id

    result, trace_id = asyncio.run(main())
    assert result == "42"
    # The first attempt ran alone; the retry's LLM call carried the guidance as a system message.
    assert [guided(call) for call in llm.calls] == [False, True]
    assert llm.calls[1][-1].content == "What is 12 + 30?"
    telemetry.shutdown()

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.trace_id == trace_id
    assert session.agent_name == "solver"
    assert session.lane == "paired"
    assert session.task == "What is 12 + 30?"
    assert session.final_answer == "42"
    assert session.guidance == GUIDANCE
    assert session.reward_score == pytest.approx(1.0)  # the reference decides accuracy
    [root] = [x for x in spans if x.name == "invoke_agent solver"]
    runs = by_name(spans, "invoke_workflow Solve")
    assert len(runs) == 2 and all(parent_of(r) == root.span_id for r in runs)
    steps = by_name(spans, "step ")
    assert sorted(x.name for x in steps) == [
        "step finish",
        "step finish",
        "step think",
        "step think",
    ]
    assert all(parent_of(x) in {r.span_id for r in runs} for x in steps)
    chats = by_name(spans, "chat scripted-llm")
    assert len(chats) == 2  # achat → chat on one LLM is one span
    thinks = {x.span_id for x in steps if x.name == "step think"}
    assert all(parent_of(c) in thinks for c in chats)
    inputs = [plain_messages(c.attributes[s.GEN_AI_INPUT_MESSAGES]) for c in chats]
    assert sum(any(GUIDANCE in m["content"] for m in msgs) for msgs in inputs) == 1
    assert all(c.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] == 11 for c in chats)
    assert by_name(spans, "evaluate atlas.rim")


def test_streaming_sees_every_attempt_and_one_final_stop_event(memory):
    llm = ScriptedLLM(respond=student)
    flow = li.supervise_workflow(
        Solve(llm), agent="solver", teacher=teacher(), reward=False, reference="42"
    )

    async def main():
        handler = flow.run(question="What is 12 + 30?")
        seen = [event async for event in handler.stream_events()]
        return seen, await handler

    seen, result = asyncio.run(main())
    assert result == "42"
    assert [type(e).__name__ for e in seen] == ["Progress", "Progress", "StopEvent"]
    assert seen[-1].result == "42"


def test_per_run_options_and_a_start_event(memory):
    llm = ScriptedLLM(respond=student)
    flow = li.supervise_workflow(
        Solve(llm), agent="solver", teacher=teacher(probe="0.1"), reward=False
    )

    async def coached():
        return await flow.options(lane="coach").run(
            start_event=StartEvent(question="What is 12 + 30?")
        )

    assert asyncio.run(coached()) == "42"
    [root] = by_name(memory.get_finished_spans(), "invoke_agent solver")
    assert root.attributes[s.ATLAS_LANE] == "coach"
    assert root.attributes[s.ATLAS_TASK] == "What is 12 + 30?"


class Ask(Event):
    question: str
    expected: str


def two_steps() -> type[Workflow]:
    """A supervised step between an unsupervised one and the end (decorated here, per test:
    decorating instruments LlamaIndex, and each test ends uninstrumented)."""

    class TwoSteps(Workflow):
        def __init__(self, llm: ScriptedLLM) -> None:
            super().__init__(timeout=30)
            self.llm = llm

        @step
        async def prepare(self, ev: StartEvent) -> Ask:
            await self.llm.achat([ChatMessage(role="user", content="warm up")])
            return Ask(question=ev.question, expected=ev.expected)

        @step
        @li.supervise_step(
            agent="answer-step",
            teacher=teacher(probe="0.1"),
            reward=False,
            reference=lambda ev: ev.expected,
        )
        async def answer(self, ev: Ask) -> StopEvent:
            reply = await self.llm.achat(
                [
                    ChatMessage(role="system", content="You are terse."),
                    ChatMessage(role="user", content=ev.question),
                ]
            )
            return StopEvent(result=reply.message.content)

    return TwoSteps


def test_a_supervised_step_is_its_own_session_with_guidance_only_in_its_llm_calls(memory):
    llm = ScriptedLLM(respond=student)

    async def main():
        return await two_steps()(llm).run(question="What is 12 + 30?", expected="42")

    assert asyncio.run(main()) == "42"
    warm, answer = llm.calls
    assert not guided(warm)
    # Coach lane: guidance merged into the step's own system message, not a second one.
    assert [m.role for m in answer] == ["system", "user"]
    assert answer[0].content.startswith("You are terse.") and GUIDANCE in answer[0].content
    spans = memory.get_finished_spans()
    [root] = by_name(spans, "invoke_agent answer-step")
    assert root.attributes[s.ATLAS_LANE] == "coach"
    assert root.attributes[s.ATLAS_TASK] == "What is 12 + 30?"
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42"
    # The step's LLM call belongs to the step's session; the other step's to the workflow's trace.
    chats = by_name(spans, "chat scripted-llm")
    [run] = by_name(spans, "invoke_workflow TwoSteps")
    assert {c.context.trace_id for c in chats} == {root.context.trace_id, run.context.trace_id}
    [session_chat] = [c for c in chats if c.context.trace_id == root.context.trace_id]
    assert session_chat.parent.span_id == root.context.span_id
    # The session's trace is linked to the workflow's: its root links to the step's span.
    [step_span] = by_name(spans, "step answer")
    assert step_span.context.trace_id == run.context.trace_id
    assert [(x.context.trace_id, x.context.span_id) for x in root.links] == [
        (step_span.context.trace_id, step_span.context.span_id)
    ]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


class WithTool(Workflow):
    def __init__(self, llm: ScriptedLLM) -> None:
        super().__init__(timeout=30)
        self.llm = llm
        self.tool = FunctionTool.from_defaults(add)

    @step
    async def run_it(self, ev: StartEvent) -> StopEvent:
        total = await self.tool.acall(a=12, b=30)
        reply = self.llm.chat([ChatMessage(role="user", content=f"say {total.content}")])
        return StopEvent(result=reply.message.content)


def test_instrument_alone_traces_a_plain_workflow_as_its_own_session(store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False)
    li.instrument()
    li.instrument()  # idempotent
    llm = ScriptedLLM(respond=lambda messages: "42")

    async def main():
        return await WithTool(llm).run(question="What is 12 + 30?")

    assert asyncio.run(main()) == "42"
    telemetry.shutdown()
    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    # An unsupervised workflow run is a GenAI workflow session of its own.
    assert session.agent_name == "WithTool"
    assert session.task == "What is 12 + 30?"
    [run] = by_name(spans, "invoke_workflow WithTool")
    assert parent_of(run) is None
    [step_span] = by_name(spans, "step run_it")
    assert parent_of(step_span) == run.span_id
    [tool] = by_name(spans, "execute_tool add")
    assert parent_of(tool) == step_span.span_id
    assert json.loads(tool.attributes[s.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"a": 12, "b": 30}
    assert tool.attributes[s.GEN_AI_TOOL_CALL_RESULT] == "42"
    [chat] = by_name(spans, "chat scripted-llm")
    assert parent_of(chat) == step_span.span_id
    assert chat.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert plain_messages(chat.attributes[s.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "content": "42"}
    ]


def test_instrument_changes_no_call_and_guidance_wrappers_take_every_call_shape():
    """Finding 1: ``instrument()`` broke ``llm.chat(messages=[...])`` for everyone. Tracing
    patches nothing; the wrappers supervision installs pass calls through untouched."""
    li.instrument()
    llm = ScriptedLLM(respond=lambda messages: "ok")
    assert not getattr(ScriptedLLM.__dict__["chat"], "_atlas_guided", False)
    messages = [ChatMessage(role="user", content="hi")]
    llm.chat(messages=messages)  # keyword call: a TypeError before
    li.supervise_workflow(Solve(llm=llm, timeout=10), agent="x", teacher=ScriptedModel(["0.9"]))
    assert getattr(ScriptedLLM.__dict__["chat"], "_atlas_guided", False)
    llm.chat(messages=messages)
    llm.chat(messages)
    with atlas.use_guidance(GUIDANCE):
        llm.chat(messages=messages)
        llm.chat(messages)
        assert llm.complete(prompt="hi").text == "ok"
    assert [guided(call) for call in llm.calls] == [False, False, False, True, True]
    assert len(messages) == 1  # the caller's list is never changed
    li.uninstrument()
    assert not getattr(ScriptedLLM.__dict__["chat"], "_atlas_guided", False)
    with atlas.use_guidance(GUIDANCE):
        llm.chat(messages)
    assert not guided(llm.calls[-1])


class Boom(Exception):
    pass


class Failing(Workflow):
    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        raise Boom("agent failed")


def test_teacher_failures_fail_open_and_the_workflows_error_propagates(memory):
    llm = ScriptedLLM(respond=student)
    broken = ScriptedModel(replies=[ModelError("teacher down")], name="teacher")
    flow = li.supervise_workflow(Solve(llm), agent="solver", teacher=broken, reward=False)

    async def main():
        return await flow.run(question="What is 12 + 30?")

    assert asyncio.run(main()) == "41"  # the student's own answer, unguided
    [root] = by_name(memory.get_finished_spans(), "invoke_agent solver")
    assert root.attributes[s.ATLAS_LANE] == "paired"  # the fallback lane
    assert any(f.startswith("probe:") for f in root.attributes[s.ATLAS_FAILURES])

    failing = li.supervise_workflow(Failing(timeout=10), agent="failing", lane="auto", reward=False)

    async def fail():
        handler = failing.run(question="x")
        with pytest.raises(Boom, match="agent failed"):
            async for _ in handler.stream_events():
                pass
        with pytest.raises(Boom):
            await handler

    asyncio.run(fail())
    [root] = by_name(memory.get_finished_spans(), "invoke_agent failing")
    assert root.attributes[s.ERROR_TYPE].endswith("Boom")
    [step_span] = by_name(memory.get_finished_spans(), "step explode")
    assert step_span.attributes[s.ERROR_TYPE].endswith("Boom")


class AskHuman(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(InputRequiredEvent(prefix="Send it?"))
        reply = await ctx.wait_for_event(HumanResponseEvent)
        return StopEvent(result=f"{ev.question} {reply.response}")


def test_send_event_answers_a_human_in_the_loop_step_of_the_attempt_in_progress(memory):
    async def converse(handler, send) -> list[str]:
        seen = []
        async for event in handler.stream_events():
            seen.append(type(event).__name__)
            if isinstance(event, InputRequiredEvent):
                await send(HumanResponseEvent(response="yes"))
        return seen

    async def main():
        bare = AskHuman(timeout=10).run(question="42?")

        async def to_bare(event):
            bare.ctx.send_event(event)

        plain = await converse(bare, to_bare)
        flow = li.supervise_workflow(
            AskHuman(timeout=10),
            agent="asker",
            teacher=teacher(probe="0.7", validate="VALID"),
            reward=False,
            reference="42? yes",
        )
        handler = flow.run(question="42?")
        supervised = await converse(handler, handler.send_event)
        return plain, supervised, await bare, await handler

    plain, supervised, bare_result, result = asyncio.run(main())
    assert result == bare_result == "42? yes"
    # The supervised stream is the workflow's own (LlamaIndex replays the waiting step once the
    # reply arrives, so the request shows twice in both).
    assert supervised == plain and plain[-1] == "StopEvent" and "InputRequiredEvent" in plain
    [root] = by_name(memory.get_finished_spans(), "invoke_agent asker")
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "42? yes"
    assert root.attributes[s.ATLAS_RETRIES] == 0


class Slow(Workflow):
    @step
    async def wait(self, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(60)
        return StopEvent(result="late")


def test_cancel_run_stops_the_attempt_and_its_session(memory):
    from workflows.errors import WorkflowCancelledByUser

    flow = li.supervise_workflow(
        Slow(timeout=120), agent="slow", lane="auto", reward=judge(), reward_inline=True
    )

    async def main():
        handler = flow.run(question="What is 12 + 30?")
        while handler.run_id is None:  # the attempt has started
            await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        await handler.cancel_run()
        took = asyncio.get_running_loop().time() - started
        done = handler.is_done()
        with pytest.raises(WorkflowCancelledByUser):
            await handler
        return took, done

    took, done = asyncio.run(main())
    assert done and took < 10  # not the step's 60 s
    spans = memory.get_finished_spans()
    [root] = by_name(spans, "invoke_agent slow")
    assert root.attributes[s.ERROR_TYPE].endswith("WorkflowCancelledByUser")
    assert s.ATLAS_FINAL_ANSWER not in root.attributes
    assert not by_name(spans, "evaluate ")  # nothing to reward


def test_bad_arguments_say_what_to_do():
    with pytest.raises(TypeError, match="Workflow instance"):
        li.supervise_workflow(object())
    flow = li.supervise_workflow(Solve(ScriptedLLM(respond=student)), lane="auto", reward=False)
    with pytest.raises(RuntimeError, match="running event loop"):
        flow.run(question="x")


# --- the real model -----------------------------------------------------------------------------
@pytest.mark.model
def test_a_workflow_on_the_real_smollm2_through_openai_like(model_server, store_url):
    """Once per store (SQLite and Postgres): without Postgres the SQLite run still proves it."""
    from llama_index.llms.openai_like import OpenAILike

    from atlas_middleware.models import OpenAICompatibleModel
    from tests.integrations.recording_proxy import RecordingProxy, system_texts

    served = _served_model(model_server)
    telemetry.configure(exporter="atlas", store=store_url, batch=False)
    # A recording proxy in front of the model server: what the model really received.
    with RecordingProxy(model_server) as proxy:
        llm = OpenAILike(
            api_base=proxy.url,
            api_key="none",
            model=served,
            is_chat_model=True,
            max_tokens=16,
            timeout=300,
        )
        judge_model = OpenAICompatibleModel(model_server + "/v1", served)
        flow = li.supervise_workflow(
            Solve(llm, timeout=None),  # a loaded CPU may be slow; the test has its own
            agent="smol-solver",
            teacher=teacher(probe="0.1"),  # coach lane: guidance on the first attempt
            reward=RIMReward(judge_model, judges=["accuracy"], samples=1, max_tokens=48),
            reward_inline=True,
            reference="42",
            max_retries=0,
        )

        async def main() -> tuple[str, str | None]:
            handler = flow.run(question="What is 12 + 30? Answer with a number.")
            return await handler, handler.trace_id

        answer, trace_id = asyncio.run(main())
    assert isinstance(answer, str) and answer
    telemetry.shutdown()

    [body] = proxy.bodies
    system = system_texts(body)
    assert system and GUIDANCE in system[0]
    with open_store(store_url) as store:
        session = store.get_session(trace_id)
        spans = store.spans_for([trace_id])[trace_id]
    assert session is not None and session.lane == "coach"
    assert session.final_answer == answer
    assert session.reward_score is not None and 0.0 <= session.reward_score <= 1.0
    [chat] = by_name(spans, f"chat {served}")
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert GUIDANCE in chat.attributes[s.GEN_AI_INPUT_MESSAGES]
    assert by_name(spans, "step think") and by_name(spans, "evaluate atlas.rim")


def _served_model(base_url: str) -> str:
    import httpx

    return httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]


def test_an_atlas_model_as_the_llm_records_one_chat_span_under_its_step(memory):
    model = ScriptedModel(respond=lambda messages: "42", name="atlas-model")
    flow = li.supervise_workflow(
        Solve(li.AtlasLLM(model=model, max_tokens=8)),
        agent="solver",
        teacher=teacher(probe="0.1"),
        reward=False,
    )

    async def main():
        return await flow.run(question="What is 12 + 30?")

    assert asyncio.run(main()) == "42"
    [call] = model.calls
    assert call[0]["role"] == "system" and GUIDANCE in call[0]["content"]
    spans = memory.get_finished_spans()
    [chat] = by_name(spans, "chat atlas-model")  # the atlas model's own span, no duplicate
    [think] = by_name(spans, "step think")
    assert chat.parent.span_id == think.context.span_id
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0


def test_an_agents_answer_is_the_text_of_its_final_message():
    """Finding 2: a FunctionAgent's AgentOutput was stored as the whole event in JSON (raw stream
    chunk, tool output and all), so a reference matched text the user never saw."""
    from llama_index.core.agent.workflow import AgentOutput
    from llama_index.core.tools import ToolSelection

    output = AgentOutput(
        response=ChatMessage(role="assistant", content="The sum is 43."),
        current_agent_name="calc",
        raw={"choices": [{"delta": {"content": "The sum is 43."}}], "note": "42"},
        tool_calls=[ToolSelection(tool_id="1", tool_name="add", tool_kwargs={"a": 40, "b": 2})],
    )
    assert li._answer(output) == "The sum is 43." == str(output)
    assert li._answer(StopEvent(result=output)) == "The sum is 43."
