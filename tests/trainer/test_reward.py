"""The teaching reward: every branch of the table, leaks, efficiency, and the reward function
against a frozen student (a ScriptedModel behind the same ChatModel interface as real ones)."""

from __future__ import annotations

import math

import pytest
from atlas_middleware.trainer.reward import (
    RewardWeights,
    TeachingReward,
    leaks_reference,
    summarise,
    teaching_reward,
)
from atlas_middleware.trainer.students import ChatModelStudent

from atlas_middleware.models.base import ScriptedModel

W = RewardWeights(
    improvement=1.0, efficiency=0.5, degradation=1.0, leak_penalty=1.0, guidance_budget=100
)


@pytest.mark.parametrize(
    ("baseline", "guided", "branch", "expected"),
    [
        (0.0, 1.0, "fixed", 1.0 + 0.5 * 0.8),  # +1 plus efficiency (20 of 100 tokens)
        (1.0, 1.0, "kept", 0.5 * 0.8),  # efficiency alone
        (1.0, 0.0, "broke", -1.0),  # degradation penalty
        (0.0, 0.0, "neither", 0.0),
        (None, 1.0, "unscored", 0.0),
        (0.0, None, "unscored", 0.0),
    ],
)
def test_graded_branches(baseline, guided, branch, expected):
    outcome = teaching_reward(baseline, guided, guidance_tokens=20, weights=W)
    assert outcome.branch == branch
    assert outcome.reward == pytest.approx(expected)
    assert not outcome.leaked


def test_threshold_decides_right_and_wrong():
    w = RewardWeights(threshold=0.7, guidance_budget=100)
    assert teaching_reward(0.6, 0.7, guidance_tokens=0, weights=w).branch == "fixed"
    assert teaching_reward(0.7, 0.69, guidance_tokens=0, weights=w).branch == "broke"


def test_longer_guidance_earns_less_and_nothing_past_the_budget():
    rewards = [
        teaching_reward(0.0, 1.0, guidance_tokens=n, weights=W).reward for n in (0, 50, 100, 400)
    ]
    assert rewards == pytest.approx([1.5, 1.25, 1.0, 1.0])
    assert teaching_reward(1.0, 1.0, guidance_tokens=400, weights=W).reward == 0.0


@pytest.mark.parametrize(
    ("baseline", "guided", "expected"),
    [(0.0, 1.0, -1.0), (1.0, 1.0, -1.0), (1.0, 0.0, -2.0), (0.0, 0.0, -1.0)],
)
def test_a_leak_is_never_better_than_an_honest_failure(baseline, guided, expected):
    outcome = teaching_reward(baseline, guided, guidance_tokens=5, leaked=True, weights=W)
    assert outcome.leaked and outcome.branch.endswith(", leak")
    assert outcome.reward == pytest.approx(expected)
    assert outcome.efficiency == 0.0


def test_leak_penalty_zero_switches_the_check_off():
    w = RewardWeights(leak_penalty=0.0, guidance_budget=100)
    outcome = teaching_reward(0.0, 1.0, guidance_tokens=0, leaked=True, weights=w)
    assert outcome.reward == pytest.approx(1.5) and not outcome.leaked


@pytest.mark.parametrize(
    ("baseline", "guided", "branch", "expected"),
    [
        (0.2, 0.8, "fixed", 0.6 + 0.5),  # RIM: improvement × delta + efficiency
        (0.8, 0.8, "kept", 0.5),
        (0.3, 0.3, "neither", 0.0),
        (0.9, 0.4, "broke", -0.5),  # degradation × delta
    ],
)
def test_rim_scores_count_as_deltas(baseline, guided, branch, expected):
    outcome = teaching_reward(baseline, guided, guidance_tokens=0, graded=False, weights=W)
    assert outcome.branch == branch
    assert outcome.reward == pytest.approx(expected)


@pytest.mark.parametrize(
    ("guidance", "reference", "task", "leaks"),
    [
        ("The answer is 42.", "42", "What is 40 + 2?", True),
        ("It comes to 42.0 in total", "42", "What is 40 + 2?", True),
        ("Add 40 and 2.", "42", "What is 40 + 2?", False),
        ("Write 142 then drop the 1", "42", "What is 40 + 2?", False),
        ("Start from 42 and subtract 2", "42", "You have 42 apples and eat 2.", False),
        ("Remember 1,250 is the total", "1250", "Sum the invoices.", True),
        ("The capital is Paris.", "Paris", "What is the capital of France?", True),
        ("Think of the city of lights.", "Paris", "What is the capital of France?", False),
        ("Pick A.", "A", "Choose A or B.", False),
        ("anything", None, "task", False),
    ],
)
def test_leak_detection(guidance, reference, task, leaks):
    assert leaks_reference(guidance, reference, task) is leaks


