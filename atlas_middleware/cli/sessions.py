"""``atlas sessions``: list, show, approve, quarantine."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atlas_middleware.cli.common import (
    REVIEW_STATUSES,
    CLIError,
    UsageError,
    add_filter_arguments,
    add_store_argument,
    console,
    format_duration,
    format_reward,
    format_time,
    has_drift_alert,
    json_line,
    open_cli_store,
    session_filter,
    short_id,
    truncate,
    write_stdout,
)

if TYPE_CHECKING:
    from atlas_middleware.storage import Session, SpanRecord, Store

STATUS_STYLE = {"pending": "yellow", "approved": "green", "quarantined": "red"}
_SET_REVIEW_CHUNK = 500


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sessions",
        help="list, inspect and review recorded sessions",
        description="List, inspect and review recorded sessions (one per supervised call).",
    )
    parser.set_defaults(help_parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser(
        "list", help="list sessions, newest first", description="List sessions, newest first."
    )
    p.add_argument("--status", choices=REVIEW_STATUSES, help="only this review status")
    add_filter_arguments(p)
    p.add_argument("--drift", action="store_true", help="only sessions with a drift alert")
    p.add_argument(
        "--limit", type=int, default=20, metavar="N", help="show at most N (default 20; 0: all)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_argument(p)
    p.set_defaults(func=run_list)

    p = commands.add_parser(
        "show",
        help="one session: fields, evaluations, drift and span tree",
        description="Show one session: its fields, evaluations, drift record and span tree.",
    )
    p.add_argument("id", metavar="ID", help="trace id, session id, or a unique prefix of either")
    p.add_argument("--json", action="store_true", help="the session and its spans as JSON")
    add_store_argument(p)
    p.set_defaults(func=run_show)

    for status, verb in (("approved", "approve"), ("quarantined", "quarantine")):
        what = (
            "approve sessions for training"
            if status == "approved"
            else "quarantine sessions: never exported unless asked for with --status quarantined"
        )
        p = commands.add_parser(verb, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument(
            "ids",
            nargs="*",
            metavar="ID",
            help="trace ids, session ids, or unique prefixes of either",
        )
        p.add_argument("--note", metavar="TEXT", help="review note stored with the sessions")
        p.add_argument(
            "--all-pending",
            action="store_true",
            help=f"{verb} every pending session matching the filters below instead of IDs",
        )
        add_filter_arguments(p)
        if status == "approved":
            p.add_argument(
                "--include-drift",
                action="store_true",
                help="with --all-pending: approve sessions with a drift alert too "
                "(skipped by default: review them with 'atlas sessions list --drift')",
            )
        p.add_argument(
            "--dry-run", action="store_true", help="say what would change, change nothing"
        )
        add_store_argument(p)
        p.set_defaults(func=run_review, review_status=status, verb=verb)


# --- list ------------------------------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    where = session_filter(args, review_status=args.status, drift_only=args.drift)
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    limit = args.limit or None
    with open_cli_store(args) as store:
        sessions = store.iter_sessions(
            where, newest_first=True, limit=limit, page_size=min(limit or 500, 500)
        )
        if args.json:
            for session in sessions:
                write_stdout(json_line(session.to_json()), flush=False)
            write_stdout(b"")
            return 0
        print_table(list(sessions), limit)
    return 0


def print_table(sessions: list[Session], limit: int | None) -> None:
    from rich.table import Table
    from rich.text import Text

    out = console()
    if not sessions:
        out.print("No sessions match.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    # Ids, numbers, status and time keep their width; on a narrow terminal the free-text columns
    # give way (one line each, cut with an ellipsis).
    compact = out.width < 120
    fixed = {"trace": 12, "reward": 6, "review": 11, "drift": 5, "started": 11 if compact else 19}
    for name in ("trace", "agent", "learning key", "lane", "reward", "review", "drift", "started"):
        table.add_column(
            "key" if compact and name == "learning key" else name,
            no_wrap=name in fixed,
            min_width=fixed.get(name),
            justify="right" if name == "reward" else "left",
        )
    table.add_column("task", max_width=60)

    def cell(value: str, style: str = "") -> Text:
        return Text(value, style=style, no_wrap=True, overflow="ellipsis")

    for s in sessions:
        table.add_row(
            cell(short_id(s.trace_id)),
            cell(s.agent_name or "-"),
            cell(s.learning_key or "-"),
            cell(s.lane or "-"),
            cell(format_reward(s.reward_score)),
            cell(s.review_status, STATUS_STYLE.get(s.review_status, "")),
            cell("DRIFT", "bold red") if has_drift_alert(s) else cell(""),
            cell(format_time(s.started_ns, compact=compact)),
            cell(truncate(s.task, 60)),
        )
    out.print(table)
    if limit is not None and len(sessions) == limit:
        out.print(Text(f"newest {limit} shown; --limit N for more, --limit 0 for all", "dim"))


# --- show ------------------------------------------------------------------------------------
def _resolve(store: Store, key: str) -> Session:
    key = key.strip()
    if not key:
        raise UsageError("empty session id")
    session = store.get_session(key)
    if session is None:
        raise CLIError(
            f"no session matches {key!r}: give a trace id, session id or a prefix of one "
            "(see 'atlas sessions list')"
        )
    return session


def run_show(args: argparse.Namespace) -> int:
    with open_cli_store(args) as store:
        session = _resolve(store, args.id)
        spans = store.spans_for([session.trace_id])[session.trace_id]
        steps = store.steps_for(session.trace_id)
    if args.json:
        write_stdout(
            json_line(
                {
                    **session.to_json(),
                    "steps": [x.to_json() for x in steps],
                    "spans": [r.to_json() for r in spans],
                }
            )
        )
        return 0
    _print_session(session, spans, steps)
    return 0


def _print_steps(steps: list[Any]) -> Any:
    """The steps as a table: in start order, a nested step indented under its parent."""
    from rich.table import Table
    from rich.text import Text

    depth: dict[str, int] = {}
    for step in steps:
        depth[step.span_id] = depth.get(step.parent_id, -1) + 1 if step.parent_id else 0
    table = Table(box=None, header_style="dim", pad_edge=False)
    for name in ("step", "kind", "status", "tokens", "reward", "rewards", "error"):
        table.add_column(name, justify="right" if name in ("tokens", "reward") else "left")
    for step in steps:
        tokens = (
            f"{step.input_tokens or 0}/{step.output_tokens or 0}"
            if step.input_tokens is not None or step.output_tokens is not None
            else ""
        )
        rewards = ", ".join(
            f"{name}={format_reward(e.get('score'))}"
            for name, e in sorted(step.evaluations.items())
        )
        failed = step.status == "error"
        table.add_row(
            Text("  " * depth.get(step.span_id, 0) + (step.name or step.span_id)),
            Text(step.kind or ""),
            Text(step.status or "", style="red" if failed else ""),
            Text(tokens),
            Text(format_reward(step.reward_score) if step.evaluations else ""),
            Text(rewards),
            Text(
                (f"{step.error_type}: " if step.error_type else "") + (step.error or "")
                if failed
                else ""
            ),
        )
    return table


def _print_session(session: Session, spans: list[SpanRecord], steps: Sequence[Any] = ()) -> None:
    from rich.table import Table
    from rich.text import Text

    out = console()
    out.print(Text(f"Session {session.trace_id}", style="bold"))
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="dim", no_wrap=True)
    fields.add_column()
    duration = (
        session.ended_ns - session.started_ns
        if session.started_ns is not None and session.ended_ns is not None
        else None
    )
    tokens = (
        f"{session.input_tokens or 0} in / {session.output_tokens or 0} out"
        if session.input_tokens is not None or session.output_tokens is not None
        else None
    )
    rows: list[tuple[str, Any]] = [
        ("session id", session.session_id),
        ("agent", session.agent_name),
        ("learning key", session.learning_key),
        ("service", session.service_name),
        ("model", session.model),
        ("lane", session.lane),
        (
            "probe confidence",
            None if session.probe_confidence is None else f"{session.probe_confidence:.2f}",
        ),
        (
            "status",
            session.status + (f" ({session.error_type})" if session.error_type else "")
            if session.status
            else None,
        ),
        ("started", format_time(session.started_ns)),
        ("duration", format_duration(duration) if duration is not None else None),
        ("tokens", tokens),
        ("reward", format_reward(session.reward_score)),
        ("review", session.review_status),
        ("review note", session.review_note),
        ("task", session.task),
        ("guidance", session.guidance),
        ("final answer", session.final_answer),
    ]
    for name, value in rows:
        if value is None:
            continue
        style = STATUS_STYLE.get(value, "") if name == "review" else ""
        fields.add_row(name, Text(str(value), style=style))
    out.print(fields)

    out.print()
    out.print(Text("Evaluations", style="bold"))
    if session.evaluations:
        table = Table(box=None, header_style="dim", pad_edge=False)
        for name in ("judge", "score", "label", "uncertainty", "explanation"):
            table.add_column(name, justify="right" if name in ("score", "uncertainty") else "left")
        for name, e in sorted(session.evaluations.items()):
            uncertainty = e.get("uncertainty")
            table.add_row(
                Text(name),
                Text(format_reward(e.get("score"))),
                Text(str(e.get("label") or "")),
                Text("" if uncertainty is None else f"{uncertainty:.2f}"),
                Text(str(e.get("explanation") or "")),
            )
        out.print(table)
    else:
        out.print(Text("none yet", style="dim"))

    if steps:
        out.print()
        out.print(Text(f"Steps ({len(steps)})", style="bold"))
        out.print(_print_steps(list(steps)))

    out.print()
    out.print(Text("Drift", style="bold"))
    d = session.drift
    if not d:
        out.print(Text("not checked (no reward yet)", style="dim"))
    else:
        verdict = Text("ALERT", style="bold red") if d.get("alert") else Text("ok", style="green")
        if d.get("z") is None and d.get("mad_z") is None:
            detail = (
                f"  too little history to judge ({d.get('baseline')} earlier rewards "
                "of this learning key)"
            )
        else:
            detail = (
                f"  z={_num(d.get('z'))}  mad_z={_num(d.get('mad_z'))}  "
                f"against {d.get('baseline')} earlier rewards of this learning key"
            )
        out.print(verdict + Text(detail))

    out.print()
    out.print(Text(f"Spans ({len(spans)})", style="bold"))
    if spans:
        out.print(_span_tree(session.trace_id, spans))
    else:
        out.print(Text("none stored (pruned, or not arrived yet)", style="dim"))


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _span_tree(trace_id: str, spans: list[SpanRecord]):
    from rich.text import Text
    from rich.tree import Tree

    from atlas_middleware.storage.records import span_tree

    def label(span: SpanRecord) -> Text:
        text = Text(span.name, style="bold" if span.parent_span_id is None else "")
        text.append(f"  {format_duration(span.end_ns - span.start_ns)}", style="cyan")
        if span.status_code == "ERROR":
            text.append(f"  ERROR {span.status_message or ''}".rstrip(), style="red")
        text.append(f"  {span.span_id}", style="dim")
        return text

    tree = Tree(Text(f"trace {trace_id}", style="dim"))
    branches = [tree]  # branches[d]: the node new spans of depth d hang under
    for span, depth in span_tree(spans):
        del branches[depth + 1 :]
        branches.append(branches[depth].add(label(span)))
    return tree


# --- approve / quarantine --------------------------------------------------------------------
def run_review(args: argparse.Namespace) -> int:
    status, verb = args.review_status, args.verb
    filters = ("min_reward", "learning_key", "agent", "since")
    if args.all_pending and args.ids:
        raise UsageError("give session IDs or --all-pending, not both")
    if not args.all_pending:
        if not args.ids:
            raise UsageError(f"give the IDs of the sessions to {verb}, or --all-pending")
        used = [f"--{f.replace('_', '-')}" for f in filters if getattr(args, f) is not None]
        if getattr(args, "include_drift", False):
            used.append("--include-drift")
        if used:
            raise UsageError(f"{', '.join(used)}: only with --all-pending")

    from atlas_middleware.review import review_pending, review_sessions

    with open_cli_store(args) as store:
        if args.all_pending:
            outcome = review_pending(
                store,
                session_filter(args),
                status,
                include_drift=getattr(args, "include_drift", False),
                note=args.note,
                source="cli",
                dry_run=args.dry_run,
            )
        else:
            # Resolve every ID first: one typo changes nothing.
            sessions = {s.trace_id: s for s in (_resolve(store, key) for key in args.ids)}
            outcome = review_sessions(
                store,
                list(sessions.values()),
                status,
                note=args.note,
                source="cli",
                dry_run=args.dry_run,
            )
    changing, targets, skipped_drift = outcome.changing, outcome.targets, outcome.skipped_drift

    noun = "session" if len(changing) == 1 else "sessions"
    message = (
        f"would {verb} {len(changing)} {noun}"
        if args.dry_run
        else f"{status} {len(changing)} {noun}"
    )
    already = len(targets) - len(changing)
    if already:
        message += f" ({already} already {status})"
    if args.dry_run and changing:
        shown = 20
        message += ": " + " ".join(short_id(t) for t in changing[:shown])
        if len(changing) > shown:
            message += f" and {len(changing) - shown} more"
    print(message)
    if skipped_drift:
        print(
            f"skipped {skipped_drift} pending {'session' if skipped_drift == 1 else 'sessions'} "
            "with a drift alert: review them with 'atlas sessions list --drift', approve by ID, "
            "or pass --include-drift"
        )
    return 0
