"""What the session page shows, read from a session row and its spans: the teacher's part, the
rewards judge by judge, the token split, and the span waterfall.

Nothing here guesses: a value the store does not hold is shown as not recorded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from atlas_middleware.cli.common import format_duration
from atlas_middleware.storage import Session, SpanRecord
from atlas_middleware.storage.records import span_tree
from atlas_middleware.telemetry import schema as s

# Span roles (atlas.span.role) of the teacher's calls, of the student's, and of judges; which
# teacher job a call did is its atlas.teacher.step (docs/span-schema.md).
TEACHER_ROLES = frozenset({s.ROLE_TEACHER})
STUDENT_ROLES = frozenset({s.ROLE_STUDENT})
JUDGE_ROLES = frozenset({s.ROLE_JUDGE})
# How the page names each teacher step.
_JOB_NAMES = {
    "probe": "probe",
    "guidance": "guidance",
    "validate": "validation",
    "lesson": "lesson",
}
_LLM_OPERATIONS = frozenset({s.OP_CHAT, s.OP_TEXT_COMPLETION})
MAX_VALUE_CHARS = 20_000


def format_score(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def show_value(value: Any) -> str:
    """An attribute value as text: strings as they are, the rest as JSON; cut when huge."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()
        except TypeError:
            text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f"… ({len(text) - MAX_VALUE_CHARS:,} more characters)"
    return text


def message_text(value: Any) -> str | None:
    """The text of GenAI messages (``gen_ai.*.messages``): OpenAI-shaped ``{role, content}`` or
    the semantic conventions' ``{role, parts: [{type: text, content}]}``."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return None
    texts = []
    for message in value:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        for part in message.get("parts") or []:
            if isinstance(part, Mapping) and isinstance(part.get("content"), str):
                texts.append(part["content"])
    return "\n".join(texts) if texts else None


def _system_prompt(span: SpanRecord) -> str | None:
    raw = span.attributes.get(s.GEN_AI_INPUT_MESSAGES)
    try:
        messages = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        return None
    if isinstance(messages, list) and messages and isinstance(messages[0], Mapping):
        first = messages[0]
        if first.get("role") == "system":
            return message_text([first])
    instructions = span.attributes.get(s.GEN_AI_SYSTEM_INSTRUCTIONS)
    return message_text(instructions) if instructions else None


def span_role(span: SpanRecord) -> str:
    """``atlas.span.role`` when the span carries one; otherwise what its operation says."""
    role = span.attributes.get(s.ATLAS_SPAN_ROLE)
    if isinstance(role, str) and role:
        return role
    if any(e.name == s.EVENT_EVALUATION_RESULT for e in span.events):
        return s.ROLE_EVALUATION
    operation = span.attributes.get(s.GEN_AI_OPERATION_NAME)
    if operation in _LLM_OPERATIONS:
        return "llm"
    if operation == s.OP_EXECUTE_TOOL:
        return "tool"
    if operation in s.SESSION_OPERATIONS:
        return "agent"
    return "span"


def teacher_job(span: SpanRecord) -> str | None:
    """Which teacher job an LLM span did: its ``atlas.teacher.step``, else (spans of recorders
    that write no step) its system prompt being one of the teacher's default prompts; custom
    prompts are not recognised."""
    from atlas_middleware.playbook import LESSON_SYSTEM
    from atlas_middleware.prompts import DEFAULT_PROMPTS

    role = span.attributes.get(s.ATLAS_SPAN_ROLE)
    step = span.attributes.get(s.ATLAS_TEACHER_STEP)
    if role == s.ROLE_TEACHER and step in _JOB_NAMES:
        return _JOB_NAMES[step]
    if span.attributes.get(s.GEN_AI_OPERATION_NAME) not in _LLM_OPERATIONS:
        return "teacher" if role == s.ROLE_TEACHER else None
    system = _system_prompt(span)
    for job, prompt in (
        ("probe", DEFAULT_PROMPTS.probe),
        ("guidance", DEFAULT_PROMPTS.guidance),
        ("validation", DEFAULT_PROMPTS.validate_),
        ("lesson", LESSON_SYSTEM),
    ):
        if system and system.strip() == prompt.strip():
            return job
    return "teacher" if role == s.ROLE_TEACHER else None


@dataclass
class SpanRow:
    span: SpanRecord
    depth: int
    role: str
    offset: float
    length: float
    duration: str
    start: str
    attributes: list[tuple[str, str]]
    events: list[dict[str, Any]]
    job: str | None = None


def waterfall(spans: list[SpanRecord]) -> list[SpanRow]:
    """Spans in tree order (children under their parent, by start time), each with its depth
    and its place on the trace's time line as fractions of the whole."""
    if not spans:
        return []
    t0 = min(sp.start_ns for sp in spans)
    t1 = max(max(sp.end_ns, sp.start_ns) for sp in spans)
    total = max(1, t1 - t0)
    rows: list[SpanRow] = []
    for span, depth in span_tree(spans):
        rows.append(
            SpanRow(
                span=span,
                depth=min(depth, 12),
                role=span_role(span),
                offset=(span.start_ns - t0) / total,
                length=max(0, span.end_ns - span.start_ns) / total,
                duration=format_duration(span.end_ns - span.start_ns),
                start=format_duration(span.start_ns - t0),
                attributes=[(k, show_value(v)) for k, v in sorted(span.attributes.items())],
                events=[
                    {
                        "name": e.name,
                        "at": format_duration(e.time_ns - t0),
                        "attributes": [(k, show_value(v)) for k, v in sorted(e.attributes.items())],
                    }
                    for e in span.events
                ],
                job=teacher_job(span),
            )
        )
    return rows


