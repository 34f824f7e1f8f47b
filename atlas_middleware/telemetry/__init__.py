"""Tracer set-up. ``configure()`` builds a TracerProvider that honours the standard ``OTEL_*``
environment variables and sends spans where atlas can learn from them."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from atlas_middleware.telemetry import schema as s

log = logging.getLogger("atlas")
ExporterName = Literal["atlas", "otlp", "jsonl", "console", "none"]
EXPORTERS = ("atlas", "otlp", "jsonl", "console", "none")
TRACER_NAME = "atlas_middleware"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_installed_global: TracerProvider | None = None  # the global provider atlas set, if any
_retrying: Any = None  # the RetryingSpanExporter of the current provider, if any
_attached: _Attached | None = None  # atlas's processor on the application's provider, if any


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
    attributes = dict(resource_attributes or {})
    if service_name:
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    processor, retrying = _pipeline(
        exporter=exporter,
        store=store,
        endpoint=endpoint,
        jsonl_path=jsonl_path,
        batch=batch,
        retry_queue_spans=retry_queue_spans,
        spool_dir=spool_dir,
        spool_max_mb=spool_max_mb,
    )
    if processor is not None:
        provider.add_span_processor(processor)
    _track_steps(provider)
    _install(provider, retrying, None)
    if set_global:
        _set_global(provider)
    return provider


def _track_steps(provider: TracerProvider) -> None:
    """Add the step tracker (marks step spans, sums their tokens) to ``provider``, once."""
    from atlas_middleware.steps import tracker

    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    if tracker() not in processors:
        provider.add_span_processor(tracker())


def _install(provider: TracerProvider, retrying: Any, attached: _Attached | None) -> None:
    global _provider, _retrying, _attached
    with _lock:
        previous, _provider = _provider, provider
        previous_attached, _attached = _attached, attached
        _retrying = retrying
    if previous is not None:
        _finish_background()
    if previous_attached is not None:
        previous_attached.shutdown()  # the application's provider itself stays theirs
    elif previous is not None:
        previous.shutdown()


def _finish_background() -> None:
    """Background work of earlier sessions (rewards, lessons) exports through the pipeline those
    sessions used (see :func:`pinned`): let it finish before that pipeline shuts down, within
    ``telemetry.drain_s``, and say what was dropped if it cannot."""
    from atlas_middleware import portal

    running = portal.current_portal()
    if running is None or running.runs_here():
        return  # no background work, or called from it (waiting would wait on itself)
    portal.finish(portal.drain_seconds(), why="tracing reconfigured")


@dataclass(frozen=True)
class ExportOptions:
    """Where ``configure()`` / ``attach()`` send spans (their arguments of the same names)."""

    exporter: str | SpanExporter | None = None
    store: Any = None
    endpoint: str | None = None
    jsonl_path: str | Path | None = None
    batch: bool = True
    retry_queue_spans: int | None = None
    spool_dir: str | Path | None = None
    spool_max_mb: float = 256.0


def _pipeline(**options: Any) -> tuple[SpanProcessor | None, Any]:
    """The span processor that sends spans where ``options`` say, and the retrying exporter
    inside it (or None). Built by a plugin's ``atlas_span_processor`` hook: the exporters
    (store, JSONL, OTLP, the retrying spool) live in ``atlas_middleware.otel_exporters``, a layer
    above this one, registered like any plugin (docs/architecture.md)."""
    from atlas_middleware.plugins import hook

    export = ExportOptions(**options)
    built: tuple[SpanProcessor | None, Any] | None = hook().atlas_span_processor(options=export)
    if built is None:
        name = export.exporter
        raise ValueError(
            f"unknown exporter {name!r}: choose one of {', '.join(EXPORTERS)} "
            "(or install the plugin that provides it)"
        )
    return built


class _Attached(SpanProcessor):
    """atlas's pipeline inside the application's own SDK TracerProvider (``phoenix.otel.
    register()``, Langfuse, an APM agent installed it first). It takes atlas's spans and the
    spans of other instrumentations that belong to an atlas session's trace (an OpenInference
    instrumentor's model calls inside a supervised run), not the application's other traffic;
    in atlas's copy, those session spans carry ``atlas.span.role`` too (the application's
    pipeline gets them as their instrumentation made them). Shutting it down leaves the
    application's provider running."""

    _REMEMBERED = 10_000

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.active = True
        self._traces: dict[int, None] = {}  # trace ids of atlas sessions, oldest first
        self._traces_lock = threading.Lock()
        # Other instrumentations' spans in a session: whose call each one is, as seen where it
        # started (instrumentors such as OpenInference's set their attributes only at the end).
        self._roles: dict[int, dict[str, str]] = {}

    def _ours(self, span: Any) -> bool:
        scope = getattr(span, "instrumentation_scope", None)
        return scope is not None and scope.name == TRACER_NAME

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if not self.active:
            return
        trace_id = span.get_span_context().trace_id
        if self._ours(span):
            with self._traces_lock:
                if trace_id not in self._traces:
                    self._traces[trace_id] = None
                    while len(self._traces) > self._REMEMBERED:
                        del self._traces[next(iter(self._traces))]
        elif trace_id in self._traces:
            from atlas_middleware.telemetry import usage

            with self._traces_lock:
                self._roles[span.get_span_context().span_id] = usage.role_attributes()
                while len(self._roles) > self._REMEMBERED:
                    del self._roles[next(iter(self._roles))]
        else:
            return
        self.inner.on_start(span, parent_context)

    def on_end(self, span: Any) -> None:
        if not self.active:
            return
        if self._ours(span):
            self.inner.on_end(span)
        elif span.context.trace_id in self._traces:
            with self._traces_lock:
                role = self._roles.pop(span.context.span_id, None)
            self.inner.on_end(_with_role(span, role))

    def shutdown(self) -> None:
        self.active = False
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _with_role(span: Any, caller: dict[str, str] | None) -> Any:
    """Another instrumentation's ended span inside a session, with ``atlas.span.role`` from
    its OpenInference kind (a model call: whose call it was where it started)."""
    attributes = dict(span.attributes or {})
    if s.ATLAS_SPAN_ROLE in attributes:
        return span
    kind = attributes.get(s.OPENINFERENCE_SPAN_KIND)
    if kind == s.OI_KIND_LLM:
        attributes.update(caller or {s.ATLAS_SPAN_ROLE: s.ROLE_STUDENT})
    elif kind == s.OI_KIND_TOOL:
        attributes[s.ATLAS_SPAN_ROLE] = s.ROLE_TOOL
    elif kind == s.OI_KIND_AGENT:
        attributes[s.ATLAS_SPAN_ROLE] = s.ROLE_AGENT
    else:
        attributes[s.ATLAS_SPAN_ROLE] = s.ROLE_FRAMEWORK
    from opentelemetry.sdk.trace import ReadableSpan

    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def attach(provider: TracerProvider, **options: Any) -> TracerProvider:
    """Send atlas's spans through ``provider`` (the application's SDK TracerProvider) *and*
    to atlas's own exporter (``configure()``'s options: the store by default), so the
    application's pipeline and the atlas store both get them. Returns ``provider``."""
    options.pop("service_name", None)  # the application's resource names the service
    options.pop("resource_attributes", None)
    options.pop("set_global", None)
    export = {
        name: options.pop(name) for name in ExportOptions.__dataclass_fields__ if name in options
    }
    processor, retrying = _pipeline(**export)
    if options:
        raise TypeError(f"attach() got unknown option(s) {', '.join(sorted(options))}")
    attached = _Attached(processor) if processor is not None else None
    if attached is not None:
        provider.add_span_processor(attached)
        _track_steps(provider)
    _install(provider, retrying, attached)
    return provider


