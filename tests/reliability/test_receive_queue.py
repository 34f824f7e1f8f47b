"""The collector's durable receive queue: with the store down, the official OTLP exporters (used
bare: no atlas retrying front, no application retries) lose nothing, even when the collector is
killed with SIGKILL in the middle of the outage; the queue drains into the store in order,
exactly once, when it returns; past its bound the collector answers 503 at once.

Postgres here is a private cluster (tests/helpers.py:PrivatePostgres): the shared server is never
stopped. The long variant (a 60 s outage) runs under ``-m soak``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from atlas_middleware.otel_exporters.collector.queue import ReceiveQueue
from atlas_middleware.otel_exporters.sdk import to_records
from atlas_middleware.otel_exporters.spool import Spool
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)

from atlas_middleware.storage import open_store
from tests.helpers import Collector, session_spans
from tests.reliability.conftest import Client, assert_exactly_once, wait_until

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def health(collector: Collector) -> dict:
    return requests.get(f"{collector.http}/health", timeout=30).json()


def _progress(clients: list[Client]) -> int:
    return sum(len(c.sent) for c in clients)


def _advance(clients: list[Client], spans: int, timeout: float = 120) -> None:
    target = _progress(clients) + spans
    wait_until(lambda: _progress(clients) >= target, timeout, f"{spans} more spans acknowledged")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("outage_s", "export_timeout"),
    [
        pytest.param(None, 30, id="short"),
        pytest.param(60, None, id="60s", marks=[pytest.mark.soak, pytest.mark.timeout(1200)]),
    ],
)
def test_official_exporters_lose_nothing_through_an_outage_and_a_sigkill(
    private_pg, outage_s, export_timeout
):
    """The short variant queues 20 requests, kills the collector, queues 20 more after the
    restart; the long one keeps Postgres down 60 s with the kill at 30 s. The exporters'
    timeout: 30 s in the short variant (restarting the collector on a loaded 2-core machine can
    take seconds of their budget), the SDK default (10 s) in the long one."""
    collector = Collector(private_pg.url).start()
    timeout = {} if export_timeout is None else {"timeout": export_timeout}
    clients = [
        Client("sdk-http", HttpExporter(endpoint=collector.traces_url, **timeout), 10**6),
        Client("sdk-grpc", GrpcExporter(endpoint=collector.grpc, insecure=True, **timeout), 10**6),
    ]
    report: dict = {"variant": "short" if outage_s is None else f"{outage_s}s outage"}
    try:
        for client in clients:
            client.start()
        _advance(clients, 200)
        private_pg.stop("fast")
        down_at = time.monotonic()
        if outage_s is None:
            wait_until(lambda: health(collector)["queue_requests"] >= 20, 120, "20 queued")
        else:
            wait_until(lambda: time.monotonic() - down_at >= outage_s / 2, outage_s, "half")
        before_kill = health(collector)
        report["queued_before_kill"] = before_kill["queue_requests"]
        assert before_kill["status"] == "queueing"
        collector.stop(sig=9)
        collector.start()  # same queue folder: what was acknowledged is still there
        report["waiting_after_restart"] = health(collector)["queue_requests"]
        assert report["waiting_after_restart"] >= report["queued_before_kill"]
        if outage_s is None:
            target = report["waiting_after_restart"] + 20
            wait_until(lambda: health(collector)["queue_requests"] >= target, 120, "20 more")
        else:
            wait_until(lambda: time.monotonic() - down_at >= outage_s, outage_s, "the outage")
        report["outage_s"] = round(time.monotonic() - down_at, 1)
        state = health(collector)
        report["queued_total"] = state["queue_requests"]
        report["queued_spans"] = state["queue_spans"]
        report["queue_mb"] = round(state["queue_bytes"] / 2**20, 1)
        private_pg.start()
        drain_started = time.monotonic()
        wait_until(lambda: health(collector)["queue_requests"] == 0, 600, "the queue drained")
        report["drain_s"] = round(time.monotonic() - drain_started, 1)
        _advance(clients, 200)  # and ingest goes on as normal
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join()
        collector.stop()
    sent = [span for client in clients for span in client.sent]
    report["lost"] = sum(client.refused for client in clients)
    report["export_failures"] = sum(client.failures for client in clients)
    report.update(assert_exactly_once(private_pg.url, sent))
    print("QUEUE-REPORT", json.dumps(report))
    if path := os.environ.get("ATLAS_FAULT_REPORT"):
        with open(path, "a") as handle:
            handle.write(json.dumps(report) + "\n")
    assert report["lost"] == 0 and report["export_failures"] == 0, report


@pytest.mark.postgres
def test_past_its_bound_the_queue_answers_503_at_once(private_pg):
    body = encode_spans(session_spans(2)).SerializeToString()
    with Collector(private_pg.url, "--queue-max-mb", "0.02") as collector:
        assert requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=30).ok
        private_pg.stop("fast")
        answers = []
        while 503 not in answers:
            answers.append(
                requests.post(
                    collector.traces_url, data=body, headers=PROTOBUF, timeout=30
                ).status_code
            )
            assert len(answers) < 100, answers
        state = requests.get(f"{collector.http}/health", timeout=30)
        assert answers[0] == 200 and set(answers) == {200, 503}  # queued, then full
        assert state.status_code == 503 and state.json()["queue_full"] >= 1
        queued = answers.count(200)
        private_pg.start()
        wait_until(lambda: health(collector)["queue_requests"] == 0, 120, "drained")
    with open_store(private_pg.url) as store:
        assert store.count_spans() == 8  # the same spans each time: stored once
    assert queued >= 1


# --- the queue itself, on a real SQLite store ---------------------------------------------------
class RecordingStore:
    """A real store that also notes which traces each write carried, in order."""

    def __init__(self, store) -> None:
        self.store = store
        self.writes: list[list[str]] = []

    def write_spans(self, records):
        self.writes.append(sorted({r.trace_id for r in records}))
        return self.store.write_spans(records)


def test_drained_in_order_and_exactly_once_across_a_crash(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'atlas.db'}"
    batches = [to_records(session_spans(1, task=f"batch {i}")) for i in range(6)]
    queue = ReceiveQueue(tmp_path / "queue", 10 << 20, store_id="s")
    for batch in batches:
        assert queue.append(batch)
    with open_store(url) as real:
        store = RecordingStore(real)
        assert queue.drain_one(store) and queue.drain_one(store)
        # A crash after the third batch committed, before its file was removed.
        original = Spool.remove

        def crash(self, path, **kwargs):
            raise SystemExit("killed")

        monkeypatch.setattr(Spool, "remove", crash)
        with pytest.raises(SystemExit):
            queue.drain_one(store)
        monkeypatch.setattr(Spool, "remove", original)
        queue.close()
        again = ReceiveQueue(tmp_path / "queue", 10 << 20, store_id="s")
        assert again.waiting[0] == 4  # the third batch is still there
        while again.drain_one(store):
            pass
        assert again.waiting == (0, 0, 0)
        again.close()
        expected = [sorted({r.trace_id for r in b}) for b in batches]
        # Arrival order; the third batch written twice, which the store absorbs.
        assert store.writes == expected[:3] + expected[2:]
        assert real.count_spans() == sum(len(b) for b in batches)
        assert len(list(real.iter_sessions())) == len(batches)


def test_a_queue_folder_for_another_store_is_left_alone(tmp_path):
    first = ReceiveQueue(tmp_path, 1 << 20, store_id="postgresql://a/db")
    first.append(to_records(session_spans(1)))
    first.close()
    other = ReceiveQueue(tmp_path, 1 << 20, store_id="postgresql://b/db")
    assert other.dir.name == "1" and other.orphans() == []
    assert other.waiting[0] == 0
    other.close()
    same = ReceiveQueue(tmp_path, 1 << 20, store_id="postgresql://a/db")
    assert same.dir.name == "0" and same.waiting[0] == 1
    same.close()
    # A folder holding requests with no record of their store is nobody's to deliver.
    (tmp_path / "0" / "store.id").unlink()
    unknown = ReceiveQueue(tmp_path, 1 << 20, store_id="postgresql://a/db")
    assert unknown.dir.name == "1" and unknown.orphans() == []
    unknown.close()


def test_an_unusable_queue_dir(tmp_path):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    command = [sys.executable, "-m", "atlas_middleware.otel_exporters.collector", "--store", store]
    explicit = subprocess.run(
        [*command, "--queue-dir", "/proc/nope/queue"], capture_output=True, text=True, timeout=60
    )
    assert explicit.returncode == 2
    [line] = explicit.stderr.strip().splitlines()
    assert "--queue-dir /proc/nope/queue" in line and "off" in line
    # The default folder under a read-only working directory: a warning, and it serves.
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    cwd = readonly if not os.access(readonly, os.W_OK) else Path("/sys")
    proc = subprocess.Popen(
        [*command, "--http", "127.0.0.1:0", "--grpc", "off"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening" in line:
                break
        text = "".join(lines)
        assert "receive queue off" in text and "queue=off" in text, text
    finally:
        proc.terminate()
        proc.wait(30)
