"""The retrying exporter: spans wait (memory, then an fsync'd disk spool) while the destination
is down, arrive exactly once when it is back, and every loss is counted."""

from __future__ import annotations

import logging
import time

import pytest
from atlas_middleware.otel_exporters.sdk import StoreSpanExporter, to_records
from atlas_middleware.otel_exporters.spool import (
    MAGIC,
    RetryingSpanExporter,
    decode_batch,
    encode_batch,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from atlas_middleware import telemetry
from atlas_middleware.storage import open_store
from tests.helpers import Collector, free_port, session_spans


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _keys(spans) -> set[tuple[str, str]]:
    return {(r.trace_id, r.span_id) for r in to_records(spans)}


def _stored(url: str) -> list:
    with open_store(url) as store:
        return [r for rs in store.spans_for(_all_traces(store)).values() for r in rs]


def _all_traces(store) -> list[str]:
    return [row[0] for row in store._read("SELECT DISTINCT trace_id FROM spans")]


def test_batches_round_trip_through_the_spool_encoding():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "enc", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests", "1.2")
    with tracer.start_as_current_span("parent") as parent:
        link = Link(parent.get_span_context(), {"why": "because"})
        with tracer.start_as_current_span("child", links=[link]) as child:
            child.set_attribute("blob", b"\x00\xffraw")
            child.set_attribute("list", [1, 2, 3])
            child.set_attribute("text", "ünïcode \x00 NUL")
            child.add_event("evt", {"k": 1.5, "flags": [True, False]})
    spans = exporter.get_finished_spans()
    back = decode_batch(encode_batch(spans))
    assert [r.to_json() for r in to_records(back)] == [r.to_json() for r in to_records(spans)]
    child_back = next(s for s in back if s.name == "child")
    assert child_back.attributes["blob"] == b"\x00\xffraw"
    assert child_back.links[0].attributes == {"why": "because"}
    assert child_back.links[0].context.span_id == spans[1].context.span_id
    assert child_back.instrumentation_scope.version == "1.2"


def test_collector_down_then_up_every_span_arrives_once(sqlite_url, tmp_path):
    """The real OTLP exporter behind the retrying front: the collector is not running at
    first (connection refused), batches spill to the disk spool, and once it starts they all
    land exactly once."""
    collector = Collector(sqlite_url)
    inner = HttpExporter(endpoint=collector.traces_url, timeout=2)
    exporter = RetryingSpanExporter(
        inner,
        spool_dir=tmp_path / "spool",
        initial_backoff_s=0.1,
        max_backoff_s=0.5,
        max_attempts=1,  # every retry after the first sends another batch as a probe
    )
    sent = []
    for _ in range(4):
        batch = session_spans(2)
        sent += batch
        assert exporter.export(batch) == SpanExportResult.SUCCESS
    # Unclassified failures (the official exporter does not say why): the head batch failed,
    # other batches were tried and failed too, so the destination is down, not refusing.
    _wait(lambda: exporter.stats().failed_attempts >= 3)
    _wait(lambda: exporter.stats().spooled_spans > 0)
    assert exporter.stats().sent_spans == 0
    assert exporter.stats().dropped_spans == 0
    with collector:
        assert exporter.force_flush(30_000)
        stats = exporter.stats()
        assert (stats.sent_spans, stats.dropped_spans, stats.queued_spans) == (len(sent), 0, 0)
        assert stats.spooled_spans == 0 and stats.spool_bytes == 0
        exporter.shutdown()
    stored = _stored(sqlite_url)
    assert len(stored) == len(sent)
    assert {(r.trace_id, r.span_id) for r in stored} == _keys(sent)
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_the_bound_drops_and_counts_never_silently(caplog):
    """No spool, destination down, a queue of 6 spans: what does not fit is dropped, counted,
    logged, and reported by stats() and at shutdown."""
    inner = HttpExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1)
    exporter = RetryingSpanExporter(inner, max_queue_spans=6, shutdown_timeout_s=0.5)
    caplog.set_level(logging.WARNING, logger="atlas.exporter")
    results = [exporter.export(session_spans(1)) for _ in range(4)]  # 4 spans each
    assert results == [SpanExportResult.SUCCESS] + [SpanExportResult.FAILURE] * 3
    stats = exporter.stats()
    assert (stats.queued_spans, stats.dropped_spans) == (4, 12)
    assert any("dropped 4 spans (queue full)" in r.getMessage() for r in caplog.records)
    exporter.shutdown()
    assert exporter.stats().dropped_spans == 16  # the queued batch could not be delivered
    assert any("16 dropped" in r.getMessage() for r in caplog.records)


