"""Supervise an agent that lives behind an HTTP endpoint, fully offline.

    python examples/remote_agent/main.py                         # starts a local agent on :8765
    python examples/remote_agent/main.py --agent-url http://my-agent/solve

The agent (examples/remote_agent/http_agent.py, or yours) takes ``{"question", "hint"}`` and answers
``{"output": {"answer": ...}}``. ``supervise_remote`` makes each call one supervised session: the
teacher probes the task, its guidance goes in the request's ``hint`` field, the answer is checked
against the reference (one guided re-run when wrong), RIM rewards it, and the session lands in
the store with a client span per HTTP request. The same from a shell: ``atlas run`` (printed at
the end).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from atlas_middleware.integrations.remote import supervise_remote

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import build_model
from atlas_middleware.rim import RIMReward

sys.path.insert(0, str(Path(__file__).parent))
from http_agent import Server  # the example's own agent, beside this file

TEMPLATE = '{"question": "{task}", "hint": "{guidance}"}'
TASKS = [
    ("A bus carries 12 people and 30 more get on. How many people are on the bus?", "42"),
    ("Tom had 70 marbles and gave away 27. How many marbles does Tom have left?", "43"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent-url", help="your agent's endpoint (default: start the local one)")
    parser.add_argument("--port", type=int, default=8765, help="port of the local agent")
    parser.add_argument("--model", default="embedded", help="the local agent's model (a spec)")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the agent's model)")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="how many tasks to run")
    parser.add_argument("--max-tokens", type=int, default=48, help="the agent's answer length")
    parser.add_argument("--store", default=None, help="store URL (default ./.atlas/atlas.db)")
    args = parser.parse_args(argv)

    if args.store:
        telemetry.configure(exporter="atlas", store=args.store, service_name="remote-example")
    model = build_model(args.model)
    teacher = build_model(args.teacher) if args.teacher else model  # one model loaded, not two
    local = Server(model, args.port, args.max_tokens) if not args.agent_url else None
    with local if local is not None else contextlib.nullcontext(args.agent_url) as url:
        solve = supervise_remote(
            url,
            request_template=TEMPLATE,
            result_path="output.answer",
            agent="remote-example",
            timeout=300,
            teacher=teacher,
            reward=RIMReward(teacher, judges=["accuracy"], samples=1, max_tokens=64),
            reward_inline=True,  # judge before returning, so the reward is stored with the session
        )
        for task, reference in TASKS[: args.tasks]:
            answer = solve.options(reference=reference)(task)
            print(f"{task}\n  answer {' '.join(answer.split()) or '-'} (reference {reference})")
        atlas.shutdown()
    print("sessions stored; see them with: atlas sessions list")
    print(
        "from a shell: atlas run --agent-url URL --task '...' --reference 42 "
        f"--request-template '{TEMPLATE}' --result-path output.answer"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
