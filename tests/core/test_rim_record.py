"""record(): a RIM reward lands as gen_ai.evaluation.result events under the session root."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware.rim import RIMReward, record
from atlas_middleware.telemetry import schema as s

from .conftest import JudgeScript, scripted, verdict


@pytest.fixture
def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_record_puts_evaluation_events_on_spans_parented_to_the_session(traced) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with s.session_span(tracer, agent="calc", session_id="s-1", task="2+2?") as root:
        session = root.get_span_context()
    # The reward is judged after the root span ended (background mode).
    script = JudgeScript({"accuracy": [verdict(1.0, rationale="matches {4}")]})
    reward = RIMReward(scripted(script)).evaluate_sync("2+2?", "4", "4")
    assert record(reward, session, tracer=tracer) is True

    spans = {span.name: span for span in exporter.get_finished_spans()}
    primary = spans[s.evaluation_span_name(s.PRIMARY_EVALUATION)]
    assert primary.context.trace_id == session.trace_id
    assert primary.parent is not None and primary.parent.span_id == session.span_id
    [event] = primary.events
    assert event.name == s.EVENT_EVALUATION_RESULT
    assert event.attributes[s.GEN_AI_EVALUATION_NAME] == s.PRIMARY_EVALUATION
    assert event.attributes[s.GEN_AI_EVALUATION_SCORE_VALUE] == pytest.approx(reward.score)
    assert event.attributes[s.GEN_AI_EVALUATION_EXPLANATION] == reward.rationale
    assert primary.attributes[s.ATLAS_EVALUATION_UNCERTAINTY] == pytest.approx(reward.uncertainty)
    payload = json.loads(primary.attributes[s.ATLAS_EVALUATION_PAYLOAD])
    assert payload == json.loads(json.dumps(reward.to_payload()))
    assert primary.attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_EVALUATION

    for judge in ("accuracy", "process", "helpfulness", "efficiency"):
        span = spans[s.evaluation_span_name(s.rim_judge_evaluation_name(judge))]
        assert span.parent is not None and span.parent.span_id == session.span_id
        [judge_event] = span.events
        assert judge_event.attributes[s.GEN_AI_EVALUATION_NAME] == "atlas.rim." + judge
        assert judge_event.attributes[s.GEN_AI_EVALUATION_SCORE_VALUE] == pytest.approx(
            reward.judges[judge].score
        )
    assert (
        spans[s.evaluation_span_name("atlas.rim.accuracy")]
        .events[0]
        .attributes[s.GEN_AI_EVALUATION_EXPLANATION]
        == "matches {4}"
    )


def test_record_without_content_drops_raw_replies(traced) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent x") as root:
        session = root.get_span_context()
    reward = RIMReward(scripted(), judges=["accuracy"]).evaluate_sync("secret task", "answer")
    record(reward, session, tracer=tracer, content=False)
    [primary] = [
        span
        for span in exporter.get_finished_spans()
        if span.name == s.evaluation_span_name(s.PRIMARY_EVALUATION)
    ]
    payload = json.loads(primary.attributes[s.ATLAS_EVALUATION_PAYLOAD])
    assert all(entry["reply"] is None for entry in payload["audit"])


def test_record_skips_failed_judges_and_unscored_rewards(traced) -> None:
    provider, exporter = traced
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent x") as root:
        session = root.get_span_context()
    from atlas_middleware.models.base import ModelError

    failing = scripted(JudgeScript({"process": [ModelError("down")]}))
    reward = RIMReward(failing).evaluate_sync("q", "a")
    exporter.clear()
    record(reward, session, tracer=tracer)
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert s.evaluation_span_name(s.rim_judge_evaluation_name("process")) not in names
    assert len(names) == 4  # primary + three judges

    # No judge could score: no reward, but the session keeps why (an unscored evaluation).
    nothing = RIMReward(scripted(JudgeScript(default=ModelError("down")))).evaluate_sync("q", "a")
    exporter.clear()
    assert record(nothing, session, tracer=tracer) is False
    [span] = exporter.get_finished_spans()
    [event] = span.events
    assert s.GEN_AI_EVALUATION_SCORE_VALUE not in event.attributes
    assert event.attributes[s.GEN_AI_EVALUATION_SCORE_LABEL] == s.LABEL_UNSCORED
    assert event.attributes[s.GEN_AI_EVALUATION_EXPLANATION].startswith("no judge produced a score")
    assert "down" in event.attributes[s.GEN_AI_EVALUATION_EXPLANATION]
    from atlas_middleware.otel_exporters.sdk import to_records

    from atlas_middleware.storage.records import derive_session_updates, reward_score

    [update] = derive_session_updates(to_records([span])).values()
    assert update.evaluations[s.PRIMARY_EVALUATION]["label"] == s.LABEL_UNSCORED
    assert reward_score(update.evaluations) is None


def test_record_defaults_to_the_atlas_tracer(monkeypatch: pytest.MonkeyPatch, traced) -> None:
    provider, exporter = traced
    import atlas_middleware.rim.spans as module

    monkeypatch.setattr(module, "get_tracer", lambda: provider.get_tracer("atlas"))
    with provider.get_tracer("t").start_as_current_span("root") as root:
        session = root.get_span_context()
    reward = RIMReward(scripted(), judges=["accuracy"]).evaluate_sync("q", "a")
    assert record(reward, session)
    assert any(
        span.parent and span.parent.span_id == session.span_id
        for span in exporter.get_finished_spans()
    )
