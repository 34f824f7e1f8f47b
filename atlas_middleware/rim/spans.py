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
    step_id: str | None = None,
) -> bool:
    """Emit ``reward`` as the session's primary evaluation (``atlas.rim``, with the full
    ``to_payload()`` as JSON) plus one evaluation per scored judge (``atlas.rim.<judge>``), each
    on an evaluation span parented to ``session`` (the root's SpanContext, so a reward judged
    after the root ended still joins its trace).

    ``content=False`` (default: the capture-content setting) leaves raw judge replies, which
    quote the evaluated prompt and answer, out of the payload. A reward no judge could score is
    recorded without a score (label ``unscored``, the reason as its explanation, the payload with
    every judge's error), so the session shows why it has no reward instead of being scored 0;
    then this returns False. With ``step_id`` the reward scores that step (``session`` is then
    the step's SpanContext): the same evaluations, marked as the step's.
    """
    tracer = tracer or get_tracer()
    if content is None:
        content = s.capture_content()
    payload = json.dumps(reward.to_payload(include_replies=content), ensure_ascii=False)
    if reward.score is None:
        s.record_evaluation(
            tracer,
            session,
            name=s.PRIMARY_EVALUATION,
            score=None,
            label=s.LABEL_UNSCORED,
            explanation=reward.error or "no judge produced a score",
            payload=payload,
            step_id=step_id,
        )
        return False
    s.record_evaluation(
        tracer,
        session,
        name=s.PRIMARY_EVALUATION,
        score=reward.score,
        explanation=reward.rationale,
        uncertainty=reward.uncertainty,
        payload=payload,
        step_id=step_id,
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
            step_id=step_id,
        )
    return True
