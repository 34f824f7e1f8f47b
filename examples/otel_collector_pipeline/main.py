"""An OpenTelemetry Collector pipeline in front of atlas-collector, on one machine.

    pip install 'atlas-middleware[collector,otlp]' rotel
    python examples/otel_collector_pipeline/main.py                      # embedded SQLite store
    python examples/otel_collector_pipeline/main.py --store postgresql://localhost/atlas

    app (OpenTelemetry SDK, OTLP exporters) ──OTLP/HTTP + OTLP/gRPC──▶ front collector
        ──OTLP/HTTP (gzip protobuf)──▶ atlas-collector ──▶ store

The front collector here is rotel (a Rust OTLP collector on PyPI) because it installs with pip;
in production it is the OpenTelemetry Collector with ``otelcol.yaml`` of this folder (OTLP in,
``otlphttp`` out to atlas-collector), or ``otelcol-loadbalancing.yaml`` for several replicas.
The app knows nothing about atlas-collector: it sends standard OTLP to the front collector.

The script starts atlas-collector and rotel on free loopback ports, sends ``--sessions`` agent
sessions (half over OTLP/HTTP, half over OTLP/gRPC), waits until every span has landed, checks
each is stored exactly once, stops both processes and prints ``atlas sessions list``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from atlas_middleware.rim import reference_match
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema

DEFAULT_STORE = "sqlite:///.atlas/atlas.db"


class PipelineError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rotel_agent() -> str:
    """The rotel-agent binary: on PATH, or inside the ``rotel`` wheel (it ships no script)."""
    found = shutil.which("rotel-agent")
    if found:
        return found
    try:
        import rotel
    except ImportError:
        raise PipelineError(
            "rotel is not installed: pip install 'rotel>=0.0.1a15' (or run otelcol-contrib with "
            "otelcol.yaml of this folder and send to it)"
        ) from None
    binary = Path(rotel.__file__).parent / "rotel-agent"
    if not binary.is_file():
        raise PipelineError(f"the rotel package has no rotel-agent binary at {binary}")
    return str(binary)


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise PipelineError(f"{what} did not come up within {timeout:.0f}s: {_tail(log)}")


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return " | ".join(text.splitlines()[-5:]) or "no output"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def process(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator:
    """A child process, stopped with SIGTERM (then SIGKILL) on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def atlas_collector(store: str, workdir: Path) -> Iterator[int]:
    """atlas-collector on a free loopback port (OTLP/HTTP only); yields that port."""
    port = free_port()
    log = workdir / "atlas-collector.log"
    cmd = [sys.executable, "-m", "atlas_middleware.otel_exporters.collector"]
    cmd += ["--store", store, "--http", f"127.0.0.1:{port}", "--grpc", "off"]
    cmd += ["--queue-dir", str(workdir / "queue")]  # the receive queue beside the demo's files
    with process(cmd, log) as proc:
        _wait(lambda: _healthy(f"http://127.0.0.1:{port}/health"), "atlas-collector", proc, log)
        yield port


@contextmanager
def front_collector(next_hop: str, workdir: Path) -> Iterator[tuple[int, int]]:
    """rotel receiving OTLP on free loopback ports and exporting OTLP/HTTP to ``next_hop``;
    yields (http_port, grpc_port)."""
    http_port, grpc_port = free_port(), free_port()
    log = workdir / "rotel.log"
    cmd = [rotel_agent(), "start"]
    cmd += ["--otlp-http-endpoint", f"127.0.0.1:{http_port}"]
    cmd += ["--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}"]
    cmd += ["--exporter", "otlp", "--otlp-exporter-protocol", "http"]
    cmd += ["--otlp-exporter-endpoint", next_hop]
    # Flush small batches quickly: this is a demo, not a throughput setup.
    cmd += ["--batch-timeout", "200ms"]
    with process(cmd, log) as proc:
        for port in (http_port, grpc_port):
            _wait(lambda p=port: _port_open(p), "rotel", proc, log)
        yield http_port, grpc_port


