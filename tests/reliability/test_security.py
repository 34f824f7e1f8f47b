"""Security: bearer tokens, public binds, secrets kept out of spans/logs/exports, SQL through
parameters only, and the review gate between the store and training."""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from atlas_middleware.otel_exporters.collector import auth
from atlas_middleware.otel_exporters.collector.server import CollectorSettings, ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from atlas_middleware import telemetry
from atlas_middleware.redaction import REDACTED, redact_secrets
from atlas_middleware.storage import SessionFilter, open_store
from atlas_middleware.storage.records import SpanEvent, SpanRecord
from atlas_middleware.telemetry import schema as s
from tests.helpers import Collector, atlas_cli, free_port, session_spans
from tests.reliability.test_fuzz import HOSTILE

SECRETS = {
    "openai": "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0kLmN",
    "anthropic": "sk-ant-" + "api03-abcdefghijklmnopqrstu",
    "bearer": "Bearer " + "eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "aws": "AKIA" + "ABCDEFGHIJKLMNOP",
    "github": "ghp_" + "abcdefghijklmnopqrstuvwxyz0123",
}
ASSIGNED = ["api_key=hunter2hunter2", 'password: "s3cr3t-pass"', "Authorization: Basic dXNlcjpw"]


# --- bearer token ----------------------------------------------------------------------------
def test_token_check_uses_a_constant_time_comparison(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    check = auth.token_check("t0ken")
    assert check("Bearer t0ken") and not check("Bearer t0kem") and not check(None)
    assert len(calls) == 3 and all(isinstance(a, bytes) for a, _ in calls)


def _accepted(header: str | None, token: str) -> bool:
    """RFC 7235: the scheme is case-insensitive, one or more spaces before the credentials."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and credentials.strip() == token


@given(st.one_of(st.none(), st.text(), st.sampled_from(HOSTILE)))
def test_token_check_refuses_any_other_header_without_raising(header):
    token = "the-right-token-0123"
    assert auth.token_check(token)(header) is _accepted(header, token)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer the-right-token-0123", True),
        ("bearer the-right-token-0123", True),
        ("BEARER  the-right-token-0123", True),
        ("Basic the-right-token-0123", False),
        ("Bearer the-right-token-0124", False),
        ("Bearerthe-right-token-0123", False),
        ("the-right-token-0123", False),
    ],
)
def test_the_bearer_scheme_is_case_insensitive(header, ok):
    assert auth.token_check("the-right-token-0123")(header) is ok


@pytest.mark.parametrize("token", ["", "   ", "\t \n", "short", "fifteen-chars-x"])
def test_weak_tokens_are_refused_at_start(token):
    with pytest.raises(ConfigError, match="--token"):
        CollectorSettings.from_env({}, token=token, http="127.0.0.1:0", grpc="off")
    with pytest.raises(ValueError):
        auth.check_token_setting(token)
    assert auth.check_token_setting("x" * 16) == "x" * 16


def test_a_weak_token_is_a_one_line_error_from_the_command(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_middleware.otel_exporters.collector",
            "--store",
            f"sqlite:///{tmp_path / 'a.db'}",
            "--token",
            "short",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "--token" in line and "16" in line and "short" not in line


@pytest.mark.parametrize(
    "address", ["0.0.0.0:4318", "[::]:4318", "192.168.1.5:4318", "example.com:4318"]
)
@pytest.mark.parametrize("receiver", ["http", "grpc"])
def test_public_binds_need_a_token(address, receiver):
    other = "grpc" if receiver == "http" else "http"
    with pytest.raises(ConfigError, match="not loopback: set --token"):
        CollectorSettings.from_env({}, **{receiver: address, other: "off"})
    settings_ = CollectorSettings.from_env({}, token="x" * 32, **{receiver: address, other: "off"})
    assert settings_.token


@pytest.mark.parametrize("address", ["127.0.0.1:4318", "localhost:4318", "[::1]:4318"])
def test_loopback_binds_need_no_token(address):
    CollectorSettings.from_env({}, http=address, grpc="off")


@pytest.mark.postgres
def test_health_without_the_token_is_liveness_only(postgres_url):
    token = "health-token-0123456789"
    database = postgres_url.rsplit("/", 1)[1]
    with Collector(postgres_url, "--token", token) as collector:
        url = f"{collector.http}/health"
        anonymous = requests.get(url, timeout=30)
        wrong = requests.get(
            url, headers={"Authorization": "Bearer nope-nope-nope-nope"}, timeout=30
        )
        detailed = requests.get(url, headers={"Authorization": f"bearer {token}"}, timeout=30)
        # Lowercase "bearer" is a valid scheme for ingest too (RFC 7235).
        body = encode_spans(session_spans(1)).SerializeToString()
        stored = requests.post(
            collector.traces_url,
            data=body,
            headers={"Content-Type": "application/x-protobuf", "Authorization": f"bearer {token}"},
            timeout=30,
        )
    assert stored.status_code == 200
    for answer in (anonymous, wrong):
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok"}  # alive, and nothing else
        for detail in (database, "127.0.0.1", "5432", "postgres", "spans_stored", "inflight"):
            assert detail not in answer.text
    assert detailed.status_code == 200
    assert detailed.json()["status"] == "ok" and "spans_stored" in detailed.json()
    assert database in detailed.json()["store"]


@pytest.mark.postgres
def test_refused_data_answers_carry_no_database_url_or_index_names(postgres_url):
    """A session id too large for its index (SQLSTATE 54000): the 400 names the problem, not
    the database, its address or its indexes."""
    import secrets as secrets_

    spans = session_spans(1, children=0, score=None)
    request: ExportTraceServiceRequest = encode_spans(spans)
    root = request.resource_spans[0].scope_spans[0].spans[0]
    for kv in root.attributes:
        if kv.key == s.ATLAS_SESSION_ID:
            kv.value.string_value = secrets_.token_hex(6000)  # random: no compression helps
    database = postgres_url.rsplit("/", 1)[1]
    with Collector(postgres_url) as collector:
        refused = requests.post(
            collector.traces_url,
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
    assert refused.status_code == 400
    from google.rpc import status_pb2

    message = status_pb2.Status.FromString(refused.content).message
    assert "SQLSTATE 54000" in message, message
    for detail in (database, "127.0.0.1", "5432", "postgres@", "_idx", 'index "'):
        assert detail not in message, (detail, message)


# --- secrets ---------------------------------------------------------------------------------
padding = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30).map(
    lambda t: t + " "
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SECRETS.values())),
    padding,
    padding,
    st.sampled_from(["attr", "event", "nested", "status"]),
)
def test_credentials_never_survive_redaction_wherever_they_sit(secret, before, after, where):
    value = f"{before}{secret} {after}"
    record = SpanRecord("a" * 32, "b" * 16, None, "x", "INTERNAL", 1, 2)
    if where == "attr":
        record.attributes["prompt"] = value
    elif where == "event":
        record.events.append(SpanEvent("log", 1, {"message": value}))
    elif where == "nested":
        record.attributes["messages"] = [{"role": "user", "content": value}]
    else:
        record.status_message = value
    redact_secrets(record)
    dumped = json.dumps(record.to_json(), ensure_ascii=False)
    token = secret.split()[-1]
    assert token not in dumped
    assert REDACTED in dumped


NAME_SECRET = "xoxb-" + "1234567890-abcdefghij"  # a Slack token formatted into a span name


def _emit_secret_session(tracer) -> int:
    """A session whose prompt, attributes, events, names and links carry credentials; returns
    the number of spans it made."""
    with s.session_span(
        tracer, agent="leaky", session_id="leaky-1", task="use " + SECRETS["openai"], content=True
    ) as root:
        root.set_attribute("llm.api_key", "plain-value-under-a-secret-key")
        root.set_attribute("http.request.header.authorization", SECRETS["bearer"])
        root.add_event("config", {"line": ASSIGNED[0], "env": ASSIGNED[1]})
        root.add_event("retry with api_key=evtname-s3cret-99")
        with tracer.start_as_current_span(s.chat_span_name("m")) as chat:
            chat.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_CHAT)
            chat.set_attribute(
                s.GEN_AI_INPUT_MESSAGES,
                json.dumps([{"role": "system", "content": f"key {SECRETS['anthropic']}"}]),
            )
            chat.add_event("retry", {"header": ASSIGNED[2], "aws": SECRETS["aws"]})
        link = Link(root.get_span_context(), {"auth.token": "link-secret-value-42"})
        with tracer.start_as_current_span(f"execute_tool fetch {NAME_SECRET}", links=[link]):
            pass
        s.set_final_answer(root, "done with " + SECRETS["github"], content=True)
        context = root.get_span_context()
    s.record_evaluation(tracer, context, name=s.PRIMARY_EVALUATION, score=0.9)
    return 4


def _secret_spans() -> list:
    """Real SDK spans of a session whose prompt, attributes and events carry credentials."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _emit_secret_session(provider.get_tracer("tests"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _leaked(text: str) -> list[str]:
    needles = [v.split()[-1] for v in SECRETS.values()]
    needles += ["hunter2hunter2", "s3cr3t-pass", "dXNlcjpw", "plain-value-under-a-secret-key"]
    needles += [NAME_SECRET, "evtname-s3cret-99", "link-secret-value-42"]
    return [n for n in needles if n in text]


@pytest.mark.postgres
def test_secrets_stay_out_of_the_store_the_export_and_the_logs(postgres_url, tmp_path):
    token = "collector-token-0123456789abcdef"
    url_with_password = postgres_url.replace("postgres@", "postgres:pw-in-url-123@", 1)
    spans = _secret_spans()
    with Collector(url_with_password, "--token", token, "--log-level", "DEBUG") as collector:
        exporter = HttpExporter(
            endpoint=collector.traces_url, headers={"Authorization": f"Bearer {token}"}
        )
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        refused = requests.post(
            collector.traces_url,
            data=b"x",
            headers={"Content-Type": "application/x-protobuf", "Authorization": "Bearer nope"},
            timeout=10,
        )
        assert refused.status_code == 401
        assert token not in refused.text
        health = requests.get(f"{collector.http}/health", timeout=10).text
    log = collector.stop()
    with open_store(postgres_url) as store:
        [session] = list(store.iter_sessions())
        stored = store.spans_for([session.trace_id])[session.trace_id]
        store.set_review([session.trace_id], "approved")
    everything = json.dumps([r.to_json() for r in stored] + [session.to_json()])
    assert not _leaked(everything), _leaked(everything)
    assert "llm.api_key" in everything and REDACTED in everything  # redacted, not dropped
    out = tmp_path / "export.jsonl"
    proc = atlas_cli("export", "-o", str(out), "--store", postgres_url)
    assert not _leaked(out.read_text() + proc.stderr)
    for text in (log, health):
        assert token not in text and "pw-in-url-123" not in text
    assert "atlas-collector listening" in log


# --- in-process: redacted once, before the spool, the wire or the console -------------------
@pytest.fixture
def fast_otlp(monkeypatch):
    # A dead endpoint must fail within a second, not the exporter's default 10 s.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    yield
    telemetry.shutdown()


def test_secrets_never_reach_the_disk_spool(tmp_path, fast_otlp):
    """The OTLP exporter with a spool and nothing listening: every span ends up in the spool
    files, and no secret is in them (the retrying exporter redacts before it queues)."""
    spool = tmp_path / "spool"
    provider = telemetry.configure(
        exporter="otlp",
        endpoint=f"http://127.0.0.1:{free_port()}",
        spool_dir=spool,
        set_global=False,
    )
    made = _emit_secret_session(provider.get_tracer("tests"))
    provider.force_flush(100)  # hands the batch to the retrying exporter
    telemetry.shutdown(timeout_millis=500)  # undelivered: everything goes to disk
    files = sorted(spool.glob("*.spool"))
    assert sum(int(f.stem.rsplit("-", 1)[1]) for f in files) == made
    on_disk = b"".join(f.read_bytes() for f in files).decode("utf-8", "replace")
    assert not _leaked(on_disk), _leaked(on_disk)
    assert REDACTED in on_disk and "llm.api_key" in on_disk  # redacted, not dropped


class _RecordingBackend(http.server.ThreadingHTTPServer):
    """A plain OTLP/HTTP endpoint that is not atlas (no redaction of its own): it keeps every
    request body and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler) -> None:
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                if handler.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                self.bodies.append(body)
                handler.send_response(200)
                handler.send_header("Content-Type", "application/x-protobuf")
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            def log_message(handler, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.parametrize("retry_queue_spans", [None, 0], ids=["retrying", "direct"])
def test_secrets_never_reach_a_backend_that_does_not_redact(retry_queue_spans):
    """The real OTLP/HTTP exporter that configure() sets up, pointed at a backend that stores
    what it gets: with the retrying exporter in front (default) and without it."""
    backend = _RecordingBackend()
    try:
        provider = telemetry.configure(
            exporter="otlp",
            endpoint=backend.url,
            retry_queue_spans=retry_queue_spans,
            set_global=False,
        )
        made = _emit_secret_session(provider.get_tracer("tests"))
        assert provider.force_flush(30_000)
        telemetry.shutdown()
    finally:
        backend.shutdown()
    requests_ = [ExportTraceServiceRequest.FromString(b) for b in backend.bodies]
    spans = [
        sp for r in requests_ for rs in r.resource_spans for ss in rs.scope_spans for sp in ss.spans
    ]
    assert len(spans) == made
    wire = b"".join(backend.bodies).decode("utf-8", "replace")
    assert not _leaked(wire), _leaked(wire)
    names = {sp.name for sp in spans}
    assert f"execute_tool fetch {REDACTED}" in names  # the name kept, the token gone
    [tool] = [sp for sp in spans if sp.name.startswith("execute_tool")]
    assert tool.links[0].attributes[0].value.string_value == REDACTED


def test_secrets_never_reach_a_collector_over_otlp(sqlite_url):
    with Collector(sqlite_url) as collector:
        provider = telemetry.configure(exporter="otlp", endpoint=collector.http, set_global=False)
        made = _emit_secret_session(provider.get_tracer("tests"))
        assert provider.force_flush(30_000)
        telemetry.shutdown()
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
        stored = store.spans_for([session.trace_id])[session.trace_id]
    assert len(stored) == made
    everything = json.dumps([r.to_json() for r in stored] + [session.to_json()])
    assert not _leaked(everything), _leaked(everything)


CONSOLE_SCRIPT = """
from atlas_middleware import telemetry
from tests.reliability.test_security import _emit_secret_session

provider = telemetry.configure(exporter="console", set_global=False)
_emit_secret_session(provider.get_tracer("tests"))
telemetry.shutdown()
"""


@pytest.mark.parametrize("exporter", ["console", "jsonl"])
def test_secrets_never_reach_the_console_or_a_jsonl_file(exporter, tmp_path):
    if exporter == "console":
        # A process of its own: the console exporter binds sys.stdout when it is imported.
        proc = subprocess.run(
            [sys.executable, "-c", CONSOLE_SCRIPT],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
    else:
        path = tmp_path / "spans.jsonl"
        provider = telemetry.configure(exporter="jsonl", jsonl_path=path, set_global=False)
        try:
            _emit_secret_session(provider.get_tracer("tests"))
            assert provider.force_flush(30_000)
        finally:
            telemetry.shutdown()
        text = path.read_text()
    assert not _leaked(text), _leaked(text)
    assert f"execute_tool fetch {REDACTED}" in text and "llm.api_key" in text


# --- SQL only through parameters -------------------------------------------------------------
def test_hostile_strings_round_trip_through_every_store_query(store):
    """Every text a client controls goes through placeholders: quotes, comments, NULs and
    placeholder-looking text come back exactly as sent (NUL as U+FFFD), and nothing else in the
    store changes."""
    records = []
    for i, text_ in enumerate(HOSTILE[:12]):
        trace = f"{i + 1:032x}"
        records.append(
            SpanRecord(
                trace,
                f"{i + 1:016x}",
                None,
                f"invoke_agent {text_}",
                "INTERNAL",
                1_700_000_000_000_000_000 + i,
                1_700_000_000_000_000_100 + i,
                attributes={
                    s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT,
                    s.ATLAS_SESSION_ID: f"sid {text_}",
                    s.ATLAS_LEARNING_KEY: f"key {text_}",
                    s.ATLAS_TASK: text_,
                    text_ or "empty": text_,
                },
                status_message=text_ or None,
            )
        )
    store.write_spans(records)
    assert store.count_spans() == len(records)
    postgres = store.url.startswith("postgres")  # Postgres text cannot hold NUL: U+FFFD

    def clean(value: str) -> str:
        return value.replace("\x00", "\ufffd") if postgres else value

    for i, text_ in enumerate(HOSTILE[:12]):
        trace = f"{i + 1:032x}"
        session = store.get_session(f"sid {clean(text_)}")
        assert session is not None and session.trace_id == trace, (i, text_)
        assert (session.task or "") == clean(text_)  # an empty task reads as none
        [found] = list(store.iter_sessions(SessionFilter(learning_key=f"key {clean(text_)}")))
        assert found.trace_id == trace
        [span] = store.spans_for([trace])[trace]
        assert span.name == clean(f"invoke_agent {text_}")
        assert span.attributes[clean(text_) or "empty"] == clean(text_)
        assert store.set_review([trace], "quarantined", note=clean(text_)) == 1
    assert store.get_session("'; DROP TABLE spans; --") is None
    assert store.get_session("%") is None and store.get_session("_") is None
    assert store.session_counts()["quarantined"] == 12


# --- the review gate -------------------------------------------------------------------------
def test_quarantine_survives_resends_and_late_rewards_and_blocks_export(sqlite_url, tmp_path):
    from atlas_middleware.otel_exporters.sdk import to_records

    spans = session_spans(2, score=0.9)
    with open_store(sqlite_url) as store:
        store.write_spans(to_records(spans))
        bad, good = sorted(x.trace_id for x in store.iter_sessions())
        store.set_review([bad], "quarantined", note="leaks data")
        store.set_review([good], "approved")
        store.write_spans(to_records(spans))  # an OTLP retry re-sends everything
        late = SpanRecord(
            bad,
            "f" * 16,
            None,
            "evaluate late",
            "INTERNAL",
            5,
            6,
            events=[
                SpanEvent(
                    s.EVENT_EVALUATION_RESULT,
                    7,
                    {s.GEN_AI_EVALUATION_NAME: "late", s.GEN_AI_EVALUATION_SCORE_VALUE: 1.0},
                )
            ],
        )
        store.write_spans([late])
        assert store.get_session(bad).review_status == "quarantined"
        approved = store.set_review([bad], "approved", only_from=["pending"], unless_drift=True)
        assert approved == 0  # a bulk approval cannot lift a quarantine
    out = tmp_path / "train.jsonl"
    atlas_cli(
        "export",
        "-o",
        str(out),
        "--status",
        "approved",
        "--status",
        "pending",
        "--store",
        sqlite_url,
    )
    exported = [json.loads(line)["trace_id"] for line in out.read_text().splitlines()]
    assert exported == [good]


# --- atlas's own messages: a teacher URL with credentials -------------------------------------
def test_teacher_url_credentials_never_reach_failures_span_status_or_logs(caplog):
    """A teacher endpoint given with credentials in its URL (``http://admin:pw@host``) fails:
    atlas's own failure notes (``atlas.failures``), the chat span's status and exception event
    and the log lines name the endpoint without the password, before any redaction pass runs
    (the spans are read raw, from a processor in front of the exporters)."""
    import logging

    import atlas_middleware as atlas
    from atlas_middleware.models import CallPolicy, OpenAICompatibleModel

    password = "teach-pw-" + "99x7"
    dead = f"http://admin:{password}@127.0.0.1:{free_port()}/v1"
    teacher = OpenAICompatibleModel(dead, "m", policy=CallPolicy(timeout_s=5, retries=0))
    raw = InMemorySpanExporter()
    provider = telemetry.configure(exporter="none", set_global=False)
    provider.add_span_processor(SimpleSpanProcessor(raw))
    caplog.set_level(logging.DEBUG)
    try:

        @atlas.supervise(agent="leaky-teacher", teacher=teacher, reward=False)
        def solve(task: str) -> str:
            return "4"

        assert solve("What is 2 + 2?") == "4"
        assert solve("What is 3 + 3?") == "4"
    finally:
        telemetry.shutdown()
    spans = raw.get_finished_spans()
    roots = [sp for sp in spans if sp.name.startswith("invoke_agent")]
    assert len(roots) == 2
    failures = [f for r in roots for f in r.attributes[s.ATLAS_FAILURES]]
    assert any("127.0.0.1" in f for f in failures), failures  # the endpoint is still named
    texts = [json.dumps(failures)]
    for sp in spans:
        texts.append(str(sp.status.description))
        texts += [json.dumps(dict(e.attributes or {})) for e in sp.events]
    texts += [record.getMessage() for record in caplog.records]
    leaked = [t for t in texts if password in t]
    assert not leaked, leaked
