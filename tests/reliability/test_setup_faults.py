"""Whatever fails in atlas's own set-up (the store, the exporter, the config, the teacher, the
prompts), a supervised function runs and returns or raises exactly what it would have; the
failure is logged once, counted, and listed on the session span when spans can be exported.

Each case runs in a fresh interpreter: set-up happens once per process, on the first call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json, sys
import atlas_middleware as atlas
from atlas_middleware.models import ScriptedModel

teacher = sys.argv[1] if sys.argv[1] != "scripted" else ScriptedModel(replies=["0.95"], name="t")
made = []

class AgentError(Exception):
    pass

@atlas.supervise(agent="setup", teacher=teacher, reward=False)
def solve(task):
    if task == "raise":
        raise AgentError("the agent's own failure")
    made.append({"task": task, "n": len(made)})
    return made[-1]

@atlas.supervise(agent="setup-async", teacher=teacher, reward=False)
async def asolve(task):
    made.append({"task": task, "n": len(made)})
    return made[-1]

out = []
for task in ("a", "b"):
    result = solve(task)
    out.append(result is made[-1] and result)
    result = asyncio.run(asolve(task))
    out.append(result is made[-1] and result)
try:
    solve("raise")
except AgentError as exc:
    out.append("raised " + str(exc))
atlas.shutdown(2)
print("RESULT " + json.dumps({"out": out, "setup_failures": atlas.supervision_stats().setup_failures}))
"""

EXPECTED = [
    {"task": "a", "n": 0},
    {"task": "a", "n": 1},
    {"task": "b", "n": 2},
    {"task": "b", "n": 3},
    "raised the agent's own failure",
]


def _read_only_dir() -> Path:
    """A working directory nobody may write to (as root, chmod does not stop writes: /sys)."""
    path = Path(tempfile.mkdtemp(prefix="atlas-ro-"))
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        return Path("/sys")
    return path


def _run(env: dict, teacher: str = "scripted", cwd: Path | None = None) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, teacher],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :]), proc.stderr


CASES = {
    "store path that cannot exist": ({"ATLAS_STORE_URL": "sqlite:////proc/nope/a.db"}, "store"),
    "read-only working directory": ({}, "store"),
    "empty OTEL_TRACES_EXPORTER": ({"OTEL_TRACES_EXPORTER": ""}, None),
    "unknown OTEL_TRACES_EXPORTER": ({"OTEL_TRACES_EXPORTER": "zipkin"}, "tracing"),
    "invalid config": ({"ATLAS_LANES__AUTO_THRESHOLD": "7"}, "config"),
    "missing prompts file": ({"ATLAS_TEACHER__PROMPTS": "/nope/prompts.yaml"}, "prompts"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_agent_runs_whatever_fails_in_set_up(case, tmp_path):
    env, stage = CASES[case]
    cwd = _read_only_dir() if case == "read-only working directory" else tmp_path
    result, log = _run(env, cwd=cwd)
    assert result["out"] == EXPECTED, log
    assert "Traceback" not in log, log
    lines = [ln for ln in log.splitlines() if "atlas: set-up" in ln]
    if stage is None:  # nothing failed: an empty variable means "not set" (OTel convention)
        assert result["setup_failures"] == 0 and not lines, log
        return
    # One line per kind, not one per call or per supervised function.
    assert len(lines) == 1, log
    assert f"set-up: {stage}" in lines[0]
    assert result["setup_failures"] >= 1


def test_a_teacher_that_cannot_be_built_is_recorded_on_the_session_span(tmp_path):
    """The store works, the teacher does not: the agent runs unsupervised (auto lane) and each
    session span says why."""
    result, log = _run(
        {"ATLAS_TELEMETRY__EXPORTER": "jsonl"}, teacher="hf:/nope/no-such-model", cwd=tmp_path
    )
    assert result["out"] == EXPECTED, log
    assert result["setup_failures"] == 2  # one per supervised function
    spans = [json.loads(x) for x in (tmp_path / ".atlas" / "spans.jsonl").read_text().splitlines()]
    roots = [sp for sp in spans if sp["name"].startswith("invoke_agent")]
    assert len(roots) == 5
    for root in roots:
        assert root["attributes"]["atlas.lane"] == "auto"
        [failure] = [f for f in root["attributes"]["atlas.failures"] if f.startswith("set-up")]
        assert "teacher" in failure and "/nope/no-such-model" in failure