class _Sent(SpanExporter):
    """Remembers every span the app ended, to check the store against."""

    def __init__(self) -> None:
        self.ids: list[tuple[str, str]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            context = span.get_span_context()
            self.ids.append((f"{context.trace_id:032x}", f"{context.span_id:016x}"))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def task(i: int) -> tuple[str, str]:
    """The i-th task and its reference answer: additions and subtractions, alternating."""
    a, b = 17 + i, 25 + 2 * i
    if i % 2:
        return f"What is {b} - {a}?", str(b - a)
    return f"What is {a} + {b}?", str(a + b)


def naive_agent(question: str) -> str:
    """The app's agent: a deliberately naive calculator that adds every number it reads, so it
    is right on additions and wrong on subtractions (and the rewards differ)."""
    return str(sum(int(n) for n in re.findall(r"\d+", question)))


def send_sessions(
    exporter: SpanExporter, transport: str, count: int, sent: _Sent, rewards: dict[str, float]
) -> None:
    """The app: agent sessions as atlas's span schema describes them, through ``exporter``.
    Each session's reward is atlas's reference matcher on the agent's answer; ``rewards`` gets
    it by trace id."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"pipeline-{transport}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(sent))
    tracer = provider.get_tracer("atlas.examples.otel_collector_pipeline")
    for i in range(count):
        question, reference = task(i)
        with schema.session_span(
            tracer,
            agent="pipeline-calculator",
            session_id=f"pipeline-{transport}-{i}-{time.time_ns()}",
            task=question,
            learning_key="arithmetic",
            model="demo-model",
            provider="local",
        ) as root:
            root.set_attribute(schema.ATLAS_LANE, "auto")
            root.set_attribute(schema.ATLAS_REFERENCE, reference)
            with tracer.start_as_current_span(schema.chat_span_name("demo-model")) as chat:
                chat.set_attribute(schema.GEN_AI_OPERATION_NAME, schema.OP_CHAT)
                answer = naive_agent(question)
                schema.set_usage(chat, 30, 8)
            schema.set_usage(root, 30, 8)
            schema.set_final_answer(root, answer)
            session = root.get_span_context()
        # The reward: the answer checked against the reference, as RIM's accuracy judge does
        # when a task has one; it arrives as its own span under the session root, as RIM's does.
        right = bool(reference_match(question, answer, reference))
        score = 1.0 if right else 0.0
        rewards[f"{session.trace_id:032x}"] = score
        schema.record_evaluation(
            tracer,
            session,
            name=schema.PRIMARY_EVALUATION,
            score=score,
            label="correct" if right else "incorrect",
            explanation=f"answer {answer}, reference {reference}",
        )
    provider.shutdown()  # flushes the batch through the OTLP exporter


def wait_stored(store: str, expected: list[tuple[str, str]], timeout: float) -> dict[tuple, int]:
    """Poll the store until every expected span is there; returns how often each is stored."""
    traces = sorted({trace for trace, _ in expected})
    deadline = time.monotonic() + timeout
    while True:
        with open_store(store) as s:
            found = s.spans_for(traces)
        counts: dict[tuple, int] = {}
        for trace, spans in found.items():
            for span in spans:
                key = (trace, span.span_id)
                counts[key] = counts.get(key, 0) + 1
        if all(key in counts for key in expected) or time.monotonic() > deadline:
            return counts
        time.sleep(0.25)


def run(
    store: str, sessions: int, workdir: Path, timeout: float = 60.0, sent_ids: str | None = None
) -> dict:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    sent = _Sent()
    rewards: dict[str, float] = {}
    with ExitStack() as stack:
        atlas_port = stack.enter_context(atlas_collector(store, workdir))
        print(f"atlas-collector: OTLP/HTTP 127.0.0.1:{atlas_port} → {store}")
        http_port, grpc_port = stack.enter_context(
            front_collector(f"http://127.0.0.1:{atlas_port}", workdir)
        )
        print(
            f"front collector (rotel): OTLP/HTTP 127.0.0.1:{http_port}, gRPC 127.0.0.1:{grpc_port}"
        )
        half = max(1, sessions // 2)
        send_sessions(
            HttpExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces"),
            "http",
            half,
            sent,
            rewards,
        )
        if sessions > half:
            send_sessions(
                GrpcExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True),
                "grpc",
                sessions - half,
                sent,
                rewards,
            )
        if sent_ids:
            Path(sent_ids).write_text("".join(f"{t} {s}\n" for t, s in sent.ids))
        counts = wait_stored(store, sent.ids, timeout)
    missing = [key for key in sent.ids if key not in counts]
    duplicated = [key for key, n in counts.items() if n > 1]
    return {
        "sent_spans": len(sent.ids),
        "stored_spans": sum(counts.get(key, 0) for key in sent.ids),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "traces": len({trace for trace, _ in sent.ids}),
        "rewards": rewards,  # trace id -> the reward the app computed and sent
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help=f"store URL (default {DEFAULT_STORE})")
    parser.add_argument("--sessions", type=int, default=6, help="sessions to send (default 6)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for spans to land"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--sent-ids", metavar="FILE", help="write 'trace_id span_id' of every span sent, for audits"
    )
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    store = args.store or os.environ.get("ATLAS_STORE_URL") or DEFAULT_STORE
    try:
        with tempfile.TemporaryDirectory(prefix="atlas-pipeline-") as tmp:
            summary = run(store, args.sessions, Path(tmp), args.timeout, args.sent_ids)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"sent {summary['sent_spans']} spans in {summary['traces']} traces; stored "
        f"{summary['stored_spans']}, missing {summary['missing']}, "
        f"duplicated {summary['duplicated']}; mean reward "
        f"{sum(summary['rewards'].values()) / max(1, len(summary['rewards'])):.2f}"
    )
    if args.json:
        print(json.dumps(summary))
    # What landed, as a user would look at it.
    subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", "sessions", "list", "--store", store],
        check=False,
    )
    return 0 if summary["missing"] == 0 and summary["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
