"""atlas's own span export, registered as a plugin (entry point ``exporters``) exactly like a
third-party one: the ``atlas_span_processor`` hook turns ``telemetry.configure()``'s options into
the processor that delivers spans (the store, JSONL, OTLP, console; a retrying queue and spool in
front of the store and OTLP; redaction before anything leaves the process). A plugin that
answers first (for an exporter name of its own) takes precedence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atlas_middleware.otel_exporters.sdk import (
    JsonlSpanExporter,
    RedactingSpanExporter,
    StoreSpanExporter,
)
from atlas_middleware.otel_exporters.spool import RetryingSpanExporter, flushing_batch_processor
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from atlas_middleware.plugins import hookimpl
from atlas_middleware.telemetry import EXPORTERS, ExportOptions


@hookimpl(trylast=True)
def atlas_span_processor(options: ExportOptions) -> tuple[SpanProcessor | None, Any] | None:
    exporter = options.exporter
    if not isinstance(exporter, SpanExporter):
        # An empty variable means "not set" (the OpenTelemetry convention).
        name = exporter or os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip()
        if (name or "atlas") not in EXPORTERS:
            return None  # not ours: configure() says which names exist
    return _pipeline(**vars(options))


def _exporter(
    name: str, *, store: Any, endpoint: str | None, jsonl_path: str | Path | None
) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    # The store and JSONL exporters redact nothing themselves here: configure() runs the
    # redactors once, in front of every exporter (so the spool never holds a secret either).
    if name == "atlas":
        return StoreSpanExporter(store, redactors=())
    if name == "jsonl":
        return JsonlSpanExporter(jsonl_path or Path(".atlas") / "spans.jsonl", redactors=())
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]  # either protocol's class
                    OTLPSpanExporter,
                )
        except ImportError as exc:
            raise ImportError(
                "exporter='otlp' needs the OTLP exporter: "
                "pip install opentelemetry-exporter-otlp-proto-http (or -grpc)"
            ) from exc
        if endpoint and protocol != "grpc" and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    raise ValueError(f"unknown exporter {name!r}: choose one of {', '.join(EXPORTERS)}")


def _pipeline(
    *,
    exporter: str | SpanExporter | None,
    store: Any,
    endpoint: str | None,
    jsonl_path: str | Path | None,
    batch: bool,
    retry_queue_spans: int | None,
    spool_dir: str | Path | None,
    spool_max_mb: float,
) -> tuple[SpanProcessor | None, Any]:
    """The span processor that sends spans where ``configure()``'s options say, and the
    retrying exporter inside it (or None)."""
    if isinstance(exporter, SpanExporter):
        span_exporter: SpanExporter | None = exporter
    else:
        # An empty variable means "not set" (the OpenTelemetry convention).
        name = exporter or os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip()
        name = name or "atlas"
        span_exporter = _exporter(name, store=store, endpoint=endpoint, jsonl_path=jsonl_path)
        if retry_queue_spans is None and name in ("atlas", "otlp"):
            retry_queue_spans = 10_000
    retrying = None
    if span_exporter is not None and (retry_queue_spans or spool_dir):
        # The retrying exporter redacts at its entry, before its queue and spool.
        retrying = RetryingSpanExporter(
            span_exporter,
            max_queue_spans=10_000 if retry_queue_spans is None else retry_queue_spans,
            spool_dir=spool_dir,
            spool_max_bytes=int(spool_max_mb * 1024 * 1024),
        )
        return flushing_batch_processor(retrying), retrying
    if span_exporter is not None:
        span_exporter = _redacting(span_exporter)
        processor = (
            BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
        )
        return processor, None
    return None, None


def _redacting(exporter: SpanExporter) -> SpanExporter:
    """``exporter`` behind the redaction pass, unless it is one of atlas's exporters that
    already redacts (the store, JSONL and retrying exporters, built by the caller with their
    default redactors) or is already behind one."""
    if isinstance(exporter, RedactingSpanExporter):
        return exporter
    ours = (JsonlSpanExporter, StoreSpanExporter, RetryingSpanExporter)
    if isinstance(exporter, ours) and exporter.redactors:
        return exporter  # built with redaction (the default): do not run it twice
    return RedactingSpanExporter(exporter)
