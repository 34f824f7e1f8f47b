"""`atlas optimize` on the command line: bad input gives one line naming what to fix; tasks come
from a file or from a learning key's stored sessions; the wall-time budget stops a run."""

from __future__ import annotations

import pytest

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.cli import main
from atlas_middleware.models import ScriptedModel
from atlas_middleware.optimize import OptimizeSettings, TaskError, optimize, tasks_from_store
from atlas_middleware.prompts import DEFAULT_PROMPTS, load_prompts
from tests.optimize import world


@pytest.fixture
def error_of(capsys):
    def run(*args: str) -> tuple[int, str]:
        try:
            code = main(["optimize", *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err  # one line, never a traceback
        return code, lines[0]

    return run


def test_bad_input_is_one_line_naming_the_fix(tmp_path, error_of):
    code, line = error_of("--tasks", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path))
    assert code == 2 and "nope.jsonl does not exist" in line and "arithmetic" in line

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "What is 1 + 1?", "reference": "2"}\n{"reference": "3"}\n')
    code, line = error_of("--tasks", str(bad), "--out", str(tmp_path))
    assert code == 2 and "bad.jsonl line 2: 'task' must be a non-empty string" in line

    few = tmp_path / "few.jsonl"
    few.write_text('{"task": "a"}\n{"task": "b"}\n')
    code, line = error_of("--tasks", str(few), "--out", str(tmp_path))
    assert code == 2 and "need at least 3 tasks" in line

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text("".join(f'{{"task": "t{i}", "verifier": "nosuch"}}\n' for i in range(3)))
    code, line = error_of("--tasks", str(unknown), "--out", str(tmp_path))
    assert code == 2 and "verifier 'nosuch'" in line and "reference_match" in line

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "task": "x"}\n{"id": "a", "task": "y"}\n{"task": "z"}\n')
    code, line = error_of("--tasks", str(dup), "--out", str(tmp_path))
    assert code == 2 and "task id 'a' appears twice" in line

    code, line = error_of("--from", "sqlite:///x.db", "--out", str(tmp_path))
    assert code == 2 and "--from needs --learning-key" in line

    code, line = error_of("--tasks", str(few), "--max-time", "soon")
    assert code == 2 and "expected a duration" in line

    (tmp_path / "active.yaml").write_text("probe: ''\n")
    good = tmp_path / "good.jsonl"
    good.write_text("".join(f'{{"task": "t{i}"}}\n' for i in range(3)))
    code, line = error_of("--tasks", str(good), "--out", str(tmp_path))
    assert code == 2 and "active.yaml: probe: must not be empty" in line


def test_tasks_come_from_a_learning_keys_stored_sessions(_isolated):
    telemetry.configure(exporter="atlas", store=_isolated, service_name="t")
    teacher = ScriptedModel(replies=["0.95"], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, learning_key="math")
    def solve(task: str) -> str:
        return "5"

    for task in ("What is 2 + 3?", "What is 1 + 4?", "What is 2 + 3?"):
        solve(task)
    telemetry.shutdown()

    tasks = tasks_from_store(_isolated, "math")
    assert [t.task for t in tasks] == ["What is 2 + 3?", "What is 1 + 4?"]  # distinct, newest first
    assert all(t.reference is None for t in tasks)
    with pytest.raises(TaskError, match="no stored sessions with a task for learning key 'other'"):
        tasks_from_store(_isolated, "other")


def test_the_time_budget_stops_the_run_and_keeps_the_active_prompts(tmp_path):
    result = optimize(
        world.tasks(),
        OptimizeSettings(out=tmp_path, judges=["accuracy"], max_calls=None, max_time_s=1e-6),
        student=world.student(),
        teacher=world.teacher(),
        reflection=world.reflection(),
    )
    assert result.stop_reason.startswith("time budget")
    assert result.ledger.calls == 0 and not result.adopted
    assert load_prompts(tmp_path).same_texts(DEFAULT_PROMPTS)


def test_the_time_budget_can_run_out_mid_run(tmp_path):
    # Without a time limit, the call budget pays for a number of iterations (a reflection that
    # never helps keeps GEPA proposing until the budget ends; enough tasks that its minibatches,
    # and so its prompts, keep changing) ...
    tasks = world.tasks(20)
    planned = optimize(
        tasks,
        OptimizeSettings(out=tmp_path / "calls", judges=["accuracy"], max_calls=300),
        student=world.student(),
        teacher=world.teacher(),
        reflection=world.reflection(helpful=False),
    )
    assert planned.stop_reason.startswith("model-call budget")
    assert len(planned.iterations) >= 6, planned.stop_reason

    # ... and with models slow enough that the wall-time budget ends first, the run stops
    # between iterations, for the time budget, with the same call budget left unspent.
    slow = 0.1  # seconds per model call
    result = optimize(
        tasks,
        OptimizeSettings(out=tmp_path / "time", judges=["accuracy"], max_calls=300, max_time_s=14),
        student=world.student(delay_s=slow),
        teacher=world.teacher(delay_s=slow),
        reflection=world.reflection(helpful=False, delay_s=slow),
    )
    assert result.stop_reason.startswith("time budget"), result.stop_reason
    assert 1 <= len(result.iterations) < len(planned.iterations)
    assert result.ledger.calls < planned.ledger.calls
    assert result.baseline_heldout is not None and not result.adopted
    assert load_prompts(tmp_path / "time").same_texts(DEFAULT_PROMPTS)
