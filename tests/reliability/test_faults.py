"""The fault suite: clients keep sending while Postgres restarts and the collector is killed
with SIGKILL in the middle of a batch, then every span sent must be stored exactly once.

Injected per round: Postgres stopped cleanly (``pg_ctl stop -m fast``) and restarted, Postgres
killed as in a crash (``-m immediate``: no checkpoint, crash recovery from the WAL on restart)
and restarted, each while batches are being written; then the collector SIGKILLed mid-batch.

Clients: the retrying exporter (with its disk spool) in front of the official OTLP/HTTP
exporter, the retrying exporter in front of the official OTLP/gRPC exporter, and the official
OTLP/HTTP exporter alone with the application retrying what it refuses. The short variant runs
in CI; ``-m soak`` runs the long one (``make soak``).
"""

from __future__ import annotations

import json
import os

import pytest
import requests
from atlas_middleware.otel_exporters.spool import RetryingSpanExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)

from tests.helpers import Collector
from tests.reliability.conftest import (
    Client,
    assert_exactly_once,
    held_session_writes,
    wait_until,
    waiting_on_lock,
)

pytestmark = pytest.mark.postgres


def _progress(clients: list[Client]) -> int:
    return sum(len(c.sent) for c in clients)


def _advance(clients: list[Client], spans: int, timeout: float = 90) -> None:
    target = _progress(clients) + spans
    wait_until(lambda: _progress(clients) >= target, timeout, f"{spans} more spans acknowledged")


@pytest.mark.parametrize(
    ("rounds", "batches"),
    [
        pytest.param(1, 400, id="short"),
        pytest.param(10, 100_000, id="long", marks=[pytest.mark.soak, pytest.mark.timeout(1200)]),
    ],
)
def test_every_span_exactly_once_through_restarts_and_kills(private_pg, tmp_path, rounds, batches):
    collector = Collector(private_pg.url, "--max-inflight", "8").start()
    fast = {"initial_backoff_s": 0.1, "max_backoff_s": 1.0}
    spooled = RetryingSpanExporter(
        HttpExporter(endpoint=collector.traces_url, timeout=3), spool_dir=tmp_path, **fast
    )
    queued = RetryingSpanExporter(
        GrpcExporter(endpoint=collector.grpc, insecure=True, timeout=3), **fast
    )
    clients = [
        Client("spool-http", spooled, batches),
        Client("queue-grpc", queued, batches),
        Client(
            "sdk-http",
            HttpExporter(endpoint=collector.traces_url, timeout=3),
            batches,
            retry_loop=True,
        ),
    ]
    injected = {
        "postgres_restarts": 0,  # pg_ctl stop -m fast: a clean shutdown
        "postgres_crashes": 0,  # pg_ctl stop -m immediate: crash recovery from the WAL on start
        # Store failures the collector saw while its Postgres was down (it queues the requests
        # it cannot store and acknowledges them; without the queue it answered 503).
        "collector_503s": 0,
        "collector_sigkills": 0,
        "killed_mid_batch": 0,
    }

    def unavailable_answers() -> int:
        # /health keeps its counters while the store is down (it answers 503 then).
        return requests.get(f"{collector.http}/health", timeout=30).json()["store_unavailable"]

    try:
        for client in clients:
            client.start()
        for _ in range(rounds):
            for mode in ("fast", "immediate"):
                _advance(clients, 200)
                # Postgres stopped (cleanly, or killed as in a crash) while batches are being
                # written, and started again once the outage was seen by the clients: the
                # collector answered at least one of them 503.
                before = unavailable_answers()
                private_pg.stop(mode)
                wait_until(lambda b=before: unavailable_answers() > b, 60, "a 503 while down")
                private_pg.start()
                injected["collector_503s"] += unavailable_answers() - before
                injected["postgres_restarts" if mode == "fast" else "postgres_crashes"] += 1
            _advance(clients, 200)
            # SIGKILL while a batch sits inside its transaction (spans COPY'd, not committed).
            with held_session_writes(private_pg.url):
                wait_until(lambda: waiting_on_lock(private_pg.url), 60, "a batch mid-write")
                collector.stop(sig=9)
            injected["collector_sigkills"] += 1
            injected["killed_mid_batch"] += 1
            collector.start()
        _advance(clients, 200)
    finally:
        try:
            for client in clients:
                client.stop.set()
            for client in clients:
                client.join()
            for exporter in (spooled, queued):
                assert exporter.force_flush(120_000), exporter.stats()
            # What the collector queued while Postgres was down lands before the check.
            wait_until(
                lambda: (
                    requests.get(f"{collector.http}/health", timeout=30).json()["queue_requests"]
                    == 0
                ),
                300,
                "the collector's receive queue drained",
            )
        finally:
            collector.stop()  # never leave the collector running, whatever failed
    stats = {"spool-http": spooled.stats(), "queue-grpc": queued.stats()}
    for exporter in (spooled, queued):
        exporter.shutdown()
    sent = [span for client in clients for span in client.sent]
    counts = assert_exactly_once(private_pg.url, sent)
    # What matters is above: every span once. Whether a client saw a failure depends on timing
    # (an exporter may ride out a short outage inside its own retries); that the faults really
    # happened is checked where they were injected (503s seen, a batch held at the SIGKILL).
    assert injected["collector_503s"] >= 2 * rounds
    # Drops happen only when a bound is hit (the memory-only client over long outages) and are
    # accounted for exactly: what the exporter counted is what its client saw refused.
    assert stats["spool-http"].dropped_spans == clients[0].refused
    assert stats["queue-grpc"].dropped_spans == clients[1].refused
    if rounds == 1:
        assert all(s.dropped_spans == 0 for s in stats.values())
    report = {
        "variant": "long" if rounds > 1 else "short",
        **injected,
        **counts,
        "client_retries": {
            **{name: s.failed_attempts for name, s in stats.items()},
            "sdk-http": clients[2].failures,
        },
        "spans_per_client": {c.name: len(c.sent) for c in clients},
        "dropped_counted": {name: st.dropped_spans for name, st in stats.items()},
    }
    print("FAULT-REPORT", json.dumps(report))
    if path := os.environ.get("ATLAS_FAULT_REPORT"):
        with open(path, "a") as handle:
            handle.write(json.dumps(report) + "\n")
