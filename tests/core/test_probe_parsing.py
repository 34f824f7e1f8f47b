"""The probe's confidence is read from a labelled field, never guessed (issue 12, finding 4).

The table holds the cases of the issue, the shapes bigger teachers answer in, and replies the
embedded SmolLM2-135M gave to the probe prompt (greedy, 16 and 50 tokens, bundled arithmetic
tasks and four generic ones; recorded 2026-12-05): it solves the task instead of rating it, and
those replies must come out as "unparsed" (None), not as a confidence read off the task's
numbers or a list item.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.prompts import PROBE_SYSTEM
from atlas_middleware.teacher import Teacher, parse_confidence
from atlas_middleware.telemetry import schema as s

CASES = [
    # the two cases: the first number is not the confidence
    ("Step 1: easy. Confidence: 0.95", 0.95),
    ("For 12 + 30 my confidence is 0.9", 0.9),
    # labelled, JSON, and the prompt's own label continued
    ("Confidence: 0.3", 0.3),
    ("confidence = 85%", 0.85),
    ("Confidence: 85", 0.85),
    ("Confidence level: 8/10", 0.8),
    ("Confidence: 7 out of 10", 0.7),
    ('{"confidence": 0.6, "reason": "two steps"}', 0.6),
    ("Sure.\n**Confidence:** 0.4", 0.4),
    ("0.9", 0.9),
    (" 0.75\nThe task needs one subtraction.", 0.75),
    ("0.9 because it is one addition", 0.9),
    ("40%", 0.4),
    ("1", 1.0),
    # stated but not a confidence in [0, 1], or not stated at all: unparsed
    ("Confidence: 250", None),
    ("Confidence: high", None),
    ("I am 90% sure", None),
    ("1. The task is hard", None),
    ("", None),
    # SmolLM2-135M-Instruct's real replies to the probe prompt
    ("Goran has 26 + 37 = 63 shells now", None),
    ("Goran has 26 + 37 = 63 shells now.", None),
    ("18\n\nThe answer is 18.", None),
    ("Eli has 49 - 21 = 69 marbles now", None),
    ("1. 3 boxes with 3 marbles each = 3 boxes * ", None),
    ("1. 3 bags of 8 coins = 3 x 8 =", None),
    ("10 x 67 = 620\nThe answer is ", None),
    ("1. 2 bags of 4 apples = 8 apples\n2.", None),
    ("1. 48 - 16 = 12 books\n2", None),
    ("15 + 25 = 33", None),
    ("The answer is: Paris.", None),
    ("1. 3\n2. 1\n3. 2\n\nThe answer is 3.", None),
    ("In the heart of the autumn,\nA moment of pure confidence.", None),
]


@pytest.mark.parametrize(("reply", "expected"), CASES)
def test_parse_confidence(reply, expected):
    assert parse_confidence(reply) == (pytest.approx(expected) if expected is not None else None)


def test_the_probe_asks_for_the_labelled_field():
    model = ScriptedModel(replies=["Confidence: 0.8"], name="teacher")
    assert asyncio.run(Teacher(model).probe("What is 2 + 2?")) == pytest.approx(0.8)
    [messages] = model.calls
    assert messages[0]["content"] == PROBE_SYSTEM and "Confidence: <a number" in PROBE_SYSTEM
    assert messages[-1]["content"].endswith("Confidence:")


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()


def _root(exporter):
    [root] = [x for x in exporter.get_finished_spans() if x.name.startswith("invoke_agent")]
    return root


@pytest.mark.parametrize(
    ("reply", "lane", "status"),
    [
        ("Step 1: easy. Confidence: 0.95", "auto", None),
        ("Goran has 26 + 37 = 63", "paired", "unparsed"),
    ],
)
def test_an_unparsed_probe_is_recorded_and_takes_the_fallback_lane(spans, reply, lane, status):
    teacher = ScriptedModel(respond=lambda m: reply if "judge" in m[0]["content"] else "VALID")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, fallback_lane="paired")
    def solve(task: str) -> str:
        return "63"

    solve("Goran has 26 shells and finds 37 more. How many?")
    root = _root(spans)
    assert root.attributes[s.ATLAS_LANE] == lane
    assert root.attributes.get(s.ATLAS_PROBE_STATUS) == status
    if status is None:
        assert root.attributes[s.ATLAS_PROBE_CONFIDENCE] == pytest.approx(0.95)
    else:
        assert s.ATLAS_PROBE_CONFIDENCE not in root.attributes
        assert "probe: no confidence in the teacher's reply" in root.attributes[s.ATLAS_FAILURES]


@pytest.mark.model
def test_the_embedded_teachers_probe_is_parsed_or_recorded_unparsed(embedded, spans):
    @atlas.supervise(
        agent="calc",
        teacher=embedded,
        reward=False,
        lane="auto",
        always_probe=True,
        probe_timeout_s=300,
    )
    def solve(task: str) -> str:
        return "63"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "chat", _capped(embedded.chat))
        solve("Goran has 26 shells and finds 37 more. How many shells does he have now?")
    root = _root(spans)
    [probe] = [
        x for x in spans.get_finished_spans() if x.attributes.get(s.ATLAS_TEACHER_STEP) == "probe"
    ]
    reply = probe.attributes[s.OI_OUTPUT_VALUE]
    confidence = parse_confidence(reply)
    if confidence is None:
        assert root.attributes[s.ATLAS_PROBE_STATUS] == s.PROBE_UNPARSED
        assert s.ATLAS_PROBE_CONFIDENCE not in root.attributes
    else:
        assert root.attributes[s.ATLAS_PROBE_CONFIDENCE] == pytest.approx(confidence)


def _capped(chat):
    async def capped(messages, **kwargs):
        kwargs["max_tokens"] = min(kwargs.get("max_tokens", 16), 16)
        return await chat(messages, **kwargs)

    return capped
