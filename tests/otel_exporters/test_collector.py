"""atlas-collector end to end: the official OpenTelemetry OTLP exporters (and raw HTTP for the
cases exporters never produce) against a real collector process and real stores."""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import orjson
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
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema
from tests.helpers import Collector, PrivatePostgres, session_spans

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def _store_counts(url: str) -> tuple[int, list]:
    with open_store(url) as store:
        return store.count_spans(), list(store.iter_sessions())


def _json_body(trace_id: str, spans: list[dict]) -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "json-svc"}}
                        ]
                    },
                    "scopeSpans": [{"scope": {"name": "raw"}, "spans": spans}],
                }
            ]
        }
    )


def _json_span(trace_id: str, span_id: str, **extra) -> dict:
    now = time.time_ns()
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "invoke_agent json-agent",
        "kind": 1,
        "startTimeUnixNano": str(now),
        "endTimeUnixNano": str(now + 1000),
        "attributes": [
            {"key": schema.GEN_AI_OPERATION_NAME, "value": {"stringValue": schema.OP_INVOKE_AGENT}},
            {"key": schema.ATLAS_TASK, "value": {"stringValue": "add 2 and 3"}},
            {"key": schema.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "42"}},
            {
                "key": "nested",
                "value": {
                    "kvlistValue": {
                        "values": [
                            {
                                "key": "a",
                                "value": {
                                    "arrayValue": {"values": [{"intValue": 1}, {"boolValue": True}]}
                                },
                            }
                        ]
                    }
                },
            },
        ],
        **extra,
    }


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_official_exporters_land_spans_and_sessions(store_url: str, transport: str) -> None:
    spans = session_spans(3, score=0.75)
    with Collector(store_url) as collector:
        if transport == "http":
            exporter = HttpExporter(endpoint=collector.traces_url, compression=Compression.Gzip)
        else:
            exporter = GrpcExporter(endpoint=collector.grpc, insecure=True)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
    count, sessions = _store_counts(store_url)
    assert count == len(spans)
    assert len(sessions) == 3
    for session in sessions:
        assert session.agent_name == "calc"
        assert session.learning_key == "math"
        assert session.lane == "paired"
        assert session.task.startswith("task ")
        assert session.reward_score == pytest.approx(0.75)
        assert session.service_name == "test-service"
        assert session.review_status == "pending"


def test_resent_spans_are_stored_once(store_url: str) -> None:
    spans = session_spans(2)
    body = encode_spans(spans).SerializeToString()
    with Collector(store_url) as collector:
        for _ in range(3):
            response = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=10)
            assert response.status_code == 200
        # A batch mixing new spans with already stored ones keeps the new ones.
        more = session_spans(1)
        mixed = encode_spans(spans[:3] + more).SerializeToString()
        assert requests.post(collector.traces_url, data=mixed, headers=PROTOBUF, timeout=10).ok
        exporter = HttpExporter(endpoint=collector.traces_url)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    count, sessions = _store_counts(store_url)
    assert count == len(spans) + len(more)
    assert len(sessions) == 3


