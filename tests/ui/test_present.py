"""What the session page derives from a row and its spans: token split, teacher jobs, message
text in both shapes, the waterfall's order, judges with and without RIM's payload."""

from __future__ import annotations

import json

from atlas_middleware.prompts import PROBE_SYSTEM, VALIDATE_SYSTEM
from atlas_middleware.storage import Session, SpanRecord
from atlas_middleware.telemetry import schema as s
from atlas_middleware.ui import present


def _span(span_id: str, parent: str | None, start: int, end: int, **attributes) -> SpanRecord:
    return SpanRecord(
        trace_id="t" * 32,
        span_id=span_id,
        parent_span_id=parent,
        name=f"span {span_id}",
        kind="INTERNAL",
        start_ns=start,
        end_ns=end,
        status_code="OK",
        attributes=attributes,
    )


def _chat(
    span_id: str, role: str | None, tokens: tuple[int, int], system: str = "x", step: str = ""
):
    attrs = {
        s.GEN_AI_OPERATION_NAME: s.OP_CHAT,
        s.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
        s.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1],
        s.GEN_AI_INPUT_MESSAGES: json.dumps([{"role": "system", "content": system}]),
    }
    if role:
        attrs[s.ATLAS_SPAN_ROLE] = role
    if step:
        attrs[s.ATLAS_TEACHER_STEP] = step
    return _span(span_id, "root", 10, 20, **attrs)


def test_token_split_prefers_the_session_fields_then_span_roles_else_says_unknown():
    spans = [
        _chat("a", "student", (10, 5)),
        _chat("b", "teacher", (7, 3)),
        _chat("c", "judge", (4, 1)),
    ]
    plain = Session("t", input_tokens=21, output_tokens=9)
    split = present.token_split(plain, spans)
    assert split.rows == [
        ("student", 10, 5),
        ("teacher", 7, 3),
        ("judges", 4, 1),
        ("total", 21, 9),
    ]
    assert "roles" in split.source
    unknown = present.token_split(plain, [_chat("a", None, (10, 5))])
    assert unknown.rows == [("total", 21, 9)] and unknown.source.startswith("not recorded")

    class WithFields(Session):  # a row from a store with per-role columns (issue 12)
        def to_json(self):
            return {**super().to_json(), "student_input_tokens": 11, "teacher_output_tokens": 2}

    fields = WithFields("t", input_tokens=21, output_tokens=9)
    assert present.token_split(fields, spans).rows[:2] == [
        ("student", 11, None),
        ("teacher", None, 2),
    ]


def test_teacher_jobs_from_roles_or_the_default_prompts():
    assert present.teacher_job(_chat("a", None, (1, 1), PROBE_SYSTEM)) == "probe"
    assert present.teacher_job(_chat("a", "teacher", (1, 1), VALIDATE_SYSTEM)) == "validation"
    assert present.teacher_job(_chat("a", "teacher", (1, 1), "my own prompt")) == "teacher"
    assert present.teacher_job(_chat("a", "teacher", (1, 1), step="validate")) == "validation"
    assert present.teacher_job(_chat("a", "teacher", (1, 1), step="lesson")) == "lesson"
    assert present.teacher_job(_chat("a", "student", (1, 1), "my own prompt")) is None
    assert present.teacher_job(_chat("a", None, (1, 1), "my own prompt")) is None


def test_teacher_jobs_from_system_instructions_recorded_apart_from_the_messages():
    # No system message among the inputs: the prompt is read from gen_ai.system_instructions
    # (this path named an attribute constant that did not exist: mypy found it).
    span = _chat("a", "teacher", (1, 1))
    span.attributes[s.GEN_AI_INPUT_MESSAGES] = json.dumps([{"role": "user", "content": "2+3?"}])
    assert present.teacher_job(span) == "teacher"
    span.attributes[s.GEN_AI_SYSTEM_INSTRUCTIONS] = [{"type": "text", "content": PROBE_SYSTEM}]
    assert present.teacher_job(span) == "probe"


def test_message_text_reads_openai_and_semantic_convention_shapes():
    openai = json.dumps([{"role": "assistant", "content": "VALID"}])
    parts = json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "INVALID: 41"}]}]
    )
    assert present.message_text(openai) == "VALID"
    assert present.message_text(parts) == "INVALID: 41"
    assert present.message_text("not json") == "not json"
    assert present.message_text(json.dumps([{"role": "assistant"}])) is None


def test_waterfall_orders_children_under_parents_and_survives_cycles():
    spans = [
        _span("root", None, 0, 100),
        _span("b", "root", 50, 90),
        _span("a", "root", 10, 40),
        _span("a1", "a", 20, 30),
        _span("x", "y", 60, 61),  # y points back to x: a cycle without a root
        _span("y", "x", 60, 61),
        _span("late", "root", 120, 200, **{s.ATLAS_SPAN_ROLE: s.ROLE_EVALUATION}),
    ]
    rows = present.waterfall(spans)
    assert [(r.span.span_id, r.depth) for r in rows[:4]] == [
        ("root", 0),
        ("a", 1),
        ("a1", 2),
        ("b", 1),
    ]
    assert {r.span.span_id for r in rows} == {
        "root",
        "a",
        "a1",
        "b",
        "late",
    }  # the cycle: not shown
    late = rows[-1]
    assert late.role == "evaluation" and late.offset == 0.6 and late.length == 0.4


def test_judges_from_the_payload_heaviest_first_else_from_the_judge_events():
    payload = {
        "judges": {
            "style": {"score": 0.5, "weight": 0.1, "rationale": "ok"},
            "accuracy": {"score": 1.0, "weight": 0.7, "rationale": "right", "source": "verifier"},
        },
        "notes": ["escalation skipped"],
    }
    session = Session(
        "t",
        evaluations={
            s.PRIMARY_EVALUATION: {"score": 0.9, "payload": payload},
            "atlas.rim.accuracy": {"score": 1.0},
            "user_feedback": {"score": 0.0, "label": "thumbs down"},
        },
    )
    found = present.rewards(session)
    assert [j.name for j in found.judges] == ["accuracy", "style"]
    assert found.judges[0].source == "verifier"
    assert [name for name, _ in found.others] == ["user_feedback"]
    no_payload = Session(
        "t",
        evaluations={
            s.PRIMARY_EVALUATION: {"score": 0.9},
            "atlas.rim.accuracy": {"score": 1.0, "explanation": "right"},
        },
    )
    judges = present.rewards(no_payload).judges
    assert [(j.name, j.score, j.rationale) for j in judges] == [("accuracy", 1.0, "right")]


def test_a_session_root_is_found_among_its_spans():
    root = _span("root", None, 0, 10, **{s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT})
    child = _span("c", "root", 1, 2, **{s.GEN_AI_OPERATION_NAME: s.OP_CHAT})
    assert present.session_root(Session("t"), [child, root]) is root
    assert present.session_root(Session("t"), [child]) is None
