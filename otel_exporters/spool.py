"""A retrying front for any SpanExporter: spans wait while the store or collector is down.

The OpenTelemetry SDK gives an exporter one chance per batch: when the destination is down the
batch is dropped (the BatchSpanProcessor logs and moves on). :class:`RetryingSpanExporter` takes
the batch instead, answers at once, and a sender thread delivers it to the wrapped exporter
(``StoreSpanExporter``, the OTLP exporters, anything) with exponential backoff until it succeeds.

- Memory: batches wait in a queue bounded by ``max_queue_spans``.
- Disk (optional ``spool_dir``): while the destination fails, and whenever the memory queue is
  full, batches go to an fsync'd on-disk spool bounded by ``spool_max_bytes``; they survive a
  crash or restart of the process and are delivered by the next exporter on that directory.
  One process per directory (an exclusive lock; a second process runs without a spool).
- Redaction first: the redactors run on each batch in ``export()``, before it is queued,
  spooled or sent, so no secret reaches the disk or the wire.
- Nothing is lost silently: a batch that fits nowhere is dropped and counted
  (:meth:`RetryingSpanExporter.stats`, the ``atlas.exporter.spans.dropped`` metric, and a
  warning log line), as is a corrupt spool file.
- Nothing blocks the queue forever: a batch the destination refuses (a 400, a 413) is dropped
  and counted as refused once the destination is seen accepting other batches; only failures
  the wrapped exporter reports as retryable, or that hit every batch alike (an outage), are
  retried without end.

Spool files hold one batch each: ``MAGIC``, then a frame of a 4-byte big-endian length, a
4-byte CRC-32 and the payload (the batch as JSON, every SDK span field kept). Files are written
to a temporary name, fsync'd, renamed into place and the directory fsync'd, so a crash leaves
either the whole file or none of it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from atlas_middleware.otel_exporters.sdk import redact_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from atlas_middleware.redaction import Redactor, default_redactors
from atlas_middleware.telemetry import schema

log = logging.getLogger("atlas.exporter")

MAGIC = b"ATLASSPOOL1\n"
_FRAME = struct.Struct(">II")  # payload length, CRC-32 of the payload
SUFFIX = ".spool"


@dataclass(frozen=True, slots=True)
class ExportStats:
    """A snapshot of what the retrying exporter holds and has done."""

    queued_spans: int  # waiting in memory
    spooled_spans: int  # waiting on disk
    spool_bytes: int
    sent_spans: int  # accepted by the wrapped exporter
    dropped_spans: int  # lost: no room in the queue or spool, or rejected for good
    corrupt_files: int  # spool files that failed their checksum (moved aside, counted)
    failed_attempts: int
    last_error: str | None
    refused_spans: int = 0  # of dropped_spans: batches the destination refused for good


# --- spans <-> JSON ---------------------------------------------------------------------------
_BYTES = "\x00bytes"  # tags a bytes value; no attribute key or value produced by JSON has it
_BIGINT = "\x00int"  # an integer beyond 64 bits (the SDK accepts them; JSON numbers here don't)


def _enc(value: Any) -> Any:
    if type(value) is int and not -(2**63) <= value < 2**64:
        return {_BIGINT: str(value)}
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [_enc(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _enc(v) for k, v in value.items()}
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_dec(v) for v in value)  # the SDK keeps sequences as tuples
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            return base64.b64decode(value[_BYTES])
        if len(value) == 1 and _BIGINT in value:
            return int(value[_BIGINT])
        return {k: _dec(v) for k, v in value.items()}
    return value


def _attrs(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _enc(v) for k, v in attributes.items()} if attributes else {}


def _context(ctx: SpanContext | None) -> list[Any] | None:
    if ctx is None:
        return None
    state = list(ctx.trace_state.items()) if ctx.trace_state else []
    return [
        f"{ctx.trace_id:032x}",
        f"{ctx.span_id:016x}",
        ctx.is_remote,
        int(ctx.trace_flags),
        state,
    ]


def _span_context(data: list[Any] | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, remote, flags, state = data
    return SpanContext(int(trace_id, 16), int(span_id, 16), remote, flags, TraceState(state))


def encode_batch(spans: Sequence[ReadableSpan]) -> bytes:
    """A batch of SDK spans as JSON bytes (everything an exporter reads is kept)."""
    out = []
    for span in spans:
        scope = span.instrumentation_scope
        out.append(
            {
                "n": span.name,
                "c": _context(span.context),
                "p": _context(span.parent),
                "k": span.kind.value,
                "s": span.start_time,
                "e": span.end_time,
                "st": [span.status.status_code.value, span.status.description],
                "a": _attrs(span.attributes),
                "ev": [[e.name, e.timestamp, _attrs(e.attributes)] for e in span.events],
                "l": [[_context(link.context), _attrs(link.attributes)] for link in span.links],
                "r": [_attrs(span.resource.attributes), span.resource.schema_url],
                "sc": [scope.name, scope.version, scope.schema_url] if scope else None,
            }
        )
    return orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS)


def decode_batch(payload: bytes) -> list[ReadableSpan]:
    spans = []
    resources: dict[bytes, Resource] = {}
    for item in orjson.loads(payload):
        attrs, schema_url = item["r"]
        key = orjson.dumps(item["r"], option=orjson.OPT_SORT_KEYS)
        resource = resources.get(key)
        if resource is None:
            resource = resources[key] = Resource(_dec(attrs), schema_url or None)
        scope = item["sc"]
        code, description = item["st"]
        spans.append(
            ReadableSpan(
                name=item["n"],
                context=_span_context(item["c"]),
                parent=_span_context(item["p"]),
                resource=resource,
                attributes=_dec(item["a"]),
                events=[Event(name, _dec(a), timestamp=ts) for name, ts, a in item["ev"]],
                links=[Link(_span_context(c), _dec(a)) for c, a in item["l"]],  # type: ignore[arg-type]
                kind=SpanKind(item["k"]),
                status=Status(StatusCode(code), description),
                start_time=item["s"],
                end_time=item["e"],
                instrumentation_scope=InstrumentationScope(*scope) if scope else None,
            )
        )
    return spans


# --- the on-disk spool ------------------------------------------------------------------------
class SpoolCorrupt(ValueError):
    pass


class Spool:
    """A directory of one-batch files, oldest first by name; bounded in bytes."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock_file = open(self.dir / ".lock", "a+b")  # noqa: SIM115 - held for our lifetime
        try:
            import fcntl

            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock on this platform: trust the user
            pass
        except OSError:
            self._lock_file.close()
            raise
        self._seq = 0
        for stale in self.dir.glob(".tmp-*"):  # a write a crash interrupted: never acknowledged
            stale.unlink(missing_ok=True)
        self.files: deque[Path] = deque(sorted(self.dir.glob("*" + SUFFIX)))
        self.bytes = sum(_size(p) for p in self.files)
        self.spans = sum(_span_count(p) for p in self.files)

    def append(self, payload: bytes, count: int) -> bool:
        """Write one batch durably; False when the spool has no room for it."""
        data = MAGIC + _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        if self.bytes + len(data) > self.max_bytes:
            return False
        self._seq += 1
        # Name order is delivery order: time first, then a per-process counter.
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}-{count}{SUFFIX}"
        tmp = self.dir / f".tmp-{name}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.dir / name)
        _fsync_dir(self.dir)
        self.files.append(self.dir / name)
        self.bytes += len(data)
        self.spans += count
        return True

    def peek(self) -> Path | None:
        return self.files[0] if self.files else None

    @staticmethod
    def read(path: Path) -> bytes:
        data = path.read_bytes()
        head = len(MAGIC) + _FRAME.size
        if len(data) < head or not data.startswith(MAGIC):
            raise SpoolCorrupt(f"{path.name}: not a spool file")
        length, crc = _FRAME.unpack_from(data, len(MAGIC))
        payload = data[head:]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise SpoolCorrupt(f"{path.name}: truncated or corrupt")
        return payload

    def remove(self, path: Path, *, corrupt: bool = False, sync: bool = True) -> None:
        """Take a delivered (or corrupt) file out; ``sync=False`` leaves the directory fsync to
        the caller (one for many removals)."""
        with contextlib.suppress(ValueError):
            self.files.remove(path)
        size = _size(path)
        self.bytes -= size
        self.spans -= _span_count(path)
        if corrupt:  # kept for inspection, out of the delivery queue and the size budget
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".corrupt"))
        else:
            path.unlink(missing_ok=True)
        if sync:
            _fsync_dir(self.dir)

    def sync(self) -> None:
        _fsync_dir(self.dir)

    def close(self) -> None:
        self._lock_file.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _span_count(path: Path) -> int:
    try:
        return int(path.name[: -len(SUFFIX)].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the exporter -----------------------------------------------------------------------------
def _counters() -> tuple[Any, Any]:
    from opentelemetry import metrics

    meter = metrics.get_meter("atlas_middleware")
    return (
        meter.create_counter(schema.METRIC_EXPORTER_DROPPED, unit="{span}"),
        meter.create_counter(schema.METRIC_EXPORTER_SPOOLED, unit="{span}"),
    )


class RetryingSpanExporter(SpanExporter):
    """Wraps ``exporter`` so a down destination delays spans instead of losing them.

    ``export`` never blocks on the destination: it redacts the batch (``redactors``: the
    plugins' by default, ``()`` for none), queues it (memory, or the disk spool when the
    destination is failing or the queue is full) and returns. A sender thread delivers batches
    in order, retrying a failed one after ``initial_backoff_s`` doubling up to ``max_backoff_s``
    (with jitter). ``shutdown`` keeps trying for ``shutdown_timeout_s``, then moves what is left
    to the spool, or counts it as dropped when there is none.

    A failed batch is retried without end only while that is known to be right. The wrapped
    exporter may say (``last_failure_retryable``, as ``StoreSpanExporter`` does): True retries,
    False drops the batch at once. Exporters that do not say (the official OTLP exporters return
    FAILURE for a 400 and for an outage alike): after ``max_attempts`` failures of one batch the
    next waiting batch is sent instead; if the destination takes it, the first batch is tried
    once more and, failing again, dropped as refused (counted). If the other batch fails too,
    the destination is down: everything waits, nothing is dropped, however long it lasts.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_spans: int = 10_000,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        shutdown_timeout_s: float = 2.0,
        max_attempts: int = 3,
        redactors: Sequence[Redactor] | None = None,
    ) -> None:
        if max_queue_spans < 0 or spool_max_bytes <= 0:
            raise ValueError("max_queue_spans must be 0 or more and spool_max_bytes positive")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, got {max_attempts}")
        self.exporter = exporter
        self.max_queue_spans = max_queue_spans
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.max_attempts = max_attempts
        self.redactors = default_redactors() if redactors is None else tuple(redactors)
        self._spool: Spool | None = None
        if spool_dir is not None:
            try:
                self._spool = Spool(spool_dir, spool_max_bytes)
            except OSError as exc:
                log.warning(
                    "atlas: spool %s unavailable (%s; another process may hold it): "
                    "spans wait in memory only",
                    spool_dir,
                    exc.strerror or exc,
                )
        self._queue: deque[list[ReadableSpan]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._failing = False
        self._closing = False
        self._stopped = False
        self._sent = 0
        self._dropped = 0
        self._refused = 0
        self._corrupt = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_drop_log = 0.0
        # Unclassified failures per batch (keyed by its first span and size, which survive a
        # trip through the spool); cleared when the batch is delivered or dropped.
        self._attempts: dict[tuple[Any, ...], int] = {}
        self._dropped_counter, self._spooled_counter = _counters()
        self._thread = threading.Thread(target=self._run, name="atlas-span-retry", daemon=True)
        self._thread.start()

    # --- SpanExporter ---
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            # Before anything else: the queue may spill to disk, and nothing unredacted may.
            batch = redact_spans(spans, self.redactors)
        except Exception as exc:
            with self._cond:
                self._drop(
                    len(spans),
                    f"redaction failed ({type(exc).__name__}: {exc}); never exported unredacted",
                )
            return SpanExportResult.FAILURE
        with self._cond:
            if self._closing:
                self._drop(len(batch), "exporter shut down")
                return SpanExportResult.FAILURE
            fits = self._queued + len(batch) <= self.max_queue_spans
            # While the destination fails, new batches go to disk so a crash cannot lose them.
            to_disk = self._spool is not None and (self._failing or not fits)
            if fits and not to_disk:
                self._queue.append(batch)
                self._queued += len(batch)
                self._cond.notify_all()
                return SpanExportResult.SUCCESS
        if to_disk and self._to_spool(batch):
            return SpanExportResult.SUCCESS
        with self._cond:
            if fits and not self._closing:  # the spool is full but memory has room
                self._queue.append(batch)
                self._queued += len(batch)
                self._cond.notify_all()
                return SpanExportResult.SUCCESS
            self._drop(len(batch), "queue and spool full" if self._spool else "queue full")
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Try to deliver everything now; True when nothing is left waiting."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            self._failing_wait_cut = True
            self._cond.notify_all()
            while self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def shutdown(self, timeout_millis: int | None = None) -> None:
        timeout = self.shutdown_timeout_s if timeout_millis is None else timeout_millis / 1000
        if self._stopped:
            return
        self.force_flush(int(min(timeout, self.shutdown_timeout_s) * 1000))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(self.max_backoff_s, 5.0))
        with self._cond:
            leftovers = list(self._queue)
            self._queue.clear()
            self._queued = 0
            self._stopped = True
        for batch in leftovers:
            if not self._to_spool(batch):
                with self._cond:
                    self._drop(len(batch), "undelivered at shutdown")
        stats = self.stats()
        if stats.dropped_spans or stats.spooled_spans:
            log.warning(
                "atlas: exporter stopped: %d spans delivered, %d left in the spool, %d dropped "
                "(%d refused by the destination)",
                stats.sent_spans,
                stats.spooled_spans,
                stats.dropped_spans,
                stats.refused_spans,
            )
        if self._spool is not None:
            self._spool.close()
        self.exporter.shutdown()

    # --- reporting ---
    def stats(self) -> ExportStats:
        with self._cond:
            spool = self._spool
            return ExportStats(
                queued_spans=self._queued,
                spooled_spans=spool.spans if spool else 0,
                spool_bytes=spool.bytes if spool else 0,
                sent_spans=self._sent,
                dropped_spans=self._dropped,
                corrupt_files=self._corrupt,
                failed_attempts=self._failures,
                last_error=self._last_error,
                refused_spans=self._refused,
            )

    # --- internals ---
    _failing_wait_cut = False  # force_flush asks the sender to retry now, not after its backoff

    def _pending(self) -> bool:
        return bool(self._queue) or (self._spool is not None and bool(self._spool.files))

    def _unqueue(self, batch: list[ReadableSpan]) -> bool:
        # By identity: shutdown may have taken the queue over while this batch was in flight.
        for i, queued in enumerate(self._queue):
            if queued is batch:
                del self._queue[i]
                self._queued -= len(batch)
                return True
        return False

    def _discard(self, batch: list[ReadableSpan], path: Path | None) -> None:
        """Take a delivered or dropped batch out of where it waited. Condition held."""
        if path is None:
            self._unqueue(batch)
        elif self._spool is not None:
            self._spool.remove(path)
        self._attempts.pop(_batch_key(batch), None)

    def _drop(self, count: int, reason: str) -> None:
        # Called with the condition held.
        self._dropped += count
        self._dropped_counter.add(count)
        now = time.monotonic()
        if now - self._last_drop_log >= 10:  # one line per 10 s of trouble, with the total
            self._last_drop_log = now
            log.warning(
                "atlas: dropped %d spans (%s); %d dropped so far", count, reason, self._dropped
            )

    def _refuse(self, batch: list[ReadableSpan], path: Path | None, error: str | None) -> None:
        """The destination refused this batch for good: drop it, counted. Condition held."""
        self._discard(batch, path)
        self._refused += len(batch)
        self._drop(len(batch), f"refused by the destination: {error}")
        self._cond.notify_all()

    def _to_spool(self, batch: list[ReadableSpan]) -> bool:
        spool = self._spool
        if spool is None:
            return False
        try:
            payload = encode_batch(batch)
        except (TypeError, orjson.JSONEncodeError) as exc:
            log.warning("atlas: cannot spool a batch (%s)", exc)
            return False
        with self._cond:
            try:
                written = spool.append(payload, len(batch))
            except OSError as exc:
                log.warning("atlas: spool write failed: %s", exc.strerror or exc)
                return False
            if written:
                self._spooled_counter.add(len(batch))
                self._cond.notify_all()
            return written

    def _next(self, skip: int = 0) -> tuple[list[ReadableSpan], Path | None] | None:
        """The oldest waiting batch (memory first: it is older than what spilled past it), or
        the one ``skip`` places behind it, with its spool file if it came from disk. Called
        with the condition held."""
        if len(self._queue) > skip:
            return self._queue[skip], None
        skip -= len(self._queue)
        spool = self._spool
        while spool is not None and len(spool.files) > skip:
            path = spool.files[skip]
            try:
                return decode_batch(Spool.read(path)), path
            except (OSError, SpoolCorrupt, ValueError, KeyError, TypeError) as exc:
                self._corrupt += 1
                self._drop(_span_count(path), f"corrupt spool file: {exc}")
                spool.remove(path, corrupt=True)
        return None

    def _send(self, batch: list[ReadableSpan]) -> tuple[bool, str | None]:
        try:
            ok = self.exporter.export(batch) == SpanExportResult.SUCCESS
        except Exception as exc:  # an exporter must not kill the sender
            return False, f"{type(exc).__name__}: {exc}"
        if ok:
            return True, None
        return False, getattr(self.exporter, "last_error", None) or "export failed"

    def _retryable(self) -> bool | None:
        """What the wrapped exporter says of its last failure: None when it does not say."""
        verdict = getattr(self.exporter, "last_failure_retryable", None)
        return None if verdict is None else bool(verdict)

    def _delivered(self, batch: list[ReadableSpan], path: Path | None) -> None:
        # Condition held.
        self._sent += len(batch)
        self._discard(batch, path)
        if self._failing:
            log.info("atlas: span destination reachable again")
        self._failing = False
        self._cond.notify_all()

    def _run(self) -> None:
        backoff = self.initial_backoff_s
        while True:
            with self._cond:
                item = self._next()
                while item is None and not self._closing:
                    self._cond.wait()
                    item = self._next()
                if item is None or self._closing:
                    return  # shutdown() already gave delivery its deadline
                batch, path = item
                key = _batch_key(batch)
                # This batch failed again and again without the exporter saying why: send
                # another one to tell a destination refusing this batch from one that is down.
                probe = (
                    self._next(skip=1) if self._attempts.get(key, 0) >= self.max_attempts else None
                )
            if probe is not None:
                ok, error = self._send(probe[0])
                if ok:
                    with self._cond:
                        self._delivered(*probe)
                    # The destination takes other batches: one more try decides this one.
                    ok, error = self._send(batch)
                    with self._cond:
                        if ok:
                            self._delivered(batch, path)
                        else:
                            self._failures += 1
                            self._last_error = error
                            if self._retryable() is not True:
                                self._refuse(batch, path, error)
                    backoff = self.initial_backoff_s
                    continue
                target, target_path, head = probe[0], probe[1], False
            else:
                ok, error = self._send(batch)
                target, target_path, head = batch, path, True
            with self._cond:
                if ok:
                    self._delivered(batch, path)
                    backoff = self.initial_backoff_s
                    continue
                self._failures += 1
                self._last_error = error
                retryable = self._retryable()
                if retryable is False:
                    # Refused for good: retrying would block the queue behind it forever.
                    self._refuse(target, target_path, error)
                    continue
                if retryable is None and head:
                    self._attempts[key] = self._attempts.get(key, 0) + 1
                if not self._failing:
                    log.warning("atlas: span export failing (%s); retrying with backoff", error)
                self._failing = True
                moved = None
                if head and path is None and self._spool is not None and self._unqueue(batch):
                    # The destination is down: move the batch to disk so a crash cannot lose it.
                    moved = batch
                delay = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, self.max_backoff_s)
            if moved is not None and not self._to_spool(moved):
                with self._cond:  # no room on disk: keep it in memory, at the head
                    if self._stopped:
                        self._drop(len(moved), "undelivered at shutdown")
                    else:
                        self._queue.appendleft(moved)
                        self._queued += len(moved)
            with self._cond:
                deadline = time.monotonic() + delay
                while not self._closing and not self._failing_wait_cut:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._failing_wait_cut:
                    self._failing_wait_cut = False
                    backoff = self.initial_backoff_s


def _batch_key(batch: Sequence[ReadableSpan]) -> tuple[Any, ...]:
    context = batch[0].context if batch else None
    if context is None:
        return (id(batch),)
    return (context.trace_id, context.span_id, len(batch))


def flushing_batch_processor(exporter: SpanExporter, **options: Any) -> Any:
    """A BatchSpanProcessor whose ``force_flush`` also waits for the exporter's own flush: the
    retrying exporter's delivers what it queued (the SDK's only hands spans to the exporter,
    which here just queues them)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class _Processor(BatchSpanProcessor):
        def force_flush(self, timeout_millis: int | None = None) -> bool:
            timeout = 30_000 if timeout_millis is None else timeout_millis
            handed = super().force_flush(timeout)
            return exporter.force_flush(timeout) and handed

    return _Processor(exporter, **options)
