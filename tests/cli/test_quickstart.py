"""`atlas quickstart` in reduced size: the README's main command, end to end on the embedded model."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from atlas_middleware.storage import open_store
from atlas_middleware.tasks import load_tasks
from atlas_middleware.telemetry.schema import GEN_AI_INPUT_MESSAGES


@pytest.mark.model
@pytest.mark.timeout(1200)
def test_quickstart_stores_rewarded_sessions_in_every_lane(tmp_path, embedded_cache):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", "quickstart", "--tasks", "3",
         "--max-tokens", "24", "--store", store],
        capture_output=True, text=True, timeout=1100, cwd=tmp_path,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache), "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "supervised sessions" in proc.stdout and "correct" in proc.stdout

    tasks = {t.task: t for t in load_tasks("arithmetic", limit=3)}
    with open_store(store) as s:
        sessions = list(s.iter_sessions())
        spans = s.spans_for([x.trace_id for x in sessions])
    assert len(sessions) == 3
    assert {x.task for x in sessions} == set(tasks)
    assert {x.lane for x in sessions} == {"auto", "paired", "coach"}
    for session in sessions:
        assert session.agent_name == "quickstart-calculator"
        assert session.learning_key == "arithmetic"
        assert session.reward_score is not None
        judges = session.evaluations["atlas.rim"]["payload"]["judges"]
        assert set(judges) == {"accuracy", "helpfulness"}
        # Accuracy is the reference check on the graph's extracted answer.
        right = tasks[session.task].is_correct(session.final_answer)
        assert judges["accuracy"]["score"] == (1.0 if right else 0.0)
        names = [x.name for x in spans[session.trace_id]]
        assert "node solve" in names and "node extract" in names
        assert any(n.startswith("chat smollm2") for n in names)
        assert (session.input_tokens or 0) > 0
        if session.lane == "coach":
            assert session.guidance
            guided = [
                x
                for x in spans[session.trace_id]
                if x.name.startswith("chat ")
                and any(
                    session.guidance in message["content"]
                    for message in orjson.loads(x.attributes.get(GEN_AI_INPUT_MESSAGES, "[]"))
                )
            ]
            assert guided, "the coach's guidance never reached the student's model call"


@pytest.mark.model
@pytest.mark.timeout(1800)
def test_quickstart_train_closes_the_loop(tmp_path, embedded_cache):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", "quickstart", "--tasks", "1",
         "--max-tokens", "16", "--train", "--train-steps", "1", "--out", str(out),
         "--store", store],
        capture_output=True, text=True, timeout=1700, cwd=tmp_path,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache), "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "teacher-grpo" / "final"
    assert (final / "config.json").exists()
    with open_store(store) as s:
        sessions = list(s.iter_sessions())
        runs = s.training_runs()
    quickstart = [x for x in sessions if x.agent_name == "quickstart-calculator"]
    assert [x.review_status for x in quickstart] == ["approved"]
    [run] = runs  # the training run records which sessions trained which checkpoint
    assert run["recipe"] == "grpo" and run["sessions"] == 1
    assert run["checkpoint"].endswith("final")
    evaluated = {x.agent_name for x in sessions if x.agent_name.startswith("quickstart-eval/")}
    assert evaluated == {
        "quickstart-eval/student",
        "quickstart-eval/student + teacher",
        "quickstart-eval/student + trained teacher",
    }
    table = (out / "eval.md").read_text()
    assert "| student + trained teacher |" in table
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
