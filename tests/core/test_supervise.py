"""@supervise with a scripted teacher: every lane, retries, overrides, and failing open."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.models import ModelError, ScriptedModel
from atlas_middleware.telemetry import schema as s
from tests.helpers import scripted_teacher


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()


def root_of(exporter: InMemorySpanExporter):
    [root] = [x for x in exporter.get_finished_spans() if x.name.startswith("invoke_agent")]
    return root


def teacher_replies(
    *, probe: str = "0.9", validate: str = "VALID", guidance: str = "Add them."
) -> ScriptedModel:
    return scripted_teacher(probe=probe, validate=validate, guidance=guidance)


def test_auto_lane_when_the_probe_is_confident(spans):
    teacher = teacher_replies(probe="0.95")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False)
    def solve(task: str) -> str:
        assert atlas.guidance() is None
        return "5"

    assert solve("What is 2 + 3?") == "5"
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "auto"
    assert root.attributes[s.ATLAS_PROBE_CONFIDENCE] == pytest.approx(0.95)
    assert root.attributes[s.ATLAS_TASK] == "What is 2 + 3?"
    assert root.attributes[s.ATLAS_FINAL_ANSWER] == "5"
    assert len(teacher.calls) == 1  # the probe only


def test_paired_lane_retries_once_with_guidance_when_invalid(spans):
    teacher = teacher_replies(
        probe="0.7", validate="INVALID: 2 + 3 is not 6", guidance="Count again."
    )
    seen = []

    @atlas.supervise(agent="calc", teacher=teacher, reward=False)
    def solve(task: str) -> str:
        seen.append(atlas.guidance())
        return "6" if atlas.guidance() is None else "5"

    assert solve("What is 2 + 3?") == "5"
    assert seen == [None, "Count again."]
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "paired"
    assert root.attributes[s.ATLAS_RETRIES] == 1
    assert root.attributes[s.ATLAS_GUIDANCE] == "Count again."
    # The retry's guidance prompt carried the first attempt and the teacher's objection.
    guidance_prompt = teacher.calls[-1][1]["content"]
    assert "6" in guidance_prompt and "2 + 3 is not 6" in guidance_prompt


def test_paired_lane_keeps_a_valid_answer_and_max_retries_zero_disables_retry(spans):
    valid = teacher_replies(probe="0.7", validate="VALID")
    calls = []

    @atlas.supervise(agent="a", teacher=valid, reward=False)
    def solve(task: str) -> str:
        calls.append(task)
        return "ok"

    assert solve("t") == "ok" and len(calls) == 1
    invalid = teacher_replies(probe="0.7", validate="INVALID: no")

    @atlas.supervise(agent="b", teacher=invalid, max_retries=0, reward=False)
    def solve_once(task: str) -> str:
        calls.append(task)
        return "wrong"

    assert solve_once("t") == "wrong" and len(calls) == 2


def test_coach_lane_guides_up_front(spans):
    teacher = teacher_replies(probe="0.2", guidance="Use column addition.")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False)
    async def solve(task: str) -> str:
        return f"guided by: {atlas.guidance()}"

    assert asyncio.run(solve("12 + 30?")) == "guided by: Use column addition."
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "coach"
    assert root.attributes[s.ATLAS_GUIDANCE] == "Use column addition."


def test_reference_validates_without_asking_the_teacher(spans):
    teacher = teacher_replies(probe="0.7", guidance="Recount.")
    answers = iter(["41", "42"])

    @atlas.supervise(agent="calc", teacher=teacher, reference="42", reward=False)
    def solve(task: str) -> str:
        return next(answers)

    assert solve("What is 12 + 30?") == "42"
    systems = [call[0]["content"] for call in teacher.calls]
    assert not any(system.startswith("You check") for system in systems)


def test_forced_lane_and_per_call_override(spans):
    teacher = teacher_replies(probe="0.1", guidance="g")

    @atlas.supervise(agent="calc", teacher=teacher, lane="auto", reward=False)
    def solve(task: str) -> str:
        return "x"

    solve("t")
    assert root_of(spans).attributes[s.ATLAS_LANE] == "auto"
    assert teacher.calls == []  # a forced lane skips the probe
    spans.clear()
    assert solve.options(lane="coach")("t") == "x"
    assert root_of(spans).attributes[s.ATLAS_LANE] == "coach"


def jobs_of(teacher: ScriptedModel) -> list[str]:
    """The teacher's job per call, read off its system prompt."""
    prefixes = {"You judge whether": "probe", "You check": "validate", "You are a teacher": "guide"}
    return [
        next(
            (job for prefix, job in prefixes.items() if call[0]["content"].startswith(prefix)), "?"
        )
        for call in teacher.calls
    ]


