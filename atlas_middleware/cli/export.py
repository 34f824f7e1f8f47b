"""``atlas export``: sessions (and their spans) as JSON Lines, for training or other tools."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING

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

if TYPE_CHECKING:
    from atlas_middleware.storage import SessionFilter, Store

DEFAULT_PAGE_SIZE = 500


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write sessions and their spans as JSON Lines",
        description='Write one JSON object per session (its fields, a "steps" list and a '
        '"spans" list) to a '
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


def export_chunks(
    store: Store,
    where: SessionFilter,
    statuses: Sequence[str],
    *,
    spans: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    counts: list[int] | None = None,
) -> Iterator[bytes]:
    """The export of the sessions matching ``where``: one chunk of JSON lines per page of
    ``page_size`` sessions, each a session's fields plus (with ``spans``) its spans. ``atlas
    export`` and the download of ``atlas ui`` both write this. ``counts``, when given, is kept
    at [sessions, spans] written so far."""
    counts = counts if counts is not None else [0, 0]
    pages = store.iter_sessions(where, page_size=page_size)
    while page := list(islice(pages, page_size)):
        # Belt and braces: whatever the filter did, quarantined sessions leave only when
        # asked for by name.
        if "quarantined" not in statuses:
            page = [s for s in page if s.review_status != "quarantined"]
        found = store.spans_for([s.trace_id for s in page]) if spans else {}
        steps = store.steps_of([s.trace_id for s in page])
        chunk = bytearray()
        for session in page:
            line = session.to_json()
            line["steps"] = [x.to_json() for x in steps.get(session.trace_id, [])]
            if spans:
                records = found.get(session.trace_id, [])
                line["spans"] = [r.to_json() for r in records]
                counts[1] += len(records)
            chunk += json_line(line)
        counts[0] += len(page)
        yield bytes(chunk)


def run(args: argparse.Namespace) -> int:
    statuses = list(dict.fromkeys(args.status or ["approved"]))
    where = session_filter(args, review_status=statuses)
    to_stdout = args.output == "-"
    counts = [0, 0]
    show_progress = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
    with (
        open_cli_store(args) as store,
        _progress(show_progress) as advance,
        _open_output(args.output) as out,
    ):
        for chunk in export_chunks(
            store, where, statuses, spans=args.spans, page_size=args.page_size, counts=counts
        ):
            out.write(chunk)
            out.flush()
            advance(*counts)
    sessions_written, spans_written = counts

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
