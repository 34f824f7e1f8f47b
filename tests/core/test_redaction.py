"""Secrets never reach the store: the built-in redactor, alone and in front of the exporters."""

from __future__ import annotations

import json

import orjson
from atlas_middleware.otel_exporters.sdk import JsonlSpanExporter, StoreSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from atlas_middleware.redaction import REDACTED, redact, redact_secrets
from atlas_middleware.storage import SpanEvent
from atlas_middleware.telemetry import schema as s
from tests.storage.factories import root, tid

OPENAI_KEY = "sk-proj-Abc123DEF456ghi789JKL012mno"
ANTHROPIC_KEY = "sk-ant-api03-ZYXwvu987654321_abcdEFGH"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_1234567890abcdefghijABCDEFGHIJ"
PASSWORD = "hunter2-correct-horse"
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, BEARER, AWS_KEY, GITHUB_TOKEN, PASSWORD)


def test_secret_keys_are_masked_and_ordinary_keys_are_not():
    record = root(
        tid(1),
        attributes={
            "api_key": "plain-value-1",
            "OPENAI_API_KEY": "plain-value-2",
            "x-api-key": "plain-value-3",
            "http.request.header.authorization": ["Basic dXNlcjpwYXNz"],
            "Authorization": "Basic dXNlcjpwYXNz",
            "db.password": PASSWORD,
            "oauth.access_token": "plain-value-4",
            "session.token": "plain-value-5",
            "client_secret": "plain-value-6",
            "http.request.header.cookie": "sid=plain-value-7",
            # Not secrets, though they look a little like it:
            s.GEN_AI_USAGE_INPUT_TOKENS: 12,
            "gen_ai.request.max_tokens": 256,
            "tokenizer": "bpe",
            "note": "the word token and the word password are fine in prose",
        },
    )
    redact([record])
    a = record.attributes
    for key in (
        "api_key",
        "OPENAI_API_KEY",
        "x-api-key",
        "http.request.header.authorization",
        "Authorization",
        "db.password",
        "oauth.access_token",
        "session.token",
        "client_secret",
        "http.request.header.cookie",
    ):
        assert a[key] == REDACTED, key
    assert a[s.GEN_AI_USAGE_INPUT_TOKENS] == 12
    assert a["gen_ai.request.max_tokens"] == 256
    assert a["tokenizer"] == "bpe"
    assert a["note"] == "the word token and the word password are fine in prose"
    assert a[s.ATLAS_TASK] == "2+2?"  # untouched


def test_credentials_inside_text_nested_values_events_and_status():
    prompt = (
        f"Use my key {OPENAI_KEY} (or {ANTHROPIC_KEY}) and send "
        f"'Authorization: Bearer {BEARER}' to the API; aws={AWS_KEY} gh={GITHUB_TOKEN}."
    )
    record = root(
        tid(2),
        task=prompt,
        attributes={
            "nested": {"messages": [{"role": "user", "content": prompt}], "api_key": "x"},
            "list": ["fine", f"bearer {BEARER}"],
        },
        events=[SpanEvent("gen_ai.user.message", 1, {"content": prompt, "password": "p"})],
    )
    record.status_message = f"401 for key {OPENAI_KEY}"
    redact_secrets(record)
    text = json.dumps(record.to_json())
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, BEARER, AWS_KEY, GITHUB_TOKEN):
        assert secret not in text, secret
    task = record.attributes[s.ATLAS_TASK]
    assert task.startswith("Use my key [REDACTED] (or [REDACTED]) and send 'Authorization: ")
    assert task.endswith(" to the API; aws=[REDACTED] gh=[REDACTED].")
    nested = record.attributes["nested"]
    assert nested["api_key"] == REDACTED
    assert nested["messages"][0]["content"] == task
    assert record.attributes["list"] == ["fine", REDACTED]
    assert record.events[0].attributes == {"content": task, "password": REDACTED}
    assert record.status_message == "401 for key [REDACTED]"


def test_short_lookalikes_are_left_alone():
    record = root(tid(3), task="sk-short and Bearer abc and the task-key sk-")
    redact_secrets(record)
    assert record.attributes[s.ATLAS_TASK] == "sk-short and Bearer abc and the task-key sk-"


