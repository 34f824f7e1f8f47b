"""``atlas db``: status, migrate, prune."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from atlas_middleware.cli.common import (
    REVIEW_STATUSES,
    CLIError,
    add_store_argument,
    console,
    is_postgres,
    json_line,
    latest_schema_version,
    open_cli_store,
    parse_duration,
    parse_point_in_time,
    redact_url,
    store_url,
    write_stdout,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="store status, schema migrations, span retention",
        description="Store status, schema migrations and span retention.",
    )
    parser.set_defaults(help_parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser(
        "status",
        help="store URL, schema version, span and session counts",
        description="Show the store URL (without password), schema version, span count and "
        "session counts by review status.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_store_argument(p)
    p.set_defaults(func=run_status)

    p = commands.add_parser(
        "migrate",
        help="create the store or bring its schema up to date",
        description="Create the store if needed and apply pending schema migrations.",
    )
    add_store_argument(p)
    p.set_defaults(func=run_migrate)

    p = commands.add_parser(
        "prune",
        help="delete old spans (sessions are kept)",
        description="Delete spans that started before a cutoff; sessions, their rewards and "
        "review status are kept. Postgres drops whole daily partitions, so spans of the day "
        "the cutoff falls in stay until that day has fully passed it.",
    )
    p.add_argument(
        "--older-than",
        required=True,
        type=_parse_age,
        metavar="AGE",
        help="a duration (30d, 12h, 2w) or an ISO date/time: spans that started before it go",
    )
    add_store_argument(p)
    p.set_defaults(func=run_prune)


def _parse_age(text: str) -> int:
    seconds = parse_duration(text)
    if seconds is not None and seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the age must be more than 0")
    return parse_point_in_time(text)


def run_status(args: argparse.Namespace) -> int:
    from atlas_middleware.storage import StoreError, StoreUnavailable

    with open_cli_store(args, migrate=False) as store:
        store.health()
        latest = latest_schema_version(store)
        try:
            version = store.schema_version()
        except StoreUnavailable:
            raise
        except StoreError:  # a Postgres database no atlas process has touched yet
            version = 0
        info: dict[str, Any] = {
            "url": redact_url(store_url(args)),
            "backend": "postgres" if is_postgres(store) else "sqlite",
            "schema_version": version,
            "latest_schema_version": latest,
            "spans": None,
            "sessions": None,
            "drift_alerts": None,
        }
        if version:
            info["spans"] = store.count_spans()
            info["sessions"] = store.session_counts()
            info["drift_alerts"] = len(store.drift_alerts())
    if args.json:
        write_stdout(json_line(info))
        return 0

    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    grid.add_row("store", Text(f"{info['url']} ({info['backend']})"))
    if version == latest:
        schema = f"{version} (up to date)"
    elif version < latest:
        schema = f"{version} (version {latest} available: run 'atlas db migrate')"
    else:
        schema = f"{version} (newer than this atlas, which knows up to {latest}: upgrade atlas)"
    grid.add_row("schema version", Text(schema))
    if info["sessions"] is not None:
        counts = info["sessions"]
        grid.add_row("spans", Text(f"{info['spans']:,}"))
        detail = ", ".join(f"{counts[s]:,} {s}" for s in REVIEW_STATUSES)
        extra = ", ".join(f"{n:,} {s}" for s, n in counts.items() if s not in REVIEW_STATUSES)
        grid.add_row(
            "sessions",
            Text(f"{sum(counts.values()):,} ({detail}{', ' + extra if extra else ''})"),
        )
        grid.add_row("drift alerts", Text(f"{info['drift_alerts']:,}"))
    console().print(grid)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from atlas_middleware.storage import StoreError, StoreUnavailable

    with open_cli_store(args, create=True, migrate=False) as store:
        try:
            before = store.schema_version()
        except StoreUnavailable:
            raise
        except StoreError:
            before = 0
        after = store.migrate()
    url = redact_url(store_url(args))
    if after == before:
        print(f"{url}: schema already at version {after}, nothing to do")
    else:
        print(f"{url}: migrated schema from version {before} to {after}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    cutoff = args.older_than
    if cutoff > time.time_ns():
        raise CLIError("--older-than points to the future: that would prune every span")
    when = dt.datetime.fromtimestamp(cutoff / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    with open_cli_store(args) as store:
        removed = store.prune_spans(cutoff)
        postgres = is_postgres(store)
    # The stores report in their own unit: SQLite deletes spans, Postgres drops day partitions.
    if postgres:
        noun = "partition" if removed == 1 else "partitions"
        print(f"dropped {removed} daily span {noun} ending before {when}; sessions kept")
    else:
        noun = "span" if removed == 1 else "spans"
        print(f"deleted {removed} {noun} that started before {when}; sessions kept")
    return 0
