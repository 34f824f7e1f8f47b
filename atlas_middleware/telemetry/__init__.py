"""Tracer set-up. ``configure()`` builds a TracerProvider that honours the standard ``OTEL_*``
environment variables and sends spans where atlas can learn from them."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

ExporterName = Literal["atlas", "otlp", "jsonl", "console", "none"]
EXPORTERS = ("atlas", "otlp", "jsonl", "console", "none")
TRACER_NAME = "atlas_middleware"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_installed_global: TracerProvider | None = None  # the global provider atlas set, if any
_retrying: Any = None  # the RetryingSpanExporter of the current provider, if any


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
        # Lazy: the exporter package sits above the core in the layering (DESIGN.md).
        from atlas_middleware.otel_exporters import StoreSpanExporter

        return StoreSpanExporter(store, redactors=())
    if name == "jsonl":
        from atlas_middleware.otel_exporters import JsonlSpanExporter

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
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError(
                "exporter='otlp' needs the OTLP exporter: "
                "pip install opentelemetry-exporter-otlp-proto-http (or -grpc)"
            ) from exc
        if endpoint and protocol != "grpc" and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    raise ValueError(f"unknown exporter {name!r}: choose one of {', '.join(EXPORTERS)}")


def configure(
    *,
    service_name: str | None = None,
    exporter: ExporterName | SpanExporter | None = None,
    store: Any = None,
    endpoint: str | None = None,
    jsonl_path: str | Path | None = None,
    batch: bool = True,
    resource_attributes: Mapping[str, Any] | None = None,
    set_global: bool = True,
    retry_queue_spans: int | None = None,
    spool_dir: str | Path | None = None,
    spool_max_mb: float = 256.0,
) -> TracerProvider:
    """Set up tracing for atlas and return the provider.

    - ``exporter``: ``atlas`` (the store: embedded SQLite by default, or ``store=`` a URL/Store),
      ``otlp`` (to ``endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. an atlas-collector),
      ``jsonl``, ``console``, ``none``, or any SpanExporter object. Default:
      ``OTEL_TRACES_EXPORTER`` if set, else ``atlas``.
    - Resource: ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` are read by the SDK;
      ``service_name`` wins over them. Sampling follows ``OTEL_TRACES_SAMPLER``; batching follows
      ``OTEL_BSP_*``; ``OTEL_SDK_DISABLED=true`` gives a provider that records nothing.
    - Delivery: while the store or collector is unreachable, spans wait in a queue of up to
      ``retry_queue_spans`` (default 10,000 for ``atlas``/``otlp``, off for other exporters;
      0 disables) and are retried with backoff; ``spool_dir`` adds an fsync'd on-disk spool of
      up to ``spool_max_mb`` that survives restarts. Drops are counted: :func:`export_stats`.
    - Redaction: the redactors (plugins' ``atlas_redactors``, the built-in secret pass last) run
      once on every batch before it is queued, spooled or exported, whatever the exporter
      (an exporter object you pass included; atlas's own store/JSONL exporters you build
      yourself redact on their own and are not wrapped again).
    """
    global _provider, _retrying
    attributes = dict(resource_attributes or {})
    if service_name:
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
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
        from atlas_middleware.otel_exporters.spool import (
            RetryingSpanExporter,
            flushing_batch_processor,
        )

        # The retrying exporter redacts at its entry, before its queue and spool.
        retrying = RetryingSpanExporter(
            span_exporter,
            max_queue_spans=10_000 if retry_queue_spans is None else retry_queue_spans,
            spool_dir=spool_dir,
            spool_max_bytes=int(spool_max_mb * 1024 * 1024),
        )
        provider.add_span_processor(flushing_batch_processor(retrying))
    elif span_exporter is not None:
        span_exporter = _redacting(span_exporter)
        processor = (
            BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
        )
        provider.add_span_processor(processor)
    with _lock:
        previous, _provider = _provider, provider
        _retrying = retrying
    if previous is not None:
        previous.shutdown()
    if set_global:
        _set_global(provider)
    return provider


def _redacting(exporter: SpanExporter) -> SpanExporter:
    """``exporter`` behind the redaction pass, unless it is one of atlas's exporters that
    already redacts (the store, JSONL and retrying exporters, built by the caller with their
    default redactors) or is already behind one."""
    from atlas_middleware.otel_exporters.sdk import (
        JsonlSpanExporter,
        RedactingSpanExporter,
        StoreSpanExporter,
    )
    from atlas_middleware.otel_exporters.spool import RetryingSpanExporter

    if isinstance(exporter, RedactingSpanExporter):
        return exporter
    ours = (JsonlSpanExporter, StoreSpanExporter, RetryingSpanExporter)
    if isinstance(exporter, ours) and exporter._redactors:
        return exporter  # built with redaction (the default): do not run it twice
    return RedactingSpanExporter(exporter)


def _set_global(provider: TracerProvider) -> None:
    # The API refuses to replace a global provider once set; atlas owns its own provider, so the
    # tracer lookups below go through ours and the user's global stays theirs if they had one.
    global _installed_global
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
        _installed_global = provider


def is_configured() -> bool:
    """Whether spans already have somewhere to go: ``configure()`` ran, or the application set
    its own SDK TracerProvider."""
    if _provider is not None:
        return True
    current = trace.get_tracer_provider()
    # A global provider atlas installed itself (and may since have shut down) is not the
    # application's pipeline.
    return not isinstance(current, trace.ProxyTracerProvider) and current is not _installed_global


def ensure_configured(**options: Any) -> None:
    """Configure atlas's tracing on first use unless someone already did: ``configure()`` was
    called, or the application set its own SDK TracerProvider (then atlas's spans go through
    the application's pipeline)."""
    if is_configured():
        return
    configure(**options)


def export_stats() -> Any:
    """What the retrying exporter of ``configure()`` holds and has done (an ``ExportStats``:
    queued, spooled, sent and dropped spans), or None when there is none."""
    retrying = _retrying
    return retrying.stats() if retrying is not None else None


def get_tracer() -> trace.Tracer:
    """atlas's tracer: from ``configure()``'s provider, else the global one."""
    provider = _provider
    if provider is not None:
        return provider.get_tracer(TRACER_NAME)
    return trace.get_tracer(TRACER_NAME)


def shutdown(timeout_millis: int = 5000) -> None:
    """Flush pending spans within the deadline and stop exporting."""
    global _provider
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.force_flush(timeout_millis)
        provider.shutdown()
