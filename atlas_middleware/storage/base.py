"""The store interface shared by the embedded SQLite store and Postgres."""

from __future__ import annotations

import abc
import dataclasses
import importlib.resources
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson

from atlas_middleware.review import Baseline, DriftPolicy, drift
from atlas_middleware.storage.records import (
    REVIEW_STATUSES,
    SessionUpdate,
    SpanEvent,
    SpanRecord,
    StepUpdate,
    derive_session_updates,
    derive_step_updates,
    json_dumps,
    reward_score,
)
from atlas_middleware.telemetry import schema

_log = logging.getLogger("atlas.store")


class StoreError(RuntimeError):
    """A store operation failed for a reason retrying will not fix. ``reason``: what failed,
    without the store's address (what a client of the collector may be told)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retrying later may work."""


class StoreDataError(StoreError):
    """The database refused the data itself (a value it cannot hold, e.g. out of range): the same
    batch will be refused however often it is sent. ``reason`` says what was wrong without naming
    the database, its address or its indexes (what a client that sent the data may be told)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message, reason or "a value the store cannot hold")


@dataclass(slots=True)
class Session:
    trace_id: str
    session_id: str | None = None
    agent_name: str | None = None
    learning_key: str | None = None
    service_name: str | None = None
    task: str | None = None
    final_answer: str | None = None
    guidance: str | None = None
    lane: str | None = None
    probe_confidence: float | None = None
    model: str | None = None
    status: str | None = None
    error_type: str | None = None
    input_tokens: int | None = None  # student + teacher (null when either is unknown)
    output_tokens: int | None = None
    student_input_tokens: int | None = None  # the supervised agent's own model calls
    student_output_tokens: int | None = None
    teacher_input_tokens: int | None = None  # probe, guidance, validation, lessons
    teacher_output_tokens: int | None = None
    started_ns: int | None = None
    ended_ns: int | None = None
    evaluations: dict[str, Any] = field(default_factory=dict)
    reward_score: float | None = None
    review_status: str = "pending"
    review_note: str | None = None
    drift: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SESSION_FIELDS}


SESSION_FIELDS = tuple(Session.__dataclass_fields__)


@dataclass(slots=True)
class Step:
    """One step of a session (a node run, a workflow step, an agent turn, a tool call)."""

    trace_id: str
    span_id: str
    parent_id: str | None = None  # the enclosing step's span id
    name: str | None = None
    kind: str | None = None  # node, step, agent, tool
    started_ns: int | None = None
    ended_ns: int | None = None
    status: str | None = None  # ok, error
    error_type: str | None = None
    error: str | None = None
    input: str | None = None
    output: str | None = None
    input_tokens: int | None = None  # of the model calls inside the step
    output_tokens: int | None = None
    evaluations: dict[str, Any] = field(default_factory=dict)
    reward_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in STEP_FIELDS}


STEP_FIELDS = tuple(Step.__dataclass_fields__)
_STEP_SELECT = ", ".join(STEP_FIELDS)
# Schema version that added the steps table.
STEPS_VERSION = 6


@dataclass(slots=True)
class SessionFilter:
    review_status: str | Sequence[str] | None = None
    min_reward: float | None = None
    learning_key: str | None = None
    agent_name: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    drift_only: bool = False
    lane: str | None = None
    max_reward: float | None = None
    # Text in the task or the final answer (case-insensitive for ASCII on SQLite, fully on
    # Postgres); a literal substring: ``%`` and ``_`` match themselves.
    text: str | None = None

    def statuses(self) -> list[str] | None:
        if self.review_status is None:
            return None
        values = (
            [self.review_status]
            if isinstance(self.review_status, str)
            else list(self.review_status)
        )
        for value in values:
            check_review_status(value)
        return values


@dataclass(slots=True)
class WriteResult:
    received: int
    sessions: int = 0
    drift_alerts: int = 0
    # Evaluations whose score was NaN, infinite or not a number: stored without a score, never
    # a reward (Store.rejected_rewards keeps the running total).
    rejected_rewards: int = 0


# Schema version that added the review log (review_actions, review_changes).
REVIEW_LOG_VERSION = 5
UNDO_ACTION = "undo"
# RIM's accuracy judge, the learning page's accuracy.
ACCURACY_EVALUATION = "atlas.rim.accuracy"
HOUR_NS = 3_600 * 1_000_000_000
BUCKET_WIDTHS_NS = (HOUR_NS, 6 * HOUR_NS, 24 * HOUR_NS, 7 * 24 * HOUR_NS, 28 * 24 * HOUR_NS)


def new_action_id() -> str:
    return uuid.uuid4().hex


def session_cursor(session: Session) -> tuple[int, str]:
    """Where ``session`` sits in the newest-first order (see :meth:`Store.page_sessions`)."""
    return (session.started_ns or 0, session.trace_id)


@dataclass(slots=True)
class ReviewAction:
    """One logged review action: approve / quarantine / pending of some sessions, or an undo."""

    action_id: str
    created_ns: int
    actor: str
    source: str  # cli, ui, api
    action: str  # a review status, or "undo"
    note: str | None
    sessions: int  # sessions it matched
    changed: int  # of which changed status
    detail: dict[str, Any] | None  # e.g. the filter of a bulk action
    undoes: str | None
    undone_by: str | None
    # Only when listed for one session: that session's status and note before the action.
    previous_status: str | None = None
    previous_note: str | None = None


@dataclass(slots=True)
class UndoResult:
    action_id: str  # the undo's own log entry
    undid: str
    restored: int  # sessions put back
    moved_on: int  # sessions whose status changed again since, left as they are
    held_for_drift: int  # of the restored, sent to pending instead of approved (drift alert)


def check_review_status(status: str) -> str:
    if status not in REVIEW_STATUSES:
        raise ValueError(
            f"review status must be one of {', '.join(REVIEW_STATUSES)}; got {status!r}"
        )
    return status


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration file of a dialect, in order."""
    folder = importlib.resources.files("atlas_middleware.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def _loads(value: Any) -> Any:
    # Postgres hands JSONB back already decoded; SQLite hands back text.
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value


SESSION_WRITE_COLUMNS = (
    "trace_id",
    *SessionUpdate.COLUMNS,
    "evaluations",
    "reward_score",
    "drift",
    "review_status",
    "updated_ns",
)


@dataclass(slots=True)
class _SessionPlan:
    """One session's state after a batch, before it is written."""

    update: SessionUpdate
    evaluations: dict[str, Any]
    learning_key: str | None
    score: float | None
    status: str
    check: bool
    drift: str | None = None

    def judge(
        self,
        histories: dict[str, list[float]],
        store: Store,
        now: int,
        baselines: dict[str | None, Baseline] | None = None,
    ) -> tuple[Any, ...] | None:
        """Run the drift check if due; returns a drift_alerts row when it alerts.
        ``baselines``: each learning key's baseline, filled as the batch's checks need them."""
        if not self.check:
            return None
        baseline = baselines.get(self.learning_key) if baselines is not None else None
        if baseline is None:
            history = histories.get(self.learning_key, []) if self.learning_key else []
            baseline = Baseline.of(history, store.drift_policy)
            if baselines is not None:
                baselines[self.learning_key] = baseline
        result = drift(baseline, self.score, store.drift_policy)  # type: ignore[arg-type]
        self.drift = json_dumps(result.to_json())
        if not result.alert:
            return None
        if self.status != "quarantined":
            self.status = "pending"
        return (
            self.update.trace_id,
            self.learning_key,
            self.score,
            result.z,
            result.mad_z,
            result.baseline,
            now,
        )


class Store(abc.ABC):
    """Spans in, sessions out. Implementations: :class:`SQLiteStore`, :class:`PostgresStore`.

    Queries are written once, here, with ``%s`` placeholders; a dialect supplies connections,
    transactions, the span write path and a few expressions.
    """

    url: str
    drift_policy: DriftPolicy
    rejected_rewards: int = 0  # running total of WriteResult.rejected_rewards (see _written)
    _json_merge: str  # SQL merging sessions.evaluations with excluded.evaluations
    _drift_alert: str  # SQL that is true when a session's last drift check alerted
    _ilike = "LIKE"  # case-insensitive LIKE (SQLite's LIKE is, for ASCII)
    _lock_joined_sessions = ""  # locks the rows of ``sessions AS s`` in a join (Postgres)

    # --- dialect primitives --------------------------------------------------------------------
    @abc.abstractmethod
    def _connection(self) -> AbstractContextManager[Any]:
        """A connection for reads (autocommit)."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A connection inside a transaction that commits on exit, rolls back on error, and turns
        driver errors into StoreError / StoreUnavailable."""

    @abc.abstractmethod
    def _run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Execute one statement (``%s`` placeholders); rows if it returns any."""

    @abc.abstractmethod
    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Execute one statement for many parameter rows; rows affected."""

    def _run_returning(
        self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """Execute a RETURNING statement for many parameter rows; all returned rows."""
        return [row for params in rows for row in self._run(conn, sql, params)]

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return self._run(conn, sql, params)

    # --- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self, target: int | None = None) -> int:
        """Apply pending migrations (up to ``target``); returns the schema version."""

    def schema_version(self) -> int:
        return self._read("SELECT MAX(version) FROM atlas_schema_version")[0][0] or 0

    def health(self) -> None:
        """Raise :class:`StoreUnavailable` when the database cannot serve requests."""
        self._read("SELECT 1")

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def prune_spans(self, before_ns: int) -> int:
        """Remove the spans that started before ``before_ns`` (sessions are kept); returns how
        many went, in the store's unit: spans (SQLite) or daily partitions (Postgres)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- ingest --------------------------------------------------------------------------------
    def _written(self, result: WriteResult) -> WriteResult:
        """Called by write_spans after its commit: keeps the running counts."""
        if result.rejected_rewards:
            self.rejected_rewards += result.rejected_rewards
            _log.warning(
                "rejected %d reward scores that were not finite numbers (%d so far)",
                result.rejected_rewards,
                self.rejected_rewards,
            )
        return result

    @abc.abstractmethod
    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        """Store spans (re-sent duplicates are ignored) and update the sessions they describe,
        in one transaction: when this returns, everything is durable."""

    def _apply_session_updates(
        self, conn: Any, records: Sequence[SpanRecord]
    ) -> tuple[int, int, int]:
        """Upsert the sessions a batch describes; returns (sessions, drift alerts, rejected
        reward scores).

        Each session row is written once per batch with its final reward, drift and review
        status: the prior state is read (and locked) first, merged with the batch here, and the
        drift histories of the learning keys involved are read in one query. A fixed number of
        round trips per batch, however many sessions it holds. Rows go in trace-id order so
        concurrent writers lock them in one order and cannot deadlock.
        """
        step_rejected = self._apply_step_updates(conn, records)
        updates = sorted(derive_session_updates(records).values(), key=lambda u: u.trace_id)
        if not updates:
            return 0, 0, step_rejected
        rejected = sum(u.rejected_scores for u in updates) + step_rejected
        now = time.time_ns()
        ids = [u.trace_id for u in updates]
        in_batch, in_params = self._in_list("trace_id", ids)
        prior = {
            row[0]: row
            for row in self._run(
                conn,
                "SELECT trace_id, learning_key, evaluations, reward_score, review_status "
                f"FROM sessions WHERE {in_batch}{self._lock_rows}",
                in_params,
            )
        }
        plans = [self._plan(u, prior.get(u.trace_id)) for u in updates]
        keys = sorted({plan.learning_key for plan in plans if plan.check and plan.learning_key})
        histories = self._reward_histories(conn, keys, exclude=ids) if keys else {}
        baselines: dict[str | None, Baseline] = {}  # one per learning key, not per session
        alerts = [alert for plan in plans if (alert := plan.judge(histories, self, now, baselines))]
        returned = self._upsert_sessions(
            conn,
            [
                (
                    plan.update.trace_id,
                    *plan.update.column_values(),
                    json_dumps(plan.update.evaluations),
                    plan.score,
                    plan.drift,
                    plan.status,
                    now,
                )
                for plan in plans
            ],
        )
        # A concurrent batch of the same trace may have merged its evaluations between our read
        # and our write (only possible for a row that did not exist yet, so nothing was locked):
        # judge those sessions again on what is now stored.
        by_id = {plan.update.trace_id: plan for plan in plans}
        raced = [
            (trace_id, learning_key, _loads(evaluations), status)
            for trace_id, learning_key, evaluations, status in returned
            if _loads(evaluations) != by_id[trace_id].evaluations
        ]
        if raced:
            alerts += self._rejudge(conn, raced, exclude=ids, now=now)
        if alerts:
            self._run_many(
                conn, "INSERT INTO drift_alerts VALUES (%s, %s, %s, %s, %s, %s, %s)", alerts
            )
        return len(updates), len(alerts), rejected

    _lock_rows = ""  # SQL appended to the prior-state read to lock the rows (dialects set it)

    def _apply_step_updates(self, conn: Any, records: Sequence[SpanRecord]) -> int:
        """Upsert the steps a batch describes (step spans and step rewards); returns the
        rejected reward scores. Rewards merge by name with those stored, in the statement itself
        (concurrent batches of one step cannot lose each other's); a step's reward is then
        recomputed from what the merge returned. Rows go in key order (no deadlocks)."""
        updates = sorted(
            derive_step_updates(records).values(), key=lambda u: (u.trace_id, u.span_id)
        )
        if not updates:
            return 0
        now = time.time_ns()
        rows = [
            (
                u.trace_id,
                u.span_id,
                *u.column_values(),
                json_dumps(u.evaluations),
                reward_score(u.evaluations) if u.evaluations else None,
                now,
            )
            for u in updates
        ]
        columns = (
            "trace_id",
            "span_id",
            *StepUpdate.COLUMNS,
            "evaluations",
            "reward_score",
            "updated_ns",
        )
        keep = ", ".join(f"{c} = COALESCE(excluded.{c}, steps.{c})" for c in StepUpdate.COLUMNS)
        brought = "excluded.evaluations <> '{}'"  # this batch brought rewards for the step
        merge = self._json_merge.replace("sessions.", "steps.")
        returned = self._run_returning(
            conn,
            f"INSERT INTO steps ({', '.join(columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT (trace_id, span_id) DO UPDATE SET {keep}, "
            f"evaluations = CASE WHEN {brought} THEN {merge} ELSE steps.evaluations END, "
            "updated_ns = excluded.updated_ns "
            "RETURNING trace_id, span_id, evaluations, reward_score",
            rows,
        )
        fixes = []
        for trace_id, span_id, evaluations, score in returned:
            merged = _loads(evaluations) or {}
            expected = reward_score(merged) if merged else None
            if expected != score:
                fixes.append((expected, trace_id, span_id))
        if fixes:
            self._run_many(
                conn,
                "UPDATE steps SET reward_score = %s WHERE trace_id = %s AND span_id = %s",
                fixes,
            )
        return sum(u.rejected_scores for u in updates)

    @abc.abstractmethod
    def _in_list(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """SQL true when ``column`` is one of ``values``, and its parameters: a single parameter
        however many values. One placeholder per value breaks on large batches (a request with
        more distinct traces than the driver's limit: 65,535 parameters on Postgres, 32,766 in
        a stock SQLite build)."""

    @staticmethod
    def _plan(update: SessionUpdate, prior: Sequence[Any] | None) -> _SessionPlan:
        evaluations = dict(_loads(prior[2]) or {}) if prior else {}
        evaluations.update(update.evaluations)
        learning_key = update.learning_key or (prior[1] if prior else None)
        score = reward_score(evaluations)
        # Check when the batch brings a reward, or the root (and so the learning key) of a
        # session whose reward arrived first, and only if that changed what the last check saw:
        # re-sent spans (OTLP retries) must not log the same alert twice nor undo a review.
        check = (
            score is not None
            and bool(update.evaluations or update.learning_key is not None)
            and (prior is None or (prior[1], prior[3]) != (learning_key, score))
        )
        status = prior[4] if prior else "pending"
        return _SessionPlan(update, evaluations, learning_key, score, status, check)

    def _rejudge(
        self,
        conn: Any,
        sessions: Sequence[tuple[str, str | None, dict[str, Any], str]],
        *,
        exclude: Sequence[str],
        now: int,
    ) -> list[tuple[Any, ...]]:
        keys = sorted({key for _, key, _, _ in sessions if key})
        histories = self._reward_histories(conn, keys, exclude=exclude) if keys else {}
        changes = []
        alerts = []
        baselines: dict[str | None, Baseline] = {}
        for trace_id, learning_key, evaluations, status in sessions:
            score = reward_score(evaluations)
            if score is None:
                continue
            baseline = baselines.get(learning_key)
            if baseline is None:
                baseline = baselines[learning_key] = Baseline.of(
                    histories.get(learning_key, []) if learning_key is not None else [],
                    self.drift_policy,
                )
            result = drift(baseline, score, self.drift_policy)
            if result.alert and status != "quarantined":
                status = "pending"
            changes.append((score, json_dumps(result.to_json()), status, trace_id))
            if result.alert:
                alerts.append(
                    (trace_id, learning_key, score, result.z, result.mad_z, result.baseline, now)
                )
        if changes:
            self._update_rewards(conn, changes)
        return alerts

    def _upsert_sessions(self, conn: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Upsert session rows (columns :data:`SESSION_WRITE_COLUMNS`); returns (trace_id,
        learning_key, evaluations, review_status) of each after the merge."""
        values = f"VALUES ({', '.join(['%s'] * len(SESSION_WRITE_COLUMNS))})"
        return self._run_returning(conn, self._session_upsert(values), rows)

    def _session_upsert(self, source: str) -> str:
        """The upsert statement reading its rows from ``source`` (VALUES or a SELECT)."""
        return (
            f"INSERT INTO sessions ({', '.join(SESSION_WRITE_COLUMNS)}) {source} "
            "ON CONFLICT (trace_id) DO UPDATE SET "
            + ", ".join(
                f"{c} = COALESCE(excluded.{c}, sessions.{c})"
                for c in (*SessionUpdate.COLUMNS, "reward_score", "drift")
            )
            + f", evaluations = {self._json_merge}, review_status = excluded.review_status, "
            "updated_ns = excluded.updated_ns "
            "RETURNING trace_id, learning_key, evaluations, review_status"
        )

    def _update_rewards(self, conn: Any, changes: Sequence[Sequence[Any]]) -> None:
        """Apply (reward_score, drift JSON, review_status, trace_id) rows."""
        self._run_many(
            conn,
            "UPDATE sessions SET reward_score = %s, drift = %s, review_status = %s "
            "WHERE trace_id = %s",
            changes,
        )

    def _reward_histories(
        self, conn: Any, keys: Sequence[str], *, exclude: Sequence[str]
    ) -> dict[str, list[float]]:
        """The last ``window`` rewards of each learning key, most recent session first, leaving
        out the sessions being written (they are judged against what came before them)."""
        skip, skip_params = self._in_list("trace_id", exclude)
        return {
            key: [
                row[0]
                for row in self._run(
                    conn,
                    "SELECT reward_score FROM sessions WHERE learning_key = %s "
                    f"AND reward_score IS NOT NULL AND started_ns IS NOT NULL AND NOT ({skip}) "
                    "ORDER BY started_ns DESC, trace_id DESC LIMIT %s",
                    (key, *skip_params, self.drift_policy.window),
                )
            ]
            for key in keys
        }

    # --- sessions ------------------------------------------------------------------------------
    def _where(self, where: SessionFilter | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if where is not None:
            statuses = where.statuses()
            if statuses:
                clauses.append(f"review_status IN ({', '.join(['%s'] * len(statuses))})")
                params.extend(statuses)
            for column, op, value in (
                ("reward_score", ">=", where.min_reward),
                ("reward_score", "<=", where.max_reward),
                ("learning_key", "=", where.learning_key),
                ("agent_name", "=", where.agent_name),
                ("lane", "=", where.lane),
                ("started_ns", ">=", where.since_ns),
                ("started_ns", "<", where.until_ns),
            ):
                if value is not None:
                    clauses.append(f"{column} {op} %s")
                    params.append(value)
            if where.drift_only:
                clauses.append(self._drift_alert)
            if where.text:
                pattern = "%" + _like_literal(where.text) + "%"
                clauses.append(
                    f"(task {self._ilike} %s ESCAPE '\\' OR final_answer {self._ilike} %s "
                    "ESCAPE '\\')"
                )
                params.extend((pattern, pattern))
        return (" AND ".join(clauses) or "1=1"), params

    def iter_sessions(
        self,
        where: SessionFilter | None = None,
        *,
        newest_first: bool = False,
        limit: int | None = None,
        page_size: int = 500,
    ) -> Iterator[Session]:
        """Stream sessions page by page. Keyset pagination: each page is a short query, so a long
        export holds no transaction open and memory stays at one page."""
        clause, params = self._where(where)
        order = "DESC" if newest_first else "ASC"
        cmp = "<" if newest_first else ">"
        after: tuple[int, str] | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            keyset, page_params = "", list(params)
            if after is not None:
                keyset, keyset_params = _keyset(cmp, after)
                page_params.extend(keyset_params)
            rows = self._read(
                f"SELECT {_SESSION_SELECT}, COALESCE(started_ns, 0) FROM sessions "
                f"WHERE {clause}{keyset} "
                f"ORDER BY COALESCE(started_ns, 0) {order}, trace_id {order} LIMIT %s",
                (*page_params, size),
            )
            for row in rows:
                yield self._session_from_row(row[:-1])
            if len(rows) < size:
                return
            after = (rows[-1][-1], rows[-1][0])
            if remaining is not None:
                remaining -= len(rows)

    def iter_review_states(
        self, where: SessionFilter | None = None, *, page_size: int = 5000
    ) -> Iterator[tuple[str, str, bool]]:
        """(trace id, review status, has a drift alert) of the sessions matching ``where``, in
        start order: what a bulk review decides on, without reading whole rows."""
        clause, params = self._where(where)
        alert = f"CASE WHEN drift IS NOT NULL AND {self._drift_alert} THEN 1 ELSE 0 END"
        after: tuple[int, str] | None = None
        while True:
            keyset, keyset_params = ("", []) if after is None else _keyset(">", after)
            rows = self._read(
                f"SELECT trace_id, review_status, {alert}, COALESCE(started_ns, 0) FROM sessions "
                f"WHERE {clause}{keyset} ORDER BY COALESCE(started_ns, 0), trace_id LIMIT %s",
                (*params, *keyset_params, page_size),
            )
            for trace_id, status, flagged, _ in rows:
                yield trace_id, status, bool(flagged)
            if len(rows) < page_size:
                return
            after = (rows[-1][3], rows[-1][0])

    def get_session(self, key: str) -> Session | None:
        """By trace id, session id, or a unique prefix of either."""
        # Exact matches first: with "job-1", "job-10" and "job-11" stored, "job-1" is not a
        # prefix question (one query with LIMIT 2 could return the two longer ids only).
        rows = self._read(
            f"SELECT {_SESSION_SELECT} FROM sessions WHERE trace_id = %s OR session_id = %s "
            "LIMIT 2",
            (key, key),
        )
        if not rows:
            # A prefix is literal text: "_" and "%" in an id are not wildcards.
            prefix = _like_literal(key) + "%"
            rows = self._read(
                f"SELECT {_SESSION_SELECT} FROM sessions WHERE trace_id LIKE %s ESCAPE '\\' "
                "OR session_id LIKE %s ESCAPE '\\' LIMIT 2",
                (prefix, prefix),
            )
        if len(rows) == 1:
            return self._session_from_row(rows[0])
        if len(rows) > 1:
            raise StoreError(f"{key!r} matches several sessions; give more characters of the id")
        return None

    def spans_for(self, trace_ids: Sequence[str]) -> dict[str, list[SpanRecord]]:
        result: dict[str, list[SpanRecord]] = {t: [] for t in trace_ids}
        if trace_ids:
            clause, params = self._in_list("trace_id", list(trace_ids))
            rows = self._read(
                f"SELECT {SPAN_COLUMN_LIST} FROM spans WHERE {clause} "
                "ORDER BY start_time_unix_nano, span_id",
                params,
            )
            for row in rows:
                result[row[0]].append(span_from_row(row))
        return result

    def steps_for(self, trace_id: str) -> list[Step]:
        """The steps of one session (by trace id), in the order they started. Empty on a store
        not yet migrated to steps."""
        if self.schema_version() < STEPS_VERSION:
            return []
        rows = self._read(
            f"SELECT {_STEP_SELECT} FROM steps WHERE trace_id = %s "
            "ORDER BY COALESCE(started_ns, 0), span_id",
            (trace_id,),
        )
        return [self._step_from_row(row) for row in rows]

    def steps_of(self, trace_ids: Sequence[str]) -> dict[str, list[Step]]:
        """The steps of several sessions, by trace id (each in start order)."""
        result: dict[str, list[Step]] = {t: [] for t in trace_ids}
        if not trace_ids or self.schema_version() < STEPS_VERSION:
            return result
        clause, params = self._in_list("trace_id", list(trace_ids))
        for row in self._read(
            f"SELECT {_STEP_SELECT} FROM steps WHERE {clause} "
            "ORDER BY COALESCE(started_ns, 0), span_id",
            params,
        ):
            result[row[0]].append(self._step_from_row(row))
        return result

    @staticmethod
    def _step_from_row(row: Sequence[Any]) -> Step:
        values = dict(zip(STEP_FIELDS, row, strict=True))
        values["evaluations"] = _loads(values["evaluations"]) or {}
        return Step(**values)

    def set_review(
        self,
        trace_ids: Sequence[str],
        status: str,
        note: str | None = None,
        *,
        only_from: Sequence[str] | None = None,
        unless_drift: bool = False,
        actor: str | None = None,
        source: str = "api",
        action_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Set the review status of sessions; returns how many rows matched.

        ``only_from`` and ``unless_drift`` make the change conditional on the state at write
        time, so a bulk approval cannot overwrite a quarantine or a drift alert that landed
        after the sessions were listed.

        The change is logged in the review log (who: ``actor``, from where: ``source``, the
        note, and each session's status and note before it) in the same transaction, so it can
        be audited and undone (:meth:`undo_review`). Calls passing the same ``action_id`` (a bulk
        action written in chunks) add up to one logged action. A store not yet migrated to the
        review log (schema version 5) changes the sessions without logging.
        """
        check_review_status(status)
        conditions = ""
        params: list[Any] = []
        if only_from is not None:
            for value in only_from:
                check_review_status(value)
            conditions += f" AND review_status IN ({', '.join(['%s'] * len(only_from))})"
            params.extend(only_from)
        if unless_drift:
            conditions += f" AND (drift IS NULL OR NOT ({self._drift_alert}))"
        ids = list(dict.fromkeys(trace_ids))
        if not ids:
            return 0
        in_ids, in_params = self._in_list("trace_id", ids)
        with self._transaction() as conn:
            before = self._run(
                conn,
                "SELECT trace_id, review_status, review_note FROM sessions "
                f"WHERE {in_ids}{conditions}{self._lock_rows}",
                (*in_params, *params),
            )
            if not before:
                return 0
            in_matched, matched_params = self._in_list("trace_id", [row[0] for row in before])
            self._run(
                conn,
                "UPDATE sessions SET review_status = %s, review_note = COALESCE(%s, review_note) "
                f"WHERE {in_matched}",
                (status, note, *matched_params),
            )
            if self._has_review_log(conn):
                self._log_review(
                    conn,
                    action_id or new_action_id(),
                    action=status,
                    actor=actor,
                    source=source,
                    note=note,
                    detail=detail,
                    before=before,
                )
        return len(before)

    # --- the review log ------------------------------------------------------------------------
    def _has_review_log(self, conn: Any) -> bool:
        version = self._run(conn, "SELECT MAX(version) FROM atlas_schema_version")[0][0]
        return (version or 0) >= REVIEW_LOG_VERSION

    def _log_review(
        self,
        conn: Any,
        action_id: str,
        *,
        action: str,
        actor: str | None,
        source: str,
        note: str | None,
        detail: dict[str, Any] | None,
        before: Sequence[Sequence[Any]],
        undoes: str | None = None,
    ) -> None:
        """One review_actions row (counts added up when the id is already logged) and a
        review_changes row per session: its status and note before the action."""
        changed = sum(1 for row in before if row[1] != action)
        self._run(
            conn,
            "INSERT INTO review_actions (action_id, created_ns, actor, source, action, note, "
            "sessions, changed, detail, undoes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (action_id) DO UPDATE SET "
            "sessions = review_actions.sessions + excluded.sessions, "
            "changed = review_actions.changed + excluded.changed",
            (
                action_id,
                time.time_ns(),
                actor or "unknown",
                source,
                action,
                note,
                len(before),
                changed,
                None if detail is None else json_dumps(detail),
                undoes,
            ),
        )
        self._run_many(
            conn,
            "INSERT INTO review_changes VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(action_id, trace_id, status, old_note) for trace_id, status, old_note in before],
        )

    def undo_review(
        self, action_id: str, *, actor: str | None = None, source: str = "api"
    ) -> UndoResult:
        """Put the sessions an action changed back to the status and note they had before it.

        A session whose status changed again since (another review, a drift alert) keeps its
        new status; one that would go back to ``approved`` while it carries a drift alert goes
        to ``pending`` instead (the drift gate holds for undo too). The undo is logged as an
        action of its own and marks the original as undone; an action is undone at most once.
        """
        with self._transaction() as conn:
            rows = self._run(
                conn, "SELECT action FROM review_actions WHERE action_id = %s", (action_id,)
            )
            if not rows:
                raise StoreError(f"no review action {action_id!r} in the review log")
            action = rows[0][0]
            if action == UNDO_ACTION:
                raise StoreError(
                    f"review action {action_id} is itself an undo; review the sessions again instead"
                )
            undo_id = new_action_id()
            claimed = self._run_many(
                conn,
                "UPDATE review_actions SET undone_by = %s "
                "WHERE action_id = %s AND undone_by IS NULL",
                [(undo_id, action_id)],
            )
            if claimed != 1:
                raise StoreError(f"review action {action_id} was already undone")
            changes = self._run(
                conn,
                "SELECT s.trace_id, c.previous_status, c.previous_note, s.review_status, "
                "s.review_note, s.drift FROM review_changes c "
                "JOIN sessions s ON s.trace_id = c.trace_id WHERE c.action_id = %s "
                f"ORDER BY s.trace_id{self._lock_joined_sessions}",
                (action_id,),
            )
            restore: list[tuple[Any, ...]] = []
            before: list[tuple[Any, ...]] = []
            moved_on = held = 0
            for trace_id, previous, previous_note, current, current_note, drift_json in changes:
                if current != action:
                    moved_on += 1
                    continue
                target = previous
                drift_record = _loads(drift_json)
                if target == "approved" and drift_record and drift_record.get("alert"):
                    target = "pending"
                    held += 1
                restore.append((target, previous_note, trace_id))
                before.append((trace_id, current, current_note))
            if restore:
                self._run_many(
                    conn,
                    "UPDATE sessions SET review_status = %s, review_note = %s WHERE trace_id = %s",
                    restore,
                )
            self._log_review(
                conn,
                undo_id,
                action=UNDO_ACTION,
                actor=actor,
                source=source,
                note=None,
                detail={"undoes": action_id, "action": action},
                before=before,
                undoes=action_id,
            )
        return UndoResult(undo_id, action_id, len(restore), moved_on, held)

    def review_log(
        self,
        *,
        trace_id: str | None = None,
        limit: int = 50,
        before: tuple[int, str] | None = None,
    ) -> list[ReviewAction]:
        """Logged review actions, newest first: all of them (paged with ``before``, the
        ``(created_ns, action_id)`` of the last one seen) or those that touched ``trace_id``
        (with that session's status and note before each)."""
        columns = (
            "a.action_id, a.created_ns, a.actor, a.source, a.action, a.note, a.sessions, "
            "a.changed, a.detail, a.undoes, a.undone_by"
        )
        if trace_id is not None:
            rows = self._read(
                f"SELECT {columns}, c.previous_status, c.previous_note FROM review_changes c "
                "JOIN review_actions a ON a.action_id = c.action_id WHERE c.trace_id = %s "
                "ORDER BY a.created_ns DESC, a.action_id DESC LIMIT %s",
                (trace_id, limit),
            )
        else:
            keyset, params = "", []
            if before is not None:
                keyset, params = "WHERE (a.created_ns, a.action_id) < (%s, %s) ", list(before)
            rows = self._read(
                f"SELECT {columns}, NULL, NULL FROM review_actions a {keyset}"
                "ORDER BY a.created_ns DESC, a.action_id DESC LIMIT %s",
                (*params, limit),
            )
        return [
            ReviewAction(*(*row[:8], _loads(row[8]) if row[8] is not None else None, *row[9:]))
            for row in rows
        ]

    def review_action(self, action_id: str) -> ReviewAction | None:
        rows = self._read(
            "SELECT action_id, created_ns, actor, source, action, note, sessions, changed, "
            "detail, undoes, undone_by FROM review_actions WHERE action_id = %s",
            (action_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return ReviewAction(*(*row[:8], _loads(row[8]) if row[8] is not None else None, *row[9:]))

    def session_counts(self, where: SessionFilter | None = None) -> dict[str, int]:
        """Number of sessions per review status, of those matching ``where`` (its review status
        aside: the counts are what each status would show)."""
        if where is not None:
            where = dataclasses.replace(where, review_status=None)
        clause, params = self._where(where)
        counts = dict.fromkeys(REVIEW_STATUSES, 0)
        rows = self._read(
            f"SELECT review_status, COUNT(*) FROM sessions WHERE {clause} GROUP BY review_status",
            params,
        )
        counts.update({status: int(n) for status, n in rows})
        return counts

    # --- browsing (atlas ui) -------------------------------------------------------------------
    def page_sessions(
        self,
        where: SessionFilter | None = None,
        *,
        limit: int = 50,
        cursor: tuple[int, str] | None = None,
        newer: bool = False,
    ) -> list[Session]:
        """One page of sessions, newest first. ``cursor`` is :func:`session_cursor` of a
        session already shown: the page holds the sessions after it (older), or with
        ``newer=True`` the ``limit`` sessions just before it (newer). Keyset pagination: every
        page costs the same, however deep."""
        clause, params = self._where(where)
        keyset = ""
        if cursor is not None:
            keyset, keyset_params = _keyset(">" if newer else "<", cursor)
            params = [*params, *keyset_params]
        order = "ASC" if newer else "DESC"
        rows = self._read(
            f"SELECT {_SESSION_SELECT} FROM sessions WHERE {clause}{keyset} "
            f"ORDER BY COALESCE(started_ns, 0) {order}, trace_id {order} LIMIT %s",
            (*params, limit),
        )
        sessions = [self._session_from_row(row) for row in rows]
        return sessions[::-1] if newer else sessions

    def session_facets(self) -> dict[str, list[str]]:
        """The agents, learning keys and lanes that occur, for filter choices."""
        return {
            column: [
                row[0]
                for row in self._read(
                    f"SELECT {column} FROM sessions WHERE {column} IS NOT NULL "
                    f"GROUP BY {column} ORDER BY {column}"
                )
            ]
            for column in ("agent_name", "learning_key", "lane")
        }

    def learning_keys(self) -> list[dict[str, Any]]:
        """Per learning key: sessions, sessions per review status, mean reward, the last start,
        and the number of playbook lessons; most recently active first."""
        rows = self._read(
            "SELECT learning_key, COUNT(*), "
            + ", ".join(
                f"SUM(CASE WHEN review_status = '{status}' THEN 1 ELSE 0 END)"
                for status in REVIEW_STATUSES
            )
            + ", AVG(reward_score), COUNT(reward_score), MAX(started_ns) FROM sessions "
            "WHERE learning_key IS NOT NULL GROUP BY learning_key "
            "ORDER BY MAX(COALESCE(started_ns, 0)) DESC, learning_key"
        )
        lessons = {
            key: len((_loads(playbook) or {}).get("lessons") or [])
            for key, playbook in self._read("SELECT learning_key, playbook FROM playbooks")
        }
        names = ("learning_key", "sessions", *REVIEW_STATUSES, "mean_reward", "rewarded", "last_ns")
        keys = []
        for row in rows:
            entry = dict(zip(names, row, strict=True))
            for name in ("sessions", *REVIEW_STATUSES, "rewarded"):
                entry[name] = int(entry[name] or 0)
            entry["lessons"] = lessons.get(entry["learning_key"], 0)
            keys.append(entry)
        return keys

    def learning_series(
        self, learning_key: str, *, buckets: int = 40, min_per_bucket: int = 5
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        """A learning key over time: (bucket width in ns, per bucket sessions / mean reward /
        accuracy, per bucket and lane the number of sessions). The width is 1 or 6 hours, a day,
        a week or 4 weeks: the narrowest that spans the key's history in at most ``buckets``
        buckets with ``min_per_bucket`` sessions in each on average. Accuracy
        is the mean score of RIM's accuracy judge (``atlas.rim.accuracy``; decided by the
        reference or verifier when there was one), over the sessions it scored."""
        first, last, count = self._read(
            "SELECT MIN(started_ns), MAX(started_ns), COUNT(*) FROM sessions "
            "WHERE learning_key = %s AND started_ns IS NOT NULL",
            (learning_key,),
        )[0]
        if first is None:
            return HOUR_NS, [], []
        # The narrowest width that fits in ``buckets`` and averages a few sessions per bucket
        # (one session a bucket is noise, not a trend).
        fitting = [w for w in BUCKET_WIDTHS_NS if (last - first) // w < buckets]
        width = next(
            (w for w in fitting if count / ((last - first) // w + 1) >= min_per_bucket),
            fitting[-1] if fitting else BUCKET_WIDTHS_NS[-1],
        )
        accuracy_sql, accuracy_params = self._evaluation_score(ACCURACY_EVALUATION)
        rows = self._read(
            "SELECT b, COUNT(*), AVG(reward_score), COUNT(reward_score), AVG(acc), COUNT(acc) "
            f"FROM (SELECT started_ns / CAST(%s AS BIGINT) AS b, reward_score, {accuracy_sql} "
            "AS acc FROM sessions WHERE learning_key = %s AND started_ns IS NOT NULL) t "
            "GROUP BY b ORDER BY b",
            (width, *accuracy_params, learning_key),
        )
        series = [
            {
                "start_ns": int(b) * width,
                "sessions": int(n),
                "mean_reward": reward,
                "rewarded": int(rewarded),
                "accuracy": accuracy,
                "judged": int(judged),
            }
            for b, n, reward, rewarded, accuracy, judged in rows
        ]
        lanes = [
            {"start_ns": int(b) * width, "lane": lane, "sessions": int(n)}
            for b, lane, n in self._read(
                "SELECT started_ns / CAST(%s AS BIGINT) AS b, COALESCE(lane, '-'), COUNT(*) "
                "FROM sessions WHERE learning_key = %s AND started_ns IS NOT NULL "
                "GROUP BY b, COALESCE(lane, '-') ORDER BY b",
                (width, learning_key),
            )
        ]
        return width, series, lanes

    @abc.abstractmethod
    def _evaluation_score(self, name: str) -> tuple[str, list[Any]]:
        """SQL (and its parameters) for the score of evaluation ``name`` of a session row."""

    def training_runs_for(self, learning_key: str) -> list[dict[str, Any]]:
        """The training runs that used sessions of ``learning_key``, each with ``key_sessions``,
        how many of its sessions were of that key."""
        used = dict(
            self._read(
                "SELECT t.run_id, COUNT(*) FROM training_run_sessions t "
                "JOIN sessions s ON s.trace_id = t.trace_id WHERE s.learning_key = %s "
                "GROUP BY t.run_id",
                (learning_key,),
            )
        )
        runs = [run for run in self.training_runs() if run["run_id"] in used]
        for run in runs:
            run["key_sessions"] = int(used[run["run_id"]])
        return runs

    def count_spans(self) -> int:
        count: int = self._read("SELECT COUNT(*) FROM spans")[0][0]
        return count

    def drift_alerts(
        self, learning_key: str | None = None, *, trace_id: str | None = None
    ) -> list[dict[str, Any]]:
        # The filter is built here, not as "%s IS NULL OR ...": Postgres cannot type a bare
        # parameter in "$1 IS NULL" and rejects the query.
        clauses, params = [], []
        for column, value in (("learning_key", learning_key), ("trace_id", trace_id)):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._read(
            "SELECT trace_id, learning_key, reward, z, mad_z, baseline, created_ns "
            f"FROM drift_alerts {where} ORDER BY created_ns",
            params,
        )
        names = ("trace_id", "learning_key", "reward", "z", "mad_z", "baseline", "created_ns")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # --- learning memory and training lineage --------------------------------------------------
    def get_playbook(self, learning_key: str) -> dict[str, Any] | None:
        rows = self._read("SELECT playbook FROM playbooks WHERE learning_key = %s", (learning_key,))
        return _loads(rows[0][0]) if rows else None

    def put_playbook(self, learning_key: str, playbook: dict[str, Any]) -> None:
        with self._transaction() as conn:
            self._run(
                conn,
                "INSERT INTO playbooks VALUES (%s, %s, %s) ON CONFLICT (learning_key) DO UPDATE "
                "SET playbook = excluded.playbook, updated_ns = excluded.updated_ns",
                (learning_key, json_dumps(playbook), time.time_ns()),
            )

    def record_training_run(
        self,
        run_id: str,
        *,
        checkpoint: str,
        recipe: str,
        trace_ids: Iterable[str],
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Record which sessions trained which checkpoint."""
        with self._transaction() as conn:
            self._run(
                conn,
                "INSERT INTO training_runs VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id) DO "
                "UPDATE SET checkpoint = excluded.checkpoint, metrics = excluded.metrics",
                (run_id, checkpoint, recipe, json_dumps(metrics or {}), time.time_ns()),
            )
            self._run_many(
                conn,
                "INSERT INTO training_run_sessions VALUES (%s, %s) ON CONFLICT DO NOTHING",
                ((run_id, t) for t in trace_ids),
            )

    def training_runs(self) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT r.run_id, r.checkpoint, r.recipe, r.metrics, r.created_ns, "
            "(SELECT COUNT(*) FROM training_run_sessions s WHERE s.run_id = r.run_id) "
            "FROM training_runs r ORDER BY r.created_ns"
        )
        names = ("run_id", "checkpoint", "recipe", "metrics", "created_ns", "sessions")
        runs = [dict(zip(names, row, strict=True)) for row in rows]
        for run in runs:
            run["metrics"] = _loads(run["metrics"])
        return runs

    @staticmethod
    def _session_from_row(row: Sequence[Any]) -> Session:
        values = dict(zip(SESSION_FIELDS, row, strict=True))
        values["evaluations"] = _loads(values["evaluations"]) or {}
        values["drift"] = _loads(values["drift"])
        return Session(**values)


_SESSION_SELECT = ", ".join(SESSION_FIELDS)


def _keyset(cmp: str, after: tuple[int, str]) -> tuple[str, list[Any]]:
    """SQL for "after ``after`` in (start, trace id) order". The scalar bound repeats what the
    row comparison implies: SQLite seeks an index only on it (a row comparison alone makes it
    scan from the first entry, so every page would cost as much as all before it)."""
    return (
        f" AND COALESCE(started_ns, 0) {cmp}= %s AND (COALESCE(started_ns, 0), trace_id) {cmp} "
        "(%s, %s)",
        [after[0], *after],
    )


def _like_literal(text: str) -> str:
    """``text`` for a LIKE pattern with ESCAPE '\\': its ``%`` and ``_`` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "status_code",
    "status_message",
    "service_name",
    "operation",
    "session_id",
    "attributes",
    "events",
    "resource",
    "scope",
)
SPAN_COLUMN_LIST = ", ".join(SPAN_COLUMNS)


def span_rows(records: Iterable[SpanRecord]) -> list[tuple[Any, ...]]:
    """Rows in SPAN_COLUMNS order, JSON as text. JSON encoding is most of the cost of writing a
    span, so each batch encodes a shared resource once."""
    rows = []
    resources: dict[int, str] = {}
    for r in records:
        key = id(r.resource)
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = json_dumps(r.resource)
        rows.append(
            (
                r.trace_id,
                r.span_id,
                r.parent_span_id,
                r.name,
                r.kind,
                r.start_ns,
                r.end_ns,
                r.status_code,
                r.status_message,
                r.service_name,
                r.operation,
                _text_column(r.attributes.get(schema.ATLAS_SESSION_ID)),
                json_dumps(r.attributes),
                json_dumps([e.to_json() for e in r.events]) if r.events else "[]",
                resource,
                r.scope,
            )
        )
    return rows


def _text_column(value: Any) -> str | None:
    # Attribute values come from clients: a list or map where a string belongs must not make
    # the whole batch unwritable (the session row reads the same value the same way).
    if value is None or isinstance(value, str):
        return value
    return str(value)


def span_from_row(row: Sequence[Any]) -> SpanRecord:
    events = _loads(row[13]) or []
    return SpanRecord(
        trace_id=row[0],
        span_id=row[1],
        parent_span_id=row[2],
        name=row[3],
        kind=row[4],
        start_ns=row[5],
        end_ns=row[6],
        status_code=row[7],
        status_message=row[8],
        attributes=_loads(row[12]) or {},
        events=[
            SpanEvent(e["name"], e["time_unix_nano"], e.get("attributes") or {}) for e in events
        ],
        resource=_loads(row[14]) or {},
        scope=row[15],
    )
