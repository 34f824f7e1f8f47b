"""The recipe's leak check and statistics (no model)."""

from __future__ import annotations

import pytest

from atlas_middleware.learning import (
    Example,
    balance_verdicts,
    hint_examples,
    leaks,
    paired_difference,
    states_an_answer,
)
from atlas_middleware.tasks import word_problems

TASK = "Ana has 70 apples and gives 27 away. How many apples does Ana have left?"


@pytest.mark.parametrize(
    ("guidance", "leaked"),
    [
        ("Compute 70 - 27.", False),  # the operation, not the result
        ("Subtract what Ana gave away from what she had.", False),
        ("70 - 27 = 43", True),  # the right answer
        ("70 - 27 = 53", True),  # a wrong answer stated is a leak too
        ("The answer is 41.", True),
        ("Answer: 97", True),
        ("So you get 43 apples.", True),
        ("The difference is 12", True),
        ("Ana keeps 43.", True),  # the reference as a number
    ],
)
def test_any_stated_answer_is_a_leak(guidance, leaked):
    assert leaks(guidance, "43", TASK) is leaked


def test_numbers_of_the_task_are_not_a_leak():
    assert not states_an_answer("Take the 27 apples away from the 70.")
    # The reference shown by the task itself cannot be leaked by repeating it.
    assert not leaks("Start from 70.", "70", "Ana has 70 apples. How many does she have?")


def test_generator_hints_never_leak():
    for task in word_problems("train", 300, seed=0):
        assert not leaks(task.metadata["hint"], task.reference, task.task), task


def test_paired_difference_and_mcnemar():
    a = [False] * 90 + [True] * 10
    b = [True] * 20 + [False] * 70 + [True] * 10
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.20)
    assert d["gained"] == 20 and d["lost"] == 0
    assert 0.1 < d["ci_low"] < 0.2 < d["ci_high"] < 0.3
    assert d["mcnemar_p"] < 1e-5
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])


def test_verdicts_are_balanced_and_hints_become_demonstrations():
    examples = [Example("validate", f"t{i}", "VALID", "verdict", "1") for i in range(10)]
    examples += [Example("validate", f"u{i}", "INVALID: no", "verdict", "2") for i in range(90)]
    kept = balance_verdicts(examples)
    assert sum(e.target == "VALID" for e in kept) == 10
    assert sum(e.target != "VALID" for e in kept) == 10
    demos = hint_examples(word_problems("train", 5, seed=0))
    assert [d.target for d in demos] == [t.metadata["hint"] for t in word_problems("train", 5)]
    assert demos[0].messages()[-1] == {"role": "assistant", "content": demos[0].target}


def _result(correct: dict[str, list[bool]]) -> dict:
    stats = []
    outcomes = []
    for condition, marks in correct.items():
        n = len(marks)
        stats.append(
            {
                "condition": condition,
                "tasks": n,
                "accuracy": sum(marks) / n,
                "ci_low": 0.0,
                "ci_high": 1.0,
            }
        )
        outcomes += [
            {"task_id": f"t{i}", "condition": condition, "correct": m} for i, m in enumerate(marks)
        ]
    agreement = {"agreement": 0.9, "valid_on_right": 0.5, "invalid_on_wrong": 1.0, "balanced": 0.75}
    return {
        "stats": stats,
        "outcomes": outcomes,
        "markdown": "| table |",
        "seconds": 10.0,
        "tasks_per_second": 1.0,
        "validation": {
            "student + trained teacher": {
                "verdict": dict(agreement, agreement=0.2),
                "compute": agreement,
            }
        },
    }


def test_the_summary_has_the_test_split_public_set_and_curve(tmp_path):
    import json

    from atlas_middleware.cli.learn import _plot, _summary

    alone = [False] * 8 + [True] * 2
    trained = [True] * 6 + [False] * 2 + [True] * 2
    (tmp_path / "eval.json").write_text(
        json.dumps(
            _result(
                {"student": alone, "student + teacher": alone, "student + trained teacher": trained}
            )
        )
    )
    (tmp_path / "public.json").write_text(
        json.dumps(
            dict(
                _result({"student": alone, "student + trained teacher": alone}),
                source="svamp.jsonl",
            )
        )
    )
    (tmp_path / "curve.json").write_text(
        json.dumps(
            [
                {"minutes": 0.0, "accuracy": 0.2, "tasks": 10},
                {"minutes": 5.0, "accuracy": 0.8, "tasks": 10, "epoch": 1},
            ]
        )
    )
    text = _summary(tmp_path)
    assert (
        text.index("## Test split")
        < text.index("## Public word problems (svamp.jsonl)")
        < text.index("## Learning curve")
    )
    # The paired difference on the same tasks: +6 of 10 fixed, none lost.
    assert "| student + trained teacher vs student | +60.0% |" in text
    assert "| student + trained teacher vs student + teacher | +60.0% |" in text
    assert "| student + trained teacher | compute | 90.0% | 50.0% | 100.0% | 75.0% |" in text
    assert "| student + trained teacher | verdict | 20.0% |" in text
    assert "| 5.0 | SFT epoch 1 | 80.0% | 10 |" in text
    _plot(tmp_path)
    assert (tmp_path / "learning.png").stat().st_size > 1000


def test_the_grpo_stage_is_paired_with_the_warm_up_and_joins_the_curve(tmp_path):
    import json

    from atlas_middleware.cli.learn import GRPO_CONDITION, _plot, _summary

    alone = [False] * 8 + [True] * 2
    trained = [True] * 6 + [False] * 2 + [True] * 2
    grpo = [True] * 4 + [False] * 4 + [True] * 2  # 2 fewer than the warm-up adapter
    (tmp_path / "eval.json").write_text(
        json.dumps(_result({"student": alone, "student + trained teacher": trained}))
    )
    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "task": "x"}) + "\n" for i in range(10))
    )
    (tmp_path / "curve.json").write_text(
        json.dumps(
            [
                {"minutes": 0.0, "accuracy": 0.2, "tasks": 4},
                {"minutes": 5.0, "accuracy": 1.0, "tasks": 4, "epoch": 1},
            ]
        )
    )
    (tmp_path / "grpo.json").write_text(
        json.dumps(
            dict(
                _result({GRPO_CONDITION: grpo}),
                steps=30,
                student="vllm",
                sft_seconds=300.0,
                grpo_seconds=600.0,
                eval_seconds=50.0,
            )
        )
    )
    text = _summary(tmp_path)
    assert "## GRPO from the warm-up adapter" in text and "30 GRPO steps (vllm student)" in text
    assert f"| {GRPO_CONDITION} vs student | +40.0% |" in text and "| 100% |" in text
    assert f"| {GRPO_CONDITION} vs student + trained teacher | -20.0% |" in text
    # The curve's GRPO point: the first 4 test tasks (all right), at SFT + GRPO minutes.
    assert "| 15.0 | + GRPO (30 steps) | 100.0% | 4 |" in text
    _plot(tmp_path)
    assert (tmp_path / "learning-curve.png").stat().st_size > 1000
    assert (tmp_path / "learning-curve.png").stat().st_size > 1000