@pytest.mark.parametrize(
    "bad",
    [
        {"improvement": -1},
        {"efficiency": math.nan},
        {"degradation": math.inf},
        {"guidance_budget": 0},
        {"threshold": 0},
    ],
)
def test_weights_are_validated(bad):
    with pytest.raises(ValueError, match="reward\\."):
        RewardWeights(**bad)


def _student():
    """Answers right only when the guidance in its prompt says to add (numbers in the task)."""

    def respond(messages):
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        task = messages[-1]["content"]
        a, b = [int(x) for x in task.replace("?", "").split() if x.isdigit()]
        if "right-alone" in task:
            return str(a + b) if "confuse" not in system else str(a - b)
        return str(a + b) if "add" in system.lower() else str(a - b)

    model = ScriptedModel(respond=respond)
    return model, ChatModelStudent(model, max_tokens=16)


def test_teaching_reward_asks_the_student_and_caches_the_baseline():
    model, student = _student()
    reward = TeachingReward(student, W)
    tasks = ["What is 3 + 4?", "What is 3 + 4?", "right-alone 5 + 6?", "right-alone 5 + 6?"]
    guidance = ["Add them.", "Multiply them.", "Add them.", "Let me confuse you."]
    metrics = {}
    out = reward(
        prompts=[[]] * 4,
        completions=[[{"role": "assistant", "content": g}] for g in guidance],
        completion_ids=[[1] * 10] * 4,
        task=tasks,
        reference=["7", "7", "11", "11"],
        log_metric=lambda name, value: metrics.setdefault(name, value),
    )
    eff = 0.5 * (1 - 10 / 100)
    assert out == pytest.approx([1 + eff, 0.0, eff, -1.0])
    # 2 distinct baselines + 4 guided answers.
    assert len(model.calls) == 6
    # The guidance reached the student's prompt the way it does at run time.
    guided_prompts = [c for c in model.calls if any("Multiply them." in m["content"] for m in c)]
    assert len(guided_prompts) == 1
    assert guided_prompts[0][0]["role"] == "system"
    assert "Guidance from your teacher" in guided_prompts[0][0]["content"]
    # A second step on the same tasks asks only for the guided answers.
    reward(
        prompts=[[]] * 2,
        completions=["Add them.", "Add them."],
        task=tasks[:2],
        reference=["7", "7"],
    )
    assert len(model.calls) == 8
    assert metrics["teaching/baseline_accuracy"] == pytest.approx(0.5)
    assert metrics["teaching/guided_accuracy"] == pytest.approx(0.5)
    assert metrics["teaching/accuracy_delta"] == pytest.approx(0.0)
    assert metrics["teaching/non_degradation"] == pytest.approx(0.5)
    assert metrics["teaching/reward_mean"] == pytest.approx(sum(out) / 4)
    assert reward.history[-1].accuracy_delta == pytest.approx(1.0)


def test_a_leaking_candidate_is_penalised_even_when_the_student_gets_it_right():
    _, student = _student()
    reward = TeachingReward(student, W)
    out = reward(
        prompts=[[]] * 2,
        completions=["Add them: it is 7.", "Add them."],
        task=["What is 3 + 4?"] * 2,
        reference=["7", "7"],
    )
    assert out[0] == pytest.approx(-1.0)
    assert out[1] > 1.0
    assert reward.history[-1].leak_rate == pytest.approx(0.5)


def test_a_failing_student_call_scores_as_a_wrong_answer_not_a_crash():
    from atlas_middleware.models.base import ModelError

    model = ScriptedModel(replies=["7", ModelError("boom")])
    reward = TeachingReward(ChatModelStudent(model), W)
    out = reward(prompts=[[]], completions=["Add them."], task=["What is 3 + 4?"], reference=["7"])
    assert out == [-1.0]  # right alone, the guided call failed: counted as broken


def test_custom_verifier_decides():
    _, student = _student()
    reward = TeachingReward(student, W, verifier=lambda task, answer, ref: answer.strip() == "-1")
    out = reward(prompts=[[]], completions=["Add."], task=["What is 3 + 4?"], reference=[None])
    assert out == [-1.0]  # "-1" alone was right by this verifier, "7" with guidance is not


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_rejected_counted_and_give_no_signal(bad):
    _, student = _student()
    # The verifier breaks on the guided answer "7" (3 + 4 with the 'add' guidance) only.
    verifier = lambda task, answer, ref: bad if answer.strip() == "7" else answer.strip() == "-1"  # noqa: E731
    reward = TeachingReward(student, W, verifier=verifier)
    metrics = {}
    out = reward(
        prompts=[[]] * 2,
        completions=["Add them.", "Subtract them."],
        task=["What is 3 + 4?"] * 2,
        reference=[None, None],
        log_metric=lambda name, value: metrics.setdefault(name, value),
    )
    assert all(math.isfinite(r) for r in out)
    assert out[0] == 0.0  # rejected → unscored: no reward either way
    assert out[1] == pytest.approx(0.5 * (1 - 2 / 100))  # "-1" alone and guided: kept
    assert reward.rejected_scores == 1 and reward.history[-1].rejected_scores == 1
    assert metrics["teaching/rejected_scores"] == 1.0
    assert metrics["teaching/unscored_rate"] == pytest.approx(0.5)
    assert reward.history[-1].branches == {"unscored": 1, "kept": 1}
    # The next call counts afresh; the run total keeps growing.
    reward(prompts=[[]], completions=["Add."], task=["What is 3 + 4?"], reference=[None])
    assert reward.history[-1].rejected_scores == 1 and reward.rejected_scores == 2