def session_root(session: Session, spans: Iterable[SpanRecord]) -> SpanRecord | None:
    roots = [
        sp
        for sp in spans
        if sp.attributes.get(s.GEN_AI_OPERATION_NAME) in s.SESSION_OPERATIONS
        and (sp.attributes.get(s.ATLAS_SESSION_ID) is not None or sp.parent_span_id is None)
    ]
    return min(roots, key=lambda sp: sp.start_ns) if roots else None


@dataclass
class TokenSplit:
    rows: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    source: str = ""  # where the split came from: the session row, the span roles, or nowhere


def token_split(session: Session, spans: list[SpanRecord]) -> TokenSplit:
    """Student and teacher tokens: the session's own fields when the store has them (per-role
    columns), else summed from LLM spans that carry a role; the totals always."""
    fields = session.to_json()
    split = TokenSplit()
    keys = ("student", "teacher")
    if any(
        fields.get(f"{who}_{d}_tokens") is not None for who in keys for d in ("input", "output")
    ):
        for who in keys:
            split.rows.append(
                (who, fields.get(f"{who}_input_tokens"), fields.get(f"{who}_output_tokens"))
            )
        split.source = "recorded on the session"
    else:
        sums: dict[str, list[int]] = {}
        for span in spans:
            if span.attributes.get(s.GEN_AI_OPERATION_NAME) not in _LLM_OPERATIONS:
                continue
            role = span.attributes.get(s.ATLAS_SPAN_ROLE)
            owner = (
                "student"
                if role in STUDENT_ROLES
                else "teacher"
                if role in TEACHER_ROLES
                else "judges"
                if role in JUDGE_ROLES
                else None
            )
            if owner is None:
                continue
            total = sums.setdefault(owner, [0, 0])
            total[0] += _int(span.attributes.get(s.GEN_AI_USAGE_INPUT_TOKENS))
            total[1] += _int(span.attributes.get(s.GEN_AI_USAGE_OUTPUT_TOKENS))
        if sums:
            for who in ("student", "teacher", "judges"):
                if who in sums:
                    split.rows.append((who, sums[who][0], sums[who][1]))
            split.source = "summed from the LLM spans' roles"
        else:
            split.source = "not recorded: the spans carry no student/teacher roles"
    split.rows.append(("total", session.input_tokens, session.output_tokens))
    return split


def _weight(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass
class Judge:
    name: str
    score: Any
    weight: Any = None
    rationale: str | None = None
    uncertainty: Any = None
    source: str | None = None
    escalated: bool = False
    error: str | None = None
    principles: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass
class Rewards:
    primary: Mapping[str, Any] | None
    judges: list[Judge]
    others: list[tuple[str, Mapping[str, Any]]]
    payload: dict[str, Any]


def rewards(session: Session) -> Rewards:
    """The primary reward (RIM), each judge's score and rationale, and any other evaluation."""
    evaluations = session.evaluations or {}
    primary = evaluations.get(s.PRIMARY_EVALUATION)
    payload = primary.get("payload") if isinstance(primary, Mapping) else None
    payload = payload if isinstance(payload, Mapping) else {}
    judges: list[Judge] = []
    found = payload.get("judges")
    if isinstance(found, Mapping) and found:
        for name, j in found.items():
            if not isinstance(j, Mapping):
                continue
            judges.append(
                Judge(
                    name=str(name),
                    score=j.get("score"),
                    weight=j.get("weight"),
                    rationale=j.get("rationale") or None,
                    uncertainty=j.get("uncertainty"),
                    source=j.get("source"),
                    escalated=bool(j.get("escalated")),
                    error=j.get("error"),
                    principles=[p for p in j.get("principles") or [] if isinstance(p, Mapping)],
                )
            )
    # Heaviest first; Postgres's JSONB does not keep the payload's key order.
    judges.sort(key=lambda j: (-_weight(j.weight), j.name))
    prefix = s.PRIMARY_EVALUATION + "."
    if not judges:  # no payload (another producer, or content capture off): the per-judge events
        for name, e in sorted(evaluations.items()):
            if name.startswith(prefix) and isinstance(e, Mapping):
                judges.append(
                    Judge(
                        name=name[len(prefix) :],
                        score=e.get("score"),
                        rationale=e.get("explanation"),
                        uncertainty=e.get("uncertainty"),
                    )
                )
    others = [
        (name, e)
        for name, e in sorted(evaluations.items())
        if name != s.PRIMARY_EVALUATION and not name.startswith(prefix) and isinstance(e, Mapping)
    ]
    return Rewards(primary if isinstance(primary, Mapping) else None, judges, others, dict(payload))
