"""atlas optimize with scripted models: the loop stops at its budget, an adopted config loads
into supervise and changes what the teacher is sent, the held-out split refuses a candidate
that is worse there, and an interrupted run resumes without paying twice."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

import atlas_middleware as atlas
from atlas_middleware.models import ScriptedModel
from atlas_middleware.optimize import OptimizeSettings, optimize
from atlas_middleware.prompts import DEFAULT_PROMPTS, load_prompts
from tests.optimize import world


def settings(out: Path, **changes) -> OptimizeSettings:
    return OptimizeSettings(out=out, judges=["accuracy"], **changes)


def run(out: Path, tasks=None, *, student=None, reflection=None, **changes):
    return optimize(
        tasks or world.tasks(),
        settings(out, **changes),
        student=student or world.student(),
        teacher=world.teacher(),
        reflection=reflection or world.reflection(),
    )


def test_the_loop_runs_to_its_call_budget_and_stops(tmp_path):
    # A reflection that never helps keeps GEPA proposing (and paying) until the budget ends.
    result = run(tmp_path, reflection=world.reflection(helpful=False), max_calls=70)

    assert result.stop_reason.startswith("model-call budget")
    assert result.ledger.calls <= 70
    # It stopped only because the next iteration (parent and child on a minibatch of 2, one
    # reflection) plus the held-out check of 2 tasks could no longer be paid for.
    per_rollout = result.ledger.max_rollout_calls
    assert result.ledger.calls + (2 * 2 * per_rollout + 1) + 2 * per_rollout > 70
    assert len(result.iterations) >= 2
    usage = result.ledger.roles
    assert usage["student"].calls and usage["teacher"].calls and usage["reflection"].calls
    assert usage["teacher"].input_tokens > 0
    assert not result.adopted
    # The trajectory, the Pareto front and the summary are written; the table counts calls.
    for name in ("trajectory.md", "trajectory.png", "pareto.yaml", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "trajectory.md").read_text()
    assert f"model calls {result.ledger.calls}" in report
    last = result.iterations[-1]
    assert last["calls"] <= result.ledger.calls
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["usage"]["total"]["calls"] == result.ledger.calls
    # Nothing better was found: the active config is the starting prompts, still loadable.
    assert load_prompts(tmp_path).same_texts(DEFAULT_PROMPTS)


def test_an_adopted_config_loads_into_supervise_and_changes_the_teachers_prompt(
    tmp_path, monkeypatch
):
    result = run(tmp_path, max_calls=150)

    assert result.adopted, result.reason
    assert result.candidate_heldout == 1.0 and result.baseline_heldout == 0.0
    assert result.best_val == 1.0 and result.seed_val == 0.0
    versioned = load_prompts(tmp_path / "prompts-v1.yaml")
    assert versioned.guidance == world.HINT_PROMPT
    assert versioned.version == 1 and versioned.metadata.parent == 0
    assert versioned.metadata.heldout_score == 1.0
    assert load_prompts(tmp_path).same_texts(versioned)  # active.yaml is that version
    front = yaml.safe_load((tmp_path / "pareto.yaml").read_text())
    assert front["front"][0]["prompts"]["guidance"] == world.HINT_PROMPT

    # supervise(prompts=DIR) sends the optimised guidance prompt to the teacher model.
    teacher = ScriptedModel(replies=["Add them."], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, lane="coach", prompts=tmp_path)
    def solve(task: str) -> str:
        return "5"

    solve("What is 2 + 3?")
    assert teacher.calls[0][0] == {"role": "system", "content": world.HINT_PROMPT}

    # ... and so does the config, through ATLAS_TEACHER__PROMPTS.
    monkeypatch.setenv("ATLAS_TEACHER__PROMPTS", str(tmp_path))
    teacher = ScriptedModel(replies=["Add them."], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, lane="coach")
    def solve_too(task: str) -> str:
        return "5"

    solve_too("What is 2 + 3?")
    assert teacher.calls[0][0]["content"] == world.HINT_PROMPT


def test_the_heldout_split_refuses_a_candidate_that_is_worse_there(tmp_path):
    # The HINT candidate is perfect on validation but wrong on every held-out (trap) task.
    tasks = world.tasks(traps=world.heldout_ids())
    result = run(tmp_path, tasks, max_calls=150)

    assert result.best_val == 1.0 and result.seed_val == 0.0  # GEPA did find it on validation
    assert not result.adopted
    assert result.candidate_heldout == 0.0 and result.baseline_heldout == 1.0
    assert "0.000 vs 1.000" in result.reason
    active = load_prompts(tmp_path)
    assert active.same_texts(DEFAULT_PROMPTS)  # never written as the active config
    assert not (tmp_path / "prompts-v1.yaml").exists()
    kept = load_prompts(tmp_path / "candidate-v1.yaml")
    assert kept.guidance == world.HINT_PROMPT
    assert kept.metadata.model_extra["adopted"] is False

    # An existing active config is protected the same way on the next run.
    again = run(tmp_path, tasks, max_calls=150)
    assert not again.adopted
    assert load_prompts(tmp_path).same_texts(DEFAULT_PROMPTS)


class Interrupted(BaseException):
    """Stands for Ctrl-C arriving mid-rollout."""


def test_an_interrupted_run_resumes_without_paying_twice(tmp_path):
    reference = run(tmp_path / "whole", max_calls=150)
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        run(out, student=world.student(fail_after=5, error=Interrupted()), max_calls=150)
    state = orjson.loads((out / "run" / "state.json").read_bytes())
    assert state["status"] == "running"
    spent = state["ledger"]["total"]["calls"]
    assert spent > 0

    student, teacher, reflection = world.student(), world.teacher(), world.reflection()
    result = optimize(
        world.tasks(),
        settings(out, max_calls=150),
        student=student,
        teacher=teacher,
        reflection=reflection,
    )
    assert result.resumed and result.adopted
    made_now = len(student.calls) + len(teacher.calls) + len(reflection.calls)
    assert result.ledger.calls == spent + made_now  # one budget across both runs
    # Nothing already paid for ran again: every (candidate, task) was rolled out once (only
    # the rollout cut by the interrupt is redone), and the seed's re-evaluation was free.
    evaluated = (out / "run" / "evals.jsonl").read_bytes().splitlines()
    keys = [orjson.loads(line)["key"] for line in evaluated]
    assert len(keys) == len(set(keys)) == result.ledger.rollouts
    assert result.ledger.cached_rollouts > 0
    assert result.ledger.calls <= reference.ledger.calls + result.ledger.max_rollout_calls
    assert load_prompts(out).guidance == world.HINT_PROMPT

    # A different task file does not silently mix into the unfinished run of another.
    (out / "run" / "state.json").write_bytes(
        orjson.dumps({**state, "status": "running", "fingerprint": "other"})
    )
    from atlas_middleware.optimize import OptimizeError

    with pytest.raises(OptimizeError, match="--fresh"):
        run(out, max_calls=150)


def test_a_prompt_without_feedback_is_not_sent_to_reflection(tmp_path):
    # With the lane forced, the probe never runs: reflecting on it would waste iterations. (The
    # playbook still reaches the forced lane's guidance, so it does get feedback.)
    from atlas_middleware.optimize import RolloutSettings

    result = run(
        tmp_path,
        reflection=world.reflection(helpful=False),
        max_calls=60,
        rollout=RolloutSettings(lane="coach"),
    )
    changed = [c for row in result.iterations for c in row.get("components", [])]
    assert changed and "probe" not in changed
    assert {"guidance", "validate", "playbook"} <= set(changed)


def test_concurrent_rollouts_reach_the_same_result(tmp_path):
    from atlas_middleware.optimize import RolloutSettings

    result = run(tmp_path, max_calls=150, rollout=RolloutSettings(concurrency=3))
    assert result.adopted and result.candidate_heldout == 1.0
    assert load_prompts(tmp_path).guidance == world.HINT_PROMPT
    assert result.ledger.calls <= 150
