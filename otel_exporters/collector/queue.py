"""The collector's durable receive queue: requests accepted while the store is unavailable wait
on local disk, and a drainer lands them in the store, in order, once it is back.

In the manner of the OpenTelemetry Collector's persistent sending queue: a request the store
cannot take now is decoded, redacted, written to a file, fsync'd (file and directory) and only
then acknowledged, so a collector killed with SIGKILL loses nothing it acknowledged; the next
collector on the directory delivers it. While anything waits, later requests queue behind it
(arrival order is delivery order). The queue is bounded in bytes: past it, 503 at once.

Exactly once: a file is removed only after the store committed its spans, and the store's
writes are idempotent (``(trace_id, span_id)`` is the key; OTLP retries re-send on purpose), so
a crash between the commit and the removal only makes the next drainer write the same rows again,
which changes nothing.

Layout: ``<dir>/<n>/`` per collector process (each takes the lowest ``n`` it can lock; a process
that died leaves its folder unlocked, and any live process adopts and drains it), holding the
files of :class:`~atlas_middleware.otel_exporters.spool.Spool`: one request per file, named in
arrival order, ``MAGIC``, length, CRC-32, then the request's span records as JSON. A file that
fails its checksum, or that the store refuses for good, is moved aside (``.corrupt`` /
``.refused``) and counted, never retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from atlas_middleware.otel_exporters.spool import Spool, SpoolCorrupt

from atlas_middleware.storage import Store, StoreDataError, StoreUnavailable
from atlas_middleware.storage.records import SpanRecord

log = logging.getLogger("atlas.collector")

STORE_ID = "store.id"

# A file the store fails on in a way that is neither an outage nor refused data (a bug, an
# internal error) is retried this many times, then set aside so it cannot block the queue.
MAX_ATTEMPTS = 5
# While the store is down the drainer tries it again at most this long after the last failure
# (one connection attempt: cheap), so delivery starts within seconds of its return.
MAX_BACKOFF_S = 2.0


@dataclass
class QueueStats:
    queued: int = 0  # requests acknowledged through the queue
    queued_spans: int = 0
    drained: int = 0  # requests landed in the store from the queue
    drained_spans: int = 0
    queue_full: int = 0  # requests answered 503 because the queue had no room
    queue_refused_spans: int = 0  # spans the store refused for good after they were queued
    queue_failed_spans: int = 0  # spans set aside after MAX_ATTEMPTS failures (files kept)
    queue_corrupt: int = 0  # files that failed their checksum (kept as .corrupt)


def encode_records(records: Sequence[SpanRecord]) -> bytes:
    return orjson.dumps([r.to_json() for r in records], option=orjson.OPT_NON_STR_KEYS, default=str)


def decode_records(payload: bytes) -> list[SpanRecord]:
    return [SpanRecord.from_json(item) for item in orjson.loads(payload)]


class ReceiveQueue:
    """The queue of one collector process (thread-safe)."""

    def __init__(self, directory: str | Path, max_bytes: int, store_id: str = "") -> None:
        self.root = Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        # Which store the queued requests are for: a folder queued for another store is never
        # claimed or drained here (two collectors on one folder with different stores).
        self.store_id = store_id
        self.stats = QueueStats()
        self._lock = threading.Lock()
        self._spool = self._claim()
        self.dir = self._spool.dir
        self.current: tuple[Spool, Path] | None = None  # the request being drained
        self.full = False  # the last request did not fit (until one fits or one drains)

    def _claim(self) -> Spool:
        for n in range(1024):
            folder = self.root / str(n)
            if not self._ours(folder):
                continue
            try:
                spool = Spool(folder, self.max_bytes)
            except OSError:
                continue  # another live collector holds it
            (folder / STORE_ID).write_text(self.store_id)
            return spool
        raise OSError(f"no free queue folder under {self.root}")

    def _ours(self, folder: Path) -> bool:
        """Whether ``folder`` holds (or may hold) requests for this queue's store."""
        try:
            found = (folder / STORE_ID).read_text()
        except OSError:
            found = None  # new, or holding requests for a store nobody recorded
        return found == self.store_id or not any(folder.glob("*.spool"))

    # --- the request path ---
    def has_waiting(self) -> bool:
        with self._lock:
            return bool(self._spool.files)

    def append(self, records: Sequence[SpanRecord]) -> bool:
        """Write one request durably (fsync'd); False when the queue has no room for it."""
        payload = encode_records(records)
        with self._lock:
            if not self._spool.append(payload, len(records)):
                self.stats.queue_full += 1
                self.full = True
                return False
            self.full = False
            self.stats.queued += 1
            self.stats.queued_spans += len(records)
        return True

    @property
    def waiting(self) -> tuple[int, int, int]:
        """(requests, spans, bytes) waiting in this process's queue."""
        with self._lock:
            return len(self._spool.files), self._spool.spans, self._spool.bytes

    # --- the drainer ---
    def drain_one(self, store: Store, spool: Spool | None = None) -> bool:
        """Land the oldest waiting request in ``store``; False when nothing waits."""
        return self.drain(store, spool, max_files=1) > 0

    def drain(
        self,
        store: Store,
        spool: Spool | None = None,
        *,
        max_files: int = 64,
        max_spans: int = 20_000,
    ) -> int:
        """Land the oldest waiting requests (up to ``max_files`` / ``max_spans``) in ``store`` in
        one write, in arrival order; returns how many files left the queue (0: nothing waits).
        Raises StoreUnavailable (the store is down: try later) and other store errors; data the
        store refuses for good is retried a request at a time, and what it refuses alone is set
        aside (``.refused``), counted and logged."""
        spool = spool or self._spool
        with self._lock:
            paths: list[Path] = []
            spans = 0
            for path in list(spool.files)[:max_files]:
                if paths and spans + _count(path) > max_spans:
                    break
                paths.append(path)
                spans += _count(path)
        if not paths:
            return 0
        self.current = (spool, paths[0])
        records: list[SpanRecord] = []
        readable: list[Path] = []
        for path in paths:
            try:
                records += decode_records(Spool.read(path))
                readable.append(path)
            except (OSError, SpoolCorrupt, ValueError, KeyError, TypeError) as exc:
                log.error("receive queue: %s is unreadable (%s); kept as .corrupt", path.name, exc)
                with self._lock:
                    self.stats.queue_corrupt += 1
                    spool.remove(path, corrupt=True)
        if not readable:
            return len(paths)
        try:
            store.write_spans(records)
        except StoreDataError as exc:
            if len(readable) > 1:  # find the request the store refuses: one at a time
                return sum(self.drain(store, spool, max_files=1) for _ in readable)
            # Acknowledged, then refused by the store for good: no retry will ever land it.
            log.error(
                "receive queue: the store refused %d queued spans for good (%s); kept as %s",
                len(records),
                exc.reason,
                readable[0].with_suffix(".refused").name,
            )
            with self._lock:
                self.stats.queue_refused_spans += len(records)
                _set_aside(spool, readable[0], ".refused")
            return len(paths)
        with self._lock:
            for path in readable:
                spool.remove(path, sync=False)
            spool.sync()
            self.full = False
            self.stats.drained += len(readable)
            self.stats.drained_spans += len(records)
        return len(paths)

    def set_aside(self, spool: Spool, path: Path) -> None:
        with self._lock:
            self.stats.queue_failed_spans += _count(path)
            _set_aside(spool, path, ".failed")

    def orphans(self) -> list[Path]:
        """Queue folders of collectors that are gone (unlocked) and still hold requests."""
        found = []
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and sub != self.dir and any(sub.glob("*.spool")) and self._ours(sub):
                found.append(sub)
        return found

    def close(self) -> None:
        with self._lock:
            self._spool.close()