def _set_global(provider: TracerProvider) -> None:
    # The API refuses to replace a global provider once set; atlas owns its own provider, so the
    # tracer lookups below go through ours and the user's global stays theirs if they had one.
    global _installed_global
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
        _installed_global = provider


def is_configured() -> bool:
    """Whether atlas's tracing is set up (``configure()`` or ``attach()`` ran, directly or on
    the first supervised call)."""
    return _provider is not None


_warned_foreign = False


def ensure_configured(**options: Any) -> None:
    """Set up atlas's tracing on first use unless it already is:

    - no global provider yet (or only one atlas installed): ``configure(**options)``;
    - the application installed an OpenTelemetry SDK ``TracerProvider`` first (Phoenix's
      ``register()``, Langfuse, an APM agent): :func:`attach` to it, so atlas's spans go
      through the application's pipeline *and* into atlas's store;
    - a global provider that is not the SDK's (spans cannot be added to it): atlas uses a
      provider of its own, and says so once (its spans do not reach that pipeline).
    """
    global _warned_foreign
    if _provider is not None:
        return
    current = trace.get_tracer_provider()
    if isinstance(current, trace.ProxyTracerProvider) or current is _installed_global:
        configure(**options)
    elif isinstance(current, TracerProvider):
        attach(current, **options)
    else:
        if not _warned_foreign:
            _warned_foreign = True
            log.warning(
                "atlas: the global tracer provider (%s) is not an OpenTelemetry SDK "
                "TracerProvider, so atlas cannot add its exporter to it: atlas's spans go to "
                "atlas's own pipeline only. Call atlas_middleware.telemetry.attach(provider) "
                "with an SDK TracerProvider to share one.",
                type(current).__name__,
            )
        configure(**{**options, "set_global": False})


