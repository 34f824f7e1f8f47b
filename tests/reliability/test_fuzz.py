"""Fuzzing (hypothesis) of everything that reads untrusted spans: OTLP protobuf and JSON decoding,
the session builder, and the real HTTP collector in front of Postgres.

Whatever arrives (malformed, truncated, huge, deeply nested, wrong-typed, hostile unicode, NUL,
SQL-looking text) the outcome is a 400 or a 200 (with partial_success for the spans refused),
never a 500 or a crash, and a stored span is always a whole one: what the decoder accepted,
field for field, or nothing.
"""

from __future__ import annotations

import copy
import math
import secrets
from dataclasses import dataclass, field

import orjson
import psycopg
import pytest
import requests
from atlas_middleware.otel_exporters.otlp import (
    MAX_DEPTH,
    Decoded,
    DecodeError,
    decode_json,
    decode_protobuf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from atlas_middleware.redaction import default_redactors, redact
from atlas_middleware.storage import open_store
from atlas_middleware.storage.base import span_rows
from atlas_middleware.storage.postgres import _without_nul
from atlas_middleware.storage.records import (
    SpanEvent,
    SpanRecord,
    derive_session_updates,
    json_dumps,
)
from atlas_middleware.telemetry import schema as s
from tests.helpers import Collector, session_spans

HOSTILE = [
    "",
    "\x00",
    "a\x00b",
    "'; DROP TABLE spans; --",
    '" OR 1=1 --',
    "$1",
    "%s %(x)s",
    "\\",
    "\\x00",
    "\\u0000",
    "\u202etxt.exe",
    "😀" * 10,
    "\ufeff",
    "\U0010ffff",
    "𝕬𝖙𝖑𝖆𝖘",
    "COPY spans FROM STDIN;\n\\.\n",
    "\t\n\r",
    "a" * 5000,
]
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
SCHEMA_KEYS = [
    s.GEN_AI_OPERATION_NAME,
    s.ATLAS_SESSION_ID,
    s.ATLAS_LEARNING_KEY,
    s.ATLAS_TASK,
    s.ATLAS_FINAL_ANSWER,
    s.ATLAS_PROBE_CONFIDENCE,
    s.GEN_AI_USAGE_INPUT_TOKENS,
    s.GEN_AI_USAGE_OUTPUT_TOKENS,
    s.GEN_AI_AGENT_NAME,
    s.ATLAS_EVALUATION_PAYLOAD,
    s.ATLAS_EVALUATION_UNCERTAINTY,
    s.SERVICE_NAME,
]
key = st.one_of(st.sampled_from(SCHEMA_KEYS), text)
scalar = st.one_of(
    text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from([s.OP_INVOKE_AGENT, s.OP_INVOKE_WORKFLOW, "1e309", "NaN", "-inf"]),
)


# --- protobuf ------------------------------------------------------------------------------------
def _any_value(value: AnyValue, budget: int, draw) -> None:
    """A random AnyValue; arrays and kvlists nest up to ``budget`` more levels."""
    kind = draw(st.integers(0, 6 if budget > 0 else 4))
    if kind == 0:
        value.string_value = draw(text)
    elif kind == 1:
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == 2:
        value.double_value = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif kind == 3:
        value.bool_value = draw(st.booleans())
    elif kind == 4:
        value.bytes_value = draw(st.binary(max_size=20))
    elif kind == 5:
        for _ in range(draw(st.integers(0, 2))):
            _any_value(value.array_value.values.add(), budget - 1, draw)
        if not value.array_value.values:
            value.array_value.SetInParent()
    else:
        for _ in range(draw(st.integers(0, 2))):
            kv = value.kvlist_value.values.add()
            kv.key = draw(text)
            _any_value(kv.value, budget - 1, draw)
        if not value.kvlist_value.values:
            value.kvlist_value.SetInParent()


# Chains of nested arrays/kvlists around the decoder's limit (MAX_DEPTH containers deep is the
# deepest a span may carry), well past it, and past protobuf's own parse recursion limit (100
# messages: each level is two), which refuses the whole body.
CHAIN_LENGTHS = [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 30, 40, 60]


def _attribute_value(value: AnyValue, draw) -> None:
    if draw(st.integers(0, 15)):  # mostly shallow random trees
        _any_value(value, draw(st.sampled_from([0, 1, 4])), draw)
        return
    for _ in range(draw(st.sampled_from(CHAIN_LENGTHS))):
        if draw(st.booleans()):
            value = value.array_value.values.add()
        else:
            kv = value.kvlist_value.values.add()
            kv.key = draw(text)
            value = kv.value
    _any_value(value, 0, draw)


def _too_deep(value: AnyValue, depth: int = 0) -> bool:
    """Whether the decoder must refuse this value: a container (or bytes) at depth MAX_DEPTH."""
    kind = value.WhichOneof("value")
    if kind in (None, "string_value", "int_value", "double_value", "bool_value"):
        return False
    if depth >= MAX_DEPTH:
        return True
    if kind == "array_value":
        return any(_too_deep(v, depth + 1) for v in value.array_value.values)
    if kind == "kvlist_value":
        return any(_too_deep(kv.value, depth + 1) for kv in value.kvlist_value.values)
    return False


@st.composite
def otlp_requests(draw) -> ExportTraceServiceRequest:
    """Structurally valid protobuf with hostile content: wrong-length or zero ids, enums out of
    range, times at the int64 edges, NaN scores, values nested past the depth limit."""
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add()
        for _ in range(draw(st.integers(0, 3))):
            kv = rs.resource.attributes.add()
            kv.key = draw(key)
            _attribute_value(kv.value, draw)
        ss = rs.scope_spans.add()
        ss.scope.name = draw(text)
        trace_id = draw(
            st.one_of(
                st.binary(min_size=16, max_size=16), st.sampled_from([b"\x00" * 16, b"\x01" * 15])
            )
        )
        for _ in range(draw(st.integers(0, 4))):
            span = ss.spans.add()
            span.trace_id = trace_id
            span.span_id = draw(
                st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))
            )
            span.parent_span_id = draw(
                st.one_of(st.sampled_from([b"", b"\x02"]), st.binary(min_size=8, max_size=8))
            )
            span.name = draw(text)
            span.kind = draw(st.integers(0, 9))
            span.start_time_unix_nano = draw(st.integers(0, 2**64 - 1))
            span.end_time_unix_nano = draw(st.integers(0, 2**64 - 1))
            span.status.code = draw(st.integers(0, 5))
            span.status.message = draw(text)
            for _ in range(draw(st.integers(0, 5))):
                kv = span.attributes.add()
                kv.key = draw(key)
                _attribute_value(kv.value, draw)
            if draw(st.booleans()):
                event = span.events.add()
                event.name = draw(st.sampled_from([s.EVENT_EVALUATION_RESULT, "x"]))
                event.time_unix_nano = draw(st.integers(0, 2**64 - 1))
                for k in (s.GEN_AI_EVALUATION_NAME, s.GEN_AI_EVALUATION_SCORE_VALUE):
                    kv = event.attributes.add()
                    kv.key = k
                    _any_value(kv.value, 0, draw)
    return request


