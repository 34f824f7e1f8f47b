"""Span factories for the storage tests.

Real OpenTelemetry SDK spans (``sdk_records``) wherever the test does not need control over ids or
timestamps; hand-built :class:`SpanRecord` for edge cases (fixed start times, nested values the
SDK cannot carry, evaluations without a root).
"""

from __future__ import annotations

import hashlib
from typing import Any

from atlas_middleware.otel_exporters.sdk import to_records

from atlas_middleware.storage import SpanEvent, SpanRecord, Store
from atlas_middleware.telemetry import schema as s
from tests.helpers import session_spans

DAY_NS = 86_400 * 1_000_000_000
# 2025-09-21T00:00:00Z, midnight UTC so day arithmetic in partition tests is exact.
BASE_NS = 20_352 * DAY_NS


def tid(i: int) -> str:
    return f"{i:032x}"


def span_id(i: int) -> str:
    return f"{i:016x}"


def sdk_records(n: int = 1, **kwargs: Any) -> list[SpanRecord]:
    """SpanRecords of ``n`` sessions made by the real SDK (see tests.helpers.session_spans)."""
    return to_records(session_spans(n, **kwargs))


def is_evaluation(record: SpanRecord) -> bool:
    return any(e.name == s.EVENT_EVALUATION_RESULT for e in record.events)


def split_evaluations(records: list[SpanRecord]) -> tuple[list[SpanRecord], list[SpanRecord]]:
    """(everything but the evaluation spans, the evaluation spans)."""
    return (
        [r for r in records if not is_evaluation(r)],
        [r for r in records if is_evaluation(r)],
    )


def trace_ids(records: list[SpanRecord]) -> list[str]:
    return sorted({r.trace_id for r in records})


def root(
    trace: str,
    *,
    start_ns: int = BASE_NS,
    session_id: str | None = None,
    agent: str = "calc",
    learning_key: str | None = "math",
    task: str = "2+2?",
    answer: str = "4",
    status_code: str = "OK",
    span: str | None = None,
    attributes: dict[str, Any] | None = None,
    events: list[SpanEvent] | None = None,
    resource: dict[str, Any] | None = None,
) -> SpanRecord:
    attrs: dict[str, Any] = {
        s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT,
        s.GEN_AI_AGENT_NAME: agent,
        s.ATLAS_SESSION_ID: session_id or f"session-{trace[-6:]}",
        s.ATLAS_TASK: task,
        s.ATLAS_FINAL_ANSWER: answer,
        s.ATLAS_LANE: "coach",
    }
    if learning_key is not None:
        attrs[s.ATLAS_LEARNING_KEY] = learning_key
    attrs.update(attributes or {})
    return SpanRecord(
        trace_id=trace,
        span_id=span or trace[-16:],
        parent_span_id=None,
        name=s.session_span_name(agent),
        kind="INTERNAL",
        start_ns=start_ns,
        end_ns=start_ns + 1_000_000,
        status_code=status_code,
        attributes=attrs,
        events=events or [],
        resource=resource if resource is not None else {s.SERVICE_NAME: "svc"},
        scope="tests",
    )


def evaluation(
    trace: str,
    score: float | None,
    *,
    name: str = s.PRIMARY_EVALUATION,
    start_ns: int = BASE_NS + 5_000_000,
    span: str | None = None,
    label: str | None = None,
    explanation: str | None = None,
    payload: Any = None,
    uncertainty: float | None = None,
) -> SpanRecord:
    """An evaluation span under the (hand-built) root of ``trace``."""
    event: dict[str, Any] = {s.GEN_AI_EVALUATION_NAME: name}
    if score is not None:
        event[s.GEN_AI_EVALUATION_SCORE_VALUE] = score
    if label is not None:
        event[s.GEN_AI_EVALUATION_SCORE_LABEL] = label
    if explanation is not None:
        event[s.GEN_AI_EVALUATION_EXPLANATION] = explanation
    attrs: dict[str, Any] = {s.ATLAS_SPAN_ROLE: s.ROLE_EVALUATION}
    if payload is not None:
        attrs[s.ATLAS_EVALUATION_PAYLOAD] = payload
    if uncertainty is not None:
        attrs[s.ATLAS_EVALUATION_UNCERTAINTY] = uncertainty
    return SpanRecord(
        trace_id=trace,
        span_id=span
        or hashlib.blake2b(f"{trace}/{name}/{start_ns}".encode(), digest_size=8).hexdigest(),
        parent_span_id=trace[-16:],
        name=s.evaluation_span_name(name),
        kind="INTERNAL",
        start_ns=start_ns,
        end_ns=start_ns + 1000,
        status_code="OK",
        attributes=attrs,
        events=[SpanEvent(s.EVENT_EVALUATION_RESULT, start_ns + 500, event)],
        resource={s.SERVICE_NAME: "svc"},
        scope="tests",
    )


def session(i: int, score: float | None = None, **kwargs: Any) -> list[SpanRecord]:
    """A hand-built session (root, plus an evaluation when ``score`` is given) for trace ``tid(i)``."""
    trace = tid(i)
    records = [root(trace, **kwargs)]
    if score is not None:
        start = kwargs.get("start_ns", BASE_NS) + 5_000_000
        records.append(evaluation(trace, score, start_ns=start))
    return records


def stored_spans(store: Store, records: list[SpanRecord]) -> list[dict[str, Any]]:
    """What the store holds for the traces of ``records``, as JSON, in start order."""
    found = store.spans_for(trace_ids(records))
    return [r.to_json() for spans in found.values() for r in spans]


def expected_spans(records: list[SpanRecord]) -> list[dict[str, Any]]:
    unique = {(r.trace_id, r.span_id): r for r in records}
    ordered = sorted(unique.values(), key=lambda r: (r.trace_id, r.start_ns, r.span_id))
    return [r.to_json() for r in ordered]


def by_trace(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(spans, key=lambda d: (d["trace_id"], d["start_time_unix_nano"], d["span_id"]))