def test_always_probe_records_the_confidence_and_keeps_the_forced_lane(spans):
    # The probe would pick auto (0.95); the forced coach lane still runs, with guidance.
    teacher = teacher_replies(probe="0.95", guidance="Add the tens first.")
    seen = []

    @atlas.supervise(agent="calc", teacher=teacher, lane="coach", always_probe=True, reward=False)
    def solve(task: str) -> str:
        seen.append(atlas.guidance())
        return "42"

    solve("What is 12 + 30?")
    root = root_of(spans)
    assert root.attributes[s.ATLAS_PROBE_CONFIDENCE] == pytest.approx(0.95)
    assert root.attributes[s.ATLAS_LANE] == "coach"
    assert seen == ["Add the tens first."]
    assert jobs_of(teacher) == ["probe", "guide", "validate"]

    # A failed probe keeps the forced lane (not the fallback lane) and is recorded.
    spans.clear()
    broken = ScriptedModel(replies=["no idea"], name="teacher")

    @atlas.supervise(
        agent="calc", teacher=broken, lane="auto", always_probe=True, fallback_lane="coach",
        reward=False,
    )  # fmt: skip
    def solve_auto(task: str) -> str:
        return "42"

    solve_auto("What is 12 + 30?")
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "auto"
    assert s.ATLAS_PROBE_CONFIDENCE not in root.attributes
    assert "probe: no confidence in the teacher's reply" in root.attributes[s.ATLAS_FAILURES]
    assert len(broken.calls) == 1  # the probe only: auto asks nothing else


def test_a_reference_for_the_reward_only_leaves_validation_to_the_teacher(spans):
    from atlas_middleware.rim import RIMReward

    teacher = teacher_replies(
        probe="0.7", validate="INVALID: 12 + 30 is not 41", guidance="Recount."
    )
    judge = ScriptedModel(replies=["unused"], name="judge")
    answers = iter(["41", "42"])

    @atlas.supervise(
        agent="calc", teacher=teacher, reference="42", reference_validates=False,
        reward=RIMReward(judge, judges=["accuracy"], samples=1), reward_inline=True,
    )  # fmt: skip
    def solve(task: str) -> str:
        return next(answers)

    assert solve("What is 12 + 30?") == "42"
    # The teacher probed, validated (said INVALID) and guided the retry.
    assert jobs_of(teacher)[:3] == ["probe", "validate", "guide"]
    validation = teacher.calls[1]
    assert "41" in validation[1]["content"] and "42" not in validation[1]["content"]
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "paired" and root.attributes[s.ATLAS_RETRIES] == 1
    assert root.attributes[s.ATLAS_REFERENCE] == "42"
    # The reward still had the reference: accuracy decided by it, no judge model call.
    [evaluation] = [
        x
        for x in spans.get_finished_spans()
        if x.name == s.evaluation_span_name(s.PRIMARY_EVALUATION)
    ]
    assert evaluation.events[0].attributes[s.GEN_AI_EVALUATION_SCORE_VALUE] == 1.0
    assert judge.calls == []


def test_methods_and_signature_are_preserved(spans):
    class Agent:
        def __init__(self) -> None:
            self.prefix = "A:"

        @atlas.supervise(agent="method-agent", lane="auto", reward=False)
        def answer(self, question: str, *, loud: bool = False) -> str:
            return self.prefix + (question.upper() if loud else question)

    agent = Agent()
    assert agent.answer("hi", loud=True) == "A:HI"
    assert Agent.answer.__name__ == "answer"
    assert root_of(spans).attributes[s.ATLAS_TASK] == "hi"


def test_the_agents_exception_propagates_unchanged(spans):
    class Boom(Exception):
        pass

    @atlas.supervise(agent="calc", teacher=teacher_replies(probe="0.95"), reward=False)
    def solve(task: str) -> str:
        raise Boom("agent failed")

    with pytest.raises(Boom, match="agent failed"):
        solve("t")
    assert root_of(spans).attributes[s.ERROR_TYPE].endswith("Boom")


@pytest.mark.parametrize("failure", [ModelError("teacher down"), TimeoutError("slow")])
def test_teacher_failures_fail_open(spans, failure):
    teacher = ScriptedModel(replies=[failure], name="teacher")
    calls = []

    @atlas.supervise(
        agent="calc", teacher=teacher, fallback_lane="paired", teacher_timeout_s=1.0, reward=False
    )
    def solve(task: str) -> str:
        calls.append(atlas.guidance())
        return "5"

    assert solve("What is 2 + 3?") == "5"
    assert calls == [None]
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "paired"  # the fallback lane
    failures = root.attributes[s.ATLAS_FAILURES]
    assert any(f.startswith("probe:") for f in failures)
    assert any(f.startswith("validate:") for f in failures)


