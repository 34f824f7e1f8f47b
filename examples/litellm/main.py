"""Direct litellm calls in supervised sessions, traced by atlas, fully offline.

    python examples/litellm/main.py                          # starts `atlas serve-model`
    python examples/litellm/main.py --base-url http://127.0.0.1:8000/v1
    python examples/litellm/main.py --model openai/gpt-4o-mini --teacher openai/gpt-4o   # hosted

The agent is a plain function calling ``litellm.completion``. ``atlas_litellm.instrument()`` makes
each call a ``chat {model}`` span with its usage and messages; inside ``@atlas.supervise`` the call
hangs under the session's root, ``atlas.with_guidance`` merges the teacher's guidance into its
messages, the answer is checked against the reference and RIM rewards it. By default everything
goes through litellm's ``openai/`` provider to ``atlas serve-model`` (the embedded SmolLM2, started
here and stopped at the end), which is student, teacher and judge. Sessions land in
``./.atlas/atlas.db`` by default: ``atlas sessions list``, ``atlas sessions show <id>``.
"""

from __future__ import annotations

import argparse

import httpx
import litellm
from atlas_middleware.integrations import litellm as atlas_litellm

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.cli.serve_model import serving
from atlas_middleware.models import LiteLLMModel
from atlas_middleware.rim import RIMReward

TASKS = [
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
]


def run(model: str, teacher_model: str, base_url: str | None, args: argparse.Namespace) -> None:
    endpoint = {"api_base": base_url, "api_key": "none"} if base_url else {}
    teacher = LiteLLMModel(teacher_model, **endpoint)  # atlas's own litellm calls: no double span

    @atlas.supervise(
        agent="litellm-example",
        teacher=teacher,
        reward=RIMReward(teacher, judges=["accuracy"], samples=1, max_tokens=64),
        reward_inline=True,  # judge before returning, so the reward is stored at once
        lane=args.lane,
        teacher_timeout_s=120,
        # teacher.max_tokens caps guidance and validation (the CPU tests keep them short)
        config=atlas.AtlasConfig(teacher={"max_tokens": args.guidance_tokens})
        if args.guidance_tokens
        else None,
    )
    def solve(task: str) -> str:
        messages = atlas.with_guidance(  # the teacher's guidance, in the system message
            [
                {"role": "system", "content": "Solve the problem. Answer with the final number."},
                {"role": "user", "content": task},
            ]
        )
        response = litellm.completion(
            model=model, messages=messages, max_tokens=args.max_tokens, temperature=0, **endpoint
        )
        return response.choices[0].message.content or ""

    for task, reference in TASKS[: args.tasks]:
        answer = solve.options(reference=reference)(task)
        print(f"{task}\n  answer {answer.strip() or '-'} (reference {reference})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running OpenAI-compatible endpoint (…/v1)")
    parser.add_argument("--model", help="a litellm model (default: the served model, openai/…)")
    parser.add_argument(
        "--teacher", help="a litellm model for teacher and judge (default: --model)"
    )
    parser.add_argument("--port", type=int, default=8767, help="port for atlas serve-model")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=16, help="student answer length")
    parser.add_argument("--lane", default="coach", help="auto, paired, coach, or '' to probe")
    parser.add_argument("--guidance-tokens", type=int, help="cap on the teacher's guidance")
    parser.add_argument("--store", help="store URL (default ./.atlas/atlas.db)")
    args = parser.parse_args(argv)
    args.lane = args.lane or None

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="litellm-example")
    atlas_litellm.instrument()
    if args.model and not args.base_url:  # a hosted provider: its key comes from the environment
        run(args.model, args.teacher or args.model, None, args)
    elif args.base_url:
        base_url = args.base_url.rstrip("/")
        name = httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
        model = args.model or f"openai/{name}"
        run(model, args.teacher or model, base_url, args)
    else:
        with serving(args.port) as base_url:
            name = httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
            run(f"openai/{name}", f"openai/{name}", base_url, args)
    atlas_litellm.flush()  # litellm reports calls from a background thread
    atlas.shutdown()
    print("sessions stored; see them with: atlas sessions list")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as exc:  # e.g. atlas serve-model could not start: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