def emit_secret_session(provider: TracerProvider) -> None:
    """A real SDK session whose prompt, headers and events quote credentials."""
    tracer = provider.get_tracer("tests")
    prompt = f"My OpenAI key is {OPENAI_KEY}; call with Bearer {BEARER}"
    with s.session_span(
        tracer, agent="leaky", session_id="leaky-1", task=prompt, learning_key="k", content=True
    ) as span:
        span.set_attribute("llm.api_key", ANTHROPIC_KEY)
        span.set_attribute("http.request.header.authorization", (f"Bearer {BEARER}",))
        span.set_attribute("db.password", PASSWORD)
        span.set_attribute(s.GEN_AI_INPUT_MESSAGES, json.dumps([{"content": prompt}]))
        span.add_event("gen_ai.user.message", {"content": f"{AWS_KEY} / {GITHUB_TOKEN}"})
        s.set_final_answer(span, f"I used {OPENAI_KEY}", content=True)
        span.set_status(Status(StatusCode.ERROR, f"rejected key {OPENAI_KEY}"))
    provider.shutdown()


def test_store_exporter_keeps_secrets_out_of_the_store(store, tmp_path):
    provider = TracerProvider(resource=Resource.create({"service.name": "leaky-svc"}))
    provider.add_span_processor(SimpleSpanProcessor(StoreSpanExporter(store)))
    emit_secret_session(provider)

    [sess] = store.iter_sessions()
    assert sess.agent_name == "leaky"
    assert OPENAI_KEY not in sess.task and REDACTED in sess.task
    assert REDACTED in sess.final_answer
    spans = store.spans_for([sess.trace_id])[sess.trace_id]
    assert len(spans) == 1
    dumped = orjson.dumps([r.to_json() for r in spans]).decode() + str(sess.to_json())
    for secret in SECRETS:
        assert secret not in dumped, secret
    # Nothing in the database itself either (not in any table, index or log of SQLite's).
    if type(store).__name__ == "SQLiteStore":
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("atlas.db*"))
        assert raw  # the check reads the real files
        for secret in SECRETS:
            assert secret.encode() not in raw, secret
    else:
        import psycopg

        with psycopg.connect(store.url) as conn:
            for table in ("spans", "sessions"):
                text = str(conn.execute(f"SELECT * FROM {table}").fetchall())
                for secret in SECRETS:
                    assert secret not in text, (table, secret)


def test_jsonl_exporter_redacts_and_redactors_are_pluggable(tmp_path):
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
    emit_secret_session(provider)
    text = path.read_text()
    assert text.count("\n") == 1
    for secret in SECRETS:
        assert secret not in text, secret

    def drop_task(record):
        record.attributes.pop(s.ATLAS_TASK, None)

    raw_path = tmp_path / "raw.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonlSpanExporter(raw_path, redactors=[drop_task]))
    )
    emit_secret_session(provider)
    [line] = raw_path.read_text().splitlines()
    attributes = json.loads(line)["attributes"]
    assert s.ATLAS_TASK not in attributes  # the custom redactor ran ...
    assert attributes["db.password"] == PASSWORD  # ... instead of the built-in one


def test_secrets_assigned_in_text_and_in_the_resource():
    record = root(
        tid(7),
        attributes={
            "prompt": 'call it with {"api_key": "abc123xyz789", "n": 1}',
            "env": "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrs; PASSWORD=hunter22",
            "header": "Authorization: Basic dXNlcjpwYXNz",
            "mixed": "use BeArEr abcdefghijk123 here",
            "lesson": "basic arithmetic: the token count is 5",
        },
    )
    record.resource = {"service.name": "svc", "deploy.secret_key": "s3cr3t-value"}
    shared = record.resource
    redact([record])
    text = json.dumps(record.attributes)
    for leaked in ("abc123xyz789", "sk-proj-", "hunter22", "dXNlcjpwYXNz", "abcdefghijk123"):
        assert leaked not in text
    assert '"api_key": "[REDACTED]"' in record.attributes["prompt"]
    assert record.attributes["header"] == f"Authorization: {REDACTED}"
    assert record.attributes["lesson"] == "basic arithmetic: the token count is 5"
    assert record.resource == {"service.name": "svc", "deploy.secret_key": REDACTED}
    assert shared["deploy.secret_key"] == "s3cr3t-value"  # the caller's dict is not mutated


def test_clean_attributes_are_not_copied():
    attributes = {"gen_ai.request.model": "smol", "atlas.task": "What is 12 + 30?"}
    record = root(tid(8), attributes=attributes)
    before = record.attributes
    redact_secrets(record)
    assert record.attributes is before
