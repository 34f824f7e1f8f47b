"""examples/langchain runs offline: it starts its own `atlas serve-model` (the embedded SmolLM2),
and a coached, rewarded session lands in the store with the chain's spans and the guidance in the
model's input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import free_port, plain_messages

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_langchain_example_runs(embedded_cache, tmp_path):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/langchain/main.py"),
            *("--tasks", "1", "--max-tokens", "8", "--guidance-tokens", "24"),
            *("--port", str(free_port()), "--store", store),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        cwd=tmp_path,
        env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache), "OPENAI_API_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(reference 42)" in proc.stdout
    with open_store(store) as st:
        [session] = list(st.iter_sessions())
        spans = st.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "langchain-example" and session.lane == "coach"
    assert session.guidance and session.reward_score is not None
    [root] = [x for x in spans if x.name == "invoke_agent langchain-example"]
    [sequence] = [x for x in spans if x.name == "chain RunnableSequence"]
    assert sequence.parent_span_id == root.span_id
    steps = {x.name for x in spans if x.parent_span_id == sequence.span_id}
    assert {"chain ChatPromptTemplate", "chain with_guidance", "chain final_number"} <= steps
    [chat] = [
        x
        for x in spans
        if x.name.startswith("chat smollm2") and x.parent_span_id == sequence.span_id
    ]
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    system = plain_messages(chat.attributes[s.GEN_AI_INPUT_MESSAGES])[0]
    assert system["role"] == "system" and session.guidance in system["content"]
    assert any(x.name == "evaluate atlas.rim" and x.parent_span_id == root.span_id for x in spans)
