"""atlas-collector: settings, start-up, and a draining shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from atlas_middleware.otel_exporters.collector.auth import (
    check_token_setting,
    is_loopback,
    token_check,
)

from atlas_middleware.storage import StoreError, default_store_url, open_store
from atlas_middleware.storage.records import safe_url

log = logging.getLogger("atlas.collector")

ENV_PREFIX = "ATLAS_COLLECTOR_"
DEFAULT_QUEUE_DIR = Path(".atlas") / "collector-queue"


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says what to do."""


@dataclass
class CollectorSettings:
    """Every setting has a flag (``--max-body-mb``) and an env var (``ATLAS_COLLECTOR_MAX_BODY_MB``);
    the store URL also reads ``ATLAS_STORE_URL``."""

    store: str = field(default_factory=default_store_url)
    http: str = "127.0.0.1:4318"  # "off" disables
    grpc: str = "127.0.0.1:4317"  # "off" disables
    token: str | None = None
    max_body_mb: float = 20.0
    max_inflight: int = 16
    workers: int = 4
    processes: int = 1
    drain_seconds: float = 30.0
    read_timeout_s: float = 10.0
    max_receiving: int = 128
    # The durable receive queue: None is the default folder (left off, with a warning, if it
    # cannot be used), "off" disables it, a path must be usable or the collector will not start.
    queue_dir: str | None = None
    queue_max_mb: float = 1024.0
    retry_after: float = 1.0
    log_level: str = "INFO"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> CollectorSettings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def queue_max_bytes(self) -> int:
        return int(self.queue_max_mb * 1024 * 1024)

    @property
    def queue_path(self) -> Path | None:
        if self.queue_dir is not None and self.queue_dir.strip().lower() == "off":
            return None
        return Path(self.queue_dir) if self.queue_dir else DEFAULT_QUEUE_DIR

    def endpoints(self) -> dict[str, tuple[str, int] | None]:
        return {"http": _address("http", self.http), "grpc": _address("grpc", self.grpc)}

    def validate(self) -> None:
        if self.token is not None:
            try:
                check_token_setting(self.token)
            except ValueError as exc:
                raise ConfigError(f"--token (or {ENV_PREFIX}TOKEN / --token-file): {exc}") from None
        endpoints = self.endpoints()
        if not any(endpoints.values()):
            raise ConfigError("both --http and --grpc are off: enable at least one receiver")
        for name, endpoint in endpoints.items():
            if endpoint and not is_loopback(endpoint[0]) and not self.token:
                raise ConfigError(
                    f"--{name} binds {endpoint[0]}, which is not loopback: set --token "
                    f"(or {ENV_PREFIX}TOKEN) so only your pipeline can write spans"
                )
        if self.processes > 1 and any(e and e[1] == 0 for e in endpoints.values()):
            raise ConfigError("--processes above 1 needs fixed ports (the processes share them)")
        if self.queue_dir and self.queue_path is not None:
            try:
                self.queue_path.mkdir(parents=True, exist_ok=True)
                probe = self.queue_path / ".atlas-write-check"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(
                    f"--queue-dir {self.queue_dir}: not a writable folder "
                    f"({exc.strerror or exc}); give another one, or off to run without the queue"
                ) from None
        for name in (
            "queue_max_mb",
            "max_body_mb",
            "max_inflight",
            "workers",
            "processes",
            "read_timeout_s",
            "max_receiving",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")


def _convert(name: str, kind: object, raw: str) -> object:
    kind = str(kind)
    try:
        if "float" in kind:
            return float(raw)
        if "int" in kind:
            return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw


def _address(name: str, value: str | None) -> tuple[str, int] | None:
    if not value or value.lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--{name} must be HOST:PORT (e.g. 127.0.0.1:4318) or off, got {value!r}")
    return host.strip("[]"), int(port)


@dataclass
class RunningCollector:
    http_port: int | None
    grpc_port: int | None


async def serve(
    settings: CollectorSettings,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[RunningCollector] | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT), then drain in-flight requests."""
    from aiohttp import web
    from atlas_middleware.otel_exporters.collector.http import build_app
    from atlas_middleware.otel_exporters.collector.ingest import Ingestor

    options: dict[str, Any] = {}
    if settings.store.startswith(("postgresql://", "postgres://")):
        # With a queue to fall back on, a request should not wait long for a connection to a
        # database that is down (the client's own deadline is ticking): 1 s, not the 5 s default.
        options["acquire_timeout_s"] = 1.0
    store = await asyncio.to_thread(open_store, settings.store, **options)
    queue = drainer = None
    if settings.queue_path is not None:
        from atlas_middleware.otel_exporters.collector.queue import Drainer, ReceiveQueue

        try:
            queue = ReceiveQueue(
                settings.queue_path, settings.queue_max_bytes, store_id=safe_url(store.url)
            )
        except OSError as exc:
            if settings.queue_dir:
                raise
            log.warning(
                "receive queue off: cannot use %s (%s); a store outage answers 503",
                settings.queue_path,
                exc.strerror or exc,
            )
    ingestor = Ingestor(
        store,
        max_inflight=settings.max_inflight,
        workers=settings.workers,
        retry_after=settings.retry_after,
        # Bodies being received hold at most what processing them could: a stalled client
        # holds only the bytes it sent.
        max_receiving_bytes=settings.max_inflight * settings.max_body_bytes,
        queue=queue,
    )
    if queue is not None:
        drainer = ingestor.drainer = Drainer(
            queue, store, retry_after=settings.retry_after, on_unavailable=ingestor.store_failed
        ).start()
    check = token_check(settings.token)
    endpoints = settings.endpoints()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not available off the main thread (embedded in tests) or on Windows.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    runner = None
    grpc_server = None
    ports = RunningCollector(None, None)
    try:
        if endpoints["http"]:
            host, port = endpoints["http"]
            app = build_app(
                ingestor, check, settings.max_body_bytes, read_timeout_s=settings.read_timeout_s
            )
            runner = web.AppRunner(
                app,
                access_log=None,
                shutdown_timeout=settings.drain_seconds,
                # Bodies are inflated by atlas, incrementally and off the event loop (http.py):
                # aiohttp would inflate whole chunks on the loop, past any limit.
                auto_decompress=False,
            )
            await runner.setup()
            # Several processes share the port; the kernel spreads connections between them.
            site = web.TCPSite(runner, host, port, reuse_port=settings.processes > 1 or None)
            await site.start()
            ports.http_port = runner.addresses[0][1]
        if endpoints["grpc"]:
            from atlas_middleware.otel_exporters.collector.grpc import build_server

            host, port = endpoints["grpc"]
            grpc_server, ports.grpc_port = build_server(
                ingestor,
                check,
                f"{host}:{port}",
                settings.max_body_bytes,
                reuse_port=settings.processes > 1,
                max_receiving=settings.max_receiving,
                read_timeout_s=settings.read_timeout_s,
                max_inflight=settings.max_inflight,
            )
            await grpc_server.start()
        log.info(
            "atlas-collector listening: http=%s grpc=%s store=%s auth=%s queue=%s",
            ports.http_port,
            ports.grpc_port,
            safe_url(store.url),
            "bearer" if settings.token else "off (loopback only)",
            queue.dir if queue is not None else "off",
        )
        if queue is not None and queue.has_waiting():
            requests_, spans, _ = queue.waiting
            log.info("receive queue: %d requests (%d spans) to deliver", requests_, spans)
        if started is not None:
            started.set_result(ports)
        await stop.wait()
        log.info("atlas-collector draining (up to %.0fs)", settings.drain_seconds)
    finally:
        # Stop accepting, let in-flight requests commit and answer, then close the store.
        if grpc_server is not None:
            await grpc_server.stop(grace=settings.drain_seconds)
        if runner is not None:
            await runner.cleanup()
        drained = await ingestor.drain(settings.drain_seconds)
        ingestor.close()
        if drainer is not None:
            await asyncio.to_thread(drainer.stop)
        if queue is not None:
            left, spans, _ = queue.waiting
            if left:
                log.warning(
                    "receive queue: %d requests (%d spans) left in %s; the next collector "
                    "started on it delivers them",
                    left,
                    spans,
                    queue.dir,
                )
            queue.close()
        await asyncio.to_thread(store.close)
        log.info(
            "atlas-collector stopped: %d spans stored, %d rejected%s",
            ingestor.stats.spans_stored,
            ingestor.stats.spans_rejected,
            "" if drained else " (drain deadline hit)",
        )


def _process_main(settings: CollectorSettings, ready: Any) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(name)s[{os.getpid()}] %(levelname)s %(message)s",
    )

    async def main() -> None:
        started: asyncio.Future[RunningCollector] = asyncio.get_running_loop().create_future()
        # Set once this process listens with its signal handlers installed: only then does the
        # parent pass a SIGTERM on, so a stop during start-up still drains instead of killing.
        started.add_done_callback(lambda _: ready.set())
        await serve(settings, started=started)

    try:
        asyncio.run(main())
    except (StoreError, OSError) as exc:
        print(f"atlas-collector: error: {exc}", file=sys.stderr)
        sys.exit(1)


def serve_processes(settings: CollectorSettings) -> int:
    """Run ``settings.processes`` collector processes on the same ports (SO_REUSEPORT).

    Decoding OTLP is Python work bound by the GIL; processes are how one host's collector uses
    more than one core. SIGTERM/SIGINT are passed on to each process once it listens (a process
    still starting gets the signal as soon as it is ready), and each process drains on its own.
    Returns 0 when every process exited cleanly, else the first failure's code (1 for a process
    ended by a signal).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    readiness = [context.Event() for _ in range(settings.processes)]
    children = [
        context.Process(target=_process_main, args=(settings, ready), name=f"atlas-collector-{i}")
        for i, ready in enumerate(readiness)
    ]
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for child, ready in zip(children, readiness, strict=True):
            if ready.is_set() and child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # From here a signal is passed on, never lost: said, so supervisors (and tests) know.
    log.info("atlas-collector starting %d processes", settings.processes)
    for child in children:
        child.start()
    for child, ready in zip(children, readiness, strict=True):
        while child.is_alive() and not ready.wait(0.1):
            pass
        if received and child.is_alive() and child.pid is not None:
            # A signal that came while this process was starting; a second one is harmless.
            os.kill(child.pid, received[-1])
    for child in children:
        child.join()
    codes = [child.exitcode or 0 for child in children]
    return next((1 if code < 0 else code for code in codes if code), 0)
