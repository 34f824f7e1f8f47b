"""Helpers shared by tests: ports, subprocesses, and real SDK spans."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    task: str | None = None,
) -> list[ReadableSpan]:
    """Real OpenTelemetry SDK spans for ``n`` sessions: a root, ``children`` chat spans and,
    when ``score`` is given, an evaluation span carrying a reward. ``task``: the task of every
    session (default ``task {i}``)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    for i in range(n):
        with schema.session_span(
            tracer,
            agent=agent,
            session_id=f"s-{i}-{time.time_ns()}",
            task=f"task {i}" if task is None else task,
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
    cluster runs as the ``postgres`` user, since Postgres refuses to run as root.

    The port is picked at the first ``start()`` (initdb takes seconds: a port picked earlier
    could be taken meanwhile), and picked again if another process took it first; restarts keep
    it, so clients keep their URL."""

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
        self._port: int | None = None
        self._started = False
        self._as_postgres = os.geteuid() == 0

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

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
        log = self.root / "log"
        for attempt in range(5):
            before = log.stat().st_size if log.exists() else 0
            # fsync=off: the tests crash the server process (never the machine), and what a
            # crashed process wrote is in the OS page cache, which survives it; see
            # docs/reliability.md.
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            try:
                self._run(
                    self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", log, "-w", "start"
                )
            except RuntimeError:
                taken = "already in use" in log.read_text(errors="replace")[before:]
                if self._started or not taken or attempt == 4:
                    raise
                self._port = free_port()  # someone took the port first: pick another
                continue
            self._started = True
            return

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown (in-flight transactions aborted, then a checkpoint);
        ``immediate``: the server processes quit at once, as in a crash, and the next start
        runs crash recovery from the WAL."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def __enter__(self) -> PrivatePostgres:
        self.init().start()
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


_LISTENING = re.compile(r"atlas-collector listening: http=(\S+) grpc=(\S+)")


class Collector:
    """A real ``atlas-collector`` process on loopback ports.

    Ports are the collector's own choice (it binds port 0 and logs what it got), so no other
    process can take them between picking and binding; a port is fixed in advance only when a
    test reads it before the first start (to point a client at a collector that is not up yet)
    or ``--processes`` needs fixed ones. Restarts keep the ports. Output goes to a file, never
    a pipe nobody reads while the test runs (a chatty collector would fill it and freeze).
    """

    def __init__(self, store_url: str, *args: str, env: dict | None = None) -> None:
        import tempfile
        import weakref

        self._http_port: int | None = None
        self._grpc_port: int | None = None
        self.store_url = store_url
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        fd, name = tempfile.mkstemp(prefix="atlas-collector-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log_from = 0  # where the current process's output starts in the log
        weakref.finalize(self, self.log_path.unlink, missing_ok=True)
        # A receive queue folder of its own, kept across restarts of this collector (never the
        # working directory's default, which other tests' collectors would share).
        self.queue_dir: Path | None = None
        if not any(a.startswith("--queue-dir") for a in args):
            import shutil

            self.queue_dir = Path(tempfile.mkdtemp(prefix="atlas-queue-"))
            self.args = (*args, "--queue-dir", str(self.queue_dir))
            weakref.finalize(self, shutil.rmtree, self.queue_dir, ignore_errors=True)

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            self._http_port = free_port()
        return self._http_port

    @property
    def grpc_port(self) -> int:
        if self._grpc_port is None:
            self._grpc_port = free_port()
        return self._grpc_port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.http}/v1/traces"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        """What the current (or last) collector process has written so far."""
        return self.log_path.read_text(errors="replace")[self._log_from :]

    def start(self, *, wait: bool = True, timeout: float = 60) -> Collector:
        if "--processes" in self.args:  # several processes share fixed ports
            self.http_port, self.grpc_port  # noqa: B018 - fixes both ports now
        self._log_from = len(self.log_path.read_text(errors="replace"))
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "atlas_middleware.otel_exporters.collector",
                    "--store",
                    self.store_url,
                    "--http",
                    f"127.0.0.1:{self._http_port or 0}",
                    "--grpc",
                    f"127.0.0.1:{self._grpc_port or 0}",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env,
            )
        if wait:
            self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        # The collector logs its line once every receiver listens.
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            found = _LISTENING.search(self.output())
            if found:
                http, grpc = found.groups()
                if http != "None":
                    self._http_port = int(http)
                if grpc != "None":
                    self._grpc_port = int(grpc)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"atlas-collector exited with {self.proc.returncode}: {self.output()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"atlas-collector not listening after {timeout}s: {self.output()}"
                )
            time.sleep(0.05)

    def stop(self, sig: int = 15, timeout: float = 60) -> str:
        """Signal the process (SIGTERM by default), wait, and return its output."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        return self.output()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def plain_messages(value: str) -> list[dict]:
    """Recorded ``gen_ai.*.messages`` (the GenAI ``parts`` shape) as ``{"role", "content"}``
    pairs, for tests that compare what a model was sent or answered."""
    import orjson

    from atlas_middleware.telemetry.genai import message_text

    return [{"role": m["role"], "content": message_text(m)} for m in orjson.loads(value)]


class FaultyTeacher:
    """An OpenAI-compatible chat endpoint on a loopback port that fails on demand, served from a
    thread of its own (so sync code under test can call it). ``mode``, switchable at any time:

    - ``ok``: answers ``reply``;
    - ``500``: answers 500 with an OpenAI-style error body;
    - ``hung``: accepts the request and never answers (until :meth:`close`);
    - ``dead``: nothing listens (connections are refused).

    ``hits`` counts the requests that reached the server."""

    def __init__(self, mode: str = "ok", reply: str = "0.95") -> None:
        import asyncio
        import threading

        self.mode = mode
        self.reply = reply
        self.hits = 0
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._runner = None
        self.port = free_port()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="faulty-teacher", daemon=True
        )
        self._thread.start()
        ready.wait(30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self, ready) -> None:
        import asyncio

        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            self.hits += 1
            if self.mode == "hung":
                assert self._release is not None
                await self._release.wait()
            if self.mode == "500":
                return web.json_response(
                    {"error": {"message": "scripted failure", "type": "server_error"}}, status=500
                )
            return web.json_response(
                {
                    "model": "faulty",
                    "choices": [
                        {
                            "message": {"role": "assistant", "content": self.reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                }
            )

        async def start() -> None:
            self._release = asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def set_mode(self, mode: str) -> None:
        """Switch the failure; ``dead`` stops listening, anything else listens again."""
        import asyncio

        from aiohttp import web

        async def switch() -> None:
            assert self._runner is not None
            if mode == "dead" and self._runner.sites:
                for site in list(self._runner.sites):
                    await site.stop()
            elif mode != "dead" and not self._runner.sites:
                await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            if self.mode == "hung" and mode != "hung":
                assert self._release is not None
                self._release.set()  # hung requests answer now, in the new mode
                self._release = asyncio.Event()

        asyncio.run_coroutine_threadsafe(switch(), self._loop).result(30)
        self.mode = mode

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            if self._release is not None:
                self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def __enter__(self) -> FaultyTeacher:
        if self.mode == "dead":
            self.set_mode("dead")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scripted_teacher(*, probe: str, validate: str, guidance: str) -> Any:
    """A teacher that answers each of its steps with a fixed reply: the probe's, the
    validation's, and ``guidance`` for everything else (guidance, lessons). It reads which step
    is asking from the call's teacher step (``atlas.teacher.step``), as its spans record it."""
    from atlas_middleware.models import ScriptedModel
    from atlas_middleware.telemetry import usage

    replies = {"probe": probe, "validate": validate}

    def respond(messages: Any) -> str:
        return replies.get(usage.current_role()[1] or "", guidance)

    return ScriptedModel(respond=respond, name="teacher")
