"""OpenTelemetry SDK spans → :class:`SpanRecord`, and the in-process exporters built on it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from atlas_middleware.redaction import Redactor, default_redactors, redact
from atlas_middleware.storage import Store, StoreUnavailable, open_store
from atlas_middleware.storage.records import SpanEvent, SpanRecord, json_dumps

log = logging.getLogger(__name__)


def _value(value: Any) -> Any:
    # The SDK keeps sequence attributes as tuples; JSON wants lists.
    return list(value) if isinstance(value, tuple) else value


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _value(v) for k, v in attributes.items()} if attributes else {}


def to_record(span: ReadableSpan, resources: dict[int, dict[str, Any]] | None = None) -> SpanRecord:
    context = span.context
    parent = span.parent
    resource_key = id(span.resource)
    resource = resources.get(resource_key) if resources is not None else None
    if resource is None:
        resource = _attributes(span.resource.attributes)
        if resources is not None:
            resources[resource_key] = resource
    status = span.status
    scope = span.instrumentation_scope
    return SpanRecord(
        trace_id=format(context.trace_id, "032x"),
        span_id=format(context.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None else None,
        name=span.name,
        kind=span.kind.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        status_code=status.status_code.name,
        status_message=status.description,
        attributes=_attributes(span.attributes),
        events=[SpanEvent(e.name, e.timestamp, _attributes(e.attributes)) for e in span.events],
        resource=resource,
        scope=scope.name if scope is not None else None,
    )


def to_records(spans: Iterable[ReadableSpan]) -> list[SpanRecord]:
    resources: dict[int, dict[str, Any]] = {}
    return [to_record(span, resources) for span in spans]


class StoreSpanExporter(SpanExporter):
    """Writes finished spans straight into a store (the embedded SQLite one by default).

    Use it behind a ``BatchSpanProcessor`` so the store write happens off the request path.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        redactors: Sequence[Redactor] | None = None,
    ) -> None:
        self._owns_store = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else open_store(store)
        self._redactors = default_redactors() if redactors is None else tuple(redactors)
        self._failed = False
        # False after a failure retrying cannot fix (bad data, a broken redaction plugin): a
        # RetryingSpanExporter in front then drops (and counts) the batch instead of retrying.
        self.last_failure_retryable = True
        self.last_error: str | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # Fail open: whatever goes wrong (the store, a redaction plugin), the SDK gets FAILURE and
        # the instrumented program never sees an exception.
        try:
            records = to_records(spans)
            redact(records, self._redactors)
            self.store.write_spans(records)
        except Exception as exc:
            self.last_failure_retryable = isinstance(exc, StoreUnavailable)
            self.last_error = f"{type(exc).__name__}: {exc}"
            if not self._failed:  # log once per outage, not once per batch
                log.warning("atlas: could not store %d spans: %s", len(spans), exc)
            self._failed = True
            return SpanExportResult.FAILURE
        if self._failed:
            log.info("atlas: store reachable again")
            self._failed = False
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._owns_store:
            self.store.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class JsonlSpanExporter(SpanExporter):
    """Appends one JSON object per span to a file (the same shape ``atlas export`` writes)."""

    def __init__(self, path: str | Path, *, redactors: Sequence[Redactor] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._redactors = default_redactors() if redactors is None else tuple(redactors)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        records = to_records(spans)
        redact(records, self._redactors)
        lines = "".join(json_dumps(r.to_json()) + "\n" for r in records)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True
