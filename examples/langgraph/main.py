"""A small LangGraph agent supervised by atlas, fully offline.

    python examples/langgraph/main.py                  # the embedded SmolLM2 as student and teacher
    python examples/langgraph/main.py --model openai/gpt-4o-mini --teacher openai/gpt-4o

The graph (solve → extract) answers arithmetic word problems. ``supervise_graph`` makes every
``invoke`` one supervised session: the teacher probes the task, picks a lane, its guidance
enters the graph's messages as a system message, the answer is checked against the reference,
RIM rewards it, and the session lands in the store (``./.atlas/atlas.db`` by default) with one
span per node. Inspect them with ``atlas sessions list`` and ``atlas sessions show <id>``.
"""

from __future__ import annotations

import argparse
import re

from atlas_middleware.integrations.langchain import AtlasChatModel
from atlas_middleware.integrations.langgraph import supervise_graph
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import build_model
from atlas_middleware.rim import RIMReward

TASKS = [
    ("A shop has 38 apples and gets 90 more. How many apples does it have now?", "128"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
]


class State(MessagesState):
    answer: str


def build_graph(llm: AtlasChatModel):
    def solve(state: State) -> dict:
        prompt = SystemMessage("Solve the problem. End with the final number.")
        return {"messages": [llm.invoke([prompt, *state["messages"]])]}

    def extract(state: State) -> dict:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", str(state["messages"][-1].content))
        return {"answer": numbers[-1] if numbers else ""}

    builder = StateGraph(State)
    builder.add_node("solve", solve)
    builder.add_node("extract", extract)
    builder.add_edge(START, "solve")
    builder.add_edge("solve", "extract")
    builder.add_edge("extract", END)
    return builder.compile()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="the student (a model spec)")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the student's)")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=48, help="student answer length")
    parser.add_argument("--store", default=None, help="store URL (default ./.atlas/atlas.db)")
    parser.add_argument(
        "--lane", choices=["auto", "paired", "coach"], default=None, help="force a lane"
    )
    args = parser.parse_args(argv)

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="langgraph-example")
    student = build_model(args.model)
    teacher = build_model(args.teacher) if args.teacher else student  # one model loaded, not two
    if hasattr(student, "load"):
        student.load()  # load the weights now, not inside the teacher's first (timed) call
    app = supervise_graph(
        build_graph(AtlasChatModel(model=student, max_tokens=args.max_tokens)),
        agent="langgraph-example",
        teacher=teacher,
        reward=RIMReward(teacher, judges=["accuracy"], samples=1, max_tokens=64),
        reward_inline=True,  # judge before returning, so the table shows the reward
        answer=lambda state: state.get("answer", ""),
        lane=args.lane,
    )
    for task, reference in TASKS[: args.tasks]:
        state = app.options(reference=reference).invoke({"messages": [HumanMessage(task)]})
        print(f"{task}\n  answer {state['answer'] or '-'} (reference {reference})")
    atlas.shutdown()
    print("sessions stored; see them with: atlas sessions list")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
