"""The agents people write with each framework, as its own docs show them, each run once as a
supervised session. A shape returns what its user saw (the answer text), so the contract can
compare it with what the store recorded. Every shape talks to an OpenAI-compatible endpoint:
the scripted server (deterministic: the tool path is always taken) or ``atlas serve-model``
with the embedded SmolLM2 (whatever it decides)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import atlas_middleware as atlas

TASK = "What is 12 + 30? Use the add tool."
GUIDANCE = "GUIDANCE-7Q: call the add tool with a=12 and b=30, then state the sum."
MAX_TOKENS = 24  # the embedded model: short replies keep CI time low


@dataclass
class Endpoint:
    url: str  # OpenAI base URL, with /v1
    model: str
    scripted: bool


@dataclass
class Outcome:
    """What one run gave its user: the answer text they saw (None if the agent raised) and
    the session it ran as; a shape with several sessions (turns) lists each."""

    runs: list[tuple[str | None, atlas.SessionHandle | None, BaseException | None]] = field(
        default_factory=list
    )
    tool_called: bool = False


def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@contextlib.contextmanager
def _caught(outcome: Outcome) -> Iterator[list[Any]]:
    """Collects (answer, session) from the block; an exception the agent raised is recorded."""
    box: list[Any] = [None, None]
    try:
        yield box
    except Exception as exc:  # what the agent raised is part of what happened
        outcome.runs.append((None, box[1] or atlas.last_session(), exc))
    else:
        outcome.runs.append((box[0], box[1] or atlas.last_session(), None))


# --- LangGraph --------------------------------------------------------------------------------
def langgraph_react(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    from atlas_middleware.integrations.langgraph import supervise_graph
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    add = tool(add_numbers)
    llm = ChatOpenAI(
        base_url=endpoint.url, api_key="none", model=endpoint.model, max_tokens=MAX_TOKENS,
        temperature=0, max_retries=0,
    )  # fmt: skip
    agent = create_react_agent(llm, tools=[add], prompt="You are a careful calculator.")
    app = supervise_graph(agent, agent="react", **supervision)
    outcome = Outcome()
    with _caught(outcome) as box:
        state = app.invoke({"messages": [("user", TASK)]}, {"recursion_limit": 6})
        box[0] = state["messages"][-1].content
        outcome.tool_called = any(m.type == "tool" for m in state["messages"])
    return outcome


def langgraph_stategraph(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """Two nodes with a checkpointer: streamed first turn, then a second turn on the thread."""
    from atlas_middleware.integrations.langgraph import supervise_graph
    from langchain_openai import ChatOpenAI
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph

    llm = ChatOpenAI(
        base_url=endpoint.url, api_key="none", model=endpoint.model, max_tokens=MAX_TOKENS,
        temperature=0, max_retries=0,
    )  # fmt: skip

    def draft(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    def review(state: MessagesState) -> dict:
        last = state["messages"][-1]
        return {"messages": [("ai", str(last.content).strip() or "(no answer)")]}

    builder = StateGraph(MessagesState)
    builder.add_node("draft", draft)
    builder.add_node("review", review)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    app = supervise_graph(
        builder.compile(checkpointer=InMemorySaver()), agent="two-step", **supervision
    )
    config = {"configurable": {"thread_id": "contract"}}
    outcome = Outcome()
    with _caught(outcome) as box:
        seen = None
        for update in app.stream({"messages": [("user", TASK)]}, config, stream_mode="updates"):
            for node, values in update.items():
                if node == "review":
                    seen = values["messages"][-1][1]
        box[0] = seen
    with _caught(outcome) as box:
        state = app.invoke({"messages": [("user", "And 20 + 22?")]}, config)
        box[0] = state["messages"][-1].content
    return outcome


# --- LangChain --------------------------------------------------------------------------------
def langchain_bind_tools(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """LCEL with ``bind_tools``: the model asks for the tool, the tool's result goes back."""
    from atlas_middleware.integrations import langchain as atlas_langchain
    from langchain_core.messages import HumanMessage
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    atlas_langchain.instrument()
    add = tool(add_numbers)
    llm = ChatOpenAI(
        base_url=endpoint.url, api_key="none", model=endpoint.model, max_tokens=MAX_TOKENS,
        temperature=0, max_retries=0,
    ).bind_tools([add])  # fmt: skip
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a careful calculator."), ("placeholder", "{messages}")]
    )
    chain = prompt | atlas_langchain.with_guidance | llm
    outcome = Outcome()

    @atlas.supervise(agent="lcel", **supervision)
    def solve(task: str) -> str:
        messages: list[Any] = [HumanMessage(task)]
        reply = chain.invoke({"messages": messages})
        for _ in range(2):
            if not reply.tool_calls:
                break
            outcome.tool_called = True
            messages += [reply, *(add.invoke(call) for call in reply.tool_calls)]
            reply = chain.invoke({"messages": messages})
        return str(reply.content)

    with _caught(outcome) as box:
        box[0] = solve(TASK)
    return outcome


