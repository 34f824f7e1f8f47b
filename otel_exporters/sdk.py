"""OpenTelemetry SDK spans → :class:`SpanRecord`, and the in-process exporters built on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Status, StatusCode

from atlas_middleware.redaction import Redactor, default_redactors, redact, scrub_attributes
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


# --- redaction of SDK spans ------------------------------------------------------------------
def _same_attributes(redacted: Mapping[str, Any], original: Mapping[str, Any] | None) -> bool:
    """Whether redaction left an attribute mapping as the SDK span holds it (lists in the
    record are the span's tuples)."""
    original = original or {}
    if len(redacted) != len(original):
        return False
    for key, value in redacted.items():
        if key not in original:
            return False
        before = original[key]
        if value is before:
            continue
        if isinstance(value, list):
            value = tuple(value)
        if value != before:  # NaN != NaN: such a span is rebuilt, with the same values
            return False
    return True


def _sdk_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # Back to the SDK's shape: sequences as tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}


def _unchanged(span: ReadableSpan, record: SpanRecord, same_resource: bool) -> bool:
    scope = span.instrumentation_scope
    if (
        not same_resource
        or record.name != span.name
        or record.status_message != span.status.description
        or record.scope != (scope.name if scope is not None else None)
        or len(record.events) != len(span.events)
        or not _same_attributes(record.attributes, span.attributes)
    ):
        return False
    return all(
        e.name == before.name and _same_attributes(e.attributes, before.attributes)
        for e, before in zip(record.events, span.events, strict=True)
    )


def _redacted_links(span: ReadableSpan) -> tuple[Link, ...] | None:
    """The span's links with the built-in pass over their attributes (a SpanRecord has no
    links, so plugin redactors never see them); None when nothing changed."""
    changed = False
    links = []
    for link in span.links:
        attributes = dict(link.attributes or {})
        scrubbed = scrub_attributes(attributes)
        changed = changed or scrubbed is not attributes
        links.append(
            Link(link.context, _sdk_attributes(scrubbed)) if scrubbed is not attributes else link
        )
    return tuple(links) if changed else None


def redact_spans(
    spans: Sequence[ReadableSpan], redactors: Sequence[Redactor]
) -> list[ReadableSpan]:
    """The batch with ``redactors`` applied, as SDK spans, ready for any exporter or the spool.

    A span redaction did not change is passed on as the very same object (the common case costs
    a conversion and a comparison, and exporters see exactly what the SDK made); a changed one
    is rebuilt from its redacted record. Raises whatever a redactor raises: the caller must then
    export nothing of the batch.
    """
    if not redactors:
        return list(spans)
    records = to_records(spans)
    redact(records, redactors)
    resources: dict[tuple[int, int], Resource | None] = {}
    out = []
    for span, record in zip(spans, records, strict=True):
        # One verdict per resource per batch: spans of a batch share their resource.
        rkey = (id(span.resource), id(record.resource))
        if rkey not in resources:
            same = _same_attributes(record.resource, span.resource.attributes)
            resources[rkey] = (
                None
                if same
                else Resource(_sdk_attributes(record.resource), span.resource.schema_url)
            )
        resource = resources[rkey]
        links = _redacted_links(span) if span.links else None
        if links is None and _unchanged(span, record, resource is None):
            out.append(span)
            continue
        scope = span.instrumentation_scope
        if scope is not None and record.scope != scope.name:
            scope = InstrumentationScope(
                record.scope or "", scope.version, scope.schema_url, scope.attributes
            )
        code = span.status.status_code
        out.append(
            ReadableSpan(
                name=record.name,
                context=span.context,
                parent=span.parent,
                resource=resource or span.resource,
                attributes=_sdk_attributes(record.attributes),
                events=[
                    Event(e.name, _sdk_attributes(e.attributes), timestamp=e.time_ns)
                    for e in record.events
                ],
                links=links if links is not None else span.links,
                kind=span.kind,
                # The SDK keeps a description for ERROR only (and warns otherwise).
                status=Status(code, record.status_message if code is StatusCode.ERROR else None),
                start_time=span.start_time,
                end_time=span.end_time,
                instrumentation_scope=scope,
            )
        )
    return out


class RedactingSpanExporter(SpanExporter):
    """Runs the redactors (plugins' ``atlas_redactors``, the built-in secret pass last) on each
    batch before the wrapped exporter sees it: for exporters that send spans out of the process
    as they are (OTLP, console, your own). ``telemetry.configure`` puts it in front of every
    exporter without a retrying front (which redacts at its own entry).

    A redactor that raises drops the batch (counted in ``dropped_spans``, logged): spans that
    could not be redacted are never exported, and the instrumented program never sees the
    exception.
    """

    def __init__(self, exporter: SpanExporter, *, redactors: Sequence[Redactor] | None = None):
        self.exporter = exporter
        self.redactors = default_redactors() if redactors is None else tuple(redactors)
        self.dropped_spans = 0
        self._last_log = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            batch = redact_spans(spans, self.redactors)
        except Exception as exc:
            self.dropped_spans += len(spans)
            now = time.monotonic()
            if now - self._last_log >= 10:  # a broken plugin fails every batch: one line per 10 s
                self._last_log = now
                log.warning(
                    "atlas: redaction failed (%s: %s): dropped %d spans rather than export them "
                    "unredacted; %d dropped so far",
                    type(exc).__name__,
                    exc,
                    len(spans),
                    self.dropped_spans,
                )
            return SpanExportResult.FAILURE
        return self.exporter.export(batch)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


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
        self.redactors = default_redactors() if redactors is None else tuple(redactors)
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
            redact(records, self.redactors)
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
        self.redactors = default_redactors() if redactors is None else tuple(redactors)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        records = to_records(spans)
        redact(records, self.redactors)
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