def test_teacher_timeout_does_not_hold_the_call(spans):
    slow = ScriptedModel(replies=["0.9"], name="slow-teacher", delay_s=5.0)

    @atlas.supervise(
        agent="calc", teacher=slow, probe_timeout_s=0.2, teacher_timeout_s=0.2, reward=False
    )
    async def solve(task: str) -> str:
        return "5"

    assert asyncio.run(asyncio.wait_for(solve("t"), 3.0)) == "5"
    assert any(
        f.startswith("probe: TimeoutError") for f in root_of(spans).attributes[s.ATLAS_FAILURES]
    )


def test_a_failing_guided_retry_returns_the_first_answer(spans):
    teacher = teacher_replies(probe="0.7", validate="INVALID: wrong", guidance="try again")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False)
    def solve(task: str) -> str:
        if atlas.guidance():
            raise RuntimeError("the retry broke")
        return "first"

    assert solve("t") == "first"
    assert any("guided retry" in f for f in root_of(spans).attributes[s.ATLAS_FAILURES])


def judge_replies(score: float) -> str:
    return (
        '{"principles": [{"name": "correct", "weight": 1.0}], "score": '
        + str(score)
        + ', "rationale": "checked", "uncertainty": 0.05}'
    )


def test_reward_lands_on_the_session_trace_and_teaches_the_playbook(spans, private_store):
    from atlas_middleware.rim import RIMReward
    from atlas_middleware.storage import open_store

    judge = ScriptedModel(replies=[judge_replies(0.9)], name="judge")
    teacher = teacher_replies(probe="0.7", validate="VALID", guidance="Always show the sum.")
    rim = RIMReward(judge, judges=["accuracy"], samples=2)

    @atlas.supervise(agent="calc", teacher=teacher, reward=rim, reward_inline=True)
    def solve(task: str) -> str:
        return "5"

    assert solve("What is 2 + 3?") == "5"
    root = root_of(spans)
    evaluations = [
        x
        for x in spans.get_finished_spans()
        if x.name == s.evaluation_span_name(s.PRIMARY_EVALUATION)
    ]
    assert len(evaluations) == 1
    evaluation = evaluations[0]
    assert evaluation.context.trace_id == root.context.trace_id
    assert evaluation.parent.span_id == root.context.span_id
    [event] = evaluation.events
    assert event.name == s.EVENT_EVALUATION_RESULT
    assert event.attributes[s.GEN_AI_EVALUATION_SCORE_VALUE] == pytest.approx(0.9)
    # A clearly good session (0.9 ≥ 0.8) taught the playbook a lesson from the teacher.
    with open_store(private_store) as store:
        playbook = store.get_playbook("calc")
    assert playbook["sessions"] == 1
    assert [lesson["text"] for lesson in playbook["lessons"]] == ["Always show the sum."]


def test_lessons_reach_the_teacher_prompts(spans, private_store):
    from atlas_middleware.playbook import Lesson, PlaybookState
    from atlas_middleware.storage import open_store

    with open_store(private_store) as store:
        store.put_playbook(
            "calc", PlaybookState([Lesson("Carry the tens.", "t" * 32, 1)]).to_json()
        )
    teacher = teacher_replies(probe="0.2", guidance="Line up the digits.")

    seen = []

    @atlas.supervise(agent="calc", teacher=teacher, reward=False)
    def solve(task: str) -> str:
        seen.append(atlas.guidance())
        return "42"

    solve("12 + 30?")
    prompts = [call[-1]["content"] for call in teacher.calls]
    assert all("Carry the tens." in p for p in prompts[:2])  # probe and guidance
    # The student gets the teacher's guidance followed by the lessons (coach lane).
    assert seen[0].startswith("Line up the digits.") and "Carry the tens." in seen[0]


def test_background_rewards_finish_at_shutdown(spans):
    from atlas_middleware.rim import RIMReward

    judge = ScriptedModel(replies=[judge_replies(0.4)], name="judge", delay_s=0.05)

    @atlas.supervise(
        agent="calc", lane="auto", reward=RIMReward(judge, judges=["accuracy"], samples=1)
    )
    def solve(task: str) -> str:
        return "5"

    for _ in range(3):
        solve("What is 2 + 3?")
    from atlas_middleware.portal import get_portal

    assert get_portal().drain(10)
    evaluations = [
        x
        for x in spans.get_finished_spans()
        if x.name == s.evaluation_span_name(s.PRIMARY_EVALUATION)
    ]
    assert len(evaluations) == 3


