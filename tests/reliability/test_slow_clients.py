"""Clients that stall, and bodies that explode: neither may stop atlas-collector serving others.

- A stalled upload (headers that promise a megabyte, three bytes sent, the connection kept open)
  holds no processing slot while atlas waits for its bytes, over HTTP and over gRPC (raw HTTP/2
  frames, as a stalled client sends them); fast clients go on being served, and the stalled
  ones are cut at the read deadline (counted in ``/health``).
- Compressed bodies are inflated incrementally, off the event loop, and stop at the size limit:
  sixteen gzip/deflate bombs at once are refused (413, counted) and the collector's peak memory
  stays within the bound its settings promise. ``Content-Encoding: br`` is 415, as documented.

The long variant (64 slow clients of each kind, many fast exports) runs under ``-m soak``."""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from atlas_middleware.storage import open_store
from tests.helpers import Collector, session_spans
from tests.reliability.conftest import wait_until

PROTOBUF = "application/x-protobuf"
EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --- stalled clients ---------------------------------------------------------------------------
def stall_http(port: int, n: int) -> list[socket.socket]:
    """``n`` uploads that send their headers and 3 of the 1,000,000 bytes they announce."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-protobuf\r\nContent-Length: 1000000\r\n\r\nabc"
        )
        socks.append(sock)
    return socks


def stall_grpc(port: int, n: int) -> list[socket.socket]:
    """``n`` gRPC exports whose message announces 1,000,000 bytes and sends 3 (HTTP/2 frames
    written by h2, as any client's would be)."""
    import h2.config
    import h2.connection

    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", EXPORT_PATH),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(stream, b"\x00" + struct.pack(">I", 1_000_000) + b"abc")
        sock.sendall(conn.data_to_send())
        socks.append(sock)
    return socks


def health(collector: Collector) -> dict:
    return requests.get(f"{collector.http}/health", timeout=30).json()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server answered and/or closed this stalled connection."""
    sock.settimeout(30)
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, TimeoutError, OSError):
        return True
    return True if data == b"" else bool(data)


def fast_exports(collector: Collector, rounds: int) -> list[SpanExportResult]:
    http = HttpExporter(endpoint=collector.traces_url, timeout=30)
    grpc_ = GrpcExporter(endpoint=collector.grpc, insecure=True, timeout=30)
    results = []
    for _ in range(rounds):
        results.append(http.export(session_spans(1)))
        results.append(grpc_.export(session_spans(1)))
    http.shutdown()
    grpc_.shutdown()
    return results


@pytest.mark.parametrize(
    ("stalls", "rounds"),
    [
        pytest.param(16, 3, id="16-stalls"),
        pytest.param(64, 40, id="64-stalls", marks=[pytest.mark.soak]),
    ],
)
def test_stalled_uploads_hold_no_slot_and_fast_clients_are_served(sqlite_url, stalls, rounds):
    with Collector(sqlite_url, "--max-inflight", "4", "--read-timeout-s", "300") as collector:
        socks = stall_http(collector.http_port, stalls) + stall_grpc(collector.grpc_port, stalls)
        try:
            # Every stalled upload is known to the collector, waiting for bytes...
            wait_until(lambda: health(collector)["receiving"] >= 2 * stalls, 60, "stalls receiving")
            # ...and none holds a processing slot: fast clients of both kinds are served.
            assert health(collector)["inflight"] == 0
            results = fast_exports(collector, rounds)
            assert results == [SpanExportResult.SUCCESS] * (2 * rounds)
            state = health(collector)
            assert state["receiving"] >= 2 * stalls  # still stalled, still no slot held
            assert state["overloaded"] == 0 and state["slow_clients"] == 0
        finally:
            for sock in socks:
                sock.close()
    with open_store(sqlite_url) as store:
        assert store.count_spans() == 2 * rounds * 4


def test_stalled_uploads_are_cut_at_the_read_deadline(sqlite_url):
    with Collector(sqlite_url, "--read-timeout-s", "1") as collector:
        socks = stall_http(collector.http_port, 8) + stall_grpc(collector.grpc_port, 8)
        try:
            wait_until(lambda: health(collector)["slow_clients"] >= 16, 60, "16 stalls cut")
            assert all(closed_by_server(sock) for sock in socks)
            assert health(collector)["receiving"] == 0
            assert fast_exports(collector, 1) == [SpanExportResult.SUCCESS] * 2
        finally:
            for sock in socks:
                sock.close()


# --- compressed bodies -------------------------------------------------------------------------
def bomb(megabytes: int, encoding: str) -> bytes:
    """``megabytes`` MiB of zeros, gzip- or deflate-compressed (about 1,000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    chunk = b"\x00" * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(megabytes)]
    return b"".join(parts) + compressor.flush()


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def test_sixteen_bombs_at_once_are_refused_within_the_memory_bound(sqlite_url):
    """16 bodies of ~0.5 MB that inflate to 512 MiB each, limit 4 MiB: all refused with 413 and
    counted; the collector's peak RSS (VmHWM, so no sample can miss it) grows by less than the
    bound its settings promise (16 × (4 MiB inflated + the compressed body)), where inflating
    whole chunks on the event loop took it past a gigabyte."""
    bombs = [bomb(512, "gzip" if i % 2 else "deflate") for i in range(2)]
    assert all(len(b) < 600_000 for b in bombs)
    body = encode_spans(session_spans(1)).SerializeToString()
    with Collector(sqlite_url, "--max-body-mb", "4", "--max-inflight", "16") as collector:
        for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            ok = requests.post(
                collector.traces_url,
                data=data,
                headers={"Content-Type": PROTOBUF, "Content-Encoding": encoding},
                timeout=30,
            )
            assert ok.status_code == 200, (encoding, ok.text)
        baseline = _kib(collector.proc.pid, "VmRSS")

        def post(i: int) -> int:
            encoding = "gzip" if i % 2 else "deflate"
            return requests.post(
                collector.traces_url,
                data=bombs[i % 2],
                headers={"Content-Type": PROTOBUF, "Content-Encoding": encoding},
                timeout=120,
            ).status_code

        barrier = threading.Barrier(16)

        def together(i: int) -> int:
            barrier.wait()
            return post(i)

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(together, range(16)))
        peak = _kib(collector.proc.pid, "VmHWM")
        state = health(collector)
    assert statuses == [413] * 16
    assert state["too_large"] == 16
    grown_mib = (peak - baseline) / 1024
    bound_mib = 16 * (4 + 0.6)
    print(f"BOMB-RSS peak grew {grown_mib:.0f} MiB (bound {bound_mib:.0f} MiB)")
    assert grown_mib < bound_mib, f"peak RSS grew {grown_mib:.0f} MiB past {bound_mib:.0f}"


