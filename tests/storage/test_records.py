"""SpanRecord, SDK span conversion, session derivation and the reward rule (no database)."""

from __future__ import annotations

import math

import orjson
import pytest
from atlas_middleware.otel_exporters.sdk import to_records

from atlas_middleware.storage.records import (
    SpanEvent,
    SpanRecord,
    derive_session_updates,
    is_session_root,
    json_dumps,
    reward_score,
)
from atlas_middleware.telemetry import schema as s
from tests.helpers import session_spans
from tests.storage.factories import (
    evaluation,
    root,
    sdk_records,
    split_evaluations,
    tid,
)


def test_to_records_converts_real_sdk_spans():
    spans = session_spans(1, children=2, score=0.8, service="svc-a")
    records = to_records(spans)
    assert len(records) == 4  # root, two chat spans, one evaluation span
    by_id = {r.span_id: r for r in records}
    [rootrec] = [r for r in records if r.parent_span_id is None]
    for r, span in zip(records, spans, strict=True):
        assert r.trace_id == format(span.context.trace_id, "032x")
        assert r.span_id == format(span.context.span_id, "016x")
        assert len(r.trace_id) == 32 and len(r.span_id) == 16
        assert r.start_ns == span.start_time and r.end_ns == span.end_time
        assert r.kind == "INTERNAL"
        assert r.scope == "tests"
        assert r.resource[s.SERVICE_NAME] == "svc-a"
        if r is not rootrec:
            assert r.parent_span_id == rootrec.span_id and r.parent_span_id in by_id
    assert {r.trace_id for r in records} == {rootrec.trace_id}
    assert rootrec.attributes[s.ATLAS_LANE] == "paired"
    assert rootrec.attributes[s.ATLAS_FINAL_ANSWER] == "answer 0"
    _, [ev] = split_evaluations(records)
    assert ev.status_code == "OK"
    [event] = ev.events
    assert event.name == s.EVENT_EVALUATION_RESULT
    assert event.attributes[s.GEN_AI_EVALUATION_SCORE_VALUE] == 0.8
    assert event.time_ns > 0


def test_to_records_turns_sequence_attributes_into_lists_and_keeps_errors():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope-x")
    with (
        pytest.raises(KeyError),
        tracer.start_as_current_span("tool", kind=SpanKind.CLIENT) as span,
    ):
        span.set_attribute("tags", ("a", "b"))
        raise KeyError("missing")
    provider.shutdown()
    [record] = to_records(exporter.get_finished_spans())
    assert record.attributes["tags"] == ["a", "b"]
    assert record.kind == "CLIENT"
    assert record.status_code == "ERROR"
    assert "KeyError" in (record.status_message or "")
    assert record.scope == "scope-x"
    assert [e.name for e in record.events] == ["exception"]


def test_span_record_json_round_trip_of_sdk_spans():
    records = sdk_records(2, children=1)
    for record in records:
        text = json_dumps(record.to_json())
        assert SpanRecord.from_json(orjson.loads(text)) == record


def test_from_json_defaults_for_sparse_input():
    record = SpanRecord.from_json(
        {
            "trace_id": tid(1),
            "span_id": "a" * 16,
            "name": "x",
            "start_time_unix_nano": "10",
            "end_time_unix_nano": "20",
        }
    )
    assert record.kind == "INTERNAL" and record.status_code == "UNSET"
    assert (record.start_ns, record.end_ns) == (10, 20)
    assert record.attributes == {} and record.events == [] and record.resource == {}
    assert record.parent_span_id is None


def test_is_session_root():
    trace = tid(1)
    atlas_root = root(trace)
    assert is_session_root(atlas_root)
    # An atlas session span stays a session even with a parent (e.g. a caller's span).
    nested_atlas = root(trace)
    nested_atlas.parent_span_id = "f" * 16
    assert is_session_root(nested_atlas)
    # Another producer's invoke_agent span: a session only at the root of its trace.
    foreign = root(trace)
    del foreign.attributes[s.ATLAS_SESSION_ID]
    assert is_session_root(foreign)
    foreign.parent_span_id = "f" * 16
    assert not is_session_root(foreign)
    chat = root(trace, attributes={s.GEN_AI_OPERATION_NAME: s.OP_CHAT})
    assert not is_session_root(chat)
    workflow = root(trace, attributes={s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_WORKFLOW})
    assert is_session_root(workflow)


def test_derive_session_from_real_sdk_spans():
    records = sdk_records(1, agent="calc", learning_key="math", score=0.8, service="svc-b")
    [update] = derive_session_updates(records).values()
    [rootrec] = [r for r in records if r.parent_span_id is None]
    assert update.trace_id == rootrec.trace_id
    assert update.session_id == rootrec.attributes[s.ATLAS_SESSION_ID]
    assert update.agent_name == "calc"
    assert update.learning_key == "math"
    assert update.service_name == "svc-b"
    assert update.task == "task 0"
    assert update.final_answer == "answer 0"
    assert update.lane == "paired"
    assert update.status == "ok"
    assert (update.started_ns, update.ended_ns) == (rootrec.start_ns, rootrec.end_ns)
    rim = update.evaluations[s.PRIMARY_EVALUATION]
    assert rim["score"] == 0.8 and rim["explanation"] == "ok"
    assert None not in rim.values()