def test_a_background_reward_lands_where_its_session_did_after_tracing_is_reconfigured(spans):
    """Tracing reconfigured (a new store) while a reward is judged in the background: the
    evaluation joins its session's pipeline, and the new one gets no stray session."""
    import threading

    from atlas_middleware.portal import get_portal
    from atlas_middleware.rim import RIMReward

    release = threading.Event()

    def respond(messages):
        assert release.wait(10)
        return judge_replies(0.4)

    judge = ScriptedModel(respond=respond, name="judge")

    @atlas.supervise(
        agent="calc", lane="auto", reward=RIMReward(judge, judges=["accuracy"], samples=1)
    )
    def solve(task: str) -> str:
        return "5"

    solve("What is 2 + 3?")
    later = InMemorySpanExporter()
    # configure() waits for the reward before it shuts the first pipeline down; the judge is
    # released once configure() had time to start waiting (if it had not, this still passes).
    threading.Timer(0.2, release.set).start()
    telemetry.configure(exporter=later, batch=False, set_global=False)
    assert get_portal().drain(10)

    evaluation = s.evaluation_span_name(s.PRIMARY_EVALUATION)
    assert [x.name for x in later.get_finished_spans()] == []
    [reward] = [x for x in spans.get_finished_spans() if x.name == evaluation]
    assert reward.context.trace_id == root_of(spans).context.trace_id


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match="unknown option\\(s\\) lanee"):
        atlas.supervise(agent="x", lanee="auto")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lane": "copilot"}, "lane='copilot' is not a lane; choose one of auto, paired, coach"),
        ({"fallback_lane": "turbo"}, "fallback_lane='turbo'"),
        ({"auto_threshold": 1.5}, "auto_threshold=1.5: .*between 0 and 1"),
        ({"auto_threshold": 0.5, "paired_threshold": 0.7}, "must not exceed auto_threshold"),
        ({"max_retries": -1}, "max_retries=-1"),
        ({"teacher_timeout_s": 0}, "teacher_timeout_s=0"),
    ],
)
def test_bad_option_values_are_clear_errors_at_decoration(options, message):
    with pytest.raises(ValueError, match=message):
        atlas.supervise(agent="x", **options)

    @atlas.supervise(agent="x", lane="auto", reward=False)
    def solve(task: str) -> str:
        return task

    with pytest.raises(ValueError, match=message.replace("supervise()", "options()")):
        solve.options(**options)


def test_a_plugins_bogus_lane_is_recorded_and_the_thresholds_decide(spans):
    from atlas_middleware import plugins

    class Bogus:
        @plugins.hookimpl
        def atlas_choose_lane(self, confidence, task, context):
            return "turbo"

    @atlas.supervise(agent="calc", teacher=teacher_replies(probe="0.95"), reward=False)
    def solve(task: str) -> str:
        return "5"

    with plugins.registered(Bogus()):
        assert solve("What is 2 + 3?") == "5"
    root = root_of(spans)
    assert root.attributes[s.ATLAS_LANE] == "auto"  # 0.95 by the thresholds
    assert any("'turbo'" in f for f in root.attributes[s.ATLAS_FAILURES])


def test_a_store_that_is_down_changes_nothing_for_the_agent(monkeypatch):
    """Spans, rewards and the playbook all go to a Postgres nobody listens on: the agent's
    result is unchanged and nothing raises."""
    from atlas_middleware.otel_exporters import StoreSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from atlas_middleware.rim import RIMReward

    dead = "postgresql://postgres@127.0.0.1:9/atlas"  # port 9 (discard): refused at once
    monkeypatch.setenv("ATLAS_STORE_URL", dead)
    exporter = StoreSpanExporter(dead)
    results: list[SpanExportResult] = []
    original = exporter.export
    exporter.export = lambda batch: results.append(original(batch)) or results[-1]
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    judge = ScriptedModel(replies=[judge_replies(0.95)], name="judge")
    teacher = teacher_replies(probe="0.7", validate="VALID", guidance="A lesson.")
    try:

        @atlas.supervise(
            agent="calc",
            teacher=teacher,
            reward=RIMReward(judge, judges=["accuracy"], samples=1),
            reward_inline=True,
        )
        def solve(task: str) -> str:
            return "5"

        assert solve("What is 2 + 3?") == "5"
    finally:
        telemetry.shutdown()
    assert results and all(r == SpanExportResult.FAILURE for r in results)