# --- litellm ----------------------------------------------------------------------------------
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add_numbers",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def litellm_tools_stream(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """``litellm.completion`` with tools and ``stream=True``, as litellm's docs show it."""
    import litellm
    from atlas_middleware.integrations import litellm as atlas_litellm

    atlas_litellm.instrument()
    outcome = Outcome()

    def ask(messages: list[dict[str, Any]]) -> Any:
        chunks = list(
            litellm.completion(
                model=f"openai/{endpoint.model}",
                api_base=endpoint.url,
                api_key="none",
                messages=messages,
                tools=[ADD_TOOL],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
        )
        return litellm.stream_chunk_builder(chunks, messages=messages).choices[0].message

    @atlas.supervise(agent="litellm-tools", **supervision)
    def solve(task: str) -> str:
        messages: list[dict[str, Any]] = atlas.with_guidance([{"role": "user", "content": task}])
        reply = ask(messages)
        for _ in range(2):
            if not reply.tool_calls:
                break
            outcome.tool_called = True
            messages.append(reply.model_dump())
            for call in reply.tool_calls:
                arguments = json.loads(call.function.arguments or "{}")
                result = add_numbers(int(arguments.get("a", 0)), int(arguments.get("b", 0)))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
            reply = ask(messages)
        return reply.content or ""

    with _caught(outcome) as box:
        box[0] = solve(TASK)
    atlas_litellm.flush()
    return outcome


# --- OpenAI Agents SDK ------------------------------------------------------------------------
def _agents(endpoint: Endpoint, *, handoff: bool = False) -> Any:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, function_tool
    from openai import AsyncOpenAI

    model = OpenAIChatCompletionsModel(
        model=endpoint.model,
        openai_client=AsyncOpenAI(base_url=endpoint.url, api_key="none", max_retries=0),
    )
    settings = ModelSettings(max_tokens=MAX_TOKENS, temperature=0)
    math = Agent(
        name="math",
        instructions="You are a careful calculator.",
        tools=[function_tool(add_numbers)],
        model=model,
        model_settings=settings,
    )
    if not handoff:
        return math
    return Agent(
        name="triage",
        instructions="Hand math questions to the math agent.",
        handoffs=[math],
        model=model,
        model_settings=settings,
    )


def _agents_run(
    endpoint: Endpoint,
    supervision: dict[str, Any],
    *,
    handoff: bool = False,
    streamed: bool = False,
) -> Outcome:
    from agents import Runner
    from atlas_middleware.integrations.openai_agents import instrument

    agent = _agents(endpoint, handoff=handoff)
    instrument(supervise=[agent], **supervision)  # call sites stay Runner's own
    outcome = Outcome()

    async def main() -> None:
        with _caught(outcome) as box:
            if streamed:
                result = Runner.run_streamed(agent, TASK, max_turns=4)
                async for _ in result.stream_events():
                    pass
                box[1] = result.session
            else:
                result = await Runner.run(agent, TASK, max_turns=4)
            box[0] = result.final_output
            outcome.tool_called = any(
                getattr(item, "type", "") == "tool_call_output_item" for item in result.new_items
            )

    asyncio.run(main())
    return outcome


def openai_agents_run(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    return _agents_run(endpoint, supervision)


def openai_agents_streamed(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    return _agents_run(endpoint, supervision, streamed=True)


def openai_agents_handoff(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    return _agents_run(endpoint, supervision, handoff=True)


def openai_agents_tracing_disabled(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """The SDK's own advice for custom providers: ``set_tracing_disabled(True)``."""
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    try:
        return _agents_run(endpoint, supervision)
    finally:
        set_tracing_disabled(False)


# --- LlamaIndex -------------------------------------------------------------------------------
def _handle(handler: Any) -> atlas.SessionHandle | None:
    """The session of a supervised workflow run, from its handler."""
    if handler.session_id is None:
        return None
    return atlas.SessionHandle(handler.session_id, handler.trace_id, "", "")


def _llama_llm(endpoint: Endpoint) -> Any:
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(
        model=endpoint.model,
        api_base=endpoint.url,
        api_key="none",
        max_tokens=MAX_TOKENS,
        temperature=0,
        is_chat_model=True,
        is_function_calling_model=True,
        max_retries=0,
        additional_kwargs={"stream_options": {"include_usage": True}},
    )


def llama_index_function_agent(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """``FunctionAgent`` with a tool, its events streamed, as LlamaIndex's docs show it."""
    from atlas_middleware.integrations.llama_index import supervise_workflow
    from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCallResult

    agent = FunctionAgent(
        tools=[add_numbers],
        llm=_llama_llm(endpoint),
        system_prompt="You are a careful calculator.",
    )
    flow = supervise_workflow(agent, agent="function-agent", **supervision)
    outcome = Outcome()

    async def main() -> None:
        handler = flow.run(user_msg=TASK, max_iterations=4)
        with _caught(outcome) as box:
            try:
                async for event in handler.stream_events():
                    if isinstance(event, ToolCallResult):
                        outcome.tool_called = True
                    elif isinstance(event, AgentStream):
                        pass  # the deltas a user would print
                result = await handler
                box[0] = str(result)  # what printing the agent's output shows
            finally:
                box[1] = _handle(handler)

    asyncio.run(main())
    return outcome


def llama_index_workflow(endpoint: Endpoint, supervision: dict[str, Any]) -> Outcome:
    """A custom two-step ``Workflow`` calling the LLM in its first step."""
    from atlas_middleware.integrations.llama_index import supervise_workflow
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step

    class Drafted(Event):
        text: str

    class Answer(Workflow):
        llm: Any = None

        @step
        async def draft(self, ev: StartEvent) -> Drafted:
            reply = await self.llm.achat([ChatMessage(role="user", content=ev.question)])
            return Drafted(text=reply.message.content or "")

        @step
        async def finish(self, ev: Drafted) -> StopEvent:
            return StopEvent(result=ev.text.strip())

    workflow = Answer(timeout=120)
    workflow.llm = _llama_llm(endpoint)
    flow = supervise_workflow(workflow, agent="two-step-workflow", **supervision)
    outcome = Outcome()

    async def main() -> None:
        handler = flow.run(question=TASK)
        with _caught(outcome) as box:
            try:
                box[0] = await handler
            finally:
                box[1] = _handle(handler)

    asyncio.run(main())
    return outcome


SHAPES: dict[str, tuple[str, Callable[[Endpoint, dict[str, Any]], Outcome]]] = {
    "langgraph-create_react_agent": ("langgraph", langgraph_react),
    "langgraph-stategraph-checkpointer": ("langgraph", langgraph_stategraph),
    "langchain-lcel-bind_tools": ("langchain", langchain_bind_tools),
    "litellm-completion-tools-stream": ("litellm", litellm_tools_stream),
    "openai_agents-run": ("openai_agents", openai_agents_run),
    "openai_agents-run_streamed": ("openai_agents", openai_agents_streamed),
    "openai_agents-handoff": ("openai_agents", openai_agents_handoff),
    "openai_agents-tracing_disabled": ("openai_agents", openai_agents_tracing_disabled),
    "llama_index-function_agent-streaming": ("llama_index", llama_index_function_agent),
    "llama_index-workflow-two_steps": ("llama_index", llama_index_workflow),
}
# Shapes whose tool path the scripted server always takes.
TOOL_SHAPES = {
    "langgraph-create_react_agent",
    "langchain-lcel-bind_tools",
    "litellm-completion-tools-stream",
    "openai_agents-run",
    "openai_agents-run_streamed",
    "openai_agents-handoff",
    "openai_agents-tracing_disabled",
    "llama_index-function_agent-streaming",
}
