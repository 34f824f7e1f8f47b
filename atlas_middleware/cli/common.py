"""What every ``atlas`` command shares: the parser class, ``--store``, errors, parsing and
formatting helpers. Light on purpose: the store and rich are imported when a command runs."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from atlas_middleware.errors import one_line

if TYPE_CHECKING:
    from rich.console import Console

    from atlas_middleware.storage import SessionFilter, Store

STORE_ENV = "ATLAS_STORE_URL"
REVIEW_STATUSES = ("pending", "approved", "quarantined")


# --- errors ----------------------------------------------------------------------------------
class CLIError(Exception):
    """An error the user can act on: printed as one ``atlas: error: ...`` line, never a traceback."""

    code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CLIError):
    """The command line itself was wrong (exit code 2, like argparse's own errors)."""

    code = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to get help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"atlas: error: {one_line(message)} (see '{self.prog} --help')\n")


class _LastConnectionError(logging.Handler):
    """Remembers the last connection failure the Postgres pool logged: the pool only raises
    "couldn't get a connection after N sec", while the reason (refused, no such database, bad
    password) is in its log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = one_line(record.getMessage())
        if "error connecting" in message:
            self.last = message.split(": ", 1)[-1]

    def reason(self) -> str:
        return f" (last connection error: {self.last})" if self.last else ""


CONNECTION_ERRORS = _LastConnectionError()


# --- the store -------------------------------------------------------------------------------
def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"sqlite:///path/atlas.db or postgresql://user@host/db "
        f"(default: ${STORE_ENV}, else sqlite:///.atlas/atlas.db)",
    )


def store_url(args: argparse.Namespace) -> str:
    from atlas_middleware.storage import default_store_url

    return getattr(args, "store", None) or default_store_url()


def store_hint(args: argparse.Namespace) -> str:
    """Where the store URL came from, so the user knows what to fix."""
    if getattr(args, "store", None):
        where = "check the --store URL"
    elif os.environ.get(STORE_ENV):
        where = f"check ${STORE_ENV} (or pass --store URL)"
    else:
        where = f"pass --store URL or set ${STORE_ENV}"
    if _sqlite_path(store_url(args)) is None:
        where += " and that the database is running"
    return where


def redact_url(url: str) -> str:
    """The URL without its password (in the user info or a ``password=`` parameter)."""
    from atlas_middleware.storage.records import safe_url

    return safe_url(url)


def _sqlite_path(url: str) -> str | None:
    """The file behind a SQLite store URL (as ``open_store`` reads it), or None for other URLs."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if "://" not in url:
        return url
    return None


@contextmanager
def open_cli_store(
    args: argparse.Namespace, *, create: bool = False, migrate: bool = True
) -> Iterator[Store]:
    """Open the store named by ``--store`` / ``$ATLAS_STORE_URL``. Reading commands pass
    ``create=False``: a missing SQLite file is a mistyped path or an empty project, and is reported
    instead of silently created. ``migrate`` brings the schema up to date first (what the library
    does by default), failing fast when the database cannot be reached."""
    url = store_url(args)
    path = _sqlite_path(url)
    if path is not None and not create and path != ":memory:" and not Path(path).exists():
        raise CLIError(
            f"no Atlas store at {path} (nothing recorded there yet?); "
            f"{store_hint(args)}, or create an empty one with 'atlas db migrate'"
        )
    from atlas_middleware.storage import open_store

    try:
        store = open_store(url, migrate=False)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    except ValueError:
        source = "--store" if getattr(args, "store", None) else f"${STORE_ENV}"
        raise UsageError(
            f"unsupported store URL {redact_url(url)!r} ({source}): use sqlite:///path/atlas.db "
            "or postgresql://user@host:5432/db"
        ) from None
    try:
        if migrate:
            store.migrate()
        yield store
    finally:
        store.close()


def is_postgres(store: Any) -> bool:
    return hasattr(store, "partitions")


def latest_schema_version(store: Any) -> int:
    from atlas_middleware.storage.base import load_migrations

    found = load_migrations("postgres" if is_postgres(store) else "sqlite")
    return found[-1][0] if found else 0


# --- parsing (shared with atlas-train: atlas_middleware.arguments) ----------------------------
from atlas_middleware.arguments import (  # noqa: E402
    parse_duration,
    parse_point_in_time,
    parse_positive_int,
    parse_reward,
)

__all__ = ["parse_duration", "parse_point_in_time", "parse_positive_int", "parse_reward"]


def add_filter_arguments(parser: argparse.ArgumentParser, *, agent: bool = True) -> None:
    """``--min-reward``, ``--learning-key``, ``--agent``, ``--since``."""
    parser.add_argument(
        "--min-reward",
        type=parse_reward,
        metavar="X",
        help="only sessions whose reward is at least X (sessions without a reward are excluded)",
    )
    parser.add_argument("--learning-key", metavar="KEY", help="only this learning key")
    if agent:
        parser.add_argument("--agent", metavar="NAME", help="only this agent")
    parser.add_argument(
        "--since",
        type=parse_point_in_time,
        metavar="WHEN",
        help="only sessions started since WHEN: a duration ago (30m, 2h, 1d, 2w) or an ISO "
        "date/time (2026-01-31, 2026-01-31T14:00; local time unless it has an offset)",
    )


def session_filter(args: argparse.Namespace, **overrides: Any) -> SessionFilter:
    from atlas_middleware.storage import SessionFilter

    values: dict[str, Any] = {
        "min_reward": getattr(args, "min_reward", None),
        "learning_key": getattr(args, "learning_key", None),
        "agent_name": getattr(args, "agent", None),
        "since_ns": getattr(args, "since", None),
    }
    values.update(overrides)
    return SessionFilter(**values)


# --- output ----------------------------------------------------------------------------------
def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not squeezed into 80 columns: tables stay one row per session.
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 200)
    return Console(file=stream, highlight=False, width=width)


def short_id(trace_id: str) -> str:
    return trace_id[:12]


def format_time(ns: int | None, *, compact: bool = False) -> str:
    """Local time; ``compact`` drops the year and seconds (narrow terminals)."""
    if not ns:
        return "-"
    when = dt.datetime.fromtimestamp(ns / 1e9).astimezone()
    return when.strftime("%m-%d %H:%M" if compact else "%Y-%m-%d %H:%M:%S")


def format_duration(ns: int | None) -> str:
    if ns is None or ns < 0:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def format_reward(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


def has_drift_alert(session: Any) -> bool:
    return bool(session.drift and session.drift.get("alert"))


def truncate(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = one_line(text)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def json_line(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def write_stdout(data: bytes, *, flush: bool = True) -> None:
    """Bytes to stdout, after anything already printed as text."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if flush:
        sys.stdout.buffer.flush()
