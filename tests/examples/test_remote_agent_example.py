"""examples/remote_agent runs offline: its own HTTP agent on loopback (the embedded SmolLM2),
supervised through supervise_remote, a rewarded session in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store
from tests.helpers import free_port

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


def test_the_remote_agent_example_runs(embedded_cache, tmp_path):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/remote_agent/main.py"),
            *("--tasks", "1", "--max-tokens", "16", "--port", str(free_port()), "--store", store),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "(reference 42)" in proc.stdout and "atlas run --agent-url" in proc.stdout
    with open_store(store) as s:
        [session] = list(s.iter_sessions())
        spans = s.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "remote-example"
    assert session.reward_score is not None
    names = [span.name for span in spans]
    assert "POST" in names and "evaluate atlas.rim" in names
