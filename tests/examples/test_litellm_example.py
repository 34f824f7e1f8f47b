"""examples/litellm against `atlas serve-model` (its --base-url path): a coached, rewarded session
in the store, the direct litellm call as one chat span under the session root with the guidance
in its messages, and atlas's own litellm calls (teacher, judge) without a second span."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import plain_messages

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_litellm_example_runs(model_server, tmp_path):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    name = httpx.get(f"{model_server}/v1/models", timeout=30).json()["data"][0]["id"]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/litellm/main.py"),
            *("--base-url", f"{model_server}/v1", "--tasks", "1", "--max-tokens", "8"),
            *("--guidance-tokens", "24", "--store", store),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        cwd=tmp_path,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(reference 42)" in proc.stdout
    with open_store(store) as st:
        [session] = list(st.iter_sessions())
        spans = st.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "litellm-example" and session.lane == "coach"
    assert session.guidance and session.reward_score is not None
    [root] = [x for x in spans if x.name == "invoke_agent litellm-example"]
    # The student's direct call: one span (the callback's), under the root, guidance included.
    [chat] = [x for x in spans if x.name == f"chat {name}"]
    assert chat.parent_span_id == root.span_id
    assert chat.attributes[s.GEN_AI_PROVIDER_NAME] == "openai"
    assert chat.attributes[s.GEN_AI_USAGE_INPUT_TOKENS] > 0
    system = plain_messages(chat.attributes[s.GEN_AI_INPUT_MESSAGES])[0]
    assert system["role"] == "system" and session.guidance in system["content"]
    # Teacher and judge calls go through atlas's LiteLLMModel: its spans, no callback duplicates.
    assert any(x.name == f"chat openai/{name}" and x.parent_span_id == root.span_id for x in spans)
    assert any(x.name == "evaluate atlas.rim" and x.parent_span_id == root.span_id for x in spans)
