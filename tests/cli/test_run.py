"""``atlas run`` through the real CLI against a loopback agent, with an OpenAI-compatible scripted
teacher served by the same loopback server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli
from tests.integrations.agent_server import GUIDANCE, AgentServer

TEMPLATE = '{"input": {"question": "{task}", "hint": "{guidance}"}}'


@pytest.fixture
def server() -> Iterator[AgentServer]:
    with AgentServer() as agent_server:
        yield agent_server


def run(server: AgentServer, store: str, *args: str, check: bool = True):
    return atlas_cli(
        "run",
        "--agent-url",
        server.url + "/agent",
        "--request-template",
        TEMPLATE,
        "--result-path",
        "output.answer",
        "--teacher",
        f"openai-compatible:{server.url}/v1|teacher",
        "--store",
        store,
        *args,
        check=check,
        env={"ATLAS_CONFIG_FILE": "", "ATLAS_RIM__SAMPLES": "1"},
    )


def test_one_task_is_a_supervised_session_with_its_reward(server, store_url):
    proc = run(
        server,
        store_url,
        "--task",
        "What is 12 + 30?",
        "--reference",
        "42",
        "--header",
        "X-Api-Key: k-123",
        "--json",
    )
    [row] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["answer"] == "42"
    assert row["lane"] == "paired"
    assert 0.0 <= row["reward"] <= 1.0
    # The agent ran alone, then again with the teacher's guidance in its request body.
    assert [b["input"]["hint"] for b in server.bodies] == [None, GUIDANCE]
    assert all(h.get("X-Api-Key") == "k-123" for h in server.headers)
    with open_store(store_url) as store:
        session = store.get_session(row["trace_id"])
    assert session.session_id == row["session_id"]
    assert session.final_answer == "42"
    assert session.reward_score == pytest.approx(row["reward"])


def test_a_task_file_prints_one_result_per_task(server, sqlite_url, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"task": "What is 12 + 30?", "reference": "42"})
        + "\n\n"
        + json.dumps({"task": "What is 20 + 22?"})
        + "\n"
    )
    template = tmp_path / "template.json"
    template.write_text(TEMPLATE)
    proc = run(server, sqlite_url, "--tasks", str(tasks), "--lane", "auto", "--no-reward")
    lines = proc.stdout.splitlines()
    assert lines[0] == "[1/2] answer: 41"  # auto lane: the agent alone
    assert lines[1].split()[:2] == ["lane:", "auto"]
    assert lines[2] == "[2/2] answer: 41"
    with open_store(sqlite_url) as store:
        assert len(list(store.iter_sessions())) == 2


def test_errors_are_one_line(server, sqlite_url, tmp_path):
    bad = run(
        server, sqlite_url, "--task", "x", "--request-template", '{"q": "{question}"}', check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("atlas: error: request template has no {task}")
    assert len(bad.stderr.strip().splitlines()) == 1

    missing = run(
        server, sqlite_url, "--task", "x", "--request-template", "@/nonexistent.json", check=False
    )
    assert missing.returncode == 2 and "cannot read the request template file" in missing.stderr

    broken = atlas_cli(
        "run",
        "--agent-url",
        server.url + "/bad-json",
        "--task",
        "x",
        "--lane",
        "auto",
        "--no-reward",
        "--store",
        sqlite_url,
        check=False,
    )
    assert broken.returncode == 1
    assert (
        broken.stderr.strip().splitlines() == [broken.stderr.strip()]
        and "did not answer with JSON" in broken.stderr
    )
    # The failed session is stored all the same, with its error.
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
    assert session.agent_name == "127.0.0.1:" + str(server.port)