def test_spool_survives_the_process_and_is_bounded(sqlite_url, tmp_path):
    spool = tmp_path / "spool"
    down = HttpExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1)
    first = RetryingSpanExporter(
        down,
        max_queue_spans=0,  # everything goes straight to disk
        spool_dir=spool,
        spool_max_bytes=40_000,
        shutdown_timeout_s=0.2,
    )
    sent, dropped = [], 0
    for _ in range(30):
        batch = session_spans(1)
        if first.export(batch) == SpanExportResult.SUCCESS:
            sent += batch
        else:
            dropped += len(batch)
    assert dropped > 0 and sent  # the byte bound was hit, and counted
    assert first.stats().dropped_spans == dropped
    assert first.stats().spool_bytes <= 40_000
    first.shutdown()
    files = sorted(spool.glob("*.spool"))
    assert files and all(f.read_bytes().startswith(MAGIC) for f in files)
    # A torn file (a crash mid-write can only leave a .tmp-, but disks lie) is set aside, counted.
    files[-1].write_bytes(files[-1].read_bytes()[:-7])
    torn = int(files[-1].name.rsplit("-", 1)[1].split(".")[0])

    with open_store(sqlite_url) as store:
        second = RetryingSpanExporter(StoreSpanExporter(store), spool_dir=spool)
        assert second.force_flush(30_000)
        stats = second.stats()
        assert stats.corrupt_files == 1 and stats.dropped_spans == torn
        assert stats.sent_spans == len(sent) - torn
        second.shutdown()
    stored = _stored(sqlite_url)
    assert len(stored) == len(sent) - torn
    assert len(list(spool.glob("*.corrupt"))) == 1


def test_one_process_per_spool_directory(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="atlas.exporter")
    owner = RetryingSpanExporter(InMemorySpanExporter(), spool_dir=tmp_path)
    second = RetryingSpanExporter(InMemorySpanExporter(), spool_dir=tmp_path)
    assert second._spool is None
    assert any("memory only" in r.getMessage() for r in caplog.records)
    second.shutdown()
    owner.shutdown()


def test_a_batch_the_store_refuses_for_good_is_dropped_not_retried_forever(sqlite_url):
    calls = []

    def broken_plugin(record):
        calls.append(record)
        if record.name == "poison":
            raise ValueError("plugin bug")

    with open_store(sqlite_url) as store:
        exporter = RetryingSpanExporter(
            StoreSpanExporter(store, redactors=[broken_plugin]), initial_backoff_s=0.05
        )
        provider = TracerProvider()
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        with provider.get_tracer("t").start_as_current_span("poison"):
            pass
        assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
        good = session_spans(1)
        assert exporter.export(good) == SpanExportResult.SUCCESS
        assert exporter.force_flush(10_000)
        stats = exporter.stats()
        assert (stats.dropped_spans, stats.sent_spans) == (1, len(good))
        assert "plugin bug" in stats.last_error
        exporter.shutdown()
        assert store.count_spans() == len(good)


def test_configure_wires_the_retrying_exporter_and_reports_stats(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'atlas.db'}"
    provider = telemetry.configure(
        exporter="atlas", store=url, spool_dir=tmp_path / "spool", set_global=False
    )
    try:
        with provider.get_tracer("t").start_as_current_span("hello"):
            pass
        assert provider.force_flush(10_000)
        stats = telemetry.export_stats()
        assert stats.sent_spans == 1 and stats.dropped_spans == 0
    finally:
        telemetry.shutdown()
    assert telemetry.export_stats().sent_spans == 1  # still readable after shutdown
    with open_store(url) as store:
        assert store.count_spans() == 1
    # Off when asked, and never forced on an exporter object the caller built.
    provider = telemetry.configure(exporter="atlas", store=url, retry_queue_spans=0)
    assert telemetry.export_stats() is None
    telemetry.shutdown()
    provider = telemetry.configure(exporter=InMemorySpanExporter(), set_global=False)
    assert telemetry.export_stats() is None
    telemetry.shutdown()


def test_config_fields_validate():
    from atlas_middleware.config import AtlasConfig, ConfigError

    cfg = AtlasConfig(telemetry={"spool_dir": "/tmp/x", "retry_queue_spans": 0})
    assert cfg.telemetry.spool_dir == "/tmp/x" and cfg.telemetry.spool_max_mb == 256.0
    with pytest.raises(ConfigError, match="retry_queue_spans"):
        AtlasConfig(telemetry={"retry_queue_spans": -1})


@pytest.mark.postgres
def test_a_batch_the_collector_refuses_does_not_block_the_batches_behind_it(postgres_url):
    """The official OTLP/HTTP exporter returns FAILURE for a 400 and for an outage alike. A real
    collector answers 400 for one batch (its Postgres refuses that batch's session for good):
    the batches behind it are delivered, and the refused one is dropped, counted as refused."""
    from tests.otel_exporters.test_collector import install_refusing_trigger

    install_refusing_trigger(postgres_url)
    with Collector(postgres_url) as collector:
        exporter = RetryingSpanExporter(
            HttpExporter(endpoint=collector.traces_url, timeout=10),
            initial_backoff_s=0.05,
            max_backoff_s=0.2,
        )
        poison = session_spans(1, task="bad data")
        good = [session_spans(2) for _ in range(3)]
        assert exporter.export(poison) == SpanExportResult.SUCCESS  # queued first
        for batch in good:
            assert exporter.export(batch) == SpanExportResult.SUCCESS
        assert exporter.force_flush(60_000), exporter.stats()
        stats = exporter.stats()
        delivered = sum(len(b) for b in good)
        assert (stats.sent_spans, stats.refused_spans) == (delivered, len(poison))
        assert stats.dropped_spans == len(poison)  # refused spans are drops, counted
        assert stats.failed_attempts >= exporter.max_attempts
        exporter.shutdown()
    with open_store(postgres_url) as store:
        assert store.count_spans() == delivered
        assert all(s.task != "bad data" for s in store.iter_sessions())
        assert len(list(store.iter_sessions())) == 6
