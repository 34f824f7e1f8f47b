"""atlas eval: the comparison table, checked against the sessions it stored."""

from __future__ import annotations

import asyncio

import pytest

from atlas_middleware.evaluate import (
    STUDENT_ALONE,
    WITH_TEACHER,
    Condition,
    load_preferences,
    run_eval,
    run_reward_eval,
    summarise,
    wilson_interval,
)
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.tasks import Task

# Alone, the student gets 8 and 2 right; guided it fixes 5 and breaks 2; 18 always raises.
ANSWERS = {
    "2 + 3": ("Answer: 4", "Answer: 5"),
    "4 + 4": ("Answer: 8", "Answer: 8"),
    "1 + 1": ("Answer: 2", "Answer: 3"),
    "9 + 9": (ModelError("the student crashed"), ModelError("the student crashed")),
}
TASKS = [
    Task(task=f"What is {q}?", reference=str(sum(map(int, q.split(" + ")))), id=f"t{i}")
    for i, q in enumerate(ANSWERS)
]


def student() -> ScriptedModel:
    def respond(messages):
        guided = any("Guidance from your teacher" in m["content"] for m in messages)
        question = messages[-1]["content"].split("\n")[0].removeprefix("What is ").removesuffix("?")
        return ANSWERS[question][guided]

    return ScriptedModel(respond=respond, name="student")


def teacher() -> ScriptedModel:
    def respond(messages):
        if messages[0]["content"].startswith("You check"):
            return "VALID"
        return "Add the two numbers carefully."

    return ScriptedModel(respond=respond, name="teacher")


def test_the_table_matches_what_was_stored(store_url):
    learner, coach = student(), teacher()
    report = asyncio.run(
        run_eval(
            TASKS,
            student=learner,
            conditions=[Condition(STUDENT_ALONE), Condition(WITH_TEACHER, coach, "coach")],
            store_url=store_url,
        )
    )
    alone, guided = report.stats
    assert (alone.correct, alone.tasks, alone.completion) == (2, 4, 0.75)
    assert alone.non_degradation is None
    assert (guided.correct, guided.completion) == (2, 0.75)
    assert guided.non_degradation == pytest.approx(0.75)  # "1 + 1" was broken by the guidance
    assert (guided.ci_low, guided.ci_high) == pytest.approx(wilson_interval(2, 4))

    # Every number in the table can be recomputed from the stored sessions.
    by_id = {t.id: t for t in TASKS}
    with open_store(store_url) as store:
        sessions = {s.trace_id: s for s in store.iter_sessions()}
    assert len(sessions) == 8  # a failed task is a session too
    for outcome in report.outcomes:
        row = sessions[outcome.trace_id]
        assert row.agent_name == f"eval/{outcome.condition}"
        assert row.learning_key == f"eval:{report.run_id}"
        if outcome.completed:
            assert row.final_answer == outcome.answer
            assert by_id[outcome.task_id].is_correct(row.final_answer) == outcome.correct
        else:
            assert row.error_type == "ModelError"
        assert row.lane == ("auto" if outcome.condition == STUDENT_ALONE else "coach")
        known_input = (row.student_input_tokens or 0) + (row.teacher_input_tokens or 0)
        assert outcome.input_tokens == known_input
        if outcome.completed:
            assert row.input_tokens == known_input  # the total, where both parts are known
        else:
            assert row.input_tokens is None  # the failed student's tokens are unknown
            if outcome.condition != STUDENT_ALONE:
                assert row.teacher_input_tokens  # ...its teacher's are not
    total = sum(o.input_tokens + o.output_tokens for o in report.outcomes)
    spent = learner.usage.input_tokens + learner.usage.output_tokens
    spent += coach.usage.input_tokens + coach.usage.output_tokens
    assert total == spent  # every student and teacher token is accounted to a session
    assert guided.mean_tokens > alone.mean_tokens  # the teacher's calls cost tokens
    assert "| student + teacher | 50.0% (2/4)" in report.markdown()