def test_json_payload_and_partial_success(store_url: str) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    good = _json_span(trace_id, "b7ad6b7169203331")
    bad_id = _json_span("not-hex", "b7ad6b7169203332")
    bad_value = _json_span(trace_id, "b7ad6b7169203333")
    bad_value["attributes"].append({"key": "x", "value": {"intValue": "twelve"}})
    with Collector(store_url) as collector:
        ok = requests.post(
            collector.traces_url, data=_json_body(trace_id, [good]), headers=JSON, timeout=10
        )
        assert ok.status_code == 200
        assert ok.json() == {}
        partial = requests.post(
            collector.traces_url,
            data=gzip.compress(_json_body(trace_id, [bad_id, bad_value])),
            headers={**JSON, "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert partial.status_code == 200
        body = partial.json()["partialSuccess"]
        assert body["rejectedSpans"] == "2"
        assert "traceId" in body["errorMessage"]
        assert "intValue" in body["errorMessage"]
    count, sessions = _store_counts(store_url)
    assert count == 1
    [session] = sessions
    assert session.task == "add 2 and 3"
    assert session.input_tokens == 42
    assert session.service_name == "json-svc"
    with open_store(store_url) as store:
        [span] = store.spans_for([trace_id])[trace_id]
    assert span.attributes["nested"] == {"a": [1, True]}


def test_protobuf_partial_success_response(sqlite_url: str) -> None:
    spans = session_spans(1)
    request = encode_spans(spans)
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x00" * 16
    with Collector(sqlite_url) as collector:
        response = requests.post(
            collector.traces_url, data=request.SerializeToString(), headers=PROTOBUF, timeout=10
        )
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 1
    assert "trace_id" in parsed.partial_success.error_message
    assert _store_counts(sqlite_url)[0] == len(spans) - 1


def _status(response: requests.Response) -> status_pb2.Status:
    assert response.headers["Content-Type"].startswith("application/x-protobuf")
    return status_pb2.Status.FromString(response.content)


def test_bad_bodies_are_refused_and_nothing_is_stored(store_url: str) -> None:
    body = encode_spans(session_spans(2)).SerializeToString()
    with Collector(store_url, "--max-body-mb", "0.01") as collector:
        url = collector.traces_url
        garbage = requests.post(url, data=b"\xff\x00garbage\x13", headers=PROTOBUF, timeout=10)
        assert garbage.status_code == 400
        status = _status(garbage)
        assert status.code == 3
        assert "ExportTraceServiceRequest" in status.message

        truncated = requests.post(url, data=body[: len(body) // 2], headers=PROTOBUF, timeout=10)
        assert truncated.status_code == 400

        bad_gzip = requests.post(
            url, data=b"not gzip", headers={**PROTOBUF, "Content-Encoding": "gzip"}, timeout=10
        )
        assert bad_gzip.status_code == 400

        not_json = requests.post(url, data=b"{nope", headers=JSON, timeout=10)
        assert not_json.status_code == 400
        assert not_json.json()["code"] == 3

        oversized = requests.post(url, data=b"\x0a" * 20_000, headers=PROTOBUF, timeout=10)
        assert oversized.status_code == 413
        # A small gzip body that inflates past the limit is refused too (no gzip bombs).
        bomb = gzip.compress(b"\x00" * 200_000)
        assert len(bomb) < 10_000
        inflated = requests.post(
            url, data=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"}, timeout=10
        )
        assert inflated.status_code == 413

        wrong_type = requests.post(
            url, data=body, headers={"Content-Type": "text/plain"}, timeout=10
        )
        assert wrong_type.status_code == 415
        wrong_encoding = requests.post(
            url, data=body, headers={**PROTOBUF, "Content-Encoding": "snappy"}, timeout=10
        )
        assert wrong_encoding.status_code == 415
    assert _store_counts(store_url) == (0, [])


def test_bearer_token_auth(sqlite_url: str) -> None:
    spans = session_spans(1)
    body = encode_spans(spans).SerializeToString()
    with Collector(sqlite_url, "--token", "s3cret-token-0123456789") as collector:
        missing = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=10)
        assert missing.status_code == 401
        wrong = requests.post(
            collector.traces_url,
            data=body,
            headers={**PROTOBUF, "Authorization": "Bearer nope"},
            timeout=10,
        )
        assert wrong.status_code == 401
        assert _store_counts(sqlite_url)[0] == 0

        bad_grpc = GrpcExporter(endpoint=collector.grpc, insecure=True, timeout=5)
        assert bad_grpc.export(spans) == SpanExportResult.FAILURE
        bad_grpc.shutdown()

        grpc_ok = GrpcExporter(
            endpoint=collector.grpc,
            insecure=True,
            headers={"authorization": "Bearer s3cret-token-0123456789"},
        )
        assert grpc_ok.export(spans) == SpanExportResult.SUCCESS
        grpc_ok.shutdown()
        http_ok = HttpExporter(
            endpoint=collector.traces_url,
            headers={"Authorization": "Bearer s3cret-token-0123456789"},
        )
        assert http_ok.export(session_spans(1)) == SpanExportResult.SUCCESS
    assert _store_counts(sqlite_url)[0] == 2 * len(spans)


def _collector_refusing(store_url: str, *args: str) -> subprocess.CompletedProcess:
    """Run atlas-collector with settings it must refuse; it exits without serving."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_middleware.otel_exporters.collector",
            "--store",
            store_url,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_public_bind_without_token(sqlite_url: str) -> None:
    proc = _collector_refusing(sqlite_url, "--http", "0.0.0.0:4318", "--grpc", "off")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--token" in lines[0] and "0.0.0.0" in lines[0]
    assert "Traceback" not in proc.stderr


def test_health(sqlite_url: str) -> None:
    with Collector(sqlite_url) as collector:
        HttpExporter(endpoint=collector.traces_url).export(session_spans(1))
        health = requests.get(f"{collector.http}/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["spans_stored"] == 4


@contextmanager
def _store_write_lock(sqlite_url: str):
    """Hold SQLite's write lock from another connection: the collector's next write waits, so a
    request stays in flight (decoded, not yet committed) for as long as the test wants."""
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def _post_in_background(url: str, body: bytes) -> tuple[threading.Thread, list]:
    responses: list = []
    thread = threading.Thread(
        target=lambda: responses.append(requests.post(url, data=body, headers=PROTOBUF, timeout=60))
    )
    thread.start()
    return thread, responses


def _health(collector: Collector) -> dict:
    # /health answers 503 (with the same counters) while the store is down.
    return requests.get(f"{collector.http}/health", timeout=30).json()


def _wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def _wait_inflight(collector: Collector, n: int) -> None:
    """Until ``n`` requests hold an admission slot (the SQLite health check does not queue
    behind the write those requests wait in)."""
    _wait_for(lambda: _health(collector)["inflight"] == n, f"{n} requests in flight")


def test_overload_answers_429_with_retry_after(sqlite_url: str) -> None:
    body = encode_spans(session_spans(1)).SerializeToString()
    with Collector(sqlite_url, "--max-inflight", "1") as collector:
        with _store_write_lock(sqlite_url):
            thread, first = _post_in_background(collector.traces_url, body)
            _wait_inflight(collector, 1)  # the first request holds the only slot, waiting
            busy = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=10)
            assert busy.status_code == 429
            assert busy.headers["Retry-After"] == "1"
            assert not first
        thread.join(30)
        assert first[0].status_code == 200
        again = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=10)
        assert again.status_code == 200
    assert _store_counts(sqlite_url)[0] == 4


def test_sigterm_drains_in_flight_batch(sqlite_url: str) -> None:
    body = encode_spans(session_spans(1)).SerializeToString()
    collector = Collector(sqlite_url).start()
    with _store_write_lock(sqlite_url):
        thread, responses = _post_in_background(collector.traces_url, body)
        _wait_inflight(collector, 1)  # admitted: the batch waits on the lock
        collector.proc.terminate()

        def refusing() -> bool:
            try:
                requests.get(f"{collector.http}/health", timeout=5)
            except requests.ConnectionError:
                return True
            return False

        # The signal was handled: new connections are no longer accepted while draining...
        _wait_for(refusing, "the listener to close")
        # ...and the process waits for the batch held on the lock.
        assert collector.proc.poll() is None
        with pytest.raises(requests.ConnectionError):
            requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=5)
    thread.join(30)
    assert responses[0].status_code == 200
    output = collector.stop()
    assert collector.proc.returncode == 0
    assert "4 spans stored" in output
    assert _store_counts(sqlite_url)[0] == 4


@pytest.mark.postgres
def test_database_outage_gives_503_then_nothing_is_lost() -> None:
    """Without the receive queue (``--queue-dir off``): Postgres stopped mid-run, the collector
    answers 503 + Retry-After, the official exporter keeps its batch and retries, and once
    Postgres is back every span is stored exactly once. (With the queue, the default, requests
    are queued and acknowledged instead: tests/reliability/test_receive_queue.py.)"""
    try:
        pg = PrivatePostgres().init()
    except (RuntimeError, FileNotFoundError) as exc:
        import os

        if os.environ.get("ATLAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"cannot create a private Postgres cluster: {exc}")
        pytest.skip(f"cannot create a private Postgres cluster: {exc}")
    pg.start()
    try:
        with Collector(pg.url, "--queue-dir", "off") as collector:
            first = session_spans(2)
            exporter = HttpExporter(endpoint=collector.traces_url, timeout=60)
            assert exporter.export(first) == SpanExportResult.SUCCESS

            pg.stop()
            body = encode_spans(session_spans(1)).SerializeToString()
            down = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=30)
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "1"
            assert requests.get(f"{collector.http}/health", timeout=30).status_code == 503

            during = session_spans(3)
            result: list[SpanExportResult] = []
            refused = _health(collector)["store_unavailable"]
            sender = threading.Thread(target=lambda: result.append(exporter.export(during)))
            sender.start()
            # The exporter is retrying against 503s: the collector answered it twice.
            _wait_for(
                lambda: _health(collector)["store_unavailable"] >= refused + 2,
                "the exporter retrying",
            )
            assert not result
            pg.start()
            sender.join(timeout=60)
            assert result == [SpanExportResult.SUCCESS]
        with open_store(pg.url) as store:
            assert store.count_spans() == len(first) + len(during)
            sessions = list(store.iter_sessions())
        assert len(sessions) == 5
        assert all(s.reward_score == pytest.approx(0.8) for s in sessions)
    finally:
        pg.__exit__()


def test_several_processes_share_the_ports(sqlite_url: str) -> None:
    collector = Collector(sqlite_url, "--processes", "2").start()
    try:
        sent = 0
        for _ in range(12):  # a new connection each time, so the kernel spreads them
            spans = session_spans(1)
            body = encode_spans(spans).SerializeToString()
            with requests.Session() as session:
                response = session.post(
                    collector.traces_url, data=body, headers=PROTOBUF, timeout=30
                )
            assert response.status_code == 200
            sent += len(spans)
        grpc = GrpcExporter(endpoint=collector.grpc, insecure=True)
        more = session_spans(1)
        assert grpc.export(more) == SpanExportResult.SUCCESS
        grpc.shutdown()
        sent += len(more)
    finally:
        output = collector.stop()
    assert collector.proc.returncode == 0
    # Both processes listened and drained, even one still starting when SIGTERM came.
    assert output.count("atlas-collector listening") == 2
    assert output.count("atlas-collector stopped") == 2
    assert _store_counts(sqlite_url)[0] == sent


def test_processes_stopped_while_starting_still_drain(sqlite_url: str) -> None:
    collector = Collector(sqlite_url, "--processes", "2").start(wait=False)
    # Once the parent passes signals on; its spawned children take a second or more to import.
    # (A fixed sleep raced the parent's own start-up on a loaded machine: killed, not drained.)
    deadline = time.monotonic() + 120
    while "atlas-collector starting 2 processes" not in collector.output():
        assert collector.proc.poll() is None, collector.output()
        assert time.monotonic() < deadline, collector.output()
        time.sleep(0.02)
    output = collector.stop(timeout=120)
    assert collector.proc.returncode == 0, output
    assert output.count("atlas-collector listening") == 2, output
    assert output.count("atlas-collector stopped") == 2, output


def test_processes_need_fixed_ports(sqlite_url: str) -> None:
    proc = _collector_refusing(
        sqlite_url, "--http", "127.0.0.1:0", "--grpc", "off", "--processes", "2"
    )
    assert proc.returncode == 2
    assert "fixed ports" in proc.stderr


# --- failures that are not the client's: 503 + Retry-After, never a 500 --------------------------
REFUSING_TRIGGER = """
CREATE FUNCTION atlas_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.task = 'bad data' THEN
        RAISE EXCEPTION 'value out of range (test trigger)' USING ERRCODE = '22003';
    END IF;
    IF NEW.task = 'internal failure' THEN
        RAISE EXCEPTION 'simulated internal failure (test trigger)' USING ERRCODE = 'XX000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER atlas_test_refuse BEFORE INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION atlas_test_refuse();
"""


def install_refusing_trigger(url: str) -> None:
    """Make the real Postgres refuse sessions by task: ``bad data`` with a data exception
    (SQLSTATE 22003, which no retry fixes), ``internal failure`` with an internal error."""
    import psycopg

    open_store(url).close()  # the schema first
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(REFUSING_TRIGGER)


def _grpc_export(collector: Collector, spans) -> str:
    import grpc

    with grpc.insecure_channel(collector.grpc) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        try:
            export(encode_spans(spans), timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


@pytest.mark.postgres
def test_store_failures_answer_503_or_400_never_500(postgres_url: str) -> None:
    install_refusing_trigger(postgres_url)
    good = session_spans(1)
    with Collector(postgres_url) as collector:

        def post(spans) -> requests.Response:
            body = encode_spans(spans).SerializeToString()
            return requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=30)

        # The store failing in a way a retry may fix (here an internal error): 503, retried.
        internal = post(session_spans(1, task="internal failure"))
        assert internal.status_code == 503, internal.text
        assert internal.headers["Retry-After"] == "1"
        assert "simulated internal failure" in _status(internal).message
        # What failed, not where: no database address in an answer.
        assert "127.0.0.1" not in _status(internal).message
        assert _grpc_export(collector, session_spans(1, task="internal failure")) == "UNAVAILABLE"
        # Data the store refuses for good: 400, the client drops it instead of retrying forever.
        bad = post(session_spans(1, task="bad data"))
        assert bad.status_code == 400, bad.text
        assert "value out of range" in _status(bad).message
        assert _grpc_export(collector, session_spans(1, task="bad data")) == "INVALID_ARGUMENT"
        # Neither broke the collector: the next batch lands.
        assert post(good).status_code == 200
        health = _health(collector)
        assert health["ingest_errors"] == 2 and health["bad_requests"] == 2
        # The store is not "down" for anyone else after either failure.
        assert health["store_unavailable"] == 0
    output = collector.stop()
    count, sessions = _store_counts(postgres_url)
    assert count == len(good) and len(sessions) == 1
    [line] = [ln for ln in output.splitlines() if "answering 503" in ln]
    assert "ERROR" in line and "simulated internal failure" in line
    assert "Traceback" not in output


BROKEN_REDACTOR = """
from atlas_middleware.plugins import hookimpl


def _redact(record):
    if record.name.startswith("poison"):
        raise RuntimeError("redactor bug on " + record.name + "\\nsecond line")


@hookimpl
def atlas_redactors():
    return [_redact]
"""


def plugin_site(tmp_path, name: str, source: str) -> Path:
    """A folder for PYTHONPATH holding a plugin module and the ``.dist-info`` whose
    ``entry_points.txt`` declares it: pluggy's real entry-point discovery loads it."""
    site = tmp_path / f"site-{name}"
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / f"{name}.py").write_text(source)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[atlas_middleware]\n{name} = {name}\n")
    return site


def test_a_raising_redaction_plugin_answers_503_and_stores_nothing(sqlite_url, tmp_path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("poison pill"):
        pass
    poison = list(memory.get_finished_spans())
    site = plugin_site(tmp_path, "broken_redactor", BROKEN_REDACTOR)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    good = session_spans(1)
    with Collector(sqlite_url, env=env) as collector:
        body = encode_spans(poison).SerializeToString()
        refused = requests.post(collector.traces_url, data=body, headers=PROTOBUF, timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "redaction failed (RuntimeError: redactor bug on poison pill)" in (
            _status(refused).message
        )
        assert _grpc_export(collector, poison) == "UNAVAILABLE"
        # The plugin runs on other batches and lets them through.
        assert HttpExporter(endpoint=collector.traces_url).export(good) == SpanExportResult.SUCCESS
        assert _health(collector)["ingest_errors"] == 2
    output = collector.stop()
    assert _store_counts(sqlite_url)[0] == len(good)
    lines = [ln for ln in output.splitlines() if "redaction failed" in ln]
    assert len(lines) == 1 and "second line" not in output  # one line, however often it fails
    assert "Traceback" not in output
