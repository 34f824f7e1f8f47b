"""The path every OTLP request takes, whatever its transport: decode → redact → store, durably.

Admission is bounded: at most ``max_inflight`` requests are inflated, decoded or written at once
(memory is bounded by ``max_inflight × max body size``), and bodies still arriving hold no slot,
only the bytes that arrived, within a receive buffer of the same size; past either the
transports answer 429 / UNAVAILABLE so clients keep their data and retry. A request is
acknowledged only after the store's transaction committed, or, while the store is unavailable,
once it is fsync'd in the receive queue (collector/queue.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from atlas_middleware.otel_exporters.collector.queue import Drainer, ReceiveQueue
from atlas_middleware.otel_exporters.otlp import Decoded, DecodeError

from atlas_middleware.errors import first_line
from atlas_middleware.redaction import Redactor, default_redactors, redact
from atlas_middleware.storage import Store, StoreDataError, StoreError, StoreUnavailable

log = logging.getLogger("atlas.collector")


class Overloaded(Exception):
    """No admission slot is free: the client should retry later."""


class StoreDown(Exception):
    """The store failed recently; answer 503 at once instead of queueing on a dead database."""


class BodyTooLarge(Exception):
    """The body (as sent, or once inflated) is over the size limit: 413 / RESOURCE_EXHAUSTED."""


class ReceiveBusy(Exception):
    """Bodies being received already hold the receive buffer: 429 / UNAVAILABLE."""


class QueueFull(Exception):
    """The store is unavailable and the receive queue has no room: 503 at once."""


class IngestFailed(Exception):
    """The collector could not process a well-formed request (a redaction plugin raised, the
    store failed in a way retrying may fix, or a bug): nothing was stored, and the answer is
    503 + Retry-After so the client keeps the data and sends it again. OTLP clients do not
    retry a 500, so that answer would lose the data."""


@dataclass
class Stats:
    requests: int = 0
    spans_stored: int = 0
    spans_rejected: int = 0
    overloaded: int = 0
    store_unavailable: int = 0
    bad_requests: int = 0
    rewards_rejected: int = 0  # evaluation scores that were NaN/inf/not numbers: never rewards
    ingest_errors: int = 0  # well-formed requests answered 503: redaction or store failures
    slow_clients: int = 0  # bodies not received within the read deadline (cut)
    too_large: int = 0  # bodies over the size limit, as sent or once inflated (413)


class Ingestor:
    def __init__(
        self,
        store: Store,
        *,
        max_inflight: int = 16,
        workers: int = 4,
        redactors: Sequence[Redactor] | None = None,
        retry_after: float = 1.0,
        max_receiving_bytes: int = 16 * 20 * 1024 * 1024,
        queue: ReceiveQueue | None = None,
        drainer: Drainer | None = None,
    ) -> None:
        self.store = store
        # Requests the store cannot take now wait here (durably) instead of answering 503.
        self.queue = queue
        self.drainer = drainer
        self._stats_lock = threading.Lock()
        self.max_inflight = max_inflight
        self.retry_after = retry_after
        self.stats = Stats()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._redactors = default_redactors() if redactors is None else tuple(redactors)
        # Decoding holds the GIL but the database round trip does not: a few threads keep the
        # next batch decoding while Postgres works on the previous one.
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="atlas-ingest")
        self._down_until = 0.0
        self._last_error_log: dict[str, float] = {}
        # Requests whose bodies are being received, and the bytes they hold so far: waiting for
        # a client's bytes holds no admission slot, only what actually arrived.
        self.receiving = 0
        self.receiving_bytes = 0
        self.max_receiving_bytes = max_receiving_bytes

    @property
    def inflight(self) -> int:
        """Requests holding an admission slot right now."""
        return self._inflight

    def admit(self) -> None:
        """Refuse early, before a body is read, when it could not be processed anyway."""
        if self._inflight >= self.max_inflight:
            self.stats.overloaded += 1
            raise Overloaded
        if time.monotonic() < self._down_until and self.queue is None:
            self.stats.store_unavailable += 1
            raise StoreDown

    @asynccontextmanager
    async def receiving_body(self) -> AsyncIterator[Callable[[int], None]]:
        """While a body arrives: yields ``take(n)``, to call with each chunk's size, which raises
        ReceiveBusy when the receive buffer (all bodies being received) would overflow. Bytes
        are released when the body has left this stage (to a slot, or refused)."""
        held = 0

        def take(n: int) -> None:
            nonlocal held
            if self.receiving_bytes + n > self.max_receiving_bytes:
                self.stats.overloaded += 1
                raise ReceiveBusy
            held += n
            self.receiving_bytes += n

        self.receiving += 1
        try:
            yield take
        finally:
            self.receiving -= 1
            self.receiving_bytes -= held

    @property
    def retry_after_header(self) -> str:
        return str(max(1, round(self.retry_after)))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Admission for one request, taken once its body has arrived (inflating, decoding and
        storing it happen inside)."""
        self.admit()
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def ingest(self, decode: Callable[[], Decoded]) -> Decoded:
        """Decode and store one request's spans. Raises DecodeError (400), StoreDataError (400:
        the store refuses this data for good), StoreUnavailable or IngestFailed (503)."""
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        try:
            decoded, queued = await loop.run_in_executor(self._executor, self._work, decode)
        except QueueFull:
            self._log_error("queue", "store unavailable and the receive queue full: 503")
            raise
        except StoreUnavailable as exc:
            self.stats.store_unavailable += 1
            self._down_until = time.monotonic() + self.retry_after
            self._log_error("unavailable", "store unavailable, answering 503: %s", exc)
            raise
        except StoreDataError as exc:
            self.stats.bad_requests += 1
            self._log_error("data", "the store refused a batch, answering 400: %s", exc)
            raise
        except IngestFailed as exc:
            self.stats.ingest_errors += 1
            self._log_error("ingest", "%s; answering 503 so the client retries", exc, level=40)
            raise
        if not queued:
            self.stats.spans_stored += len(decoded.spans)
        self.stats.spans_rejected += decoded.rejected
        return decoded

    def _work(self, decode: Callable[[], Decoded]) -> tuple[Decoded, bool]:
        """Decode, redact and store (or queue) one request; returns it and whether it queued."""
        try:
            decoded = decode()
        except (DecodeError, BodyTooLarge):
            raise
        except Exception as exc:
            # A decoder bug on hostile input: refuse the request (400, nothing stored) and say so
            # loudly, rather than a 500 with a half-read request.
            log.exception("could not decode a request")
            raise DecodeError(f"undecodable request ({type(exc).__name__})") from exc
        if decoded.spans:
            try:
                redact(decoded.spans, self._redactors)
            except Exception as exc:
                # A broken redaction plugin: the data is fine, storing it unredacted is not.
                log.debug("redaction failed", exc_info=True)
                raise IngestFailed(
                    f"redaction failed ({type(exc).__name__}: {first_line(exc)})"
                ) from exc
            queue = self.queue
            # While anything waits in the queue, later requests wait behind it (arrival order
            # is delivery order), and a store that just failed is not tried by every request.
            if queue is not None and (queue.has_waiting() or time.monotonic() < self._down_until):
                return self._enqueue(decoded), True
            try:
                written = self.store.write_spans(decoded.spans)
            except StoreUnavailable as exc:
                if queue is None:
                    raise
                self.store_failed(exc)
                return self._enqueue(decoded), True
            except StoreDataError:
                raise
            except StoreError as exc:
                # The client hears what failed, not where: the store's address stays in the log.
                log.debug("store error: %s", exc)
                raise IngestFailed(f"store error: {(first_line(exc.reason) or 'unknown')}") from exc
            except Exception as exc:  # a bug on this input: keep the data with the client
                log.debug("store write failed", exc_info=True)
                raise IngestFailed(
                    f"store write failed ({type(exc).__name__}: {first_line(exc)})"
                ) from exc
            self.stats.rewards_rejected += written.rejected_rewards
        return decoded, False

    def store_failed(self, exc: StoreUnavailable) -> None:
        """The store was found unavailable (by a request, or by the queue's drainer)."""
        with self._stats_lock:
            self.stats.store_unavailable += 1
            self._down_until = time.monotonic() + self.retry_after
        self._log_error("unavailable", "store unavailable, queueing requests: %s", exc)

    def _enqueue(self, decoded: Decoded) -> Decoded:
        assert self.queue is not None
        try:
            appended = self.queue.append(decoded.spans)
        except OSError as exc:  # the disk failed us: nothing acknowledged, the client retries
            raise IngestFailed(f"receive queue write failed: {exc.strerror or exc}") from exc
        if not appended:
            raise QueueFull
        if self.drainer is not None:
            self.drainer.wake()
        return decoded

    def _log_error(self, kind: str, message: str, *args: object, level: int = 30) -> None:
        # One line per kind per 10 s: a down database or a broken plugin fails every request,
        # and must not flood the log (nor hide the other kind of trouble).
        now = time.monotonic()
        if now - self._last_error_log.get(kind, -1e9) >= 10:
            self._last_error_log[kind] = now
            log.log(level, message, *args)

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight requests to finish; True if all did within ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=True)
