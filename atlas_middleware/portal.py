"""A background event loop shared by the runtime.

Two jobs: sync agents get their (async) teacher calls run here with a timeout, and rewards are
judged here off the request path by a bounded queue of background jobs that never blocks the
caller: when it is full, the job is dropped and counted.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # its exit hook must be registered before ours
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("atlas")
T = TypeVar("T")


@dataclass
class PortalStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0


class Portal:
    def __init__(self, *, max_pending: int = 1000) -> None:
        self.max_pending = max_pending
        self.stats = PortalStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._what: dict[concurrent.futures.Future[Any], str] = {}
        self.closed = False  # the process is exiting: no new background jobs

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            return loop
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="atlas-portal", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _submit(self, make: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        # The job runs in a copy of the caller's context (contextvars: the current span, so
        # teacher calls and evaluations land in the caller's trace; the guidance; ...). A task
        # takes the context current when it is created, so the inner task is created inside the
        # copy; cancelling the outer future cancels it too.
        context = contextvars.copy_context()

        async def job() -> T:
            return await context.run(lambda: asyncio.ensure_future(make()))

        return asyncio.run_coroutine_threadsafe(job(), self._ensure())

    def call(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run a coroutine on the portal from synchronous code and wait for it."""
        future = self._submit(make)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout:g}s") from None

    def background(self, make: Callable[[], Awaitable[Any]], *, what: str) -> bool:
        """Queue a job off the request path; False (and counted) when the queue is full, or
        when the process is already exiting (then it could not finish: said, not failed)."""
        if self.closed:
            self.stats.dropped += 1
            log.warning(
                "atlas: a %s scheduled while the process exits was dropped (its model calls "
                "cannot run any more); call atlas.shutdown() before exiting",
                what,
            )
            return False
        # Start the loop before taking the lock: _ensure() takes it too (not re-entrant), so an
        # async-only program whose first portal use is a background reward would deadlock.
        self._ensure()
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.stats.dropped += 1
                if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                    log.warning(
                        "atlas: background queue full, %d %s jobs dropped", self.stats.dropped, what
                    )
                return False
            self.stats.submitted += 1
            future = self._submit(make)
            self._pending.add(future)
            self._what[future] = what
        future.add_done_callback(lambda f: self._done(f, what))
        return True

    def _done(self, future: concurrent.futures.Future[Any], what: str) -> None:
        with self._lock:
            self._pending.discard(future)
            self._what.pop(future, None)
        if future.cancelled():
            self.stats.failed += 1
        elif future.exception() is not None:
            self.stats.failed += 1
            log.warning("atlas: background %s failed: %s", what, future.exception())
        else:
            self.stats.completed += 1

    def runs_here(self) -> bool:
        """Whether the caller is the portal's own thread (waiting for it would wait forever)."""
        return self._thread is threading.current_thread()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def cancel_pending(self) -> int:
        """Cancel every queued or running background job; returns how many were cancelled."""
        with self._lock:
            pending = list(self._pending)
        return sum(1 for future in pending if future.cancel())

    def drain(self, timeout: float) -> bool:
        """Wait for queued background jobs; True if all finished within ``timeout``."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return True
        _, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def finish(self, timeout: float, *, why: str) -> int:
        """Wait up to ``timeout`` for the background jobs, then cancel what is left and say
        what was dropped (one warning: how many of which kind); returns that number."""
        if self.drain(timeout):
            return 0
        with self._lock:
            left = [f for f in self._pending if not f.done()]
            kinds: dict[str, int] = {}
            for future in left:
                kind = self._what.get(future, "job")
                kinds[kind] = kinds.get(kind, 0) + 1
        cancelled = sum(1 for future in left if future.cancel())
        what = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(kinds.items()))
        log.warning(
            "atlas: %s: %s still pending after %.3g s %s dropped (cancelled); "
            "sessions keep their spans but not these results",
            why,
            what,
            timeout,
            "were" if len(left) > 1 else "was",
        )
        if cancelled:
            # Cancelled jobs unwind on the portal loop (a local generation stops at its next
            # token): a moment, so the worker threads that exit joins are idle.
            self.drain(1.0)
        return len(left)


_portal: Portal | None = None
_portal_lock = threading.Lock()
# How long shutdown (and exit) waits for background rewards and span delivery in all
# (telemetry.drain_s of the config; supervise sets it).
_drain_s = 10.0


def set_drain_seconds(seconds: float) -> None:
    global _drain_s
    _drain_s = seconds


def drain_seconds() -> float:
    return _drain_s


def current_portal() -> Portal | None:
    """The portal if one was started (shutdown must not start one just to find it idle)."""
    return _portal


def get_portal() -> Portal:
    global _portal
    if _portal is None:
        with _portal_lock:
            if _portal is None:
                _portal = Portal()
                _register_exit_hook()
    return _portal


def finish(timeout: float, *, why: str) -> int:
    """Let background jobs finish for up to ``timeout`` seconds, then cancel what is left (a
    local model's generation stops at its next token) and say what was dropped; returns how
    many were dropped. Starts no portal just to find it idle."""
    portal = _portal
    if portal is None or not portal.pending:
        return 0
    return portal.finish(timeout, why=why)


def _register_exit_hook() -> None:
    # At exit the interpreter joins every worker thread (the thread pools' own exit hook) before
    # it runs atexit handlers: a local model still generating for a background reward held exit
    # for minutes. This hook runs before those joins (threading's exit hooks run in reverse
    # order of registration, so it is registered after the thread pools'), and bounds the wait.
    import concurrent.futures.thread  # noqa: F401 - registers the pools' exit join first

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading exit hooks")
        register(_at_exit)
    except RuntimeError:  # already shutting down, or another Python: the classic hook
        atexit.register(_at_exit)


_exit_handler: Callable[[], None] | None = None


def on_exit(handler: Callable[[], None]) -> None:
    """What to run at exit before worker threads are joined (``atlas.shutdown``'s bounded
    drain, registered by the package): without one, background jobs get the drain time."""
    global _exit_handler
    _exit_handler = handler


def _at_exit() -> None:
    portal = _portal
    if portal is not None:
        if portal.closed:
            return
        portal.closed = True  # rewards scheduled from here on are dropped, with a warning
    try:
        if _exit_handler is not None:
            _exit_handler()
        else:
            finish(_drain_s, why="at exit")
    except Exception as exc:  # exit goes on whatever happens here
        log.warning("atlas: shutdown at exit failed: %s", exc)
