"""The embedded store: SQLite in WAL mode at ``./.atlas/atlas.db``, for one machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atlas_middleware.review import DriftPolicy
from atlas_middleware.storage.base import (
    SPAN_COLUMN_LIST,
    SPAN_COLUMNS,
    Store,
    StoreDataError,
    StoreError,
    StoreUnavailable,
    WriteResult,
    load_migrations,
    span_rows,
)
from atlas_middleware.storage.records import SpanRecord, json_dumps

DEFAULT_PATH = Path(".atlas") / "atlas.db"


def _sql(statement: str) -> str:
    return statement.replace("%s", "?")


class SQLiteStore(Store):
    # Top-level merge like Postgres's ``||``: json_patch alone merges recursively, so a re-judged
    # evaluation would keep fields (label, payload entries) of the verdict it replaces. Patching
    # the incoming names to null first deletes the old entries, then the new ones go in whole.
    _json_merge = (
        "json_patch(json_patch(sessions.evaluations, (SELECT json_group_object(key, NULL) "
        "FROM json_each(excluded.evaluations))), excluded.evaluations)"
    )
    _drift_alert = "json_extract(drift, '$.alert') = 1"

    def __init__(
        self,
        path: str | Path = DEFAULT_PATH,
        *,
        drift_policy: DriftPolicy | None = None,
        migrate: bool = True,
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.drift_policy = drift_policy or DriftPolicy()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection behind a lock: SQLite allows one writer anyway, and WAL lets other
            # processes (the CLI while a collector runs) read at the same time.
            self._conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=30
            )
            _set_wal(self._conn)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS atlas_schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        if migrate:
            self.migrate()

    # --- dialect primitives --------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translate_errors(self.path):
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translate_errors(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = conn.execute(_sql(sql), tuple(params)).fetchall()
        return rows

    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        count: int = conn.executemany(_sql(sql), rows).rowcount
        return count

    def _in_list(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        # The values travel as one JSON array parameter: any batch size fits SQLite's limit on
        # bound parameters (32,766 in a stock build, 999 before 3.32).
        return f"{column} IN (SELECT value FROM json_each(%s))", [json_dumps(list(values))]

    def _evaluation_score(self, name: str) -> tuple[str, list[Any]]:
        return "json_extract(evaluations, %s)", ['$."' + name.replace('"', "") + '".score']

    def health(self) -> None:
        # A connection of its own: the store's connection is held for as long as a write waits
        # on another process's lock (up to its busy timeout), and a health check must not queue
        # behind it. WAL lets this read run while the write waits.
        if str(self.path) == ":memory:":
            return super().health()
        try:
            conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
            try:
                conn.execute("SELECT 1 FROM atlas_schema_version LIMIT 1").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    # --- lifecycle -----------------------------------------------------------------------------
    def migrate(self, target: int | None = None) -> int:
        # BEGIN IMMEDIATE takes the write lock before the version is read, so two processes
        # opening a new store at once (a collector and the CLI) migrate one after the other
        # instead of both applying the same files. (executescript would commit on its own, so
        # statements run one by one inside the transaction.)
        with self._transaction() as conn:
            current: int = (
                conn.execute("SELECT MAX(version) FROM atlas_schema_version").fetchone()[0] or 0
            )
            for version, name, sql in load_migrations("sqlite"):
                if version <= current or (target is not None and version > target):
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO atlas_schema_version VALUES (?, ?, ?)",
                    (version, name, time.time_ns()),
                )
                current = version
            return current

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- ingest --------------------------------------------------------------------------------
    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        if not records:
            return WriteResult(0)
        rows = span_rows(records)
        insert = (
            f"INSERT OR IGNORE INTO spans ({SPAN_COLUMN_LIST}) "
            f"VALUES ({', '.join('?' * len(SPAN_COLUMNS))})"
        )
        with self._transaction() as conn:
            conn.executemany(insert, rows)
            sessions, alerts, rejected = self._apply_session_updates(conn, records)
        return self._written(WriteResult(len(records), sessions, alerts, rejected))

    def prune_spans(self, before_ns: int) -> int:
        """Delete spans that started before ``before_ns`` (sessions are kept)."""
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM spans WHERE start_time_unix_nano < ?", (before_ns,)
            ).rowcount


def _set_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    # Switching a new file to WAL needs it exclusively and SQLite does not wait (busy timeout)
    # for that: when another process opens the same new store at the same moment, retry.
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration file, one at a time."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if any(ln.strip() and not ln.strip().startswith("--") for ln in pending.splitlines()):
        yield pending  # an unterminated last statement: let SQLite judge it


@contextmanager
def _translate_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        # "database is locked", disk I/O errors: may pass on retry.
        raise StoreUnavailable(f"SQLite store {path}: {exc}") from exc
    except sqlite3.DataError as exc:
        raise StoreDataError(f"SQLite store {path}: {exc}", "a value SQLite cannot hold") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite store {path}: {exc}", str(exc)) from exc
