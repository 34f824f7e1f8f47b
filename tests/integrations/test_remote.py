"""Remote agents: a real HTTP agent on loopback, called sync and async, supervised with a scripted
teacher: templates, result paths, retries on 503, clear errors, spans and the stored session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from atlas_middleware.integrations.remote import (
    RemoteAgent,
    RemoteAgentError,
    retry_after,
    supervise_remote,
)

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import free_port
from tests.integrations.agent_server import GUIDANCE, VERDICT, AgentServer, teacher_reply

TEMPLATE = '{"input": {"question": "{task}", "hint": "{guidance}"}, "stream": false}'


@pytest.fixture
def server() -> Iterator[AgentServer]:
    with AgentServer() as agent_server:
        yield agent_server


def teacher() -> ScriptedModel:
    return ScriptedModel(respond=teacher_reply, name="teacher")


def test_the_template_carries_any_text_safely_as_json():
    agent = RemoteAgent("http://127.0.0.1:9/x", request_template=TEMPLATE)
    task = 'Say "hi" {twice}\n\\ then stop'
    body = agent.body(task, None)
    assert body == {"input": {"question": task, "hint": None}, "stream": False}
    # Inside longer strings the text is spliced in; bare placeholders are values too.
    mixed = RemoteAgent(
        "http://127.0.0.1:9/x", request_template='{"p": "Q: {task} / {guidance}", "t": {task}}'
    )
    assert mixed.body('a "b"', "g") == {"p": 'Q: a "b" / g', "t": 'a "b"'}
    assert mixed.body("a", None)["p"] == "Q: a / "
    assert RemoteAgent("http://127.0.0.1:9/x").body("t", "g") == {"task": "t", "guidance": "g"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"request_template": '{"q": "{task}"'}, "not valid JSON"),
        ({"request_template": '{"q": "{question}"}'}, "no {task} placeholder"),
        ({"result_path": "output..answer"}, "empty step"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_configuration_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        RemoteAgent("http://127.0.0.1:9/x", **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not an http"):
        RemoteAgent("ftp://example/agent")


def test_supervised_sync_call_retries_with_guidance_and_lands_in_the_store(server, store_url):
    telemetry.configure(exporter="atlas", store=store_url, batch=False)
    judge = RIMReward(
        ScriptedModel(replies=[VERDICT], name="judge"), judges=["accuracy"], samples=1
    )
    solve = atlas.supervise(
        RemoteAgent(server.url + "/agent", request_template=TEMPLATE, result_path="output.answer"),
        agent="remote-solver",
        teacher=teacher(),
        reward=judge,
        reward_inline=True,
        reference="42",
    )
    assert solve("What is 12 + 30?") == "42"
    # The first request went alone, the retry carried the teacher's guidance in the body.
    assert [b["input"]["hint"] for b in server.bodies] == [None, GUIDANCE]
    assert all(b["input"]["question"] == "What is 12 + 30?" for b in server.bodies)
    telemetry.shutdown()

    with open_store(store_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
    assert session.agent_name == "remote-solver"
    assert session.lane == "paired"
    assert session.final_answer == "42"
    assert session.guidance == GUIDANCE
    assert session.reward_score == pytest.approx(1.0)
    [root] = [x for x in spans if x.name == "invoke_agent remote-solver"]
    posts = [x for x in spans if x.name == "POST"]
    assert len(posts) == 2 and all(p.parent_span_id == root.span_id for p in posts)
    assert all(p.attributes[s.HTTP_RESPONSE_STATUS_CODE] == 200 for p in posts)
    assert posts[0].attributes[s.URL_FULL] == server.url + "/agent"
    # The agent was told which trace it serves (W3C traceparent), so its own spans can join.
    assert all(session.trace_id in h["traceparent"] for h in server.headers)


def test_async_call_retries_503_then_answers(server, memory):
    agent = RemoteAgent(server.url + "/flaky", result_path="output.answer", retries=2)
    solve = atlas.supervise(agent.acall, agent="flaky", lane="auto", reward=False)
    assert asyncio.run(solve("What is 12 + 30?")) == "41"
    assert len(server.bodies) == 2
    posts = [x for x in memory.get_finished_spans() if x.name == "POST"]
    assert [p.attributes[s.HTTP_RESPONSE_STATUS_CODE] for p in posts] == [503, 200]
    assert posts[1].attributes[s.HTTP_REQUEST_RESEND_COUNT] == 1
    [root] = [x for x in memory.get_finished_spans() if x.name == "invoke_agent flaky"]
    assert {p.parent.span_id for p in posts} == {root.context.span_id}


def test_retries_run_out_and_client_errors_are_not_retried(server):
    agent = RemoteAgent(server.url + "/flaky", retries=1, backoff_s=0.01)
    server.failures = 5
    with pytest.raises(RemoteAgentError, match=r"answered 503.*gave up after 2 attempts"):
        agent("t")
    refuse = RemoteAgent(server.url + "/refuse", retries=3)
    before = len(server.bodies)
    with pytest.raises(RemoteAgentError, match="answered 400: 'task too long'"):
        refuse("t")
    assert len(server.bodies) == before + 1
    down = RemoteAgent(f"http://127.0.0.1:{free_port()}/agent", retries=1, backoff_s=0.01)
    with pytest.raises(RemoteAgentError, match="cannot reach the agent"):
        asyncio.run(down.acall("t"))


def test_bad_json_and_bad_paths_are_clear_one_line_errors(server):
    with pytest.raises(RemoteAgentError, match="did not answer with JSON") as info:
        RemoteAgent(server.url + "/bad-json")("t")
    assert "\n" not in str(info.value)
    wrong = RemoteAgent(server.url + "/agent", result_path="output.text")
    with pytest.raises(RemoteAgentError, match=r"no key 'text' at output \(keys there: answer\)"):
        wrong("t")
    deep = RemoteAgent(server.url + "/agent", result_path="output.answer.0")
    with pytest.raises(RemoteAgentError, match=r"cannot take '0' at output\.answer"):
        deep("t")
    # No path: the first answer-like key wins.
    assert json.loads(RemoteAgent(server.url + "/agent")("t")) == {"answer": "41"}


def test_failures_fail_open_and_the_agents_error_propagates(server, memory):
    broken = ScriptedModel(replies=[ModelError("teacher down")], name="teacher")
    solve = supervise_remote(
        server.url + "/agent",
        request_template=TEMPLATE,
        result_path="output.answer",
        agent="remote",
        teacher=broken,
        reward=False,
    )
    assert solve("What is 12 + 30?") == "41"  # the agent's own answer, unguided
    assert asyncio.run(solve.acall("What is 12 + 30?")) == "41"
    roots = [x for x in memory.get_finished_spans() if x.name == "invoke_agent remote"]
    assert len(roots) == 2
    assert all(any(f.startswith("probe:") for f in r.attributes[s.ATLAS_FAILURES]) for r in roots)

    bad = supervise_remote(server.url + "/bad-json", agent="bad", lane="auto", reward=False)
    with pytest.raises(RemoteAgentError, match="did not answer with JSON"):
        bad("t")
    [root] = [x for x in memory.get_finished_spans() if x.name == "invoke_agent bad"]
    assert root.attributes[s.ERROR_TYPE] == "RemoteAgentError"


def test_retry_after_reads_seconds_and_dates():
    assert retry_after("2") == 2.0
    assert retry_after("9999") == 60.0  # capped
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after("soon") is None
