"""``atlas export``: sessions (and their spans) as JSON Lines, for training or other tools."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO

from atlas_middleware.cli.common import (
    REVIEW_STATUSES,
    CLIError,
    add_filter_arguments,
    add_store_argument,
    console,
    json_line,
    open_cli_store,
    parse_positive_int,
    session_filter,
)

DEFAULT_PAGE_SIZE = 500


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write sessions and their spans as JSON Lines",
        description='Write one JSON object per session (its fields plus a "spans" list) to a '
        "JSON Lines file, streaming page by page. Only approved sessions unless --status says "
        "otherwise; quarantined sessions only when asked for with --status quarantined.",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="file to write, or - for stdout"
    )
    p.add_argument(
        "--status",
        action="append",
        choices=REVIEW_STATUSES,
        help="review status to export; repeat for several (default: approved)",
    )
    add_filter_arguments(p)
    p.add_argument(
        "--spans",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include each session's spans (default: yes)",
    )
    p.add_argument(
        "--page-size",
        type=parse_positive_int,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"sessions read (and held in memory) at a time (default {DEFAULT_PAGE_SIZE})",
    )
    add_store_argument(p)
    p.set_defaults(func=run)


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[IO[bytes]]:
    """stdout for ``-``; otherwise a ``.partial`` file renamed into place only once complete, so
    an interrupted export never leaves a truncated file that looks finished."""
    if target == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    partial = path.with_name(path.name + ".partial")
    try:
        handle = partial.open("wb")
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    statuses = list(dict.fromkeys(args.status or ["approved"]))
    where = session_filter(args, review_status=statuses)
    to_stdout = args.output == "-"
    sessions_written = spans_written = 0
    show_progress = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
    with open_cli_store(args) as store, _progress(show_progress) as advance:
        pages = store.iter_sessions(where, page_size=args.page_size)
        with _open_output(args.output) as out:
            while page := list(islice(pages, args.page_size)):
                # Belt and braces: whatever the filter did, quarantined sessions leave only when
                # asked for by name.
                if "quarantined" not in statuses:
                    page = [s for s in page if s.review_status != "quarantined"]
                spans = store.spans_for([s.trace_id for s in page]) if args.spans else {}
                chunk = bytearray()
                for session in page:
                    line = session.to_json()
                    if args.spans:
                        records = spans.get(session.trace_id, [])
                        line["spans"] = [r.to_json() for r in records]
                        spans_written += len(records)
                    chunk += json_line(line)
                out.write(chunk)
                out.flush()
                sessions_written += len(page)
                advance(sessions_written, spans_written)

    where_to = "stdout" if to_stdout else args.output
    summary = f"exported {sessions_written} sessions"
    if args.spans:
        summary += f" ({spans_written} spans)"
    summary += f" to {where_to}"
    if not sessions_written:
        summary += f" (no {'/'.join(statuses)} sessions match the filters)"
    print(summary, file=sys.stderr)
    return 0


@contextlib.contextmanager
def _progress(enabled: bool):
    if not enabled:
        yield lambda sessions, spans: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("exporting: {task.fields[sessions]} sessions, {task.fields[spans]} spans"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("export", total=None, sessions=0, spans=0)
        yield lambda sessions, spans: progress.update(task, sessions=sessions, spans=spans)
