"""Supervised sessions as the runtime records them, written through the real ingest path.

Each session is real OpenTelemetry SDK spans (the root ``invoke_agent`` span with task, lane,
guidance, answer and reference; the teacher's guidance ``chat`` span quoting the student's
failed attempt, as ``Teacher.guidance`` sends it; a RIM evaluation) converted by the exporter's
``to_records`` and written with ``Store.write_spans``, the collector's path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from atlas_middleware.otel_exporters.sdk import to_records
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware.storage import open_store
from atlas_middleware.teacher import GUIDANCE_SYSTEM
from atlas_middleware.telemetry import schema as s


@dataclass
class Sess:
    task: str
    reference: str | None = "42"
    guidance: str | None = "Add the numbers, then check."
    attempt: str | None = "32"
    answer: str = "42"
    reward: float | None = 0.9
    learning_key: str = "math"
    lane: str = "paired"


def arithmetic(n: int) -> list[Sess]:
    out = []
    for i in range(n):
        a, b = 10 + i, 3 + 2 * i
        out.append(
            Sess(
                task=f"What is {a} + {b}?",
                reference=str(a + b),
                guidance="Add the two numbers and answer with the sum.",
                attempt=str(a + b - 1),
                answer=str(a + b),
                reward=0.5 + (i % 5) / 10,
            )
        )
    return out


def write_sessions(url: str, sessions: Sequence[Sess], *, status: str = "approved") -> list[str]:
    """Write ``sessions`` into the store at ``url``; returns their trace ids (in order)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "trainer-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    ids = []
    for i, sess in enumerate(sessions):
        with s.session_span(
            tracer,
            agent="calc",
            session_id=f"t-{i}-{time.time_ns()}",
            task=sess.task,
            learning_key=sess.learning_key,
            content=True,
        ) as root:
            root.set_attribute(s.ATLAS_LANE, sess.lane)
            if sess.reference is not None:
                root.set_attribute(s.ATLAS_REFERENCE, sess.reference)
            if sess.attempt is not None:
                with tracer.start_as_current_span(s.chat_span_name("teacher")) as chat:
                    chat.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_CHAT)
                    user = (
                        "Task:\n"
                        + sess.task
                        + "\n\nThe student answered:\n"
                        + sess.attempt
                        + "\n\nWhat is wrong:\ndoes not match the reference\n\nGuidance:"
                    )
                    chat.set_attribute(
                        s.GEN_AI_INPUT_MESSAGES,
                        json.dumps(
                            [
                                {"role": "system", "content": GUIDANCE_SYSTEM},
                                {"role": "user", "content": user},
                            ]
                        ),
                    )
            if sess.guidance:
                root.set_attribute(s.ATLAS_GUIDANCE, sess.guidance)
            s.set_final_answer(root, sess.answer, content=True)
            context = root.get_span_context()
            ids.append(format(context.trace_id, "032x"))
        if sess.reward is not None:
            s.record_evaluation(
                tracer, context, name=s.PRIMARY_EVALUATION, score=sess.reward, explanation="ok"
            )
    provider.shutdown()
    with open_store(url) as store:
        store.write_spans(to_records(exporter.get_finished_spans()))
        if status != "pending":
            store.set_review(ids, status)
    return ids
