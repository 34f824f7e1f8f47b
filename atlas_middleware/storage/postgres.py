"""Postgres store: psycopg 3 with a connection pool, COPY ingest, JSONB, daily span partitions."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from atlas_middleware.errors import first_line
from atlas_middleware.review import DriftPolicy
from atlas_middleware.storage.base import (
    SESSION_WRITE_COLUMNS,
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
from atlas_middleware.storage.records import SpanEvent, SpanRecord, safe_url

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.types.json import set_json_loads
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Postgres store needs psycopg: pip install 'atlas-middleware[postgres]'"
    ) from exc

log = logging.getLogger(__name__)

_SESSION_TYPES = {
    "probe_confidence": "float8",
    "input_tokens": "int8",
    "output_tokens": "int8",
    "student_input_tokens": "int8",
    "student_output_tokens": "int8",
    "teacher_input_tokens": "int8",
    "teacher_output_tokens": "int8",
    "started_ns": "int8",
    "ended_ns": "int8",
    "evaluations": "jsonb",
    "reward_score": "float8",
    "drift": "jsonb",
    "updated_ns": "int8",
}  # every other session column is text

DAY_NS = 86_400 * 1_000_000_000
_MIGRATION_LOCK = 0x41544C4153  # "ATLAS": serialises migrations across replicas

# Errors after which the same request may succeed later: the server is down, restarting, out of
# connections, or we lost a race that Postgres resolved by aborting us.
_RETRYABLE = (
    psycopg.OperationalError,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.AdminShutdown,
    pg_errors.CannotConnectNow,
    PoolTimeout,
)


class PostgresStore(Store):
    _json_merge = "sessions.evaluations || excluded.evaluations"
    _lock_rows = " ORDER BY trace_id FOR UPDATE"
    _drift_alert = "(drift->>'alert')::boolean"
    _ilike = "ILIKE"
    _lock_joined_sessions = " FOR UPDATE OF s"

    def __init__(
        self,
        url: str,
        *,
        drift_policy: DriftPolicy | None = None,
        migrate: bool = True,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        acquire_timeout_s: float | None = None,
    ) -> None:
        self.url = url
        self.drift_policy = drift_policy or DriftPolicy()
        self._timeout = connect_timeout
        # How long a write waits for a pooled connection (a server that is down makes it wait
        # the whole time); None: connect_timeout.
        self._acquire_timeout = connect_timeout if acquire_timeout_s is None else acquire_timeout_s
        self._partitions: set[int] = set()
        self._partition_lock = threading.Lock()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._migrate_on_connect = migrate
        # Circuit breaker: after a failure, fail at once for a moment instead of making every
        # caller wait out the pool's connection timeout against a server known to be down.
        self._down_until = 0.0
        self.retry_after_s = 2.0
        reachable = self._probe()
        if not reachable:
            self._down_until = time.monotonic() + self.retry_after_s
        # check= re-validates a pooled connection before use: after a database restart the pool
        # hands out a fresh connection instead of failing the request on a dead socket.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"connect_timeout": max(1, int(connect_timeout)), "autocommit": True},
            check=ConnectionPool.check_connection,
            configure=_configure_connection,
            open=False,
            name="atlas",
        )
        self._pool.open(wait=False)
        if migrate and reachable:
            try:
                self._ensure_ready()
            except StoreUnavailable as exc:
                log.warning("Postgres not reachable yet (%s); will retry on use", exc)

    def _probe(self) -> bool:
        """Connect once, directly: a wrong URL, database, role or password is a configuration
        error, reported now in the server's words (through a pool it would only surface as a
        timeout). A server that is merely down is not: the store retries on use, so a collector
        can start before its database. Returns whether the server answered."""
        where = safe_url(self.url)
        try:
            psycopg.connect(
                self.url, connect_timeout=max(1, int(self._timeout)), autocommit=True
            ).close()
        except psycopg.ProgrammingError as exc:  # unparsable URL / options
            raise StoreError(f"bad Postgres URL {where}: {first_line(exc)}") from None
        except psycopg.OperationalError as exc:
            if _is_config_error(exc):
                raise StoreError(f"Postgres at {where}: {first_line(exc)}") from None
            log.warning(
                "Postgres at %s not reachable yet (%s); will retry on use", where, first_line(exc)
            )
            return False
        return True

    # --- dialect primitives --------------------------------------------------------------------
    @contextmanager
    def _raw_connection(self) -> Iterator[psycopg.Connection]:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(
                f"Postgres at {safe_url(self.url)} unavailable (it failed moments ago)"
            )
        try:
            with (
                _translate_errors(self.url),
                self._pool.connection(timeout=self._acquire_timeout) as conn,
            ):
                yield conn
        except StoreUnavailable:
            self._down_until = time.monotonic() + self.retry_after_s
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        self._ensure_ready()
        with self._raw_connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        self._ensure_ready()
        with self._raw_connection() as conn, conn.transaction():
            yield conn

    def _run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql, tuple(params), prepare=False)
        return cur.fetchall() if cur.description else []

    def _in_list(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        # One array parameter: a placeholder per value stops at 65,535 values per statement.
        return f"{column} = ANY(%s::text[])", [list(values)]

    def _evaluation_score(self, name: str) -> tuple[str, list[Any]]:
        return "(evaluations -> %s::text ->> 'score')::float8", [name]

    def _run_returning(
        self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        # executemany pipelines the statements: one network round trip for the whole batch.
        with conn.cursor() as cur:
            cur.executemany(sql, rows, returning=True)
            out: list[tuple[Any, ...]] = []
            while True:
                out.extend(cur.fetchall())
                if not cur.nextset():
                    return out

    # Session rows reach the server by COPY into per-connection temp tables, then one statement
    # each: a fixed cost per batch, and row formatting happens in psycopg's C code (binding the
    # same rows as arrays costs ~5 µs per value in Python).
    _SESSION_STAGING = (
        "CREATE TEMP TABLE IF NOT EXISTS sessions_staging ("
        + ", ".join(
            f"{column} {_SESSION_TYPES.get(column, 'text')}" for column in SESSION_WRITE_COLUMNS
        )
        + ") ON COMMIT DELETE ROWS"
    )
    _REWARD_STAGING = (
        "CREATE TEMP TABLE IF NOT EXISTS rewards_staging (reward_score float8, drift jsonb, "
        "review_status text, trace_id text) ON COMMIT DELETE ROWS"
    )

    @staticmethod
    def _copy_rows(conn: Any, table: str, rows: Iterable[Sequence[Any]]) -> None:
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _upsert_sessions(self, conn: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        conn.execute(self._SESSION_STAGING)
        self._copy_rows(conn, "sessions_staging", rows)
        return self._run(conn, self._session_upsert("SELECT * FROM sessions_staging"))

    def _update_rewards(self, conn: Any, changes: Sequence[Sequence[Any]]) -> None:
        conn.execute(self._REWARD_STAGING)
        self._copy_rows(conn, "rewards_staging", changes)
        conn.execute(
            "UPDATE sessions AS s SET reward_score = v.reward_score, drift = v.drift, "
            "review_status = v.review_status FROM rewards_staging AS v "
            "WHERE s.trace_id = v.trace_id"
        )

    def _reward_histories(
        self, conn: Any, keys: Sequence[str], *, exclude: Sequence[str]
    ) -> dict[str, list[float]]:
        # One statement for every key: a LATERAL index scan per key instead of a round trip each.
        rows = self._run(
            conn,
            "SELECT k.key, h.reward_score FROM unnest(%s::text[]) AS k(key) "
            "CROSS JOIN LATERAL (SELECT reward_score, started_ns, trace_id FROM sessions "
            "WHERE learning_key = k.key AND reward_score IS NOT NULL AND started_ns IS NOT NULL "
            "AND NOT (trace_id = ANY(%s::text[])) "
            "ORDER BY started_ns DESC, trace_id DESC LIMIT %s) AS h "
            "ORDER BY k.key, h.started_ns DESC, h.trace_id DESC",
            (list(keys), list(exclude), self.drift_policy.window),
        )
        histories: dict[str, list[float]] = {key: [] for key in keys}
        for key, reward in rows:
            histories[key].append(reward)
        return histories

    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        with conn.cursor() as cur:
            cur.executemany(sql, list(rows))
            count: int = cur.rowcount
            return count

    # --- lifecycle -----------------------------------------------------------------------------
    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                if self._migrate_on_connect:
                    self.migrate()
                self._ready = True

    def migrate(self, target: int | None = None) -> int:
        with self._raw_connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS atlas_schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)"
            )
            (latest,) = conn.execute(
                "SELECT MAX(version) FROM atlas_schema_version"
            ).fetchone() or (None,)
            current: int = latest or 0
            for version, name, sql in load_migrations("postgres"):
                if version <= current or (target is not None and version > target):
                    continue
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO atlas_schema_version VALUES (%s, %s, %s)",
                    (version, name, time.time_ns()),
                )
                current = version
            return current

    def close(self) -> None:
        self._pool.close()

    # --- ingest --------------------------------------------------------------------------------
    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        if not records:
            return WriteResult(0)
        rows = span_rows(records)
        if _has_nul(rows):
            # Postgres text and JSONB cannot hold NUL; replace it rather than fail the batch on
            # every retry.
            records = [_without_nul(r) for r in records]
            rows = span_rows(records)
        days = {r.start_ns // DAY_NS for r in records}
        self._ensure_partitions(days)
        try:
            with self._transaction() as conn:
                self._copy_spans(conn, rows)
                sessions, alerts, rejected = self._apply_session_updates(conn, records)
        except StoreError as exc:
            # Another replica pruned a partition this one still believed in: forget what we
            # know, recreate, and write once more.
            if "no partition of relation" not in str(exc):
                raise
            self._partitions.clear()
            self._ensure_partitions(days)
            with self._transaction() as conn:
                self._copy_spans(conn, rows)
                sessions, alerts, rejected = self._apply_session_updates(conn, records)
        return self._written(WriteResult(len(records), sessions, alerts, rejected))

    def _copy_spans(self, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> None:
        """COPY straight into ``spans``; only when that hits a re-sent span (rare: OTLP retries)
        go through a staging table and ``INSERT … ON CONFLICT DO NOTHING``. The direct path is
        ~1.5x faster than staging every batch (docs/benchmarks.md)."""
        try:
            with (
                conn.transaction(),
                conn.cursor().copy(f"COPY spans ({SPAN_COLUMN_LIST}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return
        except pg_errors.UniqueViolation:
            pass
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS spans_staging "
            "(LIKE spans INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with conn.cursor().copy(f"COPY spans_staging ({SPAN_COLUMN_LIST}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(
            f"INSERT INTO spans ({SPAN_COLUMN_LIST}) SELECT {SPAN_COLUMN_LIST} FROM spans_staging "
            "ON CONFLICT DO NOTHING"
        )

    def _ensure_partitions(self, days: set[int]) -> None:
        missing = days - self._partitions
        if not missing:
            return
        # Creating a partition locks the whole spans table until in-flight writes commit. Making
        # tomorrow's partition along with today's moves that wait away from the busy moment
        # when every writer crosses midnight at once.
        today = time.time_ns() // DAY_NS
        if today in missing:
            missing.add(today + 1)
        with self._partition_lock, self._connection() as conn:
            for day in sorted(missing - self._partitions):
                name = "spans_" + dt.datetime.fromtimestamp(day * 86_400, dt.timezone.utc).strftime(
                    "p%Y%m%d"
                )
                # Another replica may create it between IF NOT EXISTS's check and the CREATE.
                with contextlib.suppress(pg_errors.DuplicateTable, pg_errors.UniqueViolation):
                    # The last day before 2**63 ns (April 2262) ends at MAXVALUE: its end does
                    # not fit a bigint, and a span stamped there must not fail its batch.
                    upper = (day + 1) * DAY_NS
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF spans "
                        f"FOR VALUES FROM ({day * DAY_NS}) "
                        f"TO ({upper if upper < 2**63 else 'MAXVALUE'})"
                    )
                self._partitions.add(day)

    def partitions(self) -> list[str]:
        rows = self._read(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'spans' ORDER BY 1"
        )
        return [r[0] for r in rows]

    def prune_spans(self, before_ns: int) -> int:
        """Drop whole daily partitions that end at or before ``before_ns`` (instant, no vacuum
        debt); sessions are kept. Returns the number of partitions dropped."""
        dropped = 0
        with self._transaction() as conn:
            for name in self.partitions():
                day = (
                    int(
                        dt.datetime.strptime(name[len("spans_p") :], "%Y%m%d")
                        .replace(tzinfo=dt.timezone.utc)
                        .timestamp()
                    )
                    // 86_400
                )
                if (day + 1) * DAY_NS <= before_ns:
                    conn.execute(f"DROP TABLE {name}")
                    self._partitions.discard(day)
                    dropped += 1
        return dropped


def _nul_free(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_nul_free(k): _nul_free(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nul_free(v) for v in value]
    return value


def _has_nul(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether any row holds a NUL. Only the free-text columns can: name, status message and
    scope raw, the JSON columns escaped (service, operation and session id come from those)."""
    attributes, events, resource, name, message, scope = _NUL_COLUMNS
    return any(
        "\\u0000" in r[attributes]
        or "\\u0000" in r[events]
        or "\\u0000" in r[resource]
        or "\x00" in r[name]
        or (r[message] is not None and "\x00" in r[message])
        or (r[scope] is not None and "\x00" in r[scope])
        for r in rows
    )


