"""RIM on steps and the session reward aggregated from steps (run by the session's reward job).

- **RIM on steps** (``rim.step_sample_rate`` > 0, opt-in): the judges score a sample of the
  session's steps, each step's output against the session's task and what the steps before it
  did; the reward is recorded as the step's ``atlas.rim`` (and ``atlas.rim.<judge>``)
  evaluations. A step that failed is not sampled: it gets ``atlas.rim`` 0 with its error as the
  explanation (label ``failed``), so a failed node always carries a reward and its error.
- **Session reward** (``rim.session_reward``): ``final`` (default) keeps the final judge's score
  as the session's reward; ``mix`` records ``atlas.aggregate`` =
  ``(1 - step_weight) * final + step_weight * mean(step rewards)``, with the components in its
  payload (the final score, the weights, each step's reward); the final judge's ``atlas.rim``
  stays beside it. A step's reward is its ``atlas.rim`` when judged, else the mean of the
  rewards given to it in this process. With no rewarded step, the final score stands.

Steps are those this process saw end (:func:`atlas_middleware.steps.session_steps`); rewards
given to a step later, from elsewhere, reach its ``steps`` row but not this aggregate.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from opentelemetry.trace import SpanContext, TraceFlags

from atlas_middleware.steps import StepRecord, session_steps, tracker
from atlas_middleware.telemetry import get_tracer, usage
from atlas_middleware.telemetry import schema as s

log = logging.getLogger("atlas.rim")

LABEL_FAILED = "failed"
_CONTEXT_CHARS = 400


def step_prompt(task: str, step: StepRecord, before: list[StepRecord]) -> str:
    """What a judge reads for one step: the task, the session so far, the step and its input."""
    lines = [task.strip(), "", "The agent works on this task in steps."]
    if before:
        lines.append("Steps so far:")
        for x in before:
            done = f"failed ({x.error})" if x.status == "error" else (x.output or "done")
            lines.append(f"- {x.name}: {done[:_CONTEXT_CHARS]}")
    lines.append(f"Score only this step: {step.name} ({step.kind}).")
    if step.input:
        lines.append(f"Its input: {step.input[: _CONTEXT_CHARS * 2]}")
    lines.append("Its output is the response to judge.")
    return "\n".join(lines)


def _context(trace_id: int, span_id: str) -> SpanContext:
    return SpanContext(
        trace_id, int(span_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


def step_reward(step: StepRecord) -> float | None:
    """A step's reward for the aggregate: its RIM score, else the mean of its rewards."""
    if s.PRIMARY_EVALUATION in step.rewards:
        return step.rewards[s.PRIMARY_EVALUATION]
    if not step.rewards:
        return None
    return sum(step.rewards.values()) / len(step.rewards)


async def judge_steps(reward: Any, call: Any, session: SpanContext, final: Any) -> None:
    """RIM on the session's steps and the aggregated session reward, as the options say. Never
    raises: a failure is logged and the session keeps its final reward."""
    options = call.options
    rate = float(getattr(options, "step_sample_rate", 0.0) or 0.0)
    mix = getattr(options, "session_reward", "final") == "mix"
    if rate <= 0.0 and not mix:
        return
    try:
        steps = session_steps(session.trace_id)
        if rate > 0.0:
            await _judge(reward, call.task, session.trace_id, steps, rate)
        if mix and final.score is not None:
            _aggregate(session, steps, float(final.score), float(options.step_weight))
    except Exception as exc:  # fail open: the session's own reward is recorded already
        log.warning(
            "atlas: step rewards failed (%s: %s); the session keeps its reward",
            type(exc).__name__,
            exc,
        )


async def _judge(
    reward: Any, task: str, trace_id: int, steps: list[StepRecord], rate: float
) -> None:
    from atlas_middleware.rim.spans import record

    tracer = get_tracer()
    for index, step in enumerate(steps):
        context = _context(trace_id, step.span_id)
        if step.status == "error":
            s.record_evaluation(
                tracer,
                context,
                name=s.PRIMARY_EVALUATION,
                score=0.0,
                label=LABEL_FAILED,
                explanation=f"the step failed: {step.error}",
                step_id=step.span_id,
            )
            score: float | None = 0.0
        elif rate >= 1.0 or random.random() < rate:
            with usage.acting(s.ROLE_JUDGE):
                result = await reward.evaluate(
                    step_prompt(task, step, steps[:index]), step.output or ""
                )
            record(result, context, step_id=step.span_id)
            score = result.score
        else:
            continue
        if score is not None:
            step.rewards[s.PRIMARY_EVALUATION] = float(score)
            tracker().rewarded(trace_id, step.span_id, s.PRIMARY_EVALUATION, float(score))


def _aggregate(session: SpanContext, steps: list[StepRecord], final: float, weight: float) -> None:
    rewarded = [(step, step_reward(step)) for step in steps]
    scored = [(step, score) for step, score in rewarded if score is not None]
    if not scored:
        return
    mean = sum(score for _, score in scored) / len(scored)
    value = (1.0 - weight) * final + weight * mean
    payload = {
        "method": "mix",
        "final": final,
        "final_weight": 1.0 - weight,
        "step_weight": weight,
        "step_mean": mean,
        "steps": [
            {"span_id": step.span_id, "name": step.name, "status": step.status, "reward": score}
            for step, score in scored
        ],
    }
    s.record_evaluation(
        get_tracer(),
        session,
        name=s.AGGREGATE_EVALUATION,
        score=min(1.0, max(0.0, value)),
        explanation=(
            f"{1.0 - weight:.2f} x final judge {final:.2f} + {weight:.2f} x mean of "
            f"{len(scored)} step rewards {mean:.2f}"
        ),
        payload=json.dumps(payload),
    )