@pytest.mark.parametrize("content_type", [PROTOBUF, "application/json"])
def test_unsupported_encodings_answer_415(sqlite_url, content_type):
    body = encode_spans(session_spans(1)).SerializeToString()
    with Collector(sqlite_url) as collector:
        for encoding in ("br", "zstd", "snappy"):
            answer = requests.post(
                collector.traces_url,
                data=body,
                headers={"Content-Type": content_type, "Content-Encoding": encoding},
                timeout=30,
            )
            assert answer.status_code == 415, (encoding, answer.status_code, answer.text)
            # The OTLP error body, in the request's own format, naming the encoding.
            assert answer.headers["Content-Type"].startswith(content_type)
            if content_type == PROTOBUF:
                message = status_pb2.Status.FromString(answer.content).message
            else:
                message = answer.json()["message"]
            assert encoding in message


def test_gzip_still_works_for_the_official_exporter(sqlite_url):
    with Collector(sqlite_url) as collector:
        exporter = HttpExporter(endpoint=collector.traces_url, compression=Compression.Gzip)
        assert exporter.export(session_spans(2)) == SpanExportResult.SUCCESS
        grpc_ = GrpcExporter(
            endpoint=collector.grpc, insecure=True, compression=grpc.Compression.Gzip
        )
        assert grpc_.export(session_spans(1)) == SpanExportResult.SUCCESS
        grpc_.shutdown()
    with open_store(sqlite_url) as store:
        assert store.count_spans() == 12
