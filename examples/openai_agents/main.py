"""An OpenAI Agents SDK agent supervised by atlas, fully offline.

    python examples/openai_agents/main.py                        # starts `atlas serve-model`
    python examples/openai_agents/main.py --base-url http://127.0.0.1:8000/v1 --stream

The agent is a plain ``agents.Agent`` whose model is the SDK's ``OpenAIChatCompletionsModel``
pointed at an OpenAI-compatible endpoint: by default ``atlas serve-model`` serving the embedded
SmolLM2, started here and stopped at the end. ``supervise_agent`` makes each run one supervised
session: the teacher (the same served model) guides it through the agent's instructions for that
run, the answer is checked against the reference, RIM rewards it, and the SDK's own spans (agent,
model call) land in the store under the session (``./.atlas/atlas.db`` by default). Inspect them
with ``atlas sessions list`` and ``atlas sessions show <id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import httpx
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel
from atlas_middleware.integrations.openai_agents import instrument, supervise_agent
from openai import AsyncOpenAI

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.cli.serve_model import serving
from atlas_middleware.models import OpenAICompatibleModel
from atlas_middleware.rim import RIMReward

TASKS = [
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
]


async def stream(calc, task: str) -> str:
    run = calc.run_streamed(task)
    async for event in run.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            print(event.data.delta, end="", flush=True)
    print()
    return str(run.final_output)


def run(base_url: str, args: argparse.Namespace) -> None:
    name = httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
    agent = Agent(
        name="openai-agents-example",
        instructions="Solve the problem. Answer with the final number only.",
        model=OpenAIChatCompletionsModel(
            model=name, openai_client=AsyncOpenAI(base_url=base_url, api_key="none")
        ),
        model_settings=ModelSettings(max_tokens=args.max_tokens, temperature=0, include_usage=True),
    )
    served = OpenAICompatibleModel(base_url, name)
    calc = supervise_agent(
        agent,
        teacher=served,  # the same served model teaches; any model spec works
        reward=RIMReward(served, judges=["accuracy"], samples=1, max_tokens=64),
        reward_inline=True,  # judge before returning, so the reward is stored at once
        lane=args.lane,
        teacher_timeout_s=120,
    )
    for task, reference in TASKS[: args.tasks]:
        print(task)
        supervised = calc.options(reference=reference)
        if args.stream:
            answer = asyncio.run(stream(supervised, task))
        else:
            answer = str(supervised.run_sync(task).final_output)
        print(f"  answer {answer.strip() or '-'} (reference {reference})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--port", type=int, default=8765, help="port for atlas serve-model")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=16, help="student answer length")
    parser.add_argument("--lane", default="coach", help="auto, paired, coach, or '' to probe")
    parser.add_argument("--stream", action="store_true", help="use Runner.run_streamed")
    parser.add_argument("--store", help="store URL (default ./.atlas/atlas.db)")
    args = parser.parse_args(argv)
    args.lane = args.lane or None

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="agents-example")
    # atlas's trace processor only: without OPENAI_API_KEY the SDK's own exporter to the OpenAI
    # platform would only warn on every run.
    instrument(exclusive=not os.environ.get("OPENAI_API_KEY"))
    if args.base_url:
        run(args.base_url.rstrip("/"), args)
    else:
        with serving(args.port) as base_url:
            run(base_url, args)
    atlas.shutdown()
    print("sessions stored; see them with: atlas sessions list")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as exc:  # e.g. atlas serve-model could not start: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
