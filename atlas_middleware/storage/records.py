"""What a store holds: spans as plain records, and the session facts derived from them.

Both ingest paths (the in-process exporter and the OTLP collector) turn spans into
:class:`SpanRecord` first, so session derivation, redaction and storage see one shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from atlas_middleware.telemetry import schema as s

REVIEW_STATUSES = ("pending", "approved", "quarantined")


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "time_unix_nano": self.time_ns, "attributes": self.attributes}


@dataclass(slots=True)
class SpanRecord:
    trace_id: str  # 32 lowercase hex chars
    span_id: str  # 16 lowercase hex chars
    parent_span_id: str | None
    name: str
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    start_ns: int
    end_ns: int
    status_code: str = "UNSET"  # UNSET, OK, ERROR
    status_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str | None = None

    @property
    def service_name(self) -> str | None:
        value = self.resource.get(s.SERVICE_NAME)
        return value if isinstance(value, str) else None

    @property
    def operation(self) -> str | None:
        value = self.attributes.get(s.GEN_AI_OPERATION_NAME)
        return value if isinstance(value, str) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "start_time_unix_nano": self.start_ns,
            "end_time_unix_nano": self.end_ns,
            "status": {"code": self.status_code, "message": self.status_message},
            "attributes": self.attributes,
            "events": [e.to_json() for e in self.events],
            "resource": self.resource,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpanRecord:
        status = data.get("status") or {}
        return cls(
            trace_id=data["trace_id"],
            span_id=data["span_id"],
            parent_span_id=data.get("parent_span_id"),
            name=data["name"],
            kind=data.get("kind", "INTERNAL"),
            start_ns=int(data["start_time_unix_nano"]),
            end_ns=int(data["end_time_unix_nano"]),
            status_code=status.get("code", "UNSET"),
            status_message=status.get("message"),
            attributes=dict(data.get("attributes") or {}),
            events=[
                SpanEvent(e["name"], int(e["time_unix_nano"]), dict(e.get("attributes") or {}))
                for e in data.get("events") or []
            ],
            resource=dict(data.get("resource") or {}),
            scope=data.get("scope"),
        )


def is_session_root(record: SpanRecord) -> bool:
    """A session is an ``invoke_agent``/``invoke_workflow`` span that atlas marked as one, or, for
    other producers, such a span at the root of its trace."""
    if record.operation not in s.SESSION_OPERATIONS:
        return False
    return record.parent_span_id is None or s.ATLAS_SESSION_ID in record.attributes


@dataclass(slots=True)
class SessionUpdate:
    """What one batch of spans says about one session (keyed by trace id). ``None`` fields say
    nothing, so a late evaluation never erases what the root span said, and vice versa."""

    trace_id: str
    session_id: str | None = None
    agent_name: str | None = None
    learning_key: str | None = None
    service_name: str | None = None
    task: str | None = None
    final_answer: str | None = None
    guidance: str | None = None
    lane: str | None = None
    probe_confidence: float | None = None
    model: str | None = None
    status: str | None = None
    error_type: str | None = None
    input_tokens: int | None = None  # student + teacher, when both are known
    output_tokens: int | None = None
    student_input_tokens: int | None = None
    student_output_tokens: int | None = None
    teacher_input_tokens: int | None = None
    teacher_output_tokens: int | None = None
    started_ns: int | None = None
    ended_ns: int | None = None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Evaluations whose score was present but not a finite number (NaN, ±inf, text): kept
    # without a score, so they never become a reward, and counted.
    rejected_scores: int = 0

    COLUMNS = (
        "session_id",
        "agent_name",
        "learning_key",
        "service_name",
        "task",
        "final_answer",
        "guidance",
        "lane",
        "probe_confidence",
        "model",
        "status",
        "error_type",
        "input_tokens",
        "output_tokens",
        "student_input_tokens",
        "student_output_tokens",
        "teacher_input_tokens",
        "teacher_output_tokens",
        "started_ns",
        "ended_ns",
    )

    def column_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in self.COLUMNS)


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int(value: Any) -> int | None:
    try:
        result = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    # Columns are 64-bit; a garbage count must not fail the whole batch.
    return result if -(2**63) <= result < 2**63 else None


def _evaluation(event: SpanEvent, span: SpanRecord) -> tuple[str, dict[str, Any]] | None:
    attrs = event.attributes
    raw_score = attrs.get(s.GEN_AI_EVALUATION_SCORE_VALUE)
    score = _float(raw_score) if not isinstance(raw_score, bool) else None
    name = _str(attrs.get(s.GEN_AI_EVALUATION_NAME))
    if name is None:
        return None
    payload: Any = span.attributes.get(s.ATLAS_EVALUATION_PAYLOAD)
    if isinstance(payload, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(payload)
    entry = {
        "score": score,
        "label": _str(attrs.get(s.GEN_AI_EVALUATION_SCORE_LABEL)),
        "explanation": _str(attrs.get(s.GEN_AI_EVALUATION_EXPLANATION)),
        "uncertainty": _float(span.attributes.get(s.ATLAS_EVALUATION_UNCERTAINTY)),
        "time_unix_nano": event.time_ns,
        "span_id": span.span_id,
    }
    if payload is not None:
        entry["payload"] = payload
    # No nulls: SQLite's json_patch treats null as "delete", so both stores keep the same shape.
    return name, {k: v for k, v in entry.items() if v is not None}


def derive_session_updates(records: Iterable[SpanRecord]) -> dict[str, SessionUpdate]:
    updates: dict[str, SessionUpdate] = {}
    for record in records:
        root = is_session_root(record)
        evaluations = [e for e in record.events if e.name == s.EVENT_EVALUATION_RESULT]
        if evaluations and _step_of_evaluation(record) is not None:
            evaluations = []  # a step's reward: its step row holds it (derive_step_updates)
        if not root and not evaluations:
            continue
        update = updates.get(record.trace_id)
        if update is None:
            update = updates[record.trace_id] = SessionUpdate(record.trace_id)
        if root:
            a = record.attributes
            update.session_id = _str(a.get(s.ATLAS_SESSION_ID) or a.get(s.GEN_AI_CONVERSATION_ID))
            update.agent_name = _str(a.get(s.GEN_AI_AGENT_NAME)) or record.name
            # Sessions without an explicit key learn (and drift) per agent.
            update.learning_key = _str(a.get(s.ATLAS_LEARNING_KEY)) or update.agent_name
            update.service_name = record.service_name
            update.task = _str(a.get(s.ATLAS_TASK) or a.get(s.OI_INPUT_VALUE))
            update.final_answer = _str(a.get(s.ATLAS_FINAL_ANSWER) or a.get(s.OI_OUTPUT_VALUE))
            update.guidance = _str(a.get(s.ATLAS_GUIDANCE))
            update.lane = _str(a.get(s.ATLAS_LANE))
            update.probe_confidence = _float(a.get(s.ATLAS_PROBE_CONFIDENCE))
            update.model = _str(a.get(s.GEN_AI_REQUEST_MODEL))
            update.status = "error" if record.status_code == "ERROR" else "ok"
            update.error_type = _str(a.get(s.ERROR_TYPE))
            update.input_tokens = _int(a.get(s.GEN_AI_USAGE_INPUT_TOKENS))
            update.output_tokens = _int(a.get(s.GEN_AI_USAGE_OUTPUT_TOKENS))
            update.student_input_tokens = _int(a.get(s.ATLAS_USAGE_STUDENT_INPUT_TOKENS))
            update.student_output_tokens = _int(a.get(s.ATLAS_USAGE_STUDENT_OUTPUT_TOKENS))
            update.teacher_input_tokens = _int(a.get(s.ATLAS_USAGE_TEACHER_INPUT_TOKENS))
            update.teacher_output_tokens = _int(a.get(s.ATLAS_USAGE_TEACHER_OUTPUT_TOKENS))
            update.started_ns = record.start_ns
            update.ended_ns = record.end_ns
        for event in evaluations:
            found = _evaluation(event, record)
            if found is not None:
                update.evaluations[found[0]] = found[1]
                if "score" not in found[1] and event.attributes.get(
                    s.GEN_AI_EVALUATION_SCORE_VALUE
                ) not in (None, ""):
                    update.rejected_scores += 1
    return updates


def _step_of_evaluation(record: SpanRecord) -> str | None:
    """The span id of the step an evaluation span scores, or None for a session's."""
    a = record.attributes
    if a.get(s.ATLAS_REWARD_SCOPE) == s.SCOPE_SESSION:
        return None
    step = a.get(s.ATLAS_STEP_ID)
    if isinstance(step, str) and step:
        return step
    if a.get(s.ATLAS_REWARD_SCOPE) == s.SCOPE_STEP:
        return record.parent_span_id
    return None


