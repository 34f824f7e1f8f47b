"""A handle on each session and scores from outside it (issue 12, finding 10): the session id
inside and after the call, ``atlas.feedback`` by handle, session id or trace id, in-process and
through a real atlas-collector; a reward no judge could score says why; ``atlas.shutdown()``
says what it dropped; a reward scheduled as the process exits is judged, not lost."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.rim import RIMReward
from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.helpers import Collector

TEACHER = ScriptedModel(replies=["Confidence: 0.95"], name="teacher")


@pytest.fixture(autouse=True)
def _fresh_tracing():
    yield
    telemetry.shutdown()


def stored(url: str, key: str, *, wait_for: str | None = None, timeout: float = 20.0):
    """The session row ``key`` (id or trace id), once it has the evaluation ``wait_for``."""
    deadline = time.monotonic() + timeout
    while True:
        with open_store(url) as store:
            row = store.get_session(key)
        if row is not None and (wait_for is None or wait_for in row.evaluations):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"session {key} (with {wait_for}) never landed: {row}")
        time.sleep(0.1)


def test_the_session_is_reachable_inside_and_after_the_call(private_store):
    seen = []

    @atlas.supervise(agent="calc", teacher=TEACHER, reward=False, lane="auto")
    def solve(task: str) -> str:
        seen.append(atlas.current_session())
        return "42"

    assert atlas.current_session() is None
    assert solve("What is 12 + 30?") == "42"
    [inside] = seen
    assert inside is not None and atlas.last_session() == inside
    assert atlas.current_session() is None  # only inside the call
    assert len(inside.trace_id) == 32 and len(inside.span_id) == 16 and inside.agent == "calc"
    telemetry.shutdown()
    row = stored(private_store, inside.session_id)
    assert row.trace_id == inside.trace_id

    @atlas.supervise(agent="calc", teacher=TEACHER, reward=False, lane="auto")
    async def asolve(task: str) -> str:
        return atlas.current_session().session_id

    async def main() -> tuple[str, str]:
        answer = await asolve("again")
        return answer, atlas.last_session().session_id

    answer, after = asyncio.run(main())
    assert answer == after != inside.session_id
    # A script's asyncio.run(...) runs the call in a task of its own: still its last session.
    seen: list = []

    def script() -> None:
        answer = asyncio.run(asolve("once more"))
        seen.append((answer, atlas.last_session()))

    thread = threading.Thread(target=script)
    thread.start()
    thread.join()
    [(direct, handle)] = seen
    assert handle.session_id == direct not in (after, inside.session_id)


def test_feedback_by_handle_session_id_and_trace_id_is_stored_like_a_reward(store_url, monkeypatch):
    monkeypatch.setenv("ATLAS_STORE_URL", store_url)

    @atlas.supervise(agent="calc", teacher=TEACHER, reward=False, lane="auto")
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    session = atlas.last_session()
    assert atlas.feedback(session, True, name="thumbs", explanation="accepted") == session
    atlas.feedback(session.session_id, 0.25, name="support", label="partial")
    atlas.feedback(session.trace_id, 0.5, name="downstream")
    telemetry.shutdown()
    row = stored(store_url, session.session_id, wait_for="downstream")
    assert row.evaluations["thumbs"]["score"] == 1.0
    assert row.evaluations["thumbs"]["explanation"] == "accepted"
    assert row.evaluations["support"]["label"] == "partial"
    assert row.reward_score == pytest.approx((1.0 + 0.25 + 0.5) / 3)  # no RIM: their mean
    with open_store(store_url) as store:
        spans = store.spans_for([session.trace_id])[session.trace_id]
    evaluations = [x for x in spans if x.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_EVALUATION]
    assert len(evaluations) == 3
    assert {x.parent_span_id for x in evaluations} == {session.span_id}  # under the root


def test_feedback_from_a_process_that_did_not_run_the_session(private_store, monkeypatch):
    @atlas.supervise(agent="calc", teacher=TEACHER, reward=False, lane="auto")
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    session = atlas.last_session()
    telemetry.shutdown()
    stored(private_store, session.session_id)
    supervise_module = sys.modules["atlas_middleware.supervise"]
    monkeypatch.setattr(supervise_module, "_recent", type(supervise_module._recent)())
    handle = atlas.feedback(session.session_id, 0.0, name="thumbs")  # found in the store
    assert (handle.trace_id, handle.span_id) == (session.trace_id, session.span_id)
    telemetry.shutdown()
    assert stored(private_store, session.trace_id, wait_for="thumbs").reward_score == 0.0


def test_feedback_says_what_was_wrong(private_store):
    with pytest.raises(ValueError, match=r"within \[0, 1\], got 1.5"):
        atlas.feedback("0" * 32, 1.5)
    with pytest.raises(ValueError, match="non-empty"):
        atlas.feedback("0" * 32, 1.0, name=" ")
    with pytest.raises(LookupError, match="no session 'nobody'"):
        atlas.feedback("nobody", 1.0)


def test_feedback_through_the_collector_lands_in_its_store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    with Collector(url) as collector:
        telemetry.configure(exporter="otlp", endpoint=collector.http, service_name="fb")

        @atlas.supervise(agent="calc", teacher=TEACHER, reward=False, lane="auto")
        def solve(task: str) -> str:
            return "42"

        solve("What is 12 + 30?")
        session = atlas.last_session()
        atlas.feedback(session, 0.75, name="thumbs")
        telemetry.shutdown()
        row = stored(url, session.session_id, wait_for="thumbs")
    assert row.evaluations["thumbs"]["score"] == 0.75 and row.reward_score == 0.75


def test_a_reward_no_judge_could_score_says_why(private_store):
    down = ScriptedModel(replies=[ModelError("judge model is down")], name="judge")

    @atlas.supervise(
        agent="calc",
        teacher=TEACHER,
        reward=RIMReward(down, judges=["helpfulness"], samples=1),
        reward_inline=True,
        lane="auto",
    )
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    session = atlas.last_session()
    telemetry.shutdown()
    row = stored(private_store, session.session_id, wait_for=s.PRIMARY_EVALUATION)
    entry = row.evaluations[s.PRIMARY_EVALUATION]
    assert row.reward_score is None and "score" not in entry
    assert entry["label"] == s.LABEL_UNSCORED
    assert "judge model is down" in entry["explanation"]


class SlowReward:
    async def evaluate(self, task, answer, reference=None, *, verifier=None):
        await asyncio.sleep(30)


def test_shutdown_says_which_pending_rewards_it_dropped(caplog):
    @atlas.supervise(agent="calc", teacher=TEACHER, reward=SlowReward(), lane="auto")
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    with caplog.at_level(logging.WARNING, logger="atlas"):
        started = time.monotonic()
        atlas.shutdown(timeout_s=1.0)
    assert time.monotonic() - started < 10
    [message] = [r.getMessage() for r in caplog.records if "pending" in r.getMessage()]
    assert "atlas.shutdown(): 1 reward still pending after 0.5 s was dropped" in message


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, concurrent.futures, sys, time
    import atlas_middleware as atlas
    from atlas_middleware.models.base import ChatModel, ChatResult, ScriptedModel
    from atlas_middleware.rim import RIMReward

    class ThreadedJudge(ChatModel):
        # Like the local models: generation runs on a worker thread of its own.
        name = provider = "threaded"

        def __init__(self):
            super().__init__()
            self.pool = concurrent.futures.ThreadPoolExecutor(1)

        async def _complete(self, messages, *, max_tokens, temperature, stop):
            def work():
                time.sleep(0.3)
                return '{"principles": [{"name": "ok", "weight": 1}], "score": 0.9, '\\
                       '"rationale": "fine", "uncertainty": 0.1}'
            text = await asyncio.get_running_loop().run_in_executor(self.pool, work)
            return ChatResult(text, self.name, 10, 10, "stop")

    # The same local model judges and then (a good reward) writes the playbook's lesson: a
    # second generation that starts only after the first one finished.
    model = ThreadedJudge()
    @atlas.supervise(agent="exit", teacher=model,
                     reward=RIMReward(model, judges=["helpfulness"], samples=1), lane="auto")
    def solve(task):
        return "42"

    solve("What is 12 + 30?")
    print(atlas.last_session().session_id)
    # no atlas.shutdown(): the process just ends, the reward still pending
    """
)


def test_a_reward_pending_when_the_process_exits_is_judged(private_store, tmp_path):
    script = tmp_path / "exit_reward.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ATLAS_STORE_URL": private_store},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cannot schedule new futures" not in proc.stderr
    session_id = proc.stdout.strip().splitlines()[-1]
    row = stored(private_store, session_id, timeout=5)
    assert row.evaluations[s.PRIMARY_EVALUATION]["score"] == pytest.approx(0.9)
    with open_store(private_store) as store:
        spans = store.spans_for([row.trace_id])[row.trace_id]
    lessons = [x for x in spans if x.attributes.get(s.ATLAS_TEACHER_STEP) == "lesson"]
    assert len(lessons) == 1 and s.ERROR_TYPE not in lessons[0].attributes
