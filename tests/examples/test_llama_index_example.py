"""examples/llama_index runs offline with the embedded SmolLM2 and stores a rewarded session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


def test_the_llama_index_example_runs(embedded_cache, tmp_path):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/llama_index/main.py"),
            *("--tasks", "1", "--max-tokens", "16", "--store", store),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "(reference 42)" in proc.stdout and "… solving" in proc.stdout
    with open_store(store) as s:
        [session] = list(s.iter_sessions())
        names = {span.name for span in s.spans_for([session.trace_id])[session.trace_id]}
    assert session.agent_name == "llama-index-example"
    assert session.reward_score is not None
    assert {"invoke_workflow Solve", "step solve", "step extract", "evaluate atlas.rim"} <= names
    assert any(name.startswith("chat ") for name in names)