def test_derive_session_defaults_and_errors():
    trace = tid(7)
    record = root(
        trace,
        learning_key=None,
        agent="planner",
        status_code="ERROR",
        attributes={
            s.ERROR_TYPE: "TimeoutError",
            s.GEN_AI_USAGE_INPUT_TOKENS: 12,
            s.GEN_AI_USAGE_OUTPUT_TOKENS: "7",
            s.ATLAS_PROBE_CONFIDENCE: "nan",
        },
    )
    [update] = derive_session_updates([record]).values()
    assert update.learning_key == "planner"  # no explicit key: learns per agent
    assert update.status == "error" and update.error_type == "TimeoutError"
    assert (update.input_tokens, update.output_tokens) == (12, 7)
    assert update.probe_confidence is None  # non-finite numbers are dropped, not stored
    assert update.evaluations == {}


def test_spans_that_say_nothing_about_a_session_are_ignored():
    records = sdk_records(1, score=None)
    children = [r for r in records if r.parent_span_id is not None]
    assert children and derive_session_updates(children) == {}


def test_evaluation_only_batch_updates_scores_and_nothing_else():
    trace = tid(3)
    ev = evaluation(
        trace,
        0.25,
        label="fail",
        explanation="wrong",
        uncertainty=0.1,
        payload=orjson.dumps({"judges": [{"name": "a", "score": 0.2}]}).decode(),
    )
    [update] = derive_session_updates([ev]).values()
    assert update.task is None and update.learning_key is None and update.started_ns is None
    assert update.evaluations == {
        s.PRIMARY_EVALUATION: {
            "score": 0.25,
            "label": "fail",
            "explanation": "wrong",
            "uncertainty": 0.1,
            "time_unix_nano": ev.events[0].time_ns,
            "span_id": ev.span_id,
            "payload": {"judges": [{"name": "a", "score": 0.2}]},
        }
    }


def test_evaluation_payload_that_is_not_json_is_kept_as_text():
    ev = evaluation(tid(3), 0.5, payload="not json {")
    [update] = derive_session_updates([ev]).values()
    assert update.evaluations[s.PRIMARY_EVALUATION]["payload"] == "not json {"


def test_evaluation_without_a_name_is_ignored_and_bad_scores_are_dropped():
    trace = tid(4)
    nameless = evaluation(trace, 0.5)
    del nameless.events[0].attributes[s.GEN_AI_EVALUATION_NAME]
    nan_score = evaluation(trace, math.nan, name="judge", start_ns=99)
    [update] = derive_session_updates([nameless, nan_score]).values()
    assert list(update.evaluations) == ["judge"]
    assert "score" not in update.evaluations["judge"]


def test_other_events_are_not_evaluations():
    record = root(tid(5), events=[SpanEvent("log", 1, {s.GEN_AI_EVALUATION_NAME: "x"})])
    [update] = derive_session_updates([record]).values()
    assert update.evaluations == {}


def test_several_evaluations_of_one_session_in_one_batch():
    trace = tid(6)
    records = [
        root(trace),
        evaluation(trace, 0.2, name=s.PRIMARY_EVALUATION),
        evaluation(trace, 1.0, name="exact_match", start_ns=10),
    ]
    [update] = derive_session_updates(records).values()
    assert {k: v["score"] for k, v in update.evaluations.items()} == {
        s.PRIMARY_EVALUATION: 0.2,
        "exact_match": 1.0,
    }
    assert update.task == "2+2?"


@pytest.mark.parametrize(
    ("evaluations", "expected"),
    [
        ({}, None),
        ({s.PRIMARY_EVALUATION: {"score": 0.3}, "other": {"score": 0.9}}, 0.3),
        ({s.PRIMARY_EVALUATION: {"score": 0.0}, "other": {"score": 0.9}}, 0.0),
        ({"a": {"score": 0.4}, "b": {"score": 0.8}}, pytest.approx(0.6)),
        # The primary evaluation without a score does not hide the others.
        ({s.PRIMARY_EVALUATION: {"label": "x"}, "b": {"score": 0.5}}, 0.5),
        ({"a": {"label": "only a label"}}, None),
    ],
)
def test_reward_score_primary_else_mean(evaluations, expected):
    assert reward_score(evaluations) == expected


def test_json_dumps_never_fails_on_odd_values():
    value = {
        "bytes": b"\x01raw",
        "set": {1},
        1: "int key",
        "big": 2**64,
        "nested": [{"deep": [2**70, "ünïcode"]}],
    }
    decoded = orjson.loads(json_dumps(value))
    assert decoded["1"] == "int key"
    assert decoded["nested"][0]["deep"][1] == "ünïcode"
    # Integers beyond 64 bits (the SDK accepts them as attributes) survive as their digits.
    assert str(decoded["big"]) == str(2**64)
    assert str(decoded["nested"][0]["deep"][0]) == str(2**70)