def test_failures_and_timeouts_are_counted_from_the_stored_sessions(
    store_url, tmp_path, monkeypatch
):
    """A teacher whose guidance times out on one task and errors on another: the agent still
    answers (fail open), and the table says how many tasks ran without their teacher. Nothing
    but ``store_url`` is written: not the default ./.atlas store (the playbook's)."""
    from atlas_middleware.models import ModelTimeout

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATLAS_STORE_URL", raising=False)

    def respond(messages):
        if messages[0]["content"].startswith("You check"):
            return "VALID"
        task = messages[-1]["content"]
        if "2 + 3" in task:
            raise ModelTimeout("teacher: no answer within 1s")
        if "4 + 4" in task:
            raise ModelError("teacher: HTTP 500")
        return "Add the two numbers carefully."

    coach = ScriptedModel(respond=respond, name="teacher")
    report = asyncio.run(
        run_eval(
            TASKS,
            student=student(),
            conditions=[Condition(STUDENT_ALONE), Condition(WITH_TEACHER, coach, "coach")],
            store_url=store_url,
            concurrency=3,
        )
    )
    alone, guided = report.stats
    assert (alone.timed_out, alone.failed_open) == (0, 0)
    assert guided.failed_open == 2 and guided.timed_out == 1
    by_task = {o.task_id: o for o in report.outcomes if o.condition == WITH_TEACHER}
    assert by_task["t0"].timed_out and not by_task["t1"].timed_out
    assert any("HTTP 500" in f for f in by_task["t1"].failures)
    assert by_task["t0"].completed and by_task["t1"].completed  # the agent ran on
    assert "| timed out | failed open |" in report.markdown()
    # The probe lane reads the playbook's lessons: from store_url, too.
    asyncio.run(
        run_eval(
            TASKS[:1],
            student=student(),
            conditions=[Condition(WITH_TEACHER, teacher(), None)],
            store_url=store_url,
        )
    )
    assert not (tmp_path / ".atlas").exists()


def test_plot_is_a_png(tmp_path):
    from atlas_middleware.evaluate import EvalReport, TaskOutcome

    outcomes = [
        TaskOutcome(f"t{i}", name, "1", i % 2 == 0, True, None, 0.1)
        for name in (STUDENT_ALONE, WITH_TEACHER)
        for i in range(4)
    ]
    report = EvalReport("r1", outcomes, summarise(outcomes, [STUDENT_ALONE, WITH_TEACHER]))
    path = report.plot(tmp_path / "eval.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wilson_interval_is_honest_at_the_edges():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.31
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.75
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high)


def test_reward_eval_counts_wins_ties_and_misses(tmp_path):
    prefs = load_preferences("arithmetic", limit=6)
    # References decide accuracy through the verifier: chosen is right, rejected wrong.
    judge = ScriptedModel(replies=["not used"], name="judge")
    rim = RIMReward(judge, judges=["accuracy"], samples=1)
    report = asyncio.run(run_reward_eval(prefs, rim))
    assert report.count("right") == 6 and report.accuracy == 1.0
    assert judge.calls == []  # the verifier decided; no model call was needed

    path = tmp_path / "prefs.jsonl"
    path.write_text(
        '{"prompt": "p", "chosen": "same", "rejected": "same", "reference": "same"}\n'
        '{"prompt": "2+2?", "chosen": "5", "rejected": "4", "reference": "4"}\n'
    )
    report = asyncio.run(run_reward_eval(load_preferences(path), rim))
    assert [p.verdict for p in report.pairs] == ["tie", "wrong"]
    assert report.accuracy == 0.0
    assert "| 2 | 0.0% |" in report.markdown()


def group_judge(prefer) -> ScriptedModel:
    """A judge model in RIM's group mode: ``prefer(first, second)`` says which answer (1 or 2)
    it scores higher."""
    import json
    import re

    def respond(messages):
        text = messages[-1]["content"]
        first, second = (
            re.search(f"<answer_{i}>\n(.*?)\n</answer_{i}>", text, re.S).group(1) for i in (1, 2)
        )
        better = prefer(first, second)
        scores = [0.9, 0.1] if better == 1 else [0.1, 0.9]
        return json.dumps(
            {
                "principles": [{"name": "correct result", "weight": 1.0}],
                "scores": [
                    {"answer": i + 1, "score": s, "rationale": "r"} for i, s in enumerate(scores)
                ],
                "uncertainty": 0.05,
            }
        )

    return ScriptedModel(respond=respond, name="judge")


def last_number(text: str) -> int:
    import re

    return int(re.findall(r"-?\d+", text)[-1])


