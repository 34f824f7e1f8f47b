"""The in-process exporters (JSONL, store) behind the real OpenTelemetry SDK, and import weight."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from atlas_middleware.otel_exporters.sdk import JsonlSpanExporter, StoreSpanExporter, to_records
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExportResult,
)

from atlas_middleware.storage import SpanRecord, StoreError, open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import free_port, session_spans


def run_sessions(provider: TracerProvider, n: int, score: float = 0.8) -> None:
    """``n`` real sessions (root, a chat span, an evaluation) through ``provider``."""
    tracer = provider.get_tracer("tests")
    for i in range(n):
        with s.session_span(
            tracer, agent="calc", session_id=f"exp-{i}", task=f"task {i}", content=True
        ) as root:
            with tracer.start_as_current_span(s.chat_span_name("smol")) as chat:
                chat.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_CHAT)
            s.set_final_answer(root, f"answer {i}", content=True)
            context = root.get_span_context()
        s.record_evaluation(tracer, context, name=s.PRIMARY_EVALUATION, score=score)


# --- JSONL -------------------------------------------------------------------------------------
def test_jsonl_exporter_writes_one_readable_line_per_span(tmp_path):
    spans = session_spans(2, children=1)
    path = tmp_path / "out" / "spans.jsonl"  # parent folder is created
    exporter = JsonlSpanExporter(path)
    assert exporter.export(spans[:3]) == SpanExportResult.SUCCESS
    assert exporter.export(spans[3:]) == SpanExportResult.SUCCESS  # appends
    assert exporter.force_flush() is True
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(spans) == 6
    read_back = [SpanRecord.from_json(json.loads(line)) for line in lines]
    assert read_back == to_records(spans)
    exporter.shutdown()
    assert exporter.export(spans[:1]) == SpanExportResult.FAILURE
    assert exporter.force_flush() is True
    assert len(path.read_text(encoding="utf-8").splitlines()) == 6
    # A new exporter on the same file appends rather than truncating.
    again = JsonlSpanExporter(path)
    again.export(spans[:1])
    again.shutdown()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 7


def test_jsonl_behind_a_real_provider(tmp_path):
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider(resource=Resource.create({"service.name": "jsonl-svc"}))
    provider.add_span_processor(BatchSpanProcessor(JsonlSpanExporter(path)))
    run_sessions(provider, 3)
    provider.shutdown()
    records = [SpanRecord.from_json(json.loads(line)) for line in path.read_text().splitlines()]
    assert len(records) == 9
    assert {r.service_name for r in records} == {"jsonl-svc"}
    assert len({r.trace_id for r in records}) == 3


# --- store -------------------------------------------------------------------------------------
def test_store_exporter_behind_batch_span_processor(store):
    provider = TracerProvider(resource=Resource.create({"service.name": "batched"}))
    provider.add_span_processor(
        BatchSpanProcessor(StoreSpanExporter(store), max_export_batch_size=4)
    )
    run_sessions(provider, 5, score=0.7)
    provider.shutdown()  # flushes the queue into the store
    assert store.count_spans() == 15
    sessions = list(store.iter_sessions())
    assert len(sessions) == 5
    assert {x.service_name for x in sessions} == {"batched"}
    assert sorted(x.task for x in sessions) == [f"task {i}" for i in range(5)]
    assert all(x.reward_score == 0.7 for x in sessions)
    # The exporter did not own the store: it is still open.
    store.health()


def test_store_exporter_opens_and_owns_a_store_from_a_url(sqlite_url):
    exporter = StoreSpanExporter(sqlite_url)
    assert exporter.export(session_spans(1)) == SpanExportResult.SUCCESS
    assert exporter.force_flush() is True
    exporter.shutdown()
    with pytest.raises(StoreError):  # shut down with the exporter
        exporter.store.count_spans()
    with open_store(sqlite_url) as store:
        assert store.count_spans() == 4


def test_store_failure_is_an_export_failure_not_an_exception(caplog):
    """Postgres down: export reports FAILURE (the SDK carries on) and logs once per outage."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/atlas"
    with caplog.at_level(logging.WARNING):
        store = open_store(url, connect_timeout=0.3)
    try:
        exporter = StoreSpanExporter(store)
        caplog.clear()
        spans = session_spans(1)
        with caplog.at_level(logging.WARNING, logger="atlas_middleware.otel_exporters.sdk"):
            assert exporter.export(spans) == SpanExportResult.FAILURE
            assert exporter.export(spans) == SpanExportResult.FAILURE
        warnings = [r for r in caplog.records if r.name == "atlas_middleware.otel_exporters.sdk"]
        assert len(warnings) == 1
        assert "could not store 4 spans" in warnings[0].getMessage()
    finally:
        store.close()


def test_store_exporter_recovers_after_a_failure(sqlite_url, caplog):
    with open_store(sqlite_url) as store:
        exporter = StoreSpanExporter(store)
        with store._transaction() as conn:  # break the store: its sessions table is gone
            store._run(conn, "ALTER TABLE sessions RENAME TO sessions_away")
        assert exporter.export(session_spans(1)) == SpanExportResult.FAILURE
        with store._transaction() as conn:
            store._run(conn, "ALTER TABLE sessions_away RENAME TO sessions")
        with caplog.at_level(logging.INFO, logger="atlas_middleware.otel_exporters.sdk"):
            assert exporter.export(session_spans(1)) == SpanExportResult.SUCCESS
        assert "reachable again" in caplog.text
        assert store.count_spans() == 4  # the failed batch left nothing behind


# --- import weight -----------------------------------------------------------------------------
HEAVY = ("torch", "litellm", "langgraph", "aiohttp", "grpc", "transformers")


@pytest.mark.parametrize(
    "imports",
    [
        "atlas_middleware",
        "atlas_middleware.storage, atlas_middleware.storage.sqlite, atlas_middleware.review, "
        "atlas_middleware.redaction, atlas_middleware.telemetry, "
        "atlas_middleware.otel_exporters.sdk",
    ],
)
def test_importing_the_core_stays_light(imports, tmp_path):
    code = (
        f"import json, sys; import {imports}; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
