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
