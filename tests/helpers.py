"""Helpers shared by tests: ports, subprocesses, and real SDK spans."""

from __future__ import annotations

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