def export_stats() -> Any:
    """What the retrying exporter of ``configure()`` holds and has done (an ``ExportStats``:
    queued, spooled, sent and dropped spans), or None when there is none."""
    retrying = _retrying
    return retrying.stats() if retrying is not None else None


_pinned: contextvars.ContextVar[trace.Tracer | None] = contextvars.ContextVar(
    "atlas_pinned_tracer", default=None
)


@contextmanager
def pinned(tracer: trace.Tracer) -> Iterator[None]:
    """Spans started inside this block go through ``tracer``, whatever ``configure()`` says by
    then. Background work of a session (its reward, its lesson) pins the tracer the session
    used, so it lands beside the session even if tracing was reconfigured in between."""
    token = _pinned.set(tracer)
    try:
        yield
    finally:
        _pinned.reset(token)


def get_tracer() -> trace.Tracer:
    """atlas's tracer: the one :func:`pinned` here, else ``configure()``'s provider's, else the
    global one."""
    tracer = _pinned.get()
    if tracer is not None:
        return tracer
    provider = _provider
    if provider is not None:
        # One tracer per provider: the SDK's get_tracer builds and compares an instrumentation
        # scope on every call (microseconds on each supervised call).
        cached = _tracer
        if cached is not None and cached[0] is provider:
            return cached[1]
        tracer = provider.get_tracer(TRACER_NAME)
        _cache_tracer(provider, tracer)
        return tracer
    return trace.get_tracer(TRACER_NAME)


_tracer: tuple[TracerProvider, trace.Tracer] | None = None


def _cache_tracer(provider: TracerProvider, tracer: trace.Tracer) -> None:
    global _tracer
    _tracer = (provider, tracer)


def shutdown(timeout_millis: int = 5000) -> None:
    """Flush pending spans within the deadline and stop exporting. A provider atlas attached
    to (the application's) keeps running; only atlas's exporter on it stops."""
    global _provider, _attached
    with _lock:
        provider, _provider = _provider, None
        attached, _attached = _attached, None
    if attached is not None:
        attached.force_flush(timeout_millis)
        attached.shutdown()
    elif provider is not None:
        provider.force_flush(timeout_millis)
        provider.shutdown()
