"""atlas optimize end to end on the real embedded SmolLM2 (student, teacher and reflection):
the CLI runs to its call budget, writes versioned prompts, and supervise loads them."""

from __future__ import annotations

import orjson
import pytest

import atlas_middleware as atlas
from atlas_middleware.cli import main
from atlas_middleware.models import ScriptedModel
from atlas_middleware.prompts import load_prompts

# Generation on 2 shared CPU cores is slow; the run itself is bounded by its call budget.
pytestmark = [pytest.mark.model, pytest.mark.timeout(1200)]

TASKS = [
    ("a1", "What is 12 + 30? Answer with a number.", "42"),
    ("a2", "What is 7 + 5? Answer with a number.", "12"),
    ("a3", "What is 20 - 8? Answer with a number.", "12"),
    ("a4", "What is 9 + 10? Answer with a number.", "19"),
]


def test_optimize_cli_with_the_embedded_model(tmp_path, embedded_cache, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(embedded_cache))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            orjson.dumps({"id": i, "task": t, "reference": r}).decode() + "\n" for i, t, r in TASKS
        )
    )
    out = tmp_path / "prompts"
    # Tiny on purpose (2 shared cores): coach lane (guidance + validation, no probe), short
    # replies, one task per minibatch, accuracy judged by the reference (no judge model call).
    code = main(
        [
            "optimize", "--tasks", str(tasks), "--out", str(out), "--max-calls", "20",
            "--minibatch", "1", "--lane", "coach", "--judges", "accuracy",
            "--max-tokens", "8", "--teacher-max-tokens", "16", "--reflection-max-tokens", "32",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    usage = summary["usage"]
    assert 0 < usage["total"]["calls"] <= 20  # the budget holds, counted over every role
    assert usage["roles"]["student"]["calls"] and usage["roles"]["teacher"]["calls"]
    assert usage["roles"]["teacher"]["input_tokens"] > 0
    assert summary["baseline_heldout"] is not None
    rows = [
        orjson.loads(line) for line in (out / "run" / "iterations.jsonl").read_bytes().splitlines()
    ]
    if any(row.get("components") for row in rows):  # a prompt was rewritten by the real model
        assert usage["roles"]["reflection"]["calls"] >= 1
    for name in ("active.yaml", "trajectory.md", "trajectory.png", "summary.json"):
        assert (out / name).exists()

    # Whatever became active, supervise loads it and the teacher is sent its guidance prompt.
    active = load_prompts(out)
    teacher = ScriptedModel(replies=["Add the numbers."], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, lane="coach", prompts=out)
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    assert teacher.calls[0][0]["content"] == active.guidance