def _set_aside(spool: Spool, path: Path, suffix: str) -> None:
    target = path.with_suffix(suffix)
    with contextlib.suppress(OSError):
        path.replace(target)
    with contextlib.suppress(ValueError):
        spool.files.remove(path)
    spool.bytes -= _size(target)
    spool.spans -= _count(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _count(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 1)[0].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


class Drainer:
    """A thread landing queued requests in the store, oldest first, and adopting the queues of
    collectors that died. Backs off while the store is unavailable."""

    def __init__(
        self,
        queue: ReceiveQueue,
        store: Store,
        *,
        retry_after: float = 1.0,
        on_unavailable: Callable[[StoreUnavailable], None] | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.retry_after = retry_after
        self.on_unavailable = on_unavailable  # told each time the store is found down
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._attempts: dict[Path, int] = {}
        self.store_down = False
        self._thread = threading.Thread(target=self._run, name="atlas-queue-drain", daemon=True)

    def start(self) -> Drainer:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        backoff = self.retry_after
        next_scan = 0.0
        single = False  # after a failure, one request at a time: find the one that fails
        while not self._stop.is_set():
            try:
                progressed = self.queue.drain(self.store, max_files=1 if single else 64) > 0
                if not progressed and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + 5.0
                    progressed = self._adopt()
            except StoreUnavailable as exc:
                if not self.store_down:
                    log.warning("receive queue: store unavailable; waiting requests stay queued")
                self.store_down = True
                if self.on_unavailable is not None:
                    self.on_unavailable(exc)
                self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except Exception as exc:  # a store error retrying may fix, or a bug: bounded
                if single:
                    self._failed_attempt(exc)
                single = True
                self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if self.store_down:
                log.info("receive queue: store reachable again, delivering what waited")
                self.store_down = False
            backoff = self.retry_after
            single = False
            if not progressed:
                self._wake.wait(1.0)
                self._wake.clear()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _failed_attempt(self, exc: Exception) -> None:
        current = self.queue.current
        if current is None:
            return
        spool, path = current
        attempts = self._attempts.get(path, 0) + 1
        self._attempts[path] = attempts
        log.error("receive queue: writing %s failed (%s: %s)", path.name, type(exc).__name__, exc)
        if attempts >= MAX_ATTEMPTS:
            log.error("receive queue: %s set aside as .failed after %d tries", path.name, attempts)
            self.queue.set_aside(spool, path)
            self._attempts.pop(path, None)

    def _adopt(self) -> bool:
        """Drain one dead collector's queue folder (if any is unlocked); True if it moved."""
        for folder in self.queue.orphans():
            try:
                spool = Spool(folder, self.queue.max_bytes)
            except OSError:
                continue  # its collector is alive
            try:
                count = len(spool.files)
                log.info("receive queue: delivering %d requests left in %s", count, folder)
                while self.queue.drain(self.store, spool) and not self._stop.is_set():
                    pass
            finally:
                spool.close()
            return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
