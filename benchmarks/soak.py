"""Soak: a sustained OTLP load on atlas-collector + Postgres for minutes.

Several client processes (loopback only) post OTLP/HTTP protobuf batches of fresh agent sessions
at a fixed total rate, bounded in time and in request count. Reports throughput, p50/p99
request latency and the collector's memory (RSS) over time, checks that every acknowledged span
is in Postgres exactly once, draws a PNG and writes the figures to docs/reliability.md and
docs/benchmarks.md.

    .venv/bin/python benchmarks/soak.py                      # 3 minutes, 2,500 spans/s
    .venv/bin/python benchmarks/soak.py --duration 30 --no-write   # quick look

Needs the Postgres at $ATLAS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test);
works in a database of its own and drops it.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import markdown_table, postgres_version, print_table, write_section  # noqa: E402

ADMIN_URL = os.environ.get("ATLAS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
RELIABILITY_DOC = ROOT / "docs" / "reliability.md"
PLOT = ROOT / "docs" / "reliability-soak.png"
WINDOW_S = 10  # figures over time are per window


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"atlas_soak_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


# --- the client processes --------------------------------------------------------------------
def _template(sessions: int):
    """One OTLP request of ``sessions`` real SDK sessions (root, 2 chat spans, an evaluation)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tests.helpers import session_spans

    return encode_spans(session_spans(sessions, service="soak"))


def _fresh(request) -> bytes:
    """The template with new trace and span ids (parents remapped), so every request is new data
    and the store does real inserts, not duplicate skips."""
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    traces: dict[bytes, bytes] = {}
    ids: dict[bytes, bytes] = {}
    for span in spans:
        ids[span.span_id] = os.urandom(8)
        traces.setdefault(span.trace_id, os.urandom(16))
    for span in spans:
        span.trace_id = traces[span.trace_id]
        span.span_id = ids[span.span_id]
        if span.parent_span_id:
            span.parent_span_id = ids.get(span.parent_span_id, span.parent_span_id)
    return request.SerializeToString()


def client(
    worker: int, port: int, rate_rps: float, sessions: int, until: float, max_requests: int, out
) -> None:
    """Post at ``rate_rps`` requests/s until ``until`` (monotonic-free: wall clock) or
    ``max_requests``; report (start offset, latency s, status, spans) per request."""
    request = _template(sessions)
    spans_per_request = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    results = []
    interval = 1.0 / rate_rps
    next_at = time.time()
    sent = 0
    while time.time() < until and sent < max_requests:
        body = _fresh(request)
        now = time.time()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        started = time.time()
        try:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = 0
        results.append((started, time.time() - started, status, spans_per_request))
        sent += 1
    conn.close()
    out.put((worker, results))


