"""ChatModel.chat: retries, timeouts, usage and the ``chat {model}`` span, through ScriptedModel."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import atlas_middleware.models.base as base
from atlas_middleware.models import (
    CallPolicy,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    ScriptedModel,
)
from atlas_middleware.telemetry import schema as s

USER = [{"role": "user", "content": "What is 12 + 30?"}]
FAST = CallPolicy(timeout_s=5.0, retries=2, backoff_s=0.01)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans chat() records, through a real SDK provider (the global one may be a no-op)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(base, "get_tracer", lambda: provider.get_tracer("tests"))
    return exporter


def scripted(*replies, policy: CallPolicy = FAST, **kwargs) -> ScriptedModel:
    model = ScriptedModel(replies=list(replies), **kwargs)
    model.policy = policy
    return model


def test_transient_failures_are_retried_then_succeed(spans):
    model = scripted(ModelUnavailable("busy"), ModelUnavailable("busy"), "42")
    result = asyncio.run(model.chat(USER))
    assert result.text == "42"
    assert len(model.calls) == 3
    assert model.usage.calls == 1 and model.usage.failures == 2
    [span] = spans.get_finished_spans()
    assert span.attributes.get(s.ERROR_TYPE) is None


def test_retries_run_out_with_model_unavailable(spans):
    model = scripted(ModelUnavailable("still busy"))
    with pytest.raises(ModelUnavailable, match="still busy"):
        asyncio.run(model.chat(USER))
    assert len(model.calls) == FAST.retries + 1
    [span] = spans.get_finished_spans()
    assert span.attributes[s.ERROR_TYPE] == "ModelUnavailable"


def test_a_permanent_error_is_not_retried(spans):
    model = scripted(ModelError("bad request"), "never reached")
    with pytest.raises(ModelError, match="bad request") as caught:
        asyncio.run(model.chat(USER))
    assert not isinstance(caught.value, ModelUnavailable)
    assert len(model.calls) == 1
    assert model.usage.failures == 1 and model.usage.calls == 0
    [span] = spans.get_finished_spans()
    assert span.attributes[s.ERROR_TYPE] == "ModelError"


def test_timeout_after_retries_raises_model_timeout(spans):
    model = scripted(
        "too slow", delay_s=1.0, policy=CallPolicy(timeout_s=0.05, retries=1, backoff_s=0.01)
    )
    with pytest.raises(ModelTimeout, match=r"within 0\.05s"):
        asyncio.run(model.chat(USER))
    assert len(model.calls) == 2
    assert model.usage.failures == 2
    [span] = spans.get_finished_spans()
    assert span.attributes[s.ERROR_TYPE] == "ModelTimeout"


def test_per_call_timeout_overrides_the_policy():
    model = scripted("slow", delay_s=0.3, policy=CallPolicy(timeout_s=0.01, retries=0))
    assert asyncio.run(model.chat(USER, timeout_s=5)).text == "slow"


def test_usage_totals_add_up_over_calls():
    model = scripted("first answer", "second, longer answer")

    async def two_calls():
        return [await model.chat(USER), await model.chat(USER)]

    results = asyncio.run(two_calls())
    assert model.usage.calls == 2
    assert model.usage.input_tokens == sum(r.input_tokens for r in results) > 0
    assert model.usage.output_tokens == sum(r.output_tokens for r in results) > 0
    assert model.usage.seconds >= 0 and all(r.latency_s > 0 for r in results)


def test_chat_span_carries_genai_attributes(spans, monkeypatch):
    monkeypatch.setenv(s.CAPTURE_CONTENT_ENV, "true")
    model = scripted("forty-two")
    result = asyncio.run(model.chat(USER))
    [span] = spans.get_finished_spans()
    assert span.name == "chat scripted"
    attrs = span.attributes
    assert attrs[s.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[s.GEN_AI_REQUEST_MODEL] == "scripted"
    assert attrs[s.GEN_AI_RESPONSE_MODEL] == "scripted"
    assert attrs[s.GEN_AI_PROVIDER_NAME] == "scripted"
    assert attrs[s.GEN_AI_USAGE_INPUT_TOKENS] == result.input_tokens > 0
    assert attrs[s.GEN_AI_USAGE_OUTPUT_TOKENS] == result.output_tokens > 0
    assert "12 + 30" in attrs[s.GEN_AI_INPUT_MESSAGES]
    assert "forty-two" in attrs[s.GEN_AI_OUTPUT_MESSAGES]


def test_content_capture_can_be_switched_off(spans, monkeypatch):
    monkeypatch.setenv(s.CAPTURE_CONTENT_ENV, "false")
    asyncio.run(scripted("secret").chat(USER))
    [span] = spans.get_finished_spans()
    assert s.GEN_AI_INPUT_MESSAGES not in span.attributes
    assert s.GEN_AI_OUTPUT_MESSAGES not in span.attributes
    assert span.attributes[s.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
