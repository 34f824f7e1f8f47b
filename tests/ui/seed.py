"""A store that looks like a few days of a supervised agent, written through the real path: spans
from the OpenTelemetry SDK with atlas's schema helpers, rewards through RIM's recorder, into
``store.write_spans``; a playbook, and a training run whose ``curves.png`` comes from
atlas-train's own plotting. Timestamps are laid out afterwards (the SDK stamps the present) so
the waterfall and the charts have something to show."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from atlas_middleware.otel_exporters.sdk import to_records
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware.playbook import Lesson, PlaybookState
from atlas_middleware.prompts import GUIDANCE_SYSTEM, PROBE_SYSTEM, VALIDATE_SYSTEM
from atlas_middleware.rim.parsing import Principle
from atlas_middleware.rim.result import JudgeResult, Reward
from atlas_middleware.rim.spans import record
from atlas_middleware.storage import SpanRecord, Store
from atlas_middleware.telemetry import schema as s

HOUR_NS = 3_600 * 1_000_000_000
MS = 1_000_000
XSS_TASK = '<script>window.__atlas_xss = 1</script><img src=x onerror="window.__atlas_xss = 2">'

PROBLEMS = [
    ("A shop sells 38 apples in the morning and 90 more in the afternoon. How many apples?", "128"),
    ("Tom has 70 marbles and gives 27 to his sister. How many does he keep?", "43"),
    ("A train carries 12 cars with 30 seats each. How many seats in all?", "360"),
    ("Maya read 45 pages on Monday and 58 on Tuesday. How many pages did she read?", "103"),
    ("A baker made 96 rolls and sold 59. How many rolls are left?", "37"),
    ("There are 8 boxes of 15 pencils. How many pencils are there?", "120"),
    ("A farmer has 144 eggs and packs them in cartons of 12. How many cartons?", "12"),
    ("Sam saved 25 dollars a week for 6 weeks. How much did he save?", "150"),
]


EVAL_RUN = "20261203-101500-a1b2c3"


@dataclass
class Seeded:
    ids: dict[str, str] = field(default_factory=dict)  # role in the test -> trace id
    all_ids: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    report: Path | None = None  # the eval report PNG


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _chat(tracer, model: str, system: str, user: str, reply: str, tokens: tuple[int, int]):
    with tracer.start_as_current_span(s.chat_span_name(model)) as span:
        span.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_CHAT)
        # The role every LLM span will carry once issue 12 lands (the page reads it already).
        span.set_attribute(
            s.ATLAS_SPAN_ROLE, "teacher" if model.startswith("teacher") else "student"
        )
        span.set_attribute(s.GEN_AI_REQUEST_MODEL, model)
        span.set_attribute(
            s.GEN_AI_INPUT_MESSAGES,
            json.dumps([{"role": "system", "content": system}, {"role": "user", "content": user}]),
        )
        span.set_attribute(
            s.GEN_AI_OUTPUT_MESSAGES, json.dumps([{"role": "assistant", "content": reply}])
        )
        s.set_usage(span, *tokens)


def _session(
    tracer,
    *,
    agent: str,
    key: str,
    task: str,
    reference: str | None,
    answer: str,
    lane: str,
    confidence: float | None,
    guidance: str | None,
    valid: bool | None,
    score: float | None,
    rng: random.Random,
) -> trace.SpanContext:
    with s.session_span(
        tracer,
        agent=agent,
        session_id=f"{agent}-{rng.getrandbits(40):010x}",
        task=task,
        learning_key=key,
        content=True,
        model="smollm2-135m",
    ) as root:
        if reference is not None:
            root.set_attribute(s.ATLAS_REFERENCE, reference)
        if confidence is not None:
            _chat(
                tracer,
                "teacher-smol",
                PROBE_SYSTEM,
                "Task:\n" + task + "\n\nConfidence:",
                f"{confidence:.2f}",
                (61, 4),
            )
            root.set_attribute(s.ATLAS_PROBE_CONFIDENCE, confidence)
        root.set_attribute(s.ATLAS_LANE, lane)
        if guidance:
            _chat(
                tracer,
                "teacher-smol",
                GUIDANCE_SYSTEM,
                "Task:\n" + task + "\n\nGuidance:",
                guidance,
                (74, 38),
            )
        _chat(
            tracer,
            "smollm2-135m",
            "Solve the problem. End with the number.",
            task,
            answer,
            (52, 19),
        )
        with tracer.start_as_current_span(s.tool_span_name("calculator")) as tool:
            tool.set_attribute(s.GEN_AI_OPERATION_NAME, s.OP_EXECUTE_TOOL)
            tool.set_attribute(s.GEN_AI_TOOL_CALL_ARGUMENTS, json.dumps({"expression": task[:20]}))
            tool.set_attribute(s.GEN_AI_TOOL_CALL_RESULT, answer)
        if valid is not None:
            verdict = "VALID" if valid else "INVALID: the total is not the sum of both amounts"
            _chat(
                tracer,
                "teacher-smol",
                VALIDATE_SYSTEM,
                "Task:\n" + task + "\n\nStudent's answer:\n" + answer,
                verdict,
                (88, 9),
            )
        if guidance:
            root.set_attribute(s.ATLAS_GUIDANCE, guidance)
        root.set_attribute(s.ATLAS_RETRIES, 0)
        s.set_usage(root, 275 if guidance else 113, 70 if guidance else 23)
        s.set_final_answer(root, answer, content=True)
        context = root.get_span_context()
    if score is not None:
        accuracy = 1.0 if score >= 0.5 else 0.0
        judges = {
            "accuracy": JudgeResult(
                "accuracy",
                accuracy,
                0.6,
                "matches the reference"
                if accuracy
                else "the final number differs from the reference",
                0.05,
                [Principle("final number equals the reference", 1.0)],
                source="verifier",
            ),
            "process": JudgeResult(
                "process",
                round(min(1.0, score + 0.1), 2),
                0.25,
                "adds both quantities step by step" if accuracy else "skips the second amount",
                0.2,
                [Principle("shows the operation", 0.6), Principle("no invented numbers", 0.4)],
            ),
            "helpfulness": JudgeResult(
                "helpfulness",
                round(max(0.0, score - 0.05), 2),
                0.15,
                "short and clear",
                0.25,
            ),
        }
        reward = Reward(
            score=score,
            rationale="grounded in the reference; process and helpfulness weigh in",
            uncertainty=0.12,
            judges=judges,
            grounded=reference is not None,
            verifier={"name": "reference_match", "score": accuracy} if reference else None,
        )
        record(reward, context, tracer=tracer, content=True)
    return context


def _layout(records: list[SpanRecord], start_ns: int) -> None:
    """Give one session's spans believable times: children one after another under the root,
    the evaluation after the root ends."""
    root = next(r for r in records if r.parent_span_id is None)
    children = sorted(
        (r for r in records if r.parent_span_id is not None), key=lambda r: r.start_ns
    )
    cursor = start_ns + 3 * MS
    durations = {"chat teacher-smol": 420, "chat smollm2-135m": 1150, "execute_tool": 35}
    evaluations = []
    for child in children:
        if child.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_EVALUATION:
            evaluations.append(child)
            continue
        ms = next((d for prefix, d in durations.items() if child.name.startswith(prefix)), 200)
        _move(child, cursor, ms * MS)
        cursor += ms * MS + 4 * MS
    _move(root, start_ns, cursor - start_ns + 2 * MS)
    for i, evaluation in enumerate(evaluations):
        _move(evaluation, root.end_ns + (250 + 40 * i) * MS, 900 * MS)


def _move(record: SpanRecord, start_ns: int, duration_ns: int) -> None:
    shift = start_ns - record.start_ns
    record.start_ns = start_ns
    record.end_ns = start_ns + duration_ns
    for event in record.events:
        event.time_ns = max(event.time_ns + shift, start_ns)
        event.time_ns = min(event.time_ns, record.end_ns)


def seed_store(
    store: Store,
    *,
    now_ns: int,
    days: int = 10,
    per_day: int = 6,
    run_dir: Path | None = None,
    reports_dir: Path | None = None,
) -> Seeded:
    """Sessions of two agents over ``days`` days, plus the ones the tests look for: a session
    whose task is markup, a drift outlier, one without a reward."""
    rng = random.Random(7)
    provider, exporter = _provider()
    tracer = provider.get_tracer("atlas-ui-seed")
    seeded = Seeded()
    written: list[list[SpanRecord]] = []

    def session(start_ns: int, **kwargs) -> str:
        exporter.clear()
        _session(tracer, rng=rng, **kwargs)
        records = to_records(list(exporter.get_finished_spans()))
        _layout(records, start_ns)
        written.append(records)
        return records[0].trace_id

    start = now_ns - days * 24 * HOUR_NS
    for day in range(days):
        for j in range(per_day):
            task, reference = PROBLEMS[(day * per_day + j) % len(PROBLEMS)]
            # The teacher improves over the days: more coach early, more auto later.
            progress = day / max(1, days - 1)
            lane = rng.choices(["coach", "paired", "auto"], [1.2 - progress, 0.8, 0.3 + progress])[
                0
            ]
            correct = rng.random() < 0.45 + 0.4 * progress
            answer = reference if correct else str(int(reference) + rng.choice([-10, 1, 8]))
            score = round((0.82 if correct else 0.22) + rng.uniform(-0.06, 0.08), 2)
            agent = "calc" if j % 3 else "word-problems"
            trace_id = session(
                start + day * 24 * HOUR_NS + j * 3 * HOUR_NS + rng.randrange(HOUR_NS),
                agent=agent,
                key="arithmetic",
                task=task,
                reference=reference,
                answer=f"The answer is {answer}.",
                lane=lane,
                confidence=round(rng.uniform(0.2, 0.95), 2),
                guidance="Add the two amounts; write the sum as a single number."
                if lane == "coach"
                else None,
                valid=correct if lane != "auto" else None,
                score=score,
            )
            seeded.all_ids.append(trace_id)
    seeded.ids["markup"] = session(
        now_ns - 2 * HOUR_NS,
        agent="calc",
        key="arithmetic",
        task=XSS_TASK,
        reference=None,
        answer='<b>bold?</b> & "quotes"',
        lane="auto",
        confidence=0.9,
        guidance=None,
        valid=None,
        score=0.8,
    )
    for k in range(6):  # a steady history for the support key: its outlier below drifts
        seeded.all_ids.append(
            session(
                now_ns - (30 - k) * HOUR_NS,
                agent="support",
                key="support",
                task=f"How do I export my data? (ticket {k + 1})",
                reference=None,
                answer="Settings, then Export, then Download.",
                lane="auto",
                confidence=0.9,
                guidance=None,
                valid=None,
                score=round(0.88 + 0.01 * (k % 3), 2),
            )
        )
    seeded.ids["unrewarded"] = session(
        now_ns - 90 * 60 * 1_000_000_000,
        agent="support",
        key="support",
        task="Reset my password",
        reference=None,
        answer="Use the link on the sign-in page.",
        lane="paired",
        confidence=0.55,
        guidance=None,
        valid=True,
        score=None,
    )
    if reports_dir is not None:  # an `atlas eval` run: its sessions and its report
        for k, (task, reference) in enumerate(PROBLEMS[:6]):
            seeded.all_ids.append(
                session(
                    now_ns - (40 - k) * HOUR_NS,
                    agent="eval/student + teacher",
                    key=f"eval:{EVAL_RUN}",
                    task=task,
                    reference=reference,
                    answer=f"Answer: {reference if k % 3 else int(reference) + 1}",
                    lane="coach",
                    confidence=None,
                    guidance="Add the amounts; give one number.",
                    valid=bool(k % 3),
                    score=0.85 if k % 3 else 0.2,
                )
            )
        seeded.report = _eval_report(reports_dir, rng)
    for records in written:
        store.write_spans(records)
    # A drift outlier, written after the history it is judged against.
    seeded.ids["drift"] = session(
        now_ns - 60 * 60 * 1_000_000_000,
        agent="support",
        key="support",
        task="How do I export my data? (ticket 7)",
        reference=None,
        answer="I cannot help with that.",
        lane="auto",
        confidence=0.93,
        guidance=None,
        valid=None,
        score=0.05,
    )
    store.write_spans(written[-1])
    seeded.all_ids += [seeded.ids[k] for k in ("markup", "unrewarded", "drift")]
    provider.shutdown()

    store.put_playbook(
        "arithmetic",
        PlaybookState(
            lessons=[
                Lesson(
                    "Add every amount the task mentions before answering.",
                    seeded.all_ids[3],
                    start + 2 * 24 * HOUR_NS,
                    uses=21,
                    reward_sum=16.4,
                ),
                Lesson(
                    "End the reply with the number alone.",
                    seeded.all_ids[11],
                    start + 5 * 24 * HOUR_NS,
                    uses=9,
                    reward_sum=7.1,
                ),
            ],
            sessions=len(seeded.all_ids),
            reward_sum=0.6 * len(seeded.all_ids),
        ).to_json(),
    )
    if run_dir is not None:
        seeded.run_dir = run_dir
        _training_run(store, run_dir, seeded.all_ids[: len(seeded.all_ids) // 2])
    return seeded


def _eval_report(folder: Path, rng: random.Random) -> Path:
    """The markdown table and PNG ``atlas eval`` writes, from its own report code."""
    from atlas_middleware.evaluate import (
        STUDENT_ALONE,
        WITH_TEACHER,
        WITH_TRAINED,
        EvalReport,
        TaskOutcome,
        summarise,
    )

    conditions = [STUDENT_ALONE, WITH_TEACHER, WITH_TRAINED]
    odds = {STUDENT_ALONE: 0.3, WITH_TEACHER: 0.45, WITH_TRAINED: 0.6}
    outcomes = [
        TaskOutcome(f"t{i}", c, "42", rng.random() < odds[c], True, None, 1.0)
        for c in conditions
        for i in range(40)
    ]
    report = EvalReport(EVAL_RUN, outcomes, summarise(outcomes, conditions))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"eval-{EVAL_RUN}.md").write_text(report.markdown())
    return report.plot(folder / f"eval-{EVAL_RUN}.png")


def _training_run(store: Store, run_dir: Path, trace_ids: list[str]) -> None:
    from atlas_middleware.trainer.progress import plot_curves

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "final").mkdir(exist_ok=True)
    rng = random.Random(3)
    with (run_dir / "metrics.jsonl").open("w") as out:
        for step in range(1, 21):
            out.write(
                json.dumps(
                    {
                        "step": step,
                        "reward": round(0.3 + 0.025 * step + rng.uniform(-0.04, 0.04), 3),
                        "teaching/accuracy_delta": round(0.01 * step + rng.uniform(-0.03, 0.03), 3),
                        "teaching/non_degradation": round(min(1.0, 0.8 + 0.01 * step), 3),
                    }
                )
                + "\n"
            )
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    store.record_training_run(
        "grpo-20261201-0930",
        checkpoint=str(run_dir / "final"),
        recipe="grpo",
        trace_ids=trace_ids,
        metrics={
            "train": {"train_loss": 0.0412, "reward": 0.79, "global_step": 20},
            "data": {"sessions": len(trace_ids)},
        },
    )
