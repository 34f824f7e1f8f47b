"""Reading judge replies."""

from __future__ import annotations

import pytest

from atlas_middleware.rim.parsing import (
    extract_json_object,
    parse_group_judgement,
    parse_judgement,
    read_principles,
    read_unit,
)


@pytest.mark.parametrize(
    ("reply", "expected", "status"),
    [
        ('{"score": 0.5}', {"score": 0.5}, "ok"),
        ('prefix {"score": 0.5} suffix {"score": 0.9}', {"score": 0.5}, "ok"),
        (
            '```json\n{"score": 0.5, "nested": {"a": [1, 2]}}\n```',
            {"score": 0.5, "nested": {"a": [1, 2]}},
            "ok",
        ),
        (
            '{"score": 0.5, "r": "a } and { in text"}',
            {"score": 0.5, "r": "a } and { in text"},
            "ok",
        ),
        ('{"score": 0.5,}', {"score": 0.5}, "repaired"),
        ("{'score': 0.5, 'r': 'it\\'s'}", {"score": 0.5, "r": "it's"}, "repaired"),
        (
            "{score: 0.5, ok: True, none: None}",
            {"score": 0.5, "ok": True, "none": None},
            "repaired",
        ),
        ('{"r": "line one\nline two", "score": 1}', {"r": "line one\nline two", "score": 1}, "ok"),
        ("no braces here", None, "no_json"),
        ("{ unbalanced", None, "invalid_json"),
    ],
)
def test_extract_json_object(reply: str, expected: dict | None, status: str) -> None:
    assert extract_json_object(reply) == (expected, status)


def test_extract_skips_objects_the_caller_rejects() -> None:
    reply = 'Format: {"example": true}. Mine: {"score": 0.4}'
    assert extract_json_object(reply, accept=lambda o: "score" in o) == ({"score": 0.4}, "ok")


def test_extract_is_bounded_on_hostile_input() -> None:
    assert extract_json_object("{" * 100_000)[0] is None
    assert extract_json_object('{"a": ' * 5000 + "1" + "}" * 5000)[0] is None  # too deep


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.3, (0.3, False)),
        (1, (1.0, False)),
        ("0.25", (0.25, False)),
        ("80%", (0.8, False)),
        (3, (1.0, True)),
        (-1, (0.0, True)),
        (True, (None, False)),
        (None, (None, False)),
        ("high", (None, False)),
        (float("nan"), (None, False)),
        ([0.5], (None, False)),
    ],
)
def test_read_unit(value: object, expected: tuple) -> None:
    assert read_unit(value) == expected


def test_principles_are_normalised_and_junk_dropped() -> None:
    principles = read_principles(
        [{"name": "a", "weight": 0.2}, {"principle": "b", "weight": 0.6}, {"weight": 1}, 7, "c"]
    )
    assert [p.name for p in principles] == ["a", "b", "c"]
    assert [p.weight for p in principles] == [0.2, 0.6, None]  # not all weighted: left alone
    weighted = read_principles([{"name": "a", "weight": 1}, {"name": "b", "weight": 3}])
    assert [p.weight for p in weighted] == [0.25, 0.75]
    assert read_principles("not a list") == []


def test_parse_judgement_statuses() -> None:
    assert parse_judgement('{"verdict": "good"}').status == "no_score"
    assert parse_judgement('{"score": "n/a"}').status == "no_score"
    parsed = parse_judgement('{"score": 0.5, "rationale": ["a", "b"], "uncertainty": "20%"}')
    assert parsed.usable and parsed.rationales == ["a b"] and parsed.uncertainty == 0.2


def test_parse_group_judgement_shapes() -> None:
    objects = parse_group_judgement(
        '{"scores": [{"answer": 2, "score": 0.1}, {"answer": "answer 1", "score": 0.9}]}', 2
    )
    assert objects.scores == [0.9, 0.1]
    assert parse_group_judgement('{"scores": [0.3, 0.4, 0.5]}', 2).scores == [0.3, 0.4]
    assert parse_group_judgement('{"scores": {"1": 0.2, "2": {"score": 0.6}}}', 2).scores == [
        0.2,
        0.6,
    ]
    missing = parse_group_judgement('{"scores": [{"answer": 9, "score": 0.2}]}', 2)
    assert missing.scores == [None, None] and missing.status == "no_score" and not missing.usable
    assert parse_group_judgement("garbage", 3).scores == [None, None, None]