def test_summarise_counts_non_degradation_over_baseline_right_only():
    outcomes = [
        teaching_reward(1.0, 1.0, guidance_tokens=0, weights=W),
        teaching_reward(1.0, 0.0, guidance_tokens=0, weights=W),
        teaching_reward(0.0, 0.0, guidance_tokens=0, weights=W),
        teaching_reward(None, 0.0, guidance_tokens=0, weights=W),
    ]
    m = summarise(outcomes)
    assert m.non_degradation == pytest.approx(0.5)
    assert m.baseline_accuracy == pytest.approx(2 / 3)
    assert m.branches == {"kept": 1, "broke": 1, "neither": 1, "unscored": 1}


def test_without_a_reference_rim_scores_stand_in():
    """A real RIMReward (its judge a scripted model) scores both answers; the delta counts."""
    import json

    from atlas_middleware.rim import RIMReward

    def judge(messages):
        text = "\n".join(m["content"] for m in messages)
        score = 0.9 if "<response>\n7\n</response>" in text else 0.1
        return json.dumps(
            {
                "principles": [{"name": "correct", "weight": 1.0}],
                "score": score,
                "rationale": "checked",
                "uncertainty": 0.05,
            }
        )

    _, student = _student()
    rim = RIMReward(ScriptedModel(respond=judge), samples=1, temperatures=(0.2,))
    reward = TeachingReward(student, W, rim=rim)
    [value] = reward(prompts=[[]], completions=["Add."], task=["What is 3 + 4?"], reference=[None])
    assert value > 0.5  # the guided answer "7" scored above the baseline "-1"
    assert reward.history[-1].branches == {"fixed": 1}


def test_verifier_names(tmp_path):
    from atlas_middleware.trainer.recipes import RecipeError
    from atlas_middleware.trainer.run import load_verifier

    from atlas_middleware.rim.judges import exact_match

    assert load_verifier(None) is None and load_verifier("reference_match") is None
    assert load_verifier("exact_match") is exact_match
    assert load_verifier("os.path:isabs") is __import__("os").path.isabs
    for bad in ("nope", "os.path:nothing_here", "no_such_module_x:f"):
        with pytest.raises(RecipeError, match=r"reward\.verifier"):
            load_verifier(bad)


def test_the_baseline_cache_is_bounded_and_a_clear_loses_no_score():
    model, student = _student()
    reward = TeachingReward(student, W, cache_size=2)
    first = ["What is 1 + 2?", "What is 2 + 3?"]
    reward(prompts=[[]] * 2, completions=["Add."] * 2, task=first, reference=["3", "5"])
    assert len(model.calls) == 4  # two baselines and two guided answers, in one batch
    # A new task overflows the cache: it is cleared, yet this call's known baselines still count.
    tasks = [*first, "What is 4 + 4?"]
    out = reward(prompts=[[]] * 3, completions=["Add."] * 3, task=tasks, reference=["3", "5", "8"])
    assert reward.history[-1].branches == {"fixed": 3}
    assert all(r > 1.0 for r in out)
    assert len(reward._baselines) <= 2
    assert len(model.calls) == 4 + 1 + 3


def test_guidance_stating_any_result_is_a_leak_right_or_wrong():
    """Stating a result does the student's work even when it is wrong (3 + 4 = 8 is not the
    reference, and the student still gets it right because the guidance says add): the reward
    penalises it like stating the reference, and honest guidance is not penalised."""
    _, student = _student()
    reward = TeachingReward(student, W)
    out = reward(
        prompts=[[]] * 2,
        completions=["Add them: 3 + 4 = 8.", "Add them."],
        completion_ids=[[1] * 10] * 2,
        task=["What is 3 + 4?", "What is 3 + 4?"],
        reference=["7", "7"],
    )
    eff = 0.5 * (1 - 10 / 100)
    assert out == pytest.approx([0.0 - W.leak_penalty, 1 + eff])
    assert reward.history[-1].leak_rate == pytest.approx(0.5)