def _check_whole(decoded: Decoded) -> None:
    """Every accepted span is complete and writable: ids, times, JSON, and the session view."""
    for r in decoded.spans:
        assert len(r.trace_id) == 32 and int(r.trace_id, 16)
        assert len(r.span_id) == 16 and int(r.span_id, 16)
        assert r.parent_span_id is None or len(r.parent_span_id) == 16
        assert 0 <= r.start_ns < 2**63 and 0 <= r.end_ns < 2**63
        assert r.kind in {"UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"}
        assert r.status_code in {"UNSET", "OK", "ERROR"}
        for value in (r.name, r.status_message or "", r.scope or ""):
            assert "\x00" not in value
        orjson.loads(json_dumps(r.attributes))
        orjson.loads(json_dumps([e.to_json() for e in r.events]))
    span_rows(decoded.spans)
    _check_updates(decoded.spans)


def _check_updates(records: list[SpanRecord]) -> None:
    for update in derive_session_updates(records).values():
        for column in update.COLUMNS:
            value = getattr(update, column)
            if column in ("probe_confidence",):
                assert value is None or (isinstance(value, float) and math.isfinite(value))
            elif column in ("input_tokens", "output_tokens", "started_ns", "ended_ns"):
                assert value is None or (isinstance(value, int) and -(2**63) <= value < 2**63)
            else:
                assert value is None or isinstance(value, str)
        for entry in update.evaluations.values():
            score = entry.get("score")
            assert score is None or math.isfinite(score)
        orjson.loads(json_dumps(update.evaluations))


