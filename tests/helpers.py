"""Helpers shared by tests: ports, subprocesses, and real SDK spans."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware.telemetry import schema


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def atlas_cli(*args: str, env: dict | None = None, cwd: Path | None = None, check: bool = True):
    """Run the real ``atlas`` console entry point in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"atlas {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def session_spans(
    n: int = 1,
    *,
    agent: str = "calc",
    learning_key: str | None = "math",
    score: float | None = 0.8,
    children: int = 2,
    service: str = "test-service",
) -> list[ReadableSpan]:
    """Real OpenTelemetry SDK spans for ``n`` sessions: a root, ``children`` chat spans and,
    when ``score`` is given, an evaluation span carrying a reward."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    for i in range(n):
        with schema.session_span(
            tracer,
            agent=agent,
            session_id=f"s-{i}-{time.time_ns()}",
            task=f"task {i}",
            learning_key=learning_key,
            content=True,
        ) as root:
            root.set_attribute(schema.ATLAS_LANE, "paired")
            for j in range(children):
                with tracer.start_as_current_span(schema.chat_span_name("smol")) as chat:
                    chat.set_attribute(schema.GEN_AI_OPERATION_NAME, schema.OP_CHAT)
                    chat.set_attribute(schema.GEN_AI_USAGE_INPUT_TOKENS, 10 + j)
            schema.set_final_answer(root, f"answer {i}", content=True)
            context = root.get_span_context()
        if score is not None:
            schema.record_evaluation(
                tracer, context, name=schema.PRIMARY_EVALUATION, score=score, explanation="ok"
            )
    provider.shutdown()
    return list(exporter.get_finished_spans())


class PrivatePostgres:
    """A throw-away Postgres cluster on its own port, for tests that must stop and restart the
    database (the shared server stays up). Uses the machine's Postgres binaries; as root the
    cluster runs as the ``postgres`` user, since Postgres refuses to run as root."""

    def __init__(self) -> None:
        import glob
        import shutil
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        pg_ctl = found[-1] if found else shutil.which("pg_ctl")
        if not pg_ctl:
            raise RuntimeError("no pg_ctl found: install the PostgreSQL server package")
        self.bin = Path(pg_ctl).parent
        # Its own folder, traversable by the postgres user (pytest's tmp_path is root-only).
        self.root = Path(tempfile.mkdtemp(prefix="atlas-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}"
            )

    def init(self) -> PrivatePostgres:
        if self._as_postgres:
            subprocess.run(["chown", "postgres", str(self.root)], check=True)
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-N")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.bin / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            self.root / "log",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def __enter__(self) -> PrivatePostgres:
        self.init().start()
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Collector:
    """A real ``atlas-collector`` process on free loopback ports."""

    def __init__(self, store_url: str, *args: str, env: dict | None = None) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.store_url = store_url
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.http}/v1/traces"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, wait: bool = True) -> Collector:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atlas_middleware.otel_exporters.collector",
                "--store",
                self.store_url,
                "--http",
                f"127.0.0.1:{self.http_port}",
                "--grpc",
                f"127.0.0.1:{self.grpc_port}",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        if not wait:
            return self
        wait_for_port(self.http_port, self.proc)
        if "off" not in self.args:
            wait_for_port(self.grpc_port, self.proc)
        return self

    def stop(self, sig: int = 15, timeout: float = 60) -> str:
        """Signal the process (SIGTERM by default), wait, and return its output."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        return out

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