_NUL_COLUMNS = tuple(
    SPAN_COLUMNS.index(c)
    for c in ("attributes", "events", "resource", "name", "status_message", "scope")
)


def _without_nul(record: SpanRecord) -> SpanRecord:
    return dataclasses.replace(
        record,
        name=_nul_free(record.name),
        status_message=_nul_free(record.status_message),
        attributes=_nul_free(record.attributes),
        events=[
            SpanEvent(_nul_free(e.name), e.time_ns, _nul_free(e.attributes)) for e in record.events
        ],
        resource=_nul_free(record.resource),
        scope=_nul_free(record.scope),
    )


def _configure_connection(conn: psycopg.Connection) -> None:
    # JSONB comes back parsed; orjson parses it several times faster than the stdlib.
    set_json_loads(orjson.loads, conn)


def _is_config_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(
        marker in text
        for marker in (
            "does not exist",
            "password authentication failed",
            "no password supplied",
            "no pg_hba.conf entry",
            "invalid dsn",
            "invalid connection option",
            "could not translate host name",
        )
    )


@contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    where = safe_url(url)
    try:
        yield
    except pg_errors.ProgramLimitExceeded as exc:
        # SQLSTATE class 54 (a value too large for its index, say a 6 kB session id) is an
        # OperationalError to psycopg, but no retry will ever store it: refused data, not an
        # outage (answering "unavailable" also tripped the breaker for every other writer).
        raise StoreDataError(f"Postgres at {where}: {first_line(exc)}", _reason(exc)) from exc
    except _RETRYABLE as exc:
        raise StoreUnavailable(f"Postgres at {where} unavailable: {first_line(exc)}") from exc
    except psycopg.DataError as exc:  # SQLSTATE class 22: a value the column cannot hold
        raise StoreDataError(f"Postgres at {where}: {first_line(exc)}", _reason(exc)) from exc
    except psycopg.Error as exc:
        raise StoreError(f"Postgres at {where}: {first_line(exc)}", first_line(exc)) from exc


def _reason(exc: psycopg.Error) -> str:
    """What was wrong with the data, in words fit for the client that sent it: the error's kind
    and SQLSTATE, never the server's message (it names indexes, tables and values)."""
    kind = re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__).lower()
    return f"{kind} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else kind