# --- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    with scratch_database() as url:
        port = free_port()
        collector = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atlas_middleware.otel_exporters.collector",
                "--store",
                url,
                "--http",
                f"127.0.0.1:{port}",
                "--grpc",
                "off",
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(port, collector)
            sessions = max(1, args.batch_spans // 4)
            spans_per_request = sessions * 4
            rate_rps = args.rate / spans_per_request / args.processes
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            start = time.time() + 3  # let every client import and build its template first
            until = start + args.duration
            max_requests = int(rate_rps * args.duration * 1.1) + 1
            workers = [
                ctx.Process(
                    target=_client_at,
                    args=(start, i, port, rate_rps, sessions, until, max_requests, queue),
                )
                for i in range(args.processes)
            ]
            for w in workers:
                w.start()
            memory = []
            while time.time() < until + 1:
                memory.append((time.time() - start, rss_mb(collector.pid)))
                time.sleep(1.0)
            results = []
            for _ in workers:
                _, rows = queue.get(timeout=args.duration + 120)
                results += rows
            for w in workers:
                w.join(30)
        finally:
            collector.terminate()
            collector.wait(60)
        with psycopg.connect(url, autocommit=True) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
            sessions_stored = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        version = postgres_version(url)
    return summarise(args, results, memory, start, stored, sessions_stored, version)


def _client_at(start: float, *args) -> None:
    # Import and template building happen before the common start time.
    time.sleep(max(0.0, start - time.time()))
    client(*args)


def _wait_for(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"atlas-collector exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("atlas-collector did not start")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(args, results, memory, start, stored, sessions_stored, version) -> dict:
    ok = [r for r in results if r[2] == 200]
    acked = sum(r[3] for r in ok)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    latencies = [r[1] for r in ok]
    windows = []
    for w0 in range(0, int(args.duration), WINDOW_S):
        inside = [r for r in ok if w0 <= r[0] - start < w0 + WINDOW_S]
        lat = [r[1] for r in inside]
        rss = [m for t, m in memory if w0 <= t < w0 + WINDOW_S]
        windows.append(
            {
                "t": w0 + WINDOW_S,
                "spans_per_s": sum(r[3] for r in inside) / WINDOW_S,
                "p50_ms": _pct(lat, 0.5) * 1000,
                "p99_ms": _pct(lat, 0.99) * 1000,
                "rss_mb": max(rss) if rss else float("nan"),
            }
        )
    rss_all = [m for _, m in memory if m == m]
    return {
        "duration_s": args.duration,
        "processes": args.processes,
        "target_rate": args.rate,
        "batch_spans": (args.batch_spans // 4) * 4,
        "requests": len(results),
        "statuses": statuses,
        "acked_spans": acked,
        "stored_spans": stored,
        "sessions_stored": sessions_stored,
        "throughput": acked / args.duration,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": _pct(latencies, 0.99) * 1000,
        "rss_first_mb": windows[0]["rss_mb"] if windows else float("nan"),
        "rss_max_mb": max(rss_all) if rss_all else float("nan"),
        "rss_last_mb": windows[-1]["rss_mb"] if windows else float("nan"),
        "windows": windows,
        "postgres": version,
    }


def plot(summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = summary["windows"]
    t = [x["t"] for x in w]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [x["spans_per_s"] for x in w], marker="o")
    axes[0].axhline(summary["target_rate"], color="grey", linestyle="--", label="target")
    axes[0].set_ylabel("spans/s acknowledged")
    axes[0].legend()
    axes[1].plot(t, [x["p50_ms"] for x in w], marker="o", label="p50")
    axes[1].plot(t, [x["p99_ms"] for x in w], marker="o", label="p99")
    axes[1].set_ylabel("request latency (ms)")
    axes[1].legend()
    axes[2].plot(t, [x["rss_mb"] for x in w], marker="o", color="tab:red")
    axes[2].set_ylabel("collector RSS (MB)")
    axes[2].set_xlabel(f"seconds ({WINDOW_S} s windows)")
    axes[2].set_ylim(bottom=0)
    fig.suptitle(
        f"atlas-collector soak: {summary['processes']} clients, "
        f"{summary['target_rate']:,} spans/s target, {summary['duration_s']:.0f} s"
    )
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=90)


def report(summary: dict, write: bool) -> None:
    s = summary
    rows = [
        [
            f"{x['t']}",
            f"{x['spans_per_s']:,.0f}",
            f"{x['p50_ms']:.0f}",
            f"{x['p99_ms']:.0f}",
            f"{x['rss_mb']:.0f}",
        ]
        for x in s["windows"]
    ]
    columns = ["t (s)", "spans/s", "p50 ms", "p99 ms", "RSS MB"]
    print_table("soak over time", columns, rows)
    exact = "yes" if s["stored_spans"] == s["acked_spans"] else "NO"
    headline = (
        f"{s['duration_s']:.0f} s at a target of {s['target_rate']:,} spans/s from "
        f"{s['processes']} client processes ({s['batch_spans']}-span OTLP/HTTP protobuf "
        f"requests, loopback) into atlas-collector (1 process) and {s['postgres']}: "
        f"**{s['throughput']:,.0f} spans/s** acknowledged, request latency "
        f"**p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms**, collector RSS "
        f"{s['rss_first_mb']:.0f} MB after the first {WINDOW_S} s, {s['rss_max_mb']:.0f} MB at "
        f"most, {s['rss_last_mb']:.0f} MB at the end. {s['requests']:,} requests "
        f"(status counts {s['statuses']}); {s['acked_spans']:,} spans acknowledged, "
        f"{s['stored_spans']:,} stored (every acknowledged span stored exactly once: {exact}), "
        f"{s['sessions_stored']:,} sessions."
    )
    print(headline)
    if not write:
        return
    body = (
        "## Soak (`benchmarks/soak.py`)\n\n"
        + headline
        + "\n\n"
        + markdown_table(columns, rows)
        + "\n\n![soak](reliability-soak.png)\n\nRerun: `make soak` (or "
        "`.venv/bin/python benchmarks/soak.py --duration 180`)."
    )
    write_section("soak", body.replace("reliability-soak.png", "reliability-soak.png"))
    _write_reliability_section(body)


def _write_reliability_section(body: str) -> None:
    import datetime as dt

    from _report import machine

    text = RELIABILITY_DOC.read_text() if RELIABILITY_DOC.exists() else "# Reliability\n"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- soak:start -->\n{body.strip()}\n\n_Run {stamp} on {machine()}._\n<!-- soak:end -->"
    )
    pattern = re.compile(r"<!-- soak:start -->.*?<!-- soak:end -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    RELIABILITY_DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--rate", type=int, default=2500, help="total spans/s (default 2,500)")
    parser.add_argument("--processes", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--batch-spans", type=int, default=100, help="spans per request")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()
    if args.duration <= 0 or args.rate <= 0 or args.processes <= 0 or args.batch_spans < 4:
        parser.error("--duration, --rate, --processes must be positive and --batch-spans ≥ 4")
    summary = run(args)
    if not args.no_write:
        plot(summary)
    report(summary, write=not args.no_write)


if __name__ == "__main__":
    main()
