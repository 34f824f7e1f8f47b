"""Security: bearer tokens, public binds, secrets kept out of spans/logs/exports, SQL through
parameters only, and the review gate between the store and training."""

from __future__ import annotations

import json

import pytest
import requests
from atlas_middleware.otel_exporters.collector import auth
from atlas_middleware.otel_exporters.collector.server import CollectorSettings, ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware.redaction import REDACTED, redact_secrets
from atlas_middleware.storage import SessionFilter, open_store
from atlas_middleware.storage.records import SpanEvent, SpanRecord
from atlas_middleware.telemetry import schema as s
from tests.helpers import Collector, atlas_cli, session_spans
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


@given(st.one_of(st.none(), st.text(), st.sampled_from(HOSTILE)))
def test_token_check_refuses_any_other_header_without_raising(header):
    assert auth.token_check("the-right-token")(header) is (header == "Bearer the-right-token")


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


def _secret_spans() -> list:
    """Real SDK spans of a session whose prompt, attributes and events carry credentials."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    with s.session_span(
        tracer, agent="leaky", session_id="leaky-1", task="use " + SECRETS["openai"], content=True
    ) as root:
        root.set_attribute("llm.api_key", "plain-value-under-a-secret-key")
        root.set_attribute("http.request.header.authorization", SECRETS["bearer"])
        root.add_event("config", {"line": ASSIGNED[0], "env": ASSIGNED[1]})
        with tracer.start_as_current_span(s.chat_span_name("m")) as chat:
            chat.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_CHAT)
            chat.set_attribute(
                s.GEN_AI_INPUT_MESSAGES,
                json.dumps([{"role": "system", "content": f"key {SECRETS['anthropic']}"}]),
            )
            chat.add_event("retry", {"header": ASSIGNED[2], "aws": SECRETS["aws"]})
        s.set_final_answer(root, "done with " + SECRETS["github"], content=True)
        context = root.get_span_context()
    s.record_evaluation(tracer, context, name=s.PRIMARY_EVALUATION, score=0.9)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _leaked(text: str) -> list[str]:
    needles = [v.split()[-1] for v in SECRETS.values()]
    needles += ["hunter2hunter2", "s3cr3t-pass", "dXNlcjpw", "plain-value-under-a-secret-key"]
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
