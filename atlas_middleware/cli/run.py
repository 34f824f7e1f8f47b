"""``atlas run``: supervise an agent behind an HTTP endpoint, one task or a file of them.

Each task is one supervised session (probe, lane, guidance in the request, validation, one
guided retry, RIM reward), recorded in the store; the answer, lane, reward and session id are
printed as the session is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from atlas_middleware.cli.common import (
    CLIError,
    UsageError,
    add_store_argument,
    format_reward,
    json_line,
    one_line,
    store_url,
    write_stdout,
)
from atlas_middleware.config import LANES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="supervise an agent behind an HTTP endpoint on one task or a JSONL file of tasks",
        description=__doc__.split("\n\n")[0],
        epilog="Example: atlas run --agent-url http://127.0.0.1:8000/solve --task 'What is "
        '12 + 30?\' --reference 42 --request-template \'{"question": "{task}", "hint": '
        '"{guidance}"}\' --result-path output.answer',
    )
    parser.add_argument("--agent-url", required=True, metavar="URL", help="the agent's endpoint")
    tasks = parser.add_mutually_exclusive_group(required=True)
    tasks.add_argument("--task", metavar="TEXT", help="the task to give the agent")
    tasks.add_argument(
        "--tasks",
        type=Path,
        metavar="FILE",
        help='a JSONL file: one {"task": ..., "reference": ...} per line (reference optional)',
    )
    parser.add_argument("--reference", metavar="R", help="the expected answer (validates, rewards)")
    parser.add_argument(
        "--request-template",
        metavar="JSON|@FILE",
        help='the request body with "{task}" and "{guidance}" placeholders (default '
        '{"task": "{task}", "guidance": "{guidance}"}); @path reads it from a file',
    )
    parser.add_argument(
        "--result-path",
        metavar="P",
        help="where the answer is in the JSON response: output.answer, choices.0.message.content",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K:V",
        help="an HTTP header for the agent (repeatable), e.g. 'Authorization: Bearer ...'",
    )
    parser.add_argument("--agent", metavar="NAME", help="agent name in the store (default: host)")
    parser.add_argument("--lane", choices=LANES, help="force a lane (default: the probe decides)")
    parser.add_argument(
        "--teacher",
        metavar="SPEC",
        help="teacher model: embedded, openai/gpt-4o-mini, openai-compatible:http://host/v1|name "
        "(default: the config's)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="guided re-runs of the agent in the paired lane (0 for agents with side effects)",
    )
    parser.add_argument(
        "--no-reward", action="store_true", help="skip the RIM reward (faster; no reward shown)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds per agent request"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="request retries on connection errors, 5xx and 429 (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per task")
    add_store_argument(parser)
    parser.set_defaults(func=run)


# --- inputs --------------------------------------------------------------------------------------
def _template(value: str | None) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(
            f"cannot read the request template file {path}: {exc.strerror or exc}"
        ) from None


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        key, sep, text = value.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"--header {value!r} is not 'Name: value'")
        headers[key.strip()] = text.strip()
    return headers


def _tasks(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    if args.task is not None:
        if not args.task.strip():
            raise UsageError("--task is empty: give the agent something to do")
        return [(args.task, args.reference)]
    try:
        lines = args.tasks.read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --tasks {args.tasks}: {exc.strerror or exc}") from None
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{args.tasks}:{number}: not JSON ({exc.msg})") from None
        task = item.get("task") if isinstance(item, dict) else None
        if not isinstance(task, str) or not task.strip():
            raise UsageError(f'{args.tasks}:{number}: needs a "task" string')
        reference = item.get("reference", args.reference)
        found.append((task, None if reference is None else str(reference)))
    if not found:
        raise UsageError(f"--tasks {args.tasks} holds no tasks")
    return found


# --- the run -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from opentelemetry import trace

    import atlas_middleware as atlas
    from atlas_middleware import telemetry
    from atlas_middleware.integrations.remote import RemoteAgent, RemoteAgentError
    from atlas_middleware.storage import open_store

    tasks = _tasks(args)
    if args.max_retries is not None and args.max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more (got {args.max_retries})")
    try:
        remote = RemoteAgent(
            args.agent_url,
            request_template=_template(args.request_template),
            result_path=args.result_path,
            headers=_headers(args.header),
            timeout=args.timeout,
            retries=args.retries,
            name=args.agent,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    url = store_url(args)
    try:
        store = open_store(url)
    except ValueError:
        raise UsageError(
            f"unsupported store URL {url!r}: use sqlite:///path/atlas.db or "
            "postgresql://user@host:5432/db"
        ) from None
    provider = telemetry.configure(exporter="atlas", store=store, service_name="atlas-run")
    seen: dict[str, str] = {}

    def call(task: str) -> str:
        span = trace.get_current_span().get_span_context()
        seen["trace_id"] = format(span.trace_id, "032x")
        return remote(task)

    options: dict[str, Any] = {"reward_inline": True}
    if args.lane:
        options["lane"] = args.lane
    if args.max_retries is not None:
        options["max_retries"] = args.max_retries
    if args.no_reward:
        options["reward"] = False
    try:
        supervised = atlas.supervise(call, agent=remote.name, teacher=args.teacher, **options)
        failures = 0
        for index, (task, reference) in enumerate(tasks, 1):
            seen.clear()
            error = None
            answer = None
            try:
                answer = supervised.options(reference=reference)(task)
            except RemoteAgentError as exc:
                error = one_line(str(exc))
            except ValueError as exc:  # a bad --teacher spec, found when the teacher is built
                raise UsageError(str(exc)) from None
            provider.force_flush()
            session = store.get_session(seen["trace_id"]) if seen.get("trace_id") else None
            failures += error is not None
            _show(args, index, len(tasks), task, answer, error, session)
    finally:
        atlas.shutdown()
        store.close()
        remote.close()
    if failures:
        if len(tasks) == 1:
            raise CLIError(f"the agent failed: {error}")
        print(f"atlas: {failures} of {len(tasks)} tasks failed", file=sys.stderr)
        return 1
    return 0


def _show(
    args: argparse.Namespace,
    index: int,
    total: int,
    task: str,
    answer: str | None,
    error: str | None,
    session: Any,
) -> None:
    reward = session.reward_score if session is not None else None
    lane = session.lane if session is not None else None
    session_id = session.session_id if session is not None else None
    trace_id = session.trace_id if session is not None else None
    if args.json:
        row = {
            "task": task,
            "answer": answer,
            "lane": lane,
            "reward": reward,
            "session_id": session_id,
            "trace_id": trace_id,
        }
        if error is not None:
            row["error"] = error
        write_stdout(json_line(row))
        return
    if error is not None and total == 1:
        return  # main() prints the one-line error
    prefix = f"[{index}/{total}] " if total > 1 else ""
    if error is not None:
        print(f"{prefix}error: {error}")
        return
    print(f"{prefix}answer: {answer}")
    pad = " " * len(prefix)
    print(
        f"{pad}lane: {lane or '-'}  reward: {format_reward(reward)}  session: {session_id or '-'}"
    )
    sys.stdout.flush()
