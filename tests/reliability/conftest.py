"""Fault-suite fixtures: a private Postgres cluster a test may stop and restart (never the shared
server other tests use), clients that keep sending while faults are injected, and the checks
that every span sent is stored exactly once."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pytest
from atlas_middleware.otel_exporters.sdk import to_records
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from atlas_middleware.storage import open_store
from tests.helpers import PrivatePostgres, session_spans


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    try:
        pg = PrivatePostgres().init()
    except (RuntimeError, FileNotFoundError) as exc:
        if os.environ.get("ATLAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"cannot create a private Postgres cluster: {exc}")
        pytest.skip(f"cannot create a private Postgres cluster: {exc}")
    pg.start()
    try:
        yield pg
    finally:
        pg.__exit__()


@dataclass
class Client:
    """One sending thread: ``batches`` batches of ``sessions`` sessions each through
    ``exporter``. ``retry_loop``: the application retries a FAILURE itself (for an official
    exporter used bare); otherwise the exporter is expected to own its retries."""

    name: str
    exporter: SpanExporter
    batches: int
    sessions: int = 2
    retry_loop: bool = False
    pause: float = 0.02
    sent: list = field(default_factory=list)
    failures: int = 0
    refused: int = 0
    error: BaseException | None = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Client:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for _ in range(self.batches):
                if self.stop.is_set():
                    return
                spans = session_spans(self.sessions, service=self.name)
                refused = False
                while self.exporter.export(spans) != SpanExportResult.SUCCESS:
                    self.failures += 1
                    if not self.retry_loop:
                        # A retrying exporter refuses only when its bound is hit: a counted drop.
                        self.refused += len(spans)
                        refused = True
                        break
                    time.sleep(0.2)
                if not refused:
                    self.sent.extend(spans)
                time.sleep(self.pause)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 300) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} still sending after {timeout}s"
        if self.error is not None:
            raise self.error


def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def assert_exactly_once(url: str, sent: list) -> dict[str, int]:
    """Every span sent is stored once, field for field, and every session once with its
    reward. Returns the counts for the report."""
    expected = {(r.trace_id, r.span_id): r.to_json() for r in to_records(sent)}
    assert len(expected) == len(sent), "the clients sent duplicate span ids"
    with open_store(url) as store:
        total = store.count_spans()
        traces = sorted({trace for trace, _ in expected})
        stored = {
            (r.trace_id, r.span_id): r.to_json()
            for records in store.spans_for(traces).values()
            for r in records
        }
        sessions = list(store.iter_sessions())
    assert total == len(expected), f"{total} spans stored, {len(expected)} sent"
    assert stored.keys() == expected.keys()
    differing = [key for key in expected if stored[key] != expected[key]]
    assert not differing, f"{len(differing)} spans differ, e.g. {stored[differing[0]]}"
    roots = {r.trace_id for r in to_records(sent) if r.name.startswith("invoke_agent")}
    assert {s.trace_id for s in sessions} == roots
    assert all(s.reward_score == pytest.approx(0.8) for s in sessions)
    return {"spans_sent": len(expected), "spans_stored": total, "sessions": len(sessions)}


@contextmanager
def held_session_writes(url: str) -> Iterator[psycopg.Connection]:
    """Lock the sessions table from another connection: a batch then stops inside its
    transaction after its spans were COPY'd and before it can commit."""
    conn = psycopg.connect(url)
    conn.execute("LOCK TABLE sessions IN EXCLUSIVE MODE")
    try:
        yield conn
    finally:
        conn.commit()
        conn.close()


def lock_waiters(url: str) -> int:
    """How many backends of this database wait on a lock (held batches)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def waiting_on_lock(url: str) -> bool:
    """Whether a backend of this database is waiting on a lock (a held batch)."""
    return lock_waiters(url) > 0
