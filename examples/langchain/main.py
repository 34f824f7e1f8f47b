"""A LangChain chain supervised by atlas, fully offline.

    python examples/langchain/main.py                         # starts `atlas serve-model`
    python examples/langchain/main.py --base-url http://127.0.0.1:8000/v1

The chain is plain LangChain: a prompt, ``with_guidance`` (the teacher's guidance, merged into the
system message during a supervised call), ``ChatOpenAI`` from langchain-openai pointed at an
OpenAI-compatible endpoint (by default ``atlas serve-model`` serving the embedded SmolLM2, started
here and stopped at the end), a string parser and a step that keeps the final number.
``atlas.supervise`` makes each call one session: the teacher (the same served model) guides it, the
answer is checked against the reference, RIM rewards it, and ``AtlasCallbackHandler`` turns the
chain's runs into spans under the session (chain steps, the model call with its usage), stored in
``./.atlas/atlas.db`` by default. Inspect them with ``atlas sessions list`` and
``atlas sessions show <id>``.
"""

from __future__ import annotations

import argparse
import re

import httpx
from atlas_middleware.integrations.langchain import AtlasCallbackHandler, with_guidance
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.cli.serve_model import serving
from atlas_middleware.models import OpenAICompatibleModel
from atlas_middleware.rim import RIMReward

TASKS = [
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
]


def final_number(text: str) -> str:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return numbers[-1] if numbers else text.strip()


def build_chain(llm: ChatOpenAI):
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Solve the problem. Answer with the final number only."), ("user", "{task}")]
    )
    return (
        prompt
        | with_guidance  # the teacher's guidance, in a supervised call; a no-op outside one
        | llm
        | StrOutputParser()
        | RunnableLambda(final_number, name="final_number")
    )


def run(base_url: str, args: argparse.Namespace) -> None:
    name = httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
    llm = ChatOpenAI(
        base_url=base_url, api_key="none", model=name, max_tokens=args.max_tokens, temperature=0
    )
    chain = build_chain(llm)
    handler = AtlasCallbackHandler()  # or atlas_langchain.instrument() for every run
    served = OpenAICompatibleModel(base_url, name)

    @atlas.supervise(
        agent="langchain-example",
        teacher=served,  # the same served model teaches; any model spec works
        reward=RIMReward(served, judges=["accuracy"], samples=1, max_tokens=64),
        reward_inline=True,  # judge before returning, so the reward is stored at once
        lane=args.lane,
        teacher_timeout_s=120,
        # teacher.max_tokens caps guidance and validation (the CPU tests keep them short)
        config=atlas.AtlasConfig(teacher={"max_tokens": args.guidance_tokens})
        if args.guidance_tokens
        else None,
    )
    def solve(task: str) -> str:
        return chain.invoke({"task": task}, {"callbacks": [handler]})

    for task, reference in TASKS[: args.tasks]:
        answer = solve.options(reference=reference)(task)
        print(f"{task}\n  answer {answer or '-'} (reference {reference})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--port", type=int, default=8766, help="port for atlas serve-model")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=16, help="student answer length")
    parser.add_argument("--lane", default="coach", help="auto, paired, coach, or '' to probe")
    parser.add_argument("--guidance-tokens", type=int, help="cap on the teacher's guidance")
    parser.add_argument("--store", help="store URL (default ./.atlas/atlas.db)")
    args = parser.parse_args(argv)
    args.lane = args.lane or None

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="langchain-example")
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
