"""What Arize Phoenix shows of a supervised session (issue 12, finding 8): a real Phoenix server
(``.venv-phoenix``, built by ``scripts/bootstrap.sh phoenix``) receives a LangChain agent's
supervised session over OTLP/HTTP, and its REST API reports each span's kind, model, token
counts and messages as atlas emitted them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atlas_middleware import telemetry
from atlas_middleware.telemetry import schema as s
from tests.helpers import free_port
from tests.integrations.contract_shapes import GUIDANCE, TASK, Endpoint, langchain_bind_tools
from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI
from tests.integrations.test_contract import scripted_reply, supervision

pytestmark = [pytest.mark.phoenix, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


def _phoenix() -> str:
    explicit = os.environ.get("ATLAS_PHOENIX_BIN")
    command = Path(explicit) if explicit else ROOT / ".venv-phoenix" / "bin" / "phoenix"
    if not command.exists():
        pytest.fail(f"Phoenix is not installed at {command}: run scripts/bootstrap.sh phoenix")
    return str(command)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Phoenix server on free loopback ports, its data in a temporary folder."""
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = free_port(), free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    with open(work / "phoenix.log", "w") as log:
        proc = subprocess.Popen(
            [_phoenix(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"phoenix exited: {(work / 'phoenix.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("phoenix did not come up within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spans(url: str, trace_id: str, expected: int) -> list[dict]:
    """The trace's spans as Phoenix's REST API returns them (Phoenix queues what it receives:
    poll until they have landed)."""
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{url}/v1/projects/default/spans", params={"limit": 1000}, timeout=10)
        response.raise_for_status()
        found = [x for x in response.json()["data"] if x["context"]["trace_id"] == trace_id]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_phoenix_shows_kinds_models_tokens_and_messages(phoenix):
    telemetry.configure(
        exporter="otlp", endpoint=phoenix, service_name="phoenix-check", batch=False
    )
    with ScriptedOpenAI(scripted_reply) as server:
        outcome = langchain_bind_tools(Endpoint(server.url, MODEL, True), supervision())
    telemetry.shutdown()
    [(answer, session, error)] = outcome.runs
    assert error is None and "42" in answer

    spans = _spans(phoenix, session.trace_id, expected=8)
    kinds: dict[str, list[dict]] = {}
    for span in spans:
        kinds.setdefault(span["span_kind"], []).append(span)

    [root] = [x for x in kinds["AGENT"] if x["name"] == "invoke_agent lcel"]
    a = root["attributes"]
    assert a[s.OI_SESSION_ID] == session.session_id
    assert a[s.OI_INPUT_VALUE] == TASK and a[s.OI_OUTPUT_VALUE] == answer

    llm = kinds["LLM"]
    student = [x for x in llm if x["attributes"][s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT]
    teacher = [x for x in llm if x["attributes"][s.ATLAS_SPAN_ROLE] == s.ROLE_TEACHER]
    assert len(student) == 2  # the tool call, then the answer
    assert {x["attributes"][s.ATLAS_TEACHER_STEP] for x in teacher} >= {"probe", "guidance"}
    for span in llm:
        a = span["attributes"]
        assert a[s.OI_LLM_MODEL_NAME] in (MODEL, "scripted-teacher")
        assert a[s.OI_LLM_TOKEN_COUNT_PROMPT] > 0 and a[s.OI_LLM_TOKEN_COUNT_COMPLETION] > 0
        assert (
            a[s.OI_LLM_TOKEN_COUNT_TOTAL]
            == a[s.OI_LLM_TOKEN_COUNT_PROMPT] + a[s.OI_LLM_TOKEN_COUNT_COMPLETION]
        )
        assert a[f"{s.OI_LLM_INPUT_MESSAGES}.0.{s.OI_MESSAGE_ROLE}"] == "system"
    first, second = sorted(student, key=lambda x: x["start_time"])
    a = first["attributes"]
    assert GUIDANCE in a[f"{s.OI_LLM_INPUT_MESSAGES}.0.{s.OI_MESSAGE_CONTENT}"]
    call = f"{s.OI_LLM_OUTPUT_MESSAGES}.0.{s.OI_MESSAGE_TOOL_CALLS}.0."
    assert a[call + s.OI_TOOL_CALL_FUNCTION_NAME] == "add_numbers"
    assert second["attributes"][f"{s.OI_LLM_OUTPUT_MESSAGES}.0.{s.OI_MESSAGE_CONTENT}"] == answer

    [tool] = kinds["TOOL"]
    assert tool["attributes"][s.OI_TOOL_NAME] == "add_numbers"
    assert tool["attributes"][s.OI_OUTPUT_VALUE] == "42"
    assert any(
        x["attributes"].get(s.oi_evaluation_key(0, "name")) == s.PRIMARY_EVALUATION for x in spans
    )
