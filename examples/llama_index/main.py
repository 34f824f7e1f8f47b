"""A LlamaIndex workflow supervised by atlas, fully offline.

    python examples/llama_index/main.py                  # the embedded SmolLM2 as student and teacher
    python examples/llama_index/main.py --model openai/gpt-4o-mini --teacher openai/gpt-4o

The workflow (solve → extract) answers arithmetic word problems. ``supervise_workflow`` makes
every ``run`` one supervised session: the teacher probes the task and picks a lane, its guidance
is merged into the system message of every LLM call of the run, the answer is checked against
the reference (one guided re-run when wrong), RIM rewards it, and the session lands in the store
(``./.atlas/atlas.db`` by default) with spans for the workflow, each step and each LLM call.
Inspect them with ``atlas sessions list`` and ``atlas sessions show <id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import re

from atlas_middleware.integrations.llama_index import AtlasLLM, supervise_workflow
from llama_index.core.llms import ChatMessage
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import build_model
from atlas_middleware.rim import RIMReward

TASKS = [
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
    ("A shop has 38 apples and gets 90 more. How many apples does it have now?", "128"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
]


class Progress(Event):
    note: str


class Draft(Event):
    text: str


class Solve(Workflow):
    def __init__(self, llm: AtlasLLM, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.llm = llm

    @step
    async def solve(self, ctx: Context, ev: StartEvent) -> Draft:
        ctx.write_event_to_stream(Progress(note="solving"))
        reply = await self.llm.achat(
            [
                ChatMessage(role="system", content="Solve the problem. End with the final number."),
                ChatMessage(role="user", content=ev.question),
            ]
        )
        return Draft(text=reply.message.content or "")

    @step
    async def extract(self, ev: Draft) -> StopEvent:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", ev.text.replace(",", ""))
        return StopEvent(result=numbers[-1] if numbers else ev.text.strip())


async def run_all(flow, tasks: list[tuple[str, str]]) -> None:
    for task, reference in tasks:
        handler = flow.options(reference=reference).run(question=task)
        async for event in handler.stream_events():  # events of every attempt, then the end
            if isinstance(event, Progress):
                print(f"  … {event.note}")
        answer = await handler
        print(f"{task}\n  answer {answer or '-'} (reference {reference}), trace {handler.trace_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="the student (a model spec)")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the student's)")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=48, help="student answer length")
    parser.add_argument("--store", default=None, help="store URL (default ./.atlas/atlas.db)")
    args = parser.parse_args(argv)

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="llama-index-example")
    student = build_model(args.model)
    teacher = build_model(args.teacher) if args.teacher else student  # one model loaded, not two
    flow = supervise_workflow(
        # Any LlamaIndex LLM works here (OpenAI, OpenAILike against vLLM, ...); AtlasLLM makes
        # an atlas model one, so the example needs no server and no key.
        Solve(AtlasLLM(model=student, max_tokens=args.max_tokens), timeout=None),
        agent="llama-index-example",
        teacher=teacher,
        reward=RIMReward(teacher, judges=["accuracy"], samples=1, max_tokens=64),
        reward_inline=True,  # judge before returning, so the reward is stored with the session
    )
    asyncio.run(run_all(flow, TASKS[: args.tasks]))
    atlas.shutdown()
    print("sessions stored; see them with: atlas sessions list")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
