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