@settings(max_examples=300, deadline=None)
@given(otlp_requests())
def test_protobuf_decoding_accepts_whole_spans_or_refuses(request):
    body = request.SerializeToString()
    too_deep = _message_depth(request) > PROTOBUF_MAX_DEPTH
    try:
        decoded = decode_protobuf(body)
    except DecodeError:
        # Only protobuf's own recursion limit refuses a structurally valid request whole.
        assert too_deep
        return
    assert not too_deep
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert len(decoded.spans) + decoded.rejected == total
    _check_whole(decoded)
    # A span carrying a value nested past the limit is never accepted.
    spans = [sp for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    deep, shallow = set(), set()
    for sp in spans:
        too = any(_too_deep(kv.value) for kv in sp.attributes) or any(
            _too_deep(kv.value) for e in sp.events for kv in e.attributes
        )
        (deep if too else shallow).add((sp.trace_id.hex(), sp.span_id.hex()))
    # (A request may carry two spans with the same ids; the shallow one may be accepted.)
    assert not (deep - shallow) & {(r.trace_id, r.span_id) for r in decoded.spans}


def _message_depth(request: ExportTraceServiceRequest) -> int:
    """How deep protobuf messages nest in ``request``: each array level is two messages
    (ArrayValue, AnyValue), each kvlist level three (KeyValueList, KeyValue, AnyValue)."""

    def depth(value: AnyValue) -> int:
        kind = value.WhichOneof("value")
        if kind == "array_value":
            return 2 + max((depth(v) for v in value.array_value.values), default=0)
        if kind == "kvlist_value":
            return 3 + max((depth(kv.value) for kv in value.kvlist_value.values), default=0)
        return 0

    # Request > ResourceSpans > Resource | ScopeSpans > Span [> Event] > KeyValue > AnyValue
    deepest = 1
    for rs in request.resource_spans:
        for kv in rs.resource.attributes:
            deepest = max(deepest, 5 + depth(kv.value))
        for ss in rs.scope_spans:
            for sp in ss.spans:
                for kv in sp.attributes:
                    deepest = max(deepest, 6 + depth(kv.value))
                for event in sp.events:
                    for kv in event.attributes:
                        deepest = max(deepest, 7 + depth(kv.value))
    return deepest


# protobuf's parse recursion limit (upb's 100, not counting the request itself): 101 nested
# messages as counted above parse, 102 do not.
PROTOBUF_MAX_DEPTH = 101


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 31, 32, 47, 48, 200])
@pytest.mark.parametrize("container", ["array", "kvlist"])
def test_deep_protobuf_nesting_is_refused_per_span_not_fatal(depth, container):
    request = encode_spans(session_spans(1, score=None, children=0))
    span = request.resource_spans[0].scope_spans[0].spans[0]
    value = span.attributes.add(key="deep").value
    for _ in range(depth):
        if container == "array":
            value = value.array_value.values.add()
        else:
            kv = value.kvlist_value.values.add()
            kv.key = "k"
            value = kv.value
    value.string_value = "leaf"
    too_deep = _message_depth(request) > PROTOBUF_MAX_DEPTH
    try:
        decoded = decode_protobuf(request.SerializeToString())
    except DecodeError:  # protobuf's recursion limit refuses the whole body
        assert too_deep
        return
    assert not too_deep
    assert len(decoded.spans) + decoded.rejected == 1
    assert (decoded.rejected == 1) == (depth > MAX_DEPTH)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_protobuf_garbage_truncation_and_bit_flips(data):
    body = encode_spans(session_spans(1)).SerializeToString()
    mutation = data.draw(st.sampled_from(["truncate", "flip", "insert", "random"]))
    if mutation == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif mutation == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1 :]
    elif mutation == "insert":
        i = data.draw(st.integers(0, len(body)))
        body = body[:i] + data.draw(st.binary(min_size=1, max_size=16)) + body[i:]
    else:
        body = data.draw(st.binary(max_size=200))
    try:
        decoded = decode_protobuf(body)
    except DecodeError:
        return
    _check_whole(decoded)


