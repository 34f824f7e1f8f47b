"""`atlas eval` and `atlas eval rewards` through the real CLI, on the embedded SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from atlas_middleware.evaluate import summarise
from atlas_middleware.storage import open_store
from atlas_middleware.tasks import load_tasks
from tests.helpers import atlas_cli


def run_atlas(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "missing.jsonl"], "task file missing.jsonl does not exist"),
        (["eval", "rewards"], "atlas eval rewards needs a preference file"),
        (["eval", "rewards", "missing.jsonl"], "cannot read preference file"),
        (["eval", "arithmetic", "extra"], "unexpected argument 'extra'"),
    ],
)
def test_bad_arguments_get_one_line_errors(tmp_path, args, message):
    proc = atlas_cli(*args, "--store", f"sqlite:///{tmp_path / 'a.db'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.model
@pytest.mark.timeout(900)
def test_eval_on_the_embedded_model_matches_the_store(tmp_path, embedded_cache):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = run_atlas(
        "eval", "arithmetic", "--limit", "1", "--max-tokens", "24", "--json",
        "--store", store, "--out", str(tmp_path / "out"),
        # Generous timeouts: on a busy machine the teacher must not time out (fail open).
        env={"ATLAS_CACHE_DIR": str(embedded_cache), "ATLAS_TEACHER__TIMEOUT_S": "600"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert [s["condition"] for s in report["stats"]] == ["student", "student + teacher"]
    run_id = report["run_id"]
    assert (tmp_path / "out" / f"eval-{run_id}.md").exists()
    assert (tmp_path / "out" / f"eval-{run_id}.png").read_bytes()[:4] == b"\x89PNG"

    # Recompute the table from the stored sessions alone.
    tasks = {t.task: t for t in load_tasks("arithmetic", limit=1)}
    with open_store(store) as s:
        sessions = [x for x in s.iter_sessions() if x.learning_key == f"eval:{run_id}"]
    assert len(sessions) == 2
    from atlas_middleware.evaluate import TaskOutcome

    rebuilt = [
        TaskOutcome(
            task_id=tasks[x.task].id,
            condition=x.agent_name.removeprefix("eval/"),
            answer=x.final_answer,
            correct=bool(tasks[x.task].is_correct(x.final_answer)) if x.final_answer else False,
            completed=bool(x.final_answer and x.final_answer.strip()),
            trace_id=x.trace_id,
            seconds=0.0,
            input_tokens=x.input_tokens or 0,
            output_tokens=x.output_tokens or 0,
        )
        for x in sessions
    ]
    expected = summarise(rebuilt, ["student", "student + teacher"])
    for got, want in zip(report["stats"], expected, strict=True):
        assert got["correct"] == want.correct
        assert got["completion"] == pytest.approx(want.completion)
        assert got["mean_tokens"] == pytest.approx(want.mean_tokens)
    assert {x.lane for x in sessions} == {"auto", "coach"}
    assert report["stats"][1]["mean_tokens"] > report["stats"][0]["mean_tokens"] > 0


@pytest.mark.model
@pytest.mark.timeout(900)
def test_eval_rewards_on_the_embedded_judge(tmp_path, embedded_cache):
    proc = run_atlas(
        "eval", "rewards", "arithmetic", "--limit", "2", "--json", "--out", str(tmp_path),
        env={
            "ATLAS_CACHE_DIR": str(embedded_cache),
            "ATLAS_RIM__JUDGES": '["accuracy", "helpfulness"]',
            "ATLAS_RIM__SAMPLES": "1",
        },
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pairs = orjson.loads(proc.stdout)["pairs"]
    assert len(pairs) == 2
    # The reference decides accuracy (weighted highest), so chosen must win whatever the small
    # judge says about helpfulness.
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert list(tmp_path.glob("rewards-*.md"))