@dataclass(slots=True)
class StepUpdate:
    """What one batch of spans says about one step (keyed by trace id and span id): its span's
    facts, the rewards that arrived for it, or both. ``None`` says nothing."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str | None = None
    kind: str | None = None
    started_ns: int | None = None
    ended_ns: int | None = None
    status: str | None = None
    error_type: str | None = None
    error: str | None = None
    input: str | None = None
    output: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected_scores: int = 0

    COLUMNS = (
        "parent_id",
        "name",
        "kind",
        "started_ns",
        "ended_ns",
        "status",
        "error_type",
        "error",
        "input",
        "output",
        "input_tokens",
        "output_tokens",
    )

    def column_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in self.COLUMNS)


def derive_step_updates(records: Iterable[SpanRecord]) -> dict[tuple[str, str], StepUpdate]:
    """The steps a batch describes: step spans (``atlas.step.kind``, or a tool / node / workflow
    step / agent-turn span of another producer) and step rewards (evaluation spans with
    ``atlas.reward.scope=step``)."""
    updates: dict[tuple[str, str], StepUpdate] = {}

    def get(trace_id: str, span_id: str) -> StepUpdate:
        key = (trace_id, span_id)
        found = updates.get(key)
        if found is None:
            found = updates[key] = StepUpdate(trace_id, span_id)
        return found

    for record in records:
        a = record.attributes
        kind = s.step_kind(a, root=is_session_root(record))
        if kind is not None:
            update = get(record.trace_id, record.span_id)
            update.kind = kind
            update.parent_id = _str(a.get(s.ATLAS_STEP_PARENT_ID))
            update.name = (
                _str(
                    a.get(s.ATLAS_NODE_NAME)
                    or a.get(s.ATLAS_STEP_NAME)
                    or a.get(s.GEN_AI_TOOL_NAME)
                    or a.get(s.GEN_AI_AGENT_NAME)
                )
                or record.name
            )
            update.started_ns = record.start_ns
            update.ended_ns = record.end_ns
            failed = record.status_code == "ERROR"
            update.status = "error" if failed else "ok"
            update.error_type = _str(a.get(s.ERROR_TYPE))
            update.error = (record.status_message or update.error_type) if failed else None
            update.input = _str(a.get(s.OI_INPUT_VALUE) or a.get(s.GEN_AI_TOOL_CALL_ARGUMENTS))
            update.output = _str(a.get(s.OI_OUTPUT_VALUE) or a.get(s.GEN_AI_TOOL_CALL_RESULT))
            update.input_tokens = _int(a.get(s.GEN_AI_USAGE_INPUT_TOKENS))
            update.output_tokens = _int(a.get(s.GEN_AI_USAGE_OUTPUT_TOKENS))
        evaluations = [e for e in record.events if e.name == s.EVENT_EVALUATION_RESULT]
        step = _step_of_evaluation(record) if evaluations else None
        if step is None:
            continue
        update = get(record.trace_id, step)
        for event in evaluations:
            found = _evaluation(event, record)
            if found is not None:
                update.evaluations[found[0]] = found[1]
                if "score" not in found[1] and event.attributes.get(
                    s.GEN_AI_EVALUATION_SCORE_VALUE
                ) not in (None, ""):
                    update.rejected_scores += 1
    return updates


def span_tree(spans: Iterable[SpanRecord]) -> list[tuple[SpanRecord, int]]:
    """Spans in tree order with their depth: each after its parent, siblings by start time. A
    span whose parent is not among them is a root; spans that only point at each other (a cycle)
    are left out; a deep chain cannot exhaust the recursion limit."""
    ordered = sorted(spans, key=lambda sp: (sp.start_ns, sp.span_id))
    ids = {sp.span_id for sp in ordered}
    children: dict[str | None, list[SpanRecord]] = {}
    for sp in ordered:
        children.setdefault(sp.parent_span_id if sp.parent_span_id in ids else None, []).append(sp)
    found: list[tuple[SpanRecord, int]] = []
    stack = [(sp, 0) for sp in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        found.append((span, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(span.span_id, [])))
    return found


def reward_score(evaluations: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The session's (or a step's) reward: the aggregate of the final judge and the step rewards
    when there is one (``atlas.aggregate``), else the primary (RIM) evaluation, else the mean of
    all."""
    for name in (s.AGGREGATE_EVALUATION, s.PRIMARY_EVALUATION):
        chosen = evaluations.get(name)
        if chosen is not None and chosen.get("score") is not None:
            return float(chosen["score"])
    scores = [float(e["score"]) for e in evaluations.values() if e.get("score") is not None]
    return sum(scores) / len(scores) if scores else None


def json_dumps(value: Any) -> str:
    """JSON text for the store. Non-JSON values (bytes, sets) are stringified, never fatal."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits (the SDK accepts them as attribute values);
        # store their digits as text rather than lose the whole batch.
        return orjson.dumps(
            _bigints_as_text(value), default=str, option=orjson.OPT_NON_STR_KEYS
        ).decode()


def _bigints_as_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {k: _bigints_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bigints_as_text(v) for v in value]
    return value


_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile"})


def safe_url(url: str) -> str:
    """A store URL fit for logs and errors: no password, neither in the user part nor in the
    query (``?password=``)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(query)):
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(query)],
            safe="*",
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
