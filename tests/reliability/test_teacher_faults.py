"""A teacher that is dead, hangs or answers 500 costs a supervised call at most its teacher
budget, and after a few failures nothing at all: the endpoint's circuit breaker skips it (the
call runs, recorded as lane ``auto`` with the reason ``teacher unavailable``), and a trial call
after the cool-down closes it again once the teacher is back.

Real HTTP teachers (``tests.helpers.FaultyTeacher``) behind the real OpenAI-compatible backend.
Nothing here waits on a wall-clock budget: what is checked is which requests reached the
teacher, which steps were skipped and why, and what the spans recorded."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import breaker as breakers
from atlas_middleware import telemetry
from atlas_middleware.breaker import CircuitBreaker
from atlas_middleware.models import CallPolicy, OpenAICompatibleModel
from atlas_middleware.telemetry import schema as s
from tests.helpers import FaultyTeacher

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def spans():
    breakers.reset()
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()
    breakers.reset()


def roots(exporter: InMemorySpanExporter) -> list:
    return [x for x in exporter.get_finished_spans() if x.name.startswith("invoke_agent")]


def teacher_at(server: FaultyTeacher, **policy) -> OpenAICompatibleModel:
    # The backend's own retries are the config's default (2); no per-call timeout of its own
    # shorter than the step's, so the budget is what cuts a hung request.
    return OpenAICompatibleModel(
        server.base_url, "teacher", policy=CallPolicy(timeout_s=600, **policy)
    )


def supervised(teacher, **options):
    @atlas.supervise(agent="faulty", teacher=teacher, reward=False, **options)
    def solve(task: str) -> dict:
        return {"answer": task}

    return solve


def test_a_hung_teacher_costs_at_most_the_budget_then_the_breaker_skips_it(spans):
    """Probe timeout 600 s and step timeout 600 s, as bad as configs get; a 0.5 s budget: the
    first call's probe is cut by the budget and its validation skipped for want of budget; two
    calls later the breaker is open and the teacher is not even asked."""
    with FaultyTeacher("hung") as server:
        solve = supervised(
            teacher_at(server),
            probe_timeout_s=600,
            teacher_timeout_s=600,
            teacher_budget_s=0.5,
            breaker_failures=2,
            breaker_cooldown_s=3600,
        )
        results = [solve(f"task {i}") for i in range(5)]
        hits = server.hits
        assert [r["answer"] for r in results] == [f"task {i}" for i in range(5)]
        [state] = breakers.breakers()
        assert state.state == "open" and state.opened == 1
        # At most the probes of the first two calls (on a loaded machine a probe can be cut
        # before its request even left); nothing after the breaker opened.
        assert hits <= 2
        more = [solve("again") for _ in range(3)]
        assert server.hits == hits and all(r == {"answer": "again"} for r in more)
    recorded = roots(spans)
    assert len(recorded) == 8
    for root in recorded:
        assert root.attributes[s.ATLAS_LANE] == "auto"  # one of the three lanes: the one that ran
        assert root.attributes[s.ATLAS_LANE_REASON] == s.LANE_REASON_TEACHER_UNAVAILABLE
    first = list(recorded[0].attributes[s.ATLAS_FAILURES])
    assert first[0].startswith("probe: TimeoutError")
    assert first[1] == "validate: TeacherUnavailable: teacher budget of 0.5s spent"
    last = list(recorded[-1].attributes[s.ATLAS_FAILURES])
    assert last[0].startswith("probe: TeacherUnavailable: circuit open for http://127.0.0.1:")
    assert atlas.supervision_stats().teacher_skipped >= 7


@pytest.mark.parametrize("fault", ["500", "dead"])
def test_a_failing_teacher_opens_the_breaker_and_a_trial_closes_it(spans, fault):
    with FaultyTeacher(fault) as server:
        solve = supervised(
            teacher_at(server, retries=0),
            breaker_failures=3,
            breaker_cooldown_s=0.5,
        )
        for i in range(2):  # probe + validation fail in each: 4 failures, open after 3
            assert solve(f"t{i}") == {"answer": f"t{i}"}
        [state] = breakers.breakers()
        assert state.state == "open"
        hits = server.hits
        for i in range(3):
            assert solve(f"skipped {i}") == {"answer": f"skipped {i}"}
        assert server.hits == hits  # skipped at once, the server never asked
        assert all(
            r.attributes[s.ATLAS_LANE] == "auto"
            and r.attributes[s.ATLAS_LANE_REASON] == "teacher unavailable"
            for r in roots(spans)[-3:]
        )
        server.set_mode("ok")  # the teacher is back (its probe answers 0.95: auto)
        breaker = breakers.breakers()[0]
        deadline = time.monotonic() + 60
        while breakers._breakers[breaker.endpoint].retry_in() > 0:  # the cool-down passes
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert solve("trial") == {"answer": "trial"}
        assert breakers.breakers()[0].state == "closed"
        assert solve("normal") == {"answer": "normal"}
    trial, normal = roots(spans)[-2:]
    for root in (trial, normal):
        assert root.attributes[s.ATLAS_PROBE_CONFIDENCE] == pytest.approx(0.95)
        assert root.attributes[s.ATLAS_LANE] == "auto"
        assert s.ATLAS_LANE_REASON not in root.attributes  # auto by confidence this time


def test_one_breaker_per_endpoint_shared_by_every_supervised_function(spans):
    with FaultyTeacher("500") as server:
        first = supervised(teacher_at(server, retries=0), breaker_failures=2)

        @atlas.supervise(agent="other", teacher=teacher_at(server, retries=0), reward=False)
        async def other(task: str) -> str:
            return task.upper()

        first("a")  # probe + validation: 2 failures, open
        hits = server.hits
        assert asyncio.run(other("b")) == "B"  # another function, another model object
        assert server.hits == hits
    assert len(breakers.breakers()) == 1
    assert roots(spans)[-1].attributes[s.ATLAS_LANE_REASON] == "teacher unavailable"


def test_validation_by_a_reference_needs_no_teacher(spans):
    """The breaker is open, but a call with a reference still validates (and records paired):
    only steps that need the teacher are skipped."""
    with FaultyTeacher("500") as server:

        @atlas.supervise(
            agent="ref",
            teacher=teacher_at(server, retries=0),
            lane="paired",
            breaker_failures=1,
            reward=False,
        )
        def solve(task: str) -> str:
            return task

        solve.options(reference="t0")("t0")  # validated by the reference: no teacher asked
        assert server.hits == 0
        solve("t1")  # validation by the teacher: fails, opens the breaker
        assert server.hits == 1
        solve.options(reference="t2")("t2")
        assert server.hits == 1
    last = roots(spans)[-1]
    assert last.attributes[s.ATLAS_LANE] == "paired"
    assert s.ATLAS_LANE_REASON not in last.attributes


# --- the breaker alone -------------------------------------------------------------------------
def test_breaker_states():
    breaker = CircuitBreaker("e", failures=2, cooldown_s=0.05)
    assert breaker.allow()
    breaker.failure()
    assert breaker.allow() and breaker.snapshot().state == "closed"
    breaker.success()  # a success resets the count
    breaker.failure()
    assert breaker.snapshot().state == "closed"
    breaker.failure()
    assert breaker.snapshot().state == "open" and not breaker.allow()
    while breaker.retry_in() > 0:
        time.sleep(0.01)
    assert breaker.allow()  # the half-open trial
    assert not breaker.allow()  # only one at a time
    breaker.failure()  # the trial failed: open again
    assert breaker.snapshot().state == "open" and breaker.snapshot().opened == 2
    while breaker.retry_in() > 0:
        time.sleep(0.01)
    assert breaker.allow()
    breaker.success()
    assert breaker.snapshot().state == "closed" and breaker.allow() and breaker.allow()
    assert breaker.snapshot().skipped == 2
