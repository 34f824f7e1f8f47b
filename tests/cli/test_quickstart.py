"""`atlas quickstart` in reduced size: the README's main command, end to end on the embedded model."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from atlas_middleware.config import AtlasConfig
from atlas_middleware.models.embedded import EMBEDDED_NAME, TEACHER_NAME
from atlas_middleware.prompts import DEFAULT_PROMPTS
from atlas_middleware.storage import open_store
from atlas_middleware.tasks import load_tasks
from atlas_middleware.teacher import parse_confidence
from atlas_middleware.telemetry.genai import message_text
from atlas_middleware.telemetry.schema import (
    ATLAS_FAILURES,
    ATLAS_RETRIES,
    ATLAS_SPAN_ROLE,
    ATLAS_VALIDATION_SOURCE,
    ATLAS_VALIDATION_VALID,
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OUTPUT_MESSAGES,
    ROLE_SESSION,
)


def _messages(span, key: str) -> list[dict]:
    return orjson.loads(span.attributes.get(key) or "[]")


def _teacher_calls(spans, system: str) -> list[tuple[str, str]]:
    """(prompt, reply) of every chat call whose system prompt is ``system``."""
    calls = []
    for span in spans:
        sent = _messages(span, GEN_AI_INPUT_MESSAGES) if span.name.startswith("chat ") else []
        if sent and message_text(sent[0]) == system:
            reply = "".join(message_text(m) for m in _messages(span, GEN_AI_OUTPUT_MESSAGES))
            calls.append((message_text(sent[-1]), reply))
    return calls


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
    # The closing line compares the student alone with the supervised runs on the same tasks.
    import re

    [(_alone, supervised)] = re.findall(
        r"the student alone (\d)/3 \(\d+%\), supervised (\d)/3", proc.stdout
    )
    assert f"{supervised}/3 correct" in proc.stdout
    # Only atlas's own output: no third-party progress bar tearing the table.
    assert "Loading weights" not in proc.stdout + proc.stderr
    # The next steps it prints work as printed, from where the user ran it, with the PATH
    # they have (the venv not activated).
    printed = proc.stdout.split("Next:", 1)[1].splitlines()
    [listing] = [line.split("#")[0].strip() for line in printed if " sessions list " in line]
    [showing] = [line.split("#")[0].strip() for line in printed if " sessions show " in line]
    shell_env = {**os.environ, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    for command in (listing, showing):
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, cwd=tmp_path, env=shell_env
        )
        assert done.returncode == 0, (command, done.stderr)
    assert (
        "quickstart-calculator"
        in subprocess.run(
            listing, shell=True, capture_output=True, text=True, cwd=tmp_path, env=shell_env
        ).stdout
    )

    tasks = {t.task: t for t in load_tasks("arithmetic", limit=3)}
    with open_store(store) as s:
        sessions = list(s.iter_sessions())
        spans = s.spans_for([x.trace_id for x in sessions])
    assert len(sessions) == 3
    assert {x.task for x in sessions} == set(tasks)
    assert {x.lane for x in sessions} == {"auto", "paired", "coach"}
    lanes = AtlasConfig().lanes
    forced = 0
    for session in sessions:
        tree = spans[session.trace_id]
        [root] = [x for x in tree if x.attributes.get(ATLAS_SPAN_ROLE) == ROLE_SESSION]
        assert session.agent_name == "quickstart-calculator"
        assert session.learning_key == "arithmetic"
        assert session.reward_score is not None
        judges = session.evaluations["atlas.rim"]["payload"]["judges"]
        assert set(judges) == {"accuracy", "helpfulness"}
        # Accuracy is the reference check on the graph's extracted answer.
        right = tasks[session.task].is_correct(session.final_answer)
        assert judges["accuracy"]["score"] == (1.0 if right else 0.0)
        names = [x.name for x in tree]
        assert "node solve" in names and "node extract" in names
        # The student is the raw embedded model, the teacher the shipped trained one.
        assert f"chat {EMBEDDED_NAME}" in names and f"chat {TEACHER_NAME}" in names
        assert (session.input_tokens or 0) > 0

        # The teacher probed every task, whatever lane the rotation forced: the stored
        # confidence is what its reply said (or the failure to say one is recorded).
        [(_, reply)] = _teacher_calls(tree, DEFAULT_PROMPTS.probe)
        assert session.probe_confidence == parse_confidence(reply)
        if session.probe_confidence is None:
            assert "probe: no confidence in the teacher's reply" in root.attributes[ATLAS_FAILURES]
        forced += lanes.lane_for(session.probe_confidence) != session.lane

        # Validation is the teacher's own in the paired and coach lanes; none in auto. The
        # shipped trained teacher validates by computing the calculation its guidance names
        # (its verdict prompt only when a guidance names none); the span records the verdict.
        checks = _teacher_calls(tree, DEFAULT_PROMPTS.validate_)
        retries = int(root.attributes.get(ATLAS_RETRIES) or 0)
        valid = root.attributes.get(ATLAS_VALIDATION_VALID)
        source = root.attributes.get(ATLAS_VALIDATION_SOURCE)
        if session.lane == "auto":
            assert checks == [] and retries == 0 and names.count("node solve") == 1
            assert valid is None and source is None
            continue
        assert source in ("teacher-compute", "teacher") and isinstance(valid, bool)
        if source == "teacher":
            [(prompt, verdict)] = checks
            assert prompt.startswith("Task:\n" + session.task)
            assert valid == verdict.strip().upper().startswith("VALID")
        else:
            assert checks == []  # computed: no verdict prompt asked
        # The table's check column is the stored verdict.
        assert ("invalid" if not valid else "valid") in proc.stdout
        if session.lane == "paired":
            # The guided retry ran exactly when the teacher said INVALID.
            invalid = not valid
            assert retries == int(invalid)
            assert names.count("node solve") == 1 + int(invalid)
            if invalid:
                assert session.guidance
        if session.lane == "coach":
            assert session.guidance
            guided = [
                x
                for x in tree
                if x.name.startswith("chat ")
                and any(
                    session.guidance in message_text(message)
                    for message in _messages(x, GEN_AI_INPUT_MESSAGES)
                )
            ]
            assert guided, "the coach's guidance never reached the student's model call"
    assert "probed 3/3 tasks" in proc.stdout
    assert ("(forced)" in proc.stdout) == (forced > 0)
    if forced:
        assert f"the rotation forced {forced} lanes" in proc.stdout


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
    # It continued from the shipped trained teacher, and validates as it does.
    card = orjson.loads((final / "atlas-teacher.json").read_bytes())
    assert card["validation"] == "compute" and card["continued"]["recipe"] == "grpo"
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