json_values = st.recursive(
    st.one_of(st.none(), scalar, st.sampled_from([{}, [], {"stringValue": None}])),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "stringValue",
                    "intValue",
                    "doubleValue",
                    "boolValue",
                    "arrayValue",
                    "kvlistValue",
                    "bytesValue",
                    "values",
                    "key",
                    "value",
                    "traceId",
                    "spanId",
                    "name",
                    "attributes",
                    "events",
                    "status",
                    "code",
                    "kind",
                    "spans",
                    "scopeSpans",
                    "resourceSpans",
                    "resource",
                    "startTimeUnixNano",
                ]
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=30,
)


def hex_id(size: int):
    return st.binary(min_size=size, max_size=size).map(bytes.hex)


@st.composite
def json_requests(draw) -> object:
    """Mostly-OTLP JSON with parts replaced by arbitrary JSON values of the wrong type."""

    def maybe(value):
        return draw(json_values) if draw(st.integers(0, 7)) == 0 else value

    def attr():
        return maybe({"key": draw(key), "value": maybe({"stringValue": draw(text)})})

    spans = [
        maybe(
            {
                "traceId": maybe(draw(hex_id(16))),
                "spanId": maybe(draw(hex_id(8))),
                "parentSpanId": maybe(draw(st.one_of(st.sampled_from(["", "zz"]), hex_id(8)))),
                "name": maybe(draw(text)),
                "kind": maybe(draw(st.sampled_from([1, "SPAN_KIND_SERVER", 99, "x", None]))),
                "startTimeUnixNano": maybe(str(draw(st.integers(0, 2**64)))),
                "endTimeUnixNano": maybe(draw(st.integers(-5, 2**64 - 1))),
                "attributes": maybe([attr() for _ in range(draw(st.integers(0, 3)))]),
                "events": maybe(
                    [
                        {
                            "name": s.EVENT_EVALUATION_RESULT,
                            "attributes": [
                                {"key": s.GEN_AI_EVALUATION_NAME, "value": {"stringValue": "x"}},
                                {
                                    "key": s.GEN_AI_EVALUATION_SCORE_VALUE,
                                    "value": maybe({"doubleValue": draw(scalar)}),
                                },
                            ],
                        }
                    ]
                ),
                "status": maybe({"code": maybe(2), "message": maybe(draw(text))}),
            }
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return maybe(
        {
            "resourceSpans": maybe(
                [
                    maybe(
                        {
                            "resource": maybe({"attributes": maybe([attr()])}),
                            "scopeSpans": maybe([maybe({"scope": {"name": "f"}, "spans": spans})]),
                        }
                    )
                ]
            )
        }
    )


def _nested(depth: int) -> str:
    """An AnyValue nested ``depth`` arrays deep, as JSON text (orjson will not write one this
    deep)."""
    return '{"arrayValue":{"values":[' * depth + '{"stringValue":"leaf"}' + "]}}" * depth


@settings(max_examples=200, deadline=None)
@given(json_requests())
def test_json_decoding_accepts_whole_spans_or_refuses(request):
    body = orjson.dumps(request, option=orjson.OPT_NON_STR_KEYS, default=str)
    try:
        decoded = decode_json(body)
    except DecodeError:
        return
    _check_whole(decoded)


@pytest.mark.parametrize("depth", [15, 16, 17, 200, 5000])
def test_deep_nesting_is_refused_per_span_not_fatal(depth):
    span = (
        f'{{"traceId":"{secrets.token_hex(16)}","spanId":"{secrets.token_hex(8)}","name":"deep",'
        f'"attributes":[{{"key":"deep","value":{_nested(depth)}}}]}}'
    )
    body = f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}'.encode()
    try:
        decoded = decode_json(body)
    except DecodeError:  # orjson's own recursion limit (1024) refuses the whole body
        assert depth > 1000
        return
    assert len(decoded.spans) + decoded.rejected == 1
    assert (decoded.rejected == 1) == (depth > 16)


# --- the session builder -------------------------------------------------------------------------
@st.composite
def span_records(draw) -> SpanRecord:
    attributes = draw(st.dictionaries(key, st.one_of(scalar, st.lists(scalar, max_size=3))))
    if draw(st.booleans()):
        attributes[s.GEN_AI_OPERATION_NAME] = s.OP_INVOKE_AGENT
    events = [
        SpanEvent(
            s.EVENT_EVALUATION_RESULT,
            draw(st.integers(0, 2**63 - 1)),
            draw(
                st.dictionaries(
                    st.sampled_from(
                        [s.GEN_AI_EVALUATION_NAME, s.GEN_AI_EVALUATION_SCORE_VALUE, "x"]
                    ),
                    st.one_of(scalar, st.lists(scalar, max_size=2)),
                )
            ),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    return SpanRecord(
        trace_id=draw(st.sampled_from(["a" * 32, "b" * 32])),
        span_id=draw(hex_id(8)),
        parent_span_id=draw(st.sampled_from([None, "c" * 16])),
        name=draw(text).replace("\x00", ""),
        kind="INTERNAL",
        start_ns=draw(st.integers(0, 2**63 - 1)),
        end_ns=draw(st.integers(0, 2**63 - 1)),
        attributes=attributes,
        events=events,
        resource={s.SERVICE_NAME: draw(scalar)},
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(span_records(), max_size=6))
def test_session_builder_never_raises_and_types_every_field(records):
    _check_updates(records)


BAD_SCORES = [math.nan, math.inf, -math.inf, "high", True]


def test_nan_and_infinite_rewards_are_rejected_and_counted(store):
    """Both stores (the store fixture runs SQLite and Postgres)."""
    records = []
    for i, score in enumerate([0.5, math.nan, math.inf, -math.inf, "high", True, 0.9]):
        trace = f"{i + 1:032x}"
        records.append(
            SpanRecord(
                trace,
                f"{i + 1:016x}",
                None,
                "invoke_agent a",
                "INTERNAL",
                1,
                2,
                attributes={s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT},
                events=[
                    SpanEvent(
                        s.EVENT_EVALUATION_RESULT,
                        3,
                        {
                            s.GEN_AI_EVALUATION_NAME: s.PRIMARY_EVALUATION,
                            s.GEN_AI_EVALUATION_SCORE_VALUE: score,
                        },
                    )
                ],
            )
        )
    result = store.write_spans(records)
    assert result.rejected_rewards == 5
    assert store.rejected_rewards == 5
    sessions = {x.trace_id: x for x in store.iter_sessions()}
    assert len(sessions) == 7
    assert sorted(x.reward_score for x in sessions.values() if x.reward_score is not None) == [
        0.5,
        0.9,
    ]
    # The evaluation is kept, without a score: no NaN ever lands in a reward column.
    for x in sessions.values():
        assert s.PRIMARY_EVALUATION in x.evaluations
        assert all(math.isfinite(e.get("score", 0.0)) for e in x.evaluations.values())
    # An OTLP retry re-sends the batch: its scores are refused (and counted) again, and still
    # none of them becomes a reward.
    assert store.write_spans(records).rejected_rewards == 5
    assert store.rejected_rewards == 10
    assert sum(x.reward_score is not None for x in store.iter_sessions()) == 2


@pytest.mark.postgres
def test_collector_health_counts_rejected_rewards(postgres_url):
    """Through the real collector into Postgres: the official exporter sends evaluation events
    whose scores are NaN, infinite, a string and a boolean; none becomes a reward, and /health
    says how many were refused."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for score in [0.5, *BAD_SCORES]:
        with s.session_span(tracer, agent="a", session_id=secrets.token_hex(4), task="t") as root:
            root.add_event(
                s.EVENT_EVALUATION_RESULT,
                {
                    s.GEN_AI_EVALUATION_NAME: s.PRIMARY_EVALUATION,
                    s.GEN_AI_EVALUATION_SCORE_VALUE: score,
                },
            )
    spans = list(memory.get_finished_spans())
    with Collector(postgres_url) as collector:
        exporter = OTLPSpanExporter(endpoint=collector.traces_url)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        health = requests.get(f"{collector.http}/health", timeout=30).json()
    assert health["rewards_rejected"] == len(BAD_SCORES)
    assert health["spans_stored"] == len(spans)
    with open_store(postgres_url) as store:
        rewards = [x.reward_score for x in store.iter_sessions()]
    assert sorted(rewards, key=lambda r: (r is not None, r)) == [None] * len(BAD_SCORES) + [0.5]


# --- through the real collector into Postgres ----------------------------------------------------
@dataclass
class FuzzTarget:
    """The module's collector and its store, with what the store must hold: every span and
    session accepted so far, and nothing else."""

    collector: Collector
    url: str
    spans: int = 0
    sessions: set[str] = field(default_factory=set)
    channel: object = None

    def grpc_export(self, body: bytes) -> tuple[str, ExportTraceServiceResponse | None]:
        import grpc

        export = self.channel.unary_unary(  # type: ignore[attr-defined]
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=lambda raw: raw,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        try:
            return "OK", export(body, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, None


@pytest.fixture(scope="module")
def fuzz_collector(postgres_server):
    import os

    import grpc

    name = f"atlas_fuzz_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{postgres_server.rsplit('/', 1)[0]}/{name}"
    try:
        with (
            Collector(url, "--max-body-mb", "2") as collector,
            grpc.insecure_channel(collector.grpc) as channel,
        ):
            yield FuzzTarget(collector, url, channel=channel)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_stored(record: SpanRecord) -> dict:
    """What the store must give back for an accepted span: redacted as the collector redacts,
    NUL replaced (Postgres text cannot hold it), through JSON (NaN becomes null)."""
    record = copy.deepcopy(record)
    redact([record], default_redactors())
    return orjson.loads(json_dumps(_without_nul(record).to_json()))


def _check_store(target: FuzzTarget, expected: Decoded | None) -> None:
    """Every span accepted is stored whole, value for value; the store's totals are exactly
    what was accepted so far (nothing extra, nothing from a refused request)."""
    want: dict[tuple[str, str], dict] = {}
    if expected is not None:
        want = {(r.trace_id, r.span_id): _as_stored(r) for r in expected.spans}
        target.spans += len(want)  # fresh ids per example: none of them was stored before
        target.sessions |= set(derive_session_updates(expected.spans))
    with open_store(target.url) as store:
        total = store.count_spans()
        sessions = sum(store.session_counts().values())
        traces = sorted({trace for trace, _ in want})
        stored = {
            (r.trace_id, r.span_id): orjson.loads(json_dumps(r.to_json()))
            for records in store.spans_for(traces).values()
            for r in records
        }
    assert stored.keys() == want.keys()
    for key, record in want.items():
        assert _same(stored[key], record), (key, stored[key], record)
    assert (total, sessions) == (target.spans, len(target.sessions))


def _same(stored: object, sent: object) -> bool:
    """Equal, value for value. One exception, found by this test: Postgres JSONB keeps numbers
    as decimals and prints a whole one without a fraction, so a double written in exponent form
    (5.155946265290995e16, any whole double of 1e16 or more) comes back as an integer. It is the
    same double once read as one; its type is what is lost (docs/reliability.md)."""
    if isinstance(sent, float) and type(stored) is int:
        return float(stored) == sent
    if isinstance(sent, dict) and isinstance(stored, dict):
        return sent.keys() == stored.keys() and all(_same(stored[k], sent[k]) for k in sent)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(map(_same, stored, sent))
    return type(stored) is type(sent) and stored == sent


def _post_and_check(target: FuzzTarget, body: bytes, as_json: bool, expected: Decoded | None):
    content_type = "application/json" if as_json else "application/x-protobuf"
    response = requests.post(
        target.collector.traces_url, data=body, headers={"Content-Type": content_type}, timeout=60
    )
    assert response.status_code in (200, 400, 413), (response.status_code, response.text[:200])
    if expected is None:  # undecodable: refused whole
        assert response.status_code in (400, 413)
        _check_store(target, None)
        return
    assert response.status_code == 200, response.text[:300]
    if as_json:
        partial = response.json().get("partialSuccess", {})
        rejected = int(partial.get("rejectedSpans", 0))
    else:
        rejected = ExportTraceServiceResponse.FromString(response.content).partial_success
        rejected = rejected.rejected_spans
    assert rejected == expected.rejected
    _check_store(target, expected)


def _fresh_ids(request: ExportTraceServiceRequest) -> None:
    """Valid ids made unique per example: the store keeps the first copy of a re-sent span id
    (on purpose), and shrinking re-sends the same ids with other content."""
    traces: dict[bytes, bytes] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if len(span.trace_id) == 16 and any(span.trace_id):
                    span.trace_id = traces.setdefault(span.trace_id, secrets.token_bytes(16))
                if len(span.span_id) == 8 and any(span.span_id):
                    span.span_id = secrets.token_bytes(8)


def _fresh_json_ids(value: object) -> object:
    if isinstance(value, list):
        return [_fresh_json_ids(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _fresh_json_ids(v) for k, v in value.items()}
    for key, size in (("traceId", 16), ("spanId", 8)):
        old = out.get(key)
        if isinstance(old, str) and len(old) == 2 * size and old.strip("0"):
            out[key] = secrets.token_hex(size)
    return out


def _expected(decode, body: bytes) -> Decoded | None:
    try:
        decoded = decode(body)
    except DecodeError:
        return None
    # Re-sends of a span id already stored keep the first copy: give each test fresh ids.
    return decoded


@pytest.mark.postgres
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=otlp_requests())
def test_collector_protobuf_fuzz_never_500s(fuzz_collector, request):
    _fresh_ids(request)
    body = request.SerializeToString()
    _post_and_check(fuzz_collector, body, False, _expected(decode_protobuf, body))


@pytest.mark.postgres
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=otlp_requests())
def test_collector_grpc_fuzz_answers_ok_or_invalid_argument(fuzz_collector, request):
    _fresh_ids(request)
    body = request.SerializeToString()
    expected = _expected(decode_protobuf, body)
    code, response = fuzz_collector.grpc_export(body)
    if expected is None:
        assert code == "INVALID_ARGUMENT"
        _check_store(fuzz_collector, None)
        return
    assert code == "OK"
    assert response.partial_success.rejected_spans == expected.rejected
    _check_store(fuzz_collector, expected)


@pytest.mark.postgres
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=json_requests())
def test_collector_json_fuzz_never_500s(fuzz_collector, request):
    request = _fresh_json_ids(request)
    body = orjson.dumps(request, option=orjson.OPT_NON_STR_KEYS, default=str)
    _post_and_check(fuzz_collector, body, True, _expected(decode_json, body))


@pytest.mark.postgres
def test_collector_huge_and_hostile_bodies(fuzz_collector):
    collector = fuzz_collector.collector
    huge = encode_spans(session_spans(1))
    huge.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="big").value.string_value = (
        "y" * (3 * 1024 * 1024)
    )
    assert (
        requests.post(
            collector.traces_url,
            data=huge.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        ).status_code
        == 413
    )
    many = encode_spans(session_spans(1))
    template = many.resource_spans[0].scope_spans[0].spans[0]
    for i in range(5000):  # many tiny spans in one request: fine, each its own row
        span = many.resource_spans[0].scope_spans[0].spans.add()
        span.CopyFrom(template)
        span.span_id = (i + 1).to_bytes(8, "big")
    body = many.SerializeToString()
    _post_and_check(fuzz_collector, body, False, decode_protobuf(body))
    deep = orjson.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": secrets.token_hex(16),
                                    "spanId": secrets.token_hex(8),
                                    "name": "'; DROP TABLE spans; --\x00",
                                    "attributes": [
                                        {"key": "d", "value": orjson.loads(_nested(60))}
                                    ],
                                },
                                {
                                    "traceId": secrets.token_hex(16),
                                    "spanId": secrets.token_hex(8),
                                    "name": "ok \x00 '; DELETE FROM sessions; --",
                                },
                            ]
                        }
                    ]
                }
            ]
        }
    )
    _post_and_check(fuzz_collector, deep, True, decode_json(deep))
    assert requests.get(f"{collector.http}/health", timeout=30).json()["status"] == "ok"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(span_records(), min_size=1, max_size=4))
def test_any_decoded_batch_is_writable_whole(store, records):
    """Wrong-typed values under the keys the store promotes to columns (session id, service,
    tokens, scores) once made a whole batch unwritable (a 500 on every retry)."""
    for r in records:
        r.span_id = secrets.token_hex(8)  # fresh: each example is new data
        r.name = r.name.replace("\x00", "")
    before = store.count_spans()
    store.write_spans(records)
    assert store.count_spans() == before + len(records)