def test_without_references_the_judge_models_decide_and_the_count_follows_their_verdicts():
    prefs = load_preferences("arithmetic", limit=20)
    assert all(p.reference is not None for p in prefs)  # withheld below, not missing
    # A judge that prefers the larger final number: right exactly where chosen's is larger.
    judge = group_judge(lambda a, b: 1 if last_number(a) > last_number(b) else 2)
    rim = RIMReward(judge, judges=["accuracy"], samples=1)
    report = asyncio.run(run_reward_eval(prefs, rim, use_references=False))

    expected = [last_number(p.chosen) > last_number(p.rejected) for p in prefs]
    assert [p.verdict == "right" for p in report.pairs] == expected
    assert 0 < sum(expected) < len(prefs)  # the judge is right on some pairs, wrong on others
    assert report.accuracy == sum(expected) / len(prefs)
    assert report.interval() == wilson_interval(sum(expected), len(prefs))
    assert len(judge.calls) == len(prefs) and all(p.model_calls == 1 for p in report.pairs)
    assert not any("reference_answer" in m["content"] for call in judge.calls for m in call)
    summary = report.to_dict()
    assert (summary["n"], summary["right"], summary["references"]) == (20, sum(expected), False)

    # A judge that always prefers the first answer it sees is right only where chosen came
    # first: the order alternates by pair, so position bias cannot pass for accuracy.
    biased = RIMReward(group_judge(lambda a, b: 1), judges=["accuracy"], samples=1)
    report = asyncio.run(run_reward_eval(prefs, biased, use_references=False))
    shown_first = [p.chosen_first for p in report.pairs]
    assert [p.verdict == "right" for p in report.pairs] == shown_first
    assert 0 < sum(shown_first) < len(prefs)


def test_rewarded_sessions_teach_the_playbook_and_a_condition_brings_its_own_prompts(store_url):
    """With a reward, each session is scored by its reference (validation stays the teacher's)
    and the learning key's playbook learns a lesson from it; a condition's prompts (here a
    standing playbook) reach the teacher and the student."""
    from atlas_middleware.playbook import Playbook
    from atlas_middleware.prompts import DEFAULT_PROMPTS
    from atlas_middleware.rim.judges import reference_match

    seen: list[str] = []

    def respond(messages):
        seen.append(messages[-1]["content"])
        if messages[0]["content"].startswith("You check"):
            return "VALID"
        if "lesson" in messages[0]["content"].lower():
            return "Check the sum twice."
        return "Add the two numbers carefully."

    coach = ScriptedModel(respond=respond, name="teacher")
    tasks = TASKS[:3]  # the crashing task has no answer to reward
    reward = RIMReward(coach, judges=["accuracy"], samples=1, verifiers=[reference_match])
    asyncio.run(
        run_eval(
            tasks,
            student=student(),
            conditions=[Condition(WITH_TEACHER, coach, "coach")],
            store_url=store_url,
            reward=reward,
            learning_key="lessons",
        )
    )
    with open_store(store_url) as store:
        sessions = list(store.iter_sessions())
        assert Playbook(store, "lessons").lessons() == ["Check the sum twice."]
    # Rewarded by the reference: "2 + 3" and "4 + 4" guided are right, "1 + 1" guided is wrong.
    scores = {s.task: s.reward_score for s in sessions}
    assert scores == {"What is 2 + 3?": 1.0, "What is 4 + 4?": 1.0, "What is 1 + 1?": 0.0}
    # The teacher validated every answer itself: VALID, though "1 + 1" was wrong.
    assert all(s.lane == "coach" for s in sessions)

    seen.clear()
    standing = DEFAULT_PROMPTS.with_components({"playbook": "Carry the tens."})
    asyncio.run(
        run_eval(
            tasks[:1],
            student=student(),
            conditions=[Condition(WITH_TEACHER, coach, "coach", prompts=standing)],
            store_url=store_url,
        )
    )
    assert any("Carry the tens." in text for text in seen)  # the teacher's guidance prompt


def test_a_lesson_that_states_an_answer_is_not_kept(store_url):
    """A lesson is shown to the student on every later task: one that states an answer is a
    leak (the base 135M teacher's lessons were mostly "The answer is 16."), so it is refused."""
    from atlas_middleware.playbook import Playbook

    def teacher_says(lesson: str):
        return ScriptedModel(respond=lambda messages: lesson, name="teacher")

    async def learn(lesson: str) -> str | None:
        with open_store(store_url) as store:
            return await Playbook(store, "k").learn(
                teacher_says(lesson), task="What is 2 + 3?", answer="4", reward=0.0, trace_id="t"
            )

    assert asyncio.run(learn("The answer is 16. The answer is 16.")) is None
    assert asyncio.run(learn("Add the numbers before you subtract.")) == (
        "Add the numbers before you subtract."
    )
    with open_store(store_url) as store:
        assert Playbook(store, "k").lessons() == ["Add the numbers before you subtract."]
