"""Emitting a RIM reward as OpenTelemetry evaluations under a session's root span."""

from __future__ import annotations

import json

from opentelemetry.trace import SpanContext, Tracer

from atlas_middleware.rim.result import Reward
from atlas_middleware.telemetry import get_tracer
from atlas_middleware.telemetry import schema as s


def record(
    reward: Reward,
    session: SpanContext,
    *,
    tracer: Tracer | None = None,
    content: bool | None = None,
) -> bool:
    """Emit ``reward`` as the session's primary evaluation (``atlas.rim``, with the full
    ``to_payload()`` as JSON) plus one evaluation per scored judge (``atlas.rim.<judge>``), each
    on an evaluation span parented to ``session`` (the root's SpanContext, so a reward judged
    after the root ended still joins its trace).

    ``content=False`` (default: the capture-content setting) leaves raw judge replies, which
    quote the evaluated prompt and answer, out of the payload. Returns False, emitting nothing,
    when the reward has no score (every judge failed): there is no value to report, and the
    session stays unrewarded rather than scored 0.
    """
    if reward.score is None:
        return False
    tracer = tracer or get_tracer()
    if content is None:
        content = s.capture_content()
    payload = json.dumps(reward.to_payload(include_replies=content), ensure_ascii=False)
    s.record_evaluation(
        tracer,
        session,
        name=s.PRIMARY_EVALUATION,
        score=reward.score,
        explanation=reward.rationale,
        uncertainty=reward.uncertainty,
        payload=payload,
    )
    for name, result in reward.judges.items():
        if result.score is None:
            continue
        s.record_evaluation(
            tracer,
            session,
            name=s.rim_judge_evaluation_name(name),
            score=result.score,
            explanation=result.rationale or None,
            uncertainty=result.uncertainty,
        )
    return True
