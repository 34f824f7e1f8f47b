"""Compute validation: the teacher's guidance names the calculation, atlas computes it and
compares the student's final number (teacher.validation = "compute")."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.config import AtlasConfig
from atlas_middleware.models import ScriptedModel
from atlas_middleware.prompts import VALIDATE_SYSTEM
from atlas_middleware.teacher import Teacher, plan_value
from atlas_middleware.telemetry import schema as s
from tests.helpers import scripted_teacher


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Compute 70 - 27.", 43),
        ("Compute 60 - 25, then add 33.", 68),
        ("Compute 36 + 11, then subtract 8.", 39),
        ("Compute 4 * 8.", 32),
        ("Compute 27 / 9, then multiply by 2.", 6),
        ("First work out (3 x 4) + 5 for the total.", 17),
        ("Compute 12 ÷ 4.", 3),
        ("Compute 7.5 + 2.5.", 10),
        ("Subtract what Ana gave away from what she had.", None),  # no computation named
        ("Step 1: 5 apples.", None),  # a lone number is not a computation
        ("Compute 5 / 0.", None),
        ("Compute (3 + 4.", None),  # unbalanced: not guessed
    ],
)
def test_plan_value_computes_the_named_calculation(text, value):
    assert plan_value(text) == value


def _teacher(guidance: str, verdict: str = "VALID") -> Teacher:
    """A teacher called directly (no supervised step to dispatch on): replies by its prompt."""

    def respond(messages):
        return verdict if messages[0]["content"] == VALIDATE_SYSTEM else guidance

    return Teacher(ScriptedModel(respond=respond, name="teacher"), validation="compute")


def test_compute_validation_checks_the_final_number_without_stating_it():
    teacher = _teacher("Compute 60 - 25, then add 33.", verdict="VALID")
    right = asyncio.run(teacher.validate("task", "So the tank has 68 left."))
    wrong = asyncio.run(teacher.validate("task", "35 + 33 = 58. Answer: 58"))
    assert right.valid and right.source == "teacher-compute"
    assert not wrong.valid and wrong.source == "teacher-compute"
    assert "68" not in wrong.reason  # the computed result would leak the answer
    # The teacher's own VALID was never asked for: the computation decided.
    assert not asyncio.run(teacher.validate("task", "no number at all")).valid


def test_a_guidance_without_a_computation_falls_back_to_the_verdict_prompt():
    teacher = _teacher("Think about what was taken away.", verdict="INVALID: wrong operation")
    verdict = asyncio.run(teacher.validate("task", "43"))
    assert not verdict.valid and verdict.source == "teacher"
    assert verdict.reason == "wrong operation"


def test_an_unknown_validation_mode_is_refused():
    with pytest.raises(ValueError, match="validation must be one of auto, verdict, compute"):
        Teacher(scripted_teacher(probe="", validate="", guidance=""), validation="vote")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="validation"):
        AtlasConfig.model_validate({"teacher": {"validation": "vote"}})


@pytest.fixture
def exporter():
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()


def test_the_coach_lane_validates_by_computing_its_own_guidance(exporter):
    teacher = scripted_teacher(probe="0.1", validate="VALID", guidance="Compute 70 - 27.")
    config = AtlasConfig.model_validate({"teacher": {"validation": "compute"}})

    @atlas.supervise(agent="calc", teacher=teacher, lane="coach", reward=False, config=config)
    def solve(task: str) -> str:
        return "53" if "wrong" in task else "43"

    assert solve("Ana has 70 apples and gives 27 away; how many left?") == "43"
    assert solve("wrong: Ana has 70 apples and gives 27 away; how many left?") == "53"
    roots = [sp for sp in exporter.get_finished_spans() if s.ATLAS_LANE in (sp.attributes or {})]
    assert [r.attributes[s.ATLAS_LANE] for r in roots] == ["coach", "coach"]
    # One guidance per session and no validation prompt: the guidance is the plan that was computed.
    roles = [m[0]["content"] for m in teacher.calls]
    assert len(teacher.calls) == 2
    assert all("check a student's answer" not in r for r in roles)
    # The store records each verdict and who decided it.
    assert [r.attributes[s.ATLAS_VALIDATION_VALID] for r in roots] == [True, False]
    assert {r.attributes[s.ATLAS_VALIDATION_SOURCE] for r in roots} == {"teacher-compute"}


def test_auto_validation_follows_the_teacher_model():
    trained = ScriptedModel(respond=lambda m: "Compute 70 - 27.", name="trained")
    trained.validation = "compute"  # what a teacher trained by `atlas learn` declares (its card)
    plain = ScriptedModel(respond=lambda m: "VALID", name="plain")
    assert Teacher(trained).validation == "compute"
    assert Teacher(plain).validation == "verdict"
    assert Teacher(trained, validation="verdict").validation == "verdict"  # explicit wins
    assert AtlasConfig().teacher.validation == "auto"


def test_the_verdict_prompt_is_recorded_with_its_source_and_auto_lanes_record_none(exporter):
    teacher = scripted_teacher(probe="0.1", validate="INVALID: no", guidance="Add them.")

    @atlas.supervise(agent="calc", teacher=teacher, lane="paired", reward=False)
    def solve(task: str) -> str:
        return "7"

    @atlas.supervise(agent="calc-auto", teacher=teacher, lane="auto", reward=False)
    def alone(task: str) -> str:
        return "7"

    solve("3 + 4?")
    alone("3 + 4?")
    roots = {
        sp.attributes[s.ATLAS_LANE]: sp.attributes
        for sp in exporter.get_finished_spans()
        if s.ATLAS_LANE in (sp.attributes or {})
    }
    # The paired lane's verdict was on the first attempt (which the retry followed).
    assert roots["paired"][s.ATLAS_VALIDATION_VALID] is False
    assert roots["paired"][s.ATLAS_VALIDATION_SOURCE] == "teacher"
    assert roots["paired"][s.ATLAS_RETRIES] == 1
    assert s.ATLAS_VALIDATION_VALID not in roots["auto"]