def test_session_end_hook_gets_the_session_summary(spans):
    from atlas_middleware import plugins

    seen = []

    class Plugin:
        @plugins.hookimpl
        def atlas_session_end(self, session):
            seen.append(session)

    with plugins.registered(Plugin()):

        @atlas.supervise(agent="calc", lane="auto", reward=False)
        def solve(task: str) -> str:
            return "5"

        solve("What is 2 + 3?")
    [session] = seen
    assert session["lane"] == "auto" and session["answer"] == "5"
    assert session["trace_id"] == format(root_of(spans).context.trace_id, "032x")


def test_plugin_redactors_run_in_the_exporters(private_store):
    from atlas_middleware.otel_exporters import StoreSpanExporter

    from atlas_middleware import plugins
    from atlas_middleware.storage import open_store

    class MaskCustomerIds:
        @plugins.hookimpl
        def atlas_redactors(self):
            def mask(record):
                record.attributes = {
                    k: ("[CUSTOMER]" if isinstance(v, str) and v.startswith("cust_") else v)
                    for k, v in record.attributes.items()
                }

            return [mask]

    with plugins.registered(MaskCustomerIds()):
        telemetry.configure(exporter=StoreSpanExporter(private_store), batch=False)
        try:

            @atlas.supervise(agent="crm", lane="auto", reward=False)
            def lookup(customer: str) -> str:
                return "found"

            lookup("cust_12345")
        finally:
            telemetry.shutdown()
    with open_store(private_store) as store:
        [session] = list(store.iter_sessions())
    assert session.task == "[CUSTOMER]"


def test_auto_configured_store_uses_the_configs_drift_policy(private_store):
    from atlas_middleware.config import AtlasConfig

    telemetry.shutdown()  # nothing configured: supervise sets tracing up from the config
    config = AtlasConfig(
        storage={"url": private_store}, review={"drift_window": 7, "min_baseline": 2}
    )

    @atlas.supervise(agent="calc", lane="auto", reward=False, config=config)
    def solve(task: str) -> str:
        return "5"

    try:
        solve("t")
        exporter = telemetry._provider._active_span_processor._span_processors[0].span_exporter
        exporter = getattr(exporter, "exporter", exporter)  # inside the retrying exporter
        policy = exporter.store.drift_policy
        assert (policy.window, policy.min_baseline) == (7, 2)
    finally:
        telemetry.shutdown()


def test_the_configs_teacher_budget_temperature_and_content_capture_apply(private_store):
    """teacher.max_tokens / teacher.temperature reach the teacher's guidance and validation
    calls, and telemetry.capture_content=false keeps prompts and answers off the spans."""
    from dataclasses import dataclass, field

    from atlas_middleware.config import AtlasConfig

    @dataclass(eq=False)
    class Recording(ScriptedModel):
        seen: list = field(default_factory=list)

        async def _complete(self, messages, *, max_tokens, temperature, stop):
            self.seen.append((messages[0]["content"][:12], max_tokens, temperature))
            return await super()._complete(
                messages, max_tokens=max_tokens, temperature=temperature, stop=stop
            )

    teacher = Recording(respond=teacher_replies(probe="0.1").respond, name="teacher")
    telemetry.shutdown()  # nothing configured: supervise sets tracing up from the config
    config = AtlasConfig(
        storage={"url": private_store},
        teacher={"max_tokens": 33, "temperature": 0.7},
        lanes={"probe_max_tokens": 7},
        telemetry={"capture_content": False},
    )

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, config=config)
    def solve(task: str) -> str:
        return "5"

    try:
        assert solve("What is 2 + 3?") == "5"
        budgets = {budget for _, budget, _ in teacher.seen}
        assert budgets == {7, 33}  # the probe's own budget, then guidance and validation
        assert {temperature for *_, temperature in teacher.seen} == {0.7}
        assert s.capture_content() is False
    finally:
        s.set_capture_content(True)
        telemetry.shutdown()


def test_content_capture_off_keeps_prompts_and_answers_off_the_spans(spans):
    s.set_capture_content(False)
    try:

        @atlas.supervise(agent="calc", teacher=teacher_replies(probe="0.1"), reward=False)
        def solve(task: str) -> str:
            return "secret-answer-5"

        solve("What is secret 2 + 3?")
    finally:
        s.set_capture_content(True)
    chats = [x for x in spans.get_finished_spans() if x.name.startswith("chat ")]
    assert chats
    for span in spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            if isinstance(value, str):
                assert "secret" not in value, (span.name, value)
