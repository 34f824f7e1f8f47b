"""atlas-collector under hostile clients, default settings (max body 20 MiB, 16 in flight, read
deadline 10 s):

1. fast-client ingest latency (OTLP/HTTP protobuf and OTLP/gRPC, one 4-span session per export,
   the official exporters) with no other clients, then while 64 HTTP and 64 gRPC uploads stall
   (headers promising 1 MB, 3 bytes sent, connections held open);
2. 16 concurrent gzip bombs (4 MiB that inflate to 4 GiB each): the answers, the collector's
   peak RSS (VmHWM) growth, and /health latency while they are processed.

    .venv/bin/python benchmarks/collector_faults.py          # ~2 minutes

Writes the tables to docs/benchmarks.md and docs/reliability.md (section collector-faults).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import requests  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: E402
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: E402
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: E402

from benchmarks._report import markdown_table, print_table, write_section  # noqa: E402
from tests.helpers import Collector, session_spans  # noqa: E402
from tests.reliability.test_slow_clients import stall_grpc, stall_http  # noqa: E402

RELIABILITY = ROOT / "docs" / "reliability.md"
POLLER = """
import sys, time, urllib.request
while True:
    start = time.perf_counter()
    urllib.request.urlopen(sys.argv[1], timeout=300).read()
    print(round((time.perf_counter() - start) * 1000, 1), flush=True)
    time.sleep(0.05)
"""


def latencies(exporter, n: int) -> tuple[list[float], int]:
    """Per-export ms and the number of exports that failed."""
    out, failed = [], 0
    batches = [session_spans(1) for _ in range(n)]
    for spans in batches:
        start = time.perf_counter()
        if exporter.export(spans) != SpanExportResult.SUCCESS:
            failed += 1
        out.append((time.perf_counter() - start) * 1000)
    return out, failed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def gzip_bomb(mebibytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\x00" * (1 << 20)
    return b"".join(compressor.compress(chunk) for _ in range(mebibytes)) + compressor.flush()


def slow_clients(n_fast: int, stalls: int) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Collector(f"sqlite:///{tmp}/atlas.db") as col:
        http = HttpExporter(endpoint=col.traces_url, timeout=30)
        grpc = GrpcExporter(endpoint=col.grpc, insecure=True, timeout=30)
        latencies(http, 20), latencies(grpc, 20)  # warm-up
        for label, n_stalls in (("none", 0), (f"{stalls} HTTP + {stalls} gRPC", stalls)):
            socks = stall_http(col.http_port, n_stalls) + stall_grpc(col.grpc_port, n_stalls)
            try:
                deadline = time.monotonic() + 30
                while requests.get(f"{col.http}/health", timeout=30).json()["receiving"] < (
                    2 * n_stalls
                ):
                    assert time.monotonic() < deadline, "stalls not seen"
                    time.sleep(0.05)
                for name, exporter in (("OTLP/HTTP", http), ("OTLP/gRPC", grpc)):
                    ms, failed = latencies(exporter, n_fast)
                    rows.append(
                        [
                            label,
                            name,
                            str(n_fast),
                            str(failed),
                            f"{statistics.median(ms):.1f}",
                            f"{pct(ms, 0.99):.1f}",
                            f"{max(ms):.1f}",
                        ]
                    )
                health = requests.get(f"{col.http}/health", timeout=30).json()
                rows[-1].append(f"{health['inflight']} / {health['receiving']}")
                rows[-2].append("")
            finally:
                for sock in socks:
                    sock.close()
        http.shutdown()
        grpc.shutdown()
    return rows


def bombs(count: int, mebibytes: int) -> list[list[str]]:
    bomb = gzip_bomb(mebibytes)
    with tempfile.TemporaryDirectory() as tmp, Collector(f"sqlite:///{tmp}/atlas.db") as col:
        requests.get(f"{col.http}/health", timeout=30)
        base = kib(col.proc.pid, "VmRSS")
        # The poller is a process of its own: in this one, 16 threads uploading would make it
        # wait for the GIL and charge that to the collector.
        poller = subprocess.Popen(
            [sys.executable, "-c", POLLER, f"{col.http}/health"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)

        barrier = threading.Barrier(count)

        def post(_: int) -> tuple[int, float]:
            barrier.wait()
            start = time.perf_counter()
            status = requests.post(
                col.traces_url,
                data=bomb,
                headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
                timeout=300,
            ).status_code
            return status, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(post, range(count)))
        wall = time.perf_counter() - start
        poller.terminate()
        health_ms = [float(x) for x in poller.communicate()[0].split()]
        grown = (kib(col.proc.pid, "VmHWM") - base) / 1024
        too_large = requests.get(f"{col.http}/health", timeout=30).json()["too_large"]
    statuses = sorted({status for status, _ in answers})
    return [
        [
            f"{count} × {len(bomb) / 2**20:.1f} MiB gzip → {mebibytes / 1024:g} GiB",
            ", ".join(map(str, statuses)),
            str(too_large),
            f"{wall:.1f} s",
            f"{grown:.0f} MiB",
            f"{count * (20 + len(bomb) / 2**20):.0f} MiB",
            f"{statistics.median(health_ms):.0f} / {max(health_ms):.0f} ms",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", type=int, default=200, help="exports per fast client (200)")
    parser.add_argument("--stalls", type=int, default=64)
    parser.add_argument("--bombs", type=int, default=16)
    parser.add_argument("--bomb-mib", type=int, default=4096, help="inflated size (MiB)")
    args = parser.parse_args()
    slow = slow_clients(args.fast, args.stalls)
    slow_cols = [
        "stalled uploads",
        "client",
        "exports",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "in flight / receiving (after)",
    ]
    print_table("Fast clients while others stall", slow_cols, slow)
    bomb_rows = bombs(args.bombs, args.bomb_mib)
    bomb_cols = [
        "bombs (concurrent)",
        "answers",
        "counted too_large",
        "all answered in",
        "peak RSS growth",
        "bound (16 × (20 MiB + body))",
        "/health p50 / max",
    ]
    print_table("Compression bombs", bomb_cols, bomb_rows)
    body = (
        "atlas-collector with its defaults (max body 20 MiB, 16 in flight, read deadline 10 s, "
        "SQLite store), on loopback; one 4-span session per export, official OTLP exporters, "
        "sequential.\n\n**Fast clients while others stall** (stalled: headers announcing "
        "1,000,000 bytes, 3 sent, held open; gRPC stalls are raw HTTP/2 streams):\n\n"
        + markdown_table(slow_cols, slow)
        + "\n\n**Compression bombs** (sent at once; /health polled every 50 ms meanwhile; peak "
        "RSS is the kernel's high-water mark, VmHWM, minus the RSS before):\n\n"
        + markdown_table(bomb_cols, bomb_rows)
        + "\n\nRerun: `.venv/bin/python benchmarks/collector_faults.py`."
    )
    write_section("collector-faults", body)
    write_section("collector-faults", body, RELIABILITY)


if __name__ == "__main__":
    main()
