"""The redaction corpus (``redaction_corpus.txt``, one case a line) through the built-in redactor,
in every place a span carries text, and the OTLP decoders' bytes values."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from atlas_middleware.otel_exporters.otlp import decode_json, decode_protobuf
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from atlas_middleware.redaction import REDACTED, redact_secrets
from atlas_middleware.storage.records import SpanEvent, SpanRecord, json_dumps
from tests.helpers import session_spans

CORPUS = Path(__file__).with_name("redaction_corpus.txt")
_MARK = re.compile("⟦(.*?)⟧", re.S)


def _cases() -> list[tuple[str, str, list[str]]]:
    cases = []
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, text = line.partition(": ")
        assert kind in ("secret", "keep"), f"{CORPUS.name}:{number}: unknown kind {kind!r}"
        text = text.replace("\\n", "\n")
        secrets = _MARK.findall(text)
        assert (kind == "secret") == bool(secrets), f"{CORPUS.name}:{number}: marks vs kind"
        cases.append((kind, _MARK.sub(lambda m: m.group(1), text), secrets))
    return cases


CASES = _cases()
PLACES = [
    "attribute",
    "nested",
    "list",
    "bytes",
    "event_attribute",
    "status",
    "span_name",
    "event_name",
    "scope",
    "resource",
]


def _record(text: str, place: str) -> SpanRecord:
    record = SpanRecord("a" * 32, "b" * 16, None, "span", "INTERNAL", 1, 2)
    if place == "attribute":
        record.attributes["prompt"] = text
    elif place == "nested":
        record.attributes["messages"] = [{"role": "user", "content": text}]
    elif place == "list":
        record.attributes["lines"] = ["fine", text]
    elif place == "bytes":
        record.attributes["payload"] = text.encode()
    elif place == "event_attribute":
        record.events.append(SpanEvent("log", 1, {"message": text}))
    elif place == "status":
        record.status_message = text
    elif place == "span_name":
        record.name = text
    elif place == "event_name":
        record.events.append(SpanEvent(text, 1, {}))
    elif place == "scope":
        record.scope = text
    else:
        record.resource = {"service.name": "svc", "deploy.note": text}
    return record


def _dump(record: SpanRecord) -> str:
    return json_dumps(record.to_json()) + str(record.attributes.get("payload"))


def test_the_corpus_has_every_listed_leak():
    secrets = [s for kind, _, found in CASES if kind == "secret" for s in found]
    text = " ".join(t for _, t, _ in CASES)
    for needle in ("github_pat_", "hf_", "PRIVATE KEY", "pwd=", "token=", "Bearer: "):
        assert needle in text, needle
    assert "aws_secret_access_key=" in text and "postgresql://u:" in text
    assert len(secrets) >= 25


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(("kind", "text", "secrets"), CASES, ids=[c[1][:40] for c in CASES])
def test_corpus_case(kind, text, secrets, place):
    record = _record(text, place)
    before = _dump(record)
    redact_secrets(record)
    after = _dump(record)
    if kind == "keep":
        assert after == before, f"over-redacted in {place}: {after}"
        return
    for secret in secrets:
        assert secret not in after, f"{secret!r} survived in {place}: {after}"
        if place == "bytes":
            assert base64.b64encode(secret.encode()).decode() not in after
    assert REDACTED in after


def test_bytes_values_from_the_otlp_decoders_are_redacted_too():
    """OTLP carries bytes values; the decoders store them as base64, which the text patterns
    cannot see into. A bytes value holding a credential is masked whole."""
    spans = session_spans(1, children=0, score=None)
    request = encode_spans(spans)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    secret = "sk-proj-" + "BytesSecret0123456789abc"
    span.attributes.add(key="blob").value.bytes_value = f"key={secret}".encode()
    span.attributes.add(key="plain_blob").value.bytes_value = b"\x00\x01harmless"
    [record] = decode_protobuf(request.SerializeToString()).spans
    redact_secrets(record)
    assert record.attributes["blob"] == REDACTED
    assert record.attributes["plain_blob"] == base64.b64encode(b"\x00\x01harmless").decode()

    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "scope": {"name": f"lib {secret}"},
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "name": "x",
                                "attributes": [
                                    {
                                        "key": "blob",
                                        "value": {
                                            "bytesValue": base64.b64encode(
                                                f"Bearer {secret}".encode()
                                            ).decode()
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    [record] = decode_json(json.dumps(body).encode()).spans
    redact_secrets(record)
    assert record.attributes["blob"] == REDACTED
    assert secret not in (record.scope or "") and REDACTED in (record.scope or "")
