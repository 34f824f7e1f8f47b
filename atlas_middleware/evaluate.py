"""`atlas eval`: does the teacher help? The table ATLAS reports, measured on your tasks.

Every task runs once per condition — the student alone, the student with the teacher, and (when
given) the student with a trained teacher — as a real supervised session, stored with its spans.
Accuracy comes from each task's verifier; the supervisor itself never sees the reference (its
validation is the teacher's own), so a retry cannot peek at the answer key.

Columns: accuracy with a 95% Wilson interval; completion (the agent returned a non-empty answer
without raising); non-degradation (the share of tasks where the condition is not worse than the
student alone: 1 − right-alone-but-wrong-here / n); mean tokens per session (student and teacher
calls, from the stored session rows).
"""

from __future__ import annotations

import contextvars
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_middleware.models.base import ChatMessage, ChatModel
from atlas_middleware.tasks import Task

STUDENT_ALONE = "student"
WITH_TEACHER = "student + teacher"
WITH_TRAINED = "student + trained teacher"
WITH_HINT = "student + hint"
STUDENT_INSTRUCTIONS = (
    "Solve the problem. Think briefly, then end with 'Answer: <number>' on its own line."
)


@dataclass(frozen=True)
class Condition:
    """One column of the comparison: who (if anyone) teaches, and in which lane."""

    name: str
    teacher: ChatModel | None = None
    lane: str | None = None  # None: the teacher's probe decides
    # The teacher's prompts for this condition (TeacherPrompts, a prompts file or an `atlas
    # optimize --out` folder; their playbook's lessons included); None: the configured ones.
    prompts: Any = None


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    condition: str
    answer: str | None
    correct: bool | None
    completed: bool
    trace_id: str | None
    seconds: float
    error: str | None = None
    lane: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    # What supervision recorded as failed on the session (``atlas.failures``): the teacher
    # step failed (timed out, errored) and the call went on without it.
    failures: tuple[str, ...] = ()

    @property
    def timed_out(self) -> bool:
        """A teacher step or the student's own call ran out of time."""
        return any(_is_timeout(text) for text in (*self.failures, self.error or ""))

    @property
    def failed_open(self) -> bool:
        """Supervision failed on this task and the agent ran on without it."""
        return bool(self.failures)


# The running task's notes (its trace id, its hint), read inside the supervised agent.
_SEEN: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("atlas_eval_seen")


def _is_timeout(text: str) -> bool:
    return "Timeout" in text or "timed out" in text or "no answer within" in text


@dataclass(frozen=True)
class ConditionStats:
    condition: str
    tasks: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    completion: float
    non_degradation: float | None  # None for the student alone (it is the baseline)
    mean_tokens: float
    timed_out: int = 0  # tasks where a teacher step or the student's call timed out
    failed_open: int = 0  # tasks whose session recorded a supervision failure (atlas.failures)


@dataclass
class EvalReport:
    run_id: str
    outcomes: list[TaskOutcome]
    stats: list[ConditionStats] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"Evaluation `{self.run_id}`: {self.stats[0].tasks if self.stats else 0} tasks.",
            "",
            "| condition | accuracy | 95% CI | completion | non-degradation | tokens/session "
            "| timed out | failed open |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for st in self.stats:
            nd = "—" if st.non_degradation is None else f"{st.non_degradation:.0%}"
            lines.append(
                f"| {st.condition} | {st.accuracy:.1%} ({st.correct}/{st.tasks}) | "
                f"{st.ci_low:.1%}–{st.ci_high:.1%} | {st.completion:.0%} | {nd} | "
                f"{st.mean_tokens:,.0f} | {st.timed_out} | {st.failed_open} |"
            )
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Accuracy per condition with its 95% interval, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [st.condition for st in self.stats]
        acc = [st.accuracy for st in self.stats]
        err = [
            [st.accuracy - st.ci_low for st in self.stats],
            [st.ci_high - st.accuracy for st in self.stats],
        ]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(
            names, acc, yerr=err, capsize=6, color=["#999999", "#3b7dd8", "#2a9d8f"][: len(names)]
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_title(f"atlas eval — {self.stats[0].tasks if self.stats else 0} tasks")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval: honest at small n and at 0% / 100%."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(outcomes: Sequence[TaskOutcome], conditions: Sequence[str]) -> list[ConditionStats]:
    """The table's numbers from the per-task outcomes. Non-degradation is against the student
    alone: unknown (None) in a run without that condition, never against another one."""
    by = {name: {o.task_id: o for o in outcomes if o.condition == name} for name in conditions}
    baseline = by.get(STUDENT_ALONE)
    stats = []
    for name in conditions:
        rows = list(by[name].values())
        n = len(rows)
        correct = sum(1 for o in rows if o.correct)
        low, high = wilson_interval(correct, n)
        non_degradation = None
        if baseline is not None and name != STUDENT_ALONE:
            broken = sum(
                1
                for task_id, o in by[name].items()
                if baseline.get(task_id) is not None and baseline[task_id].correct and not o.correct
            )
            non_degradation = 1 - broken / n if n else None
        stats.append(
            ConditionStats(
                condition=name,
                tasks=n,
                correct=correct,
                accuracy=correct / n if n else 0.0,
                ci_low=low,
                ci_high=high,
                completion=sum(1 for o in rows if o.completed) / n if n else 0.0,
                non_degradation=non_degradation,
                mean_tokens=(sum(o.input_tokens + o.output_tokens for o in rows) / n if n else 0.0),
                timed_out=sum(1 for o in rows if o.timed_out),
                failed_open=sum(1 for o in rows if o.failed_open),
            )
        )
    return stats


def student_messages(task: str) -> list[ChatMessage]:
    """What the eval's student reads: its instructions, then the task with the teacher's guidance
    (if any) after it in the same user message.

    The guidance goes in the user turn, not the system prompt: with SmolLM2-135M as the student,
    an operation hint there lifted accuracy on one-step word problems more than in the system
    message (docs/learning.md), and a small model reads its last turn most closely.
    """
    from atlas_middleware.guidance import rendered_guidance

    text = rendered_guidance()
    content = task if not text else f"{task}\n\n{text}"
    return [
        {"role": "system", "content": STUDENT_INSTRUCTIONS},
        {"role": "user", "content": content},
    ]


async def run_eval(
    tasks: Sequence[Task],
    *,
    student: ChatModel,
    conditions: Sequence[Condition],
    store_url: str,
    agent: str = "eval",
    max_tokens: int = 96,
    reward: Any = False,
    on_outcome: Callable[[TaskOutcome], None] | None = None,
    concurrency: int = 32,
    teacher_timeout_s: float | None = None,
    teacher_max_tokens: int | None = None,
    learning_key: str | None = None,
) -> EvalReport:
    """Run every task under every condition as supervised sessions stored in ``store_url``.

    Sessions are named ``<agent>/<condition>`` with learning key ``<agent>:<run id>``, so one run's
    sessions can be found (and audited) in the store. Tracing goes to ``store_url`` for the run
    (replacing any atlas tracing configured before) and is shut down at the end; the supervisor's
    own store (playbook, lessons) is ``store_url`` too, never the configured default.

    With a ``reward`` (a RIMReward), each session is rewarded before its task counts as done,
    with the task's reference (which scores the reward only: validation stays the teacher's),
    so the learning key's playbook learns from it as in production; ``learning_key`` names that
    key (default: one per run).

    Within a condition, up to ``concurrency`` tasks run at once: a local model batches the calls
    that wait together into one ``generate`` (models/local.py), which is what makes a 300-task
    eval take minutes rather than hours on a CPU. Each session's tokens stay its own (usage is
    per asyncio task). ``teacher_timeout_s`` overrides the teacher step timeouts; whatever timed
    out or failed is counted per condition from the stored sessions; ``teacher_max_tokens``
    overrides the configured teacher reply budget (guidance and validation). A condition named
    :data:`WITH_HINT` shows each task's ``metadata.hint`` as the guidance (the generator's
    operation hint), a reference for what a good teacher could do.
    """
    import asyncio

    from opentelemetry import trace

    from atlas_middleware import telemetry
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.storage import open_store
    from atlas_middleware.supervise import supervise

    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    provider = telemetry.configure(exporter="atlas", store=store_url, service_name=agent)
    config = AtlasConfig.load()
    update: dict[str, Any] = {"storage": config.storage.model_copy(update={"url": store_url})}
    if teacher_max_tokens is not None:
        update["teacher"] = config.teacher.model_copy(update={"max_tokens": teacher_max_tokens})
    config = config.model_copy(update=update)
    outcomes: list[TaskOutcome] = []
    gate = asyncio.Semaphore(max(1, concurrency))
    for condition in conditions:
        supervise_options: dict[str, Any] = {
            "agent": f"{agent}/{condition.name}",
            "learning_key": learning_key or f"{agent}:{run_id}",
            "reward": reward,
            "config": config,
        }
        if reward is not False and reward is not None:
            supervise_options.update(reward_inline=True, reference_validates=False)
        if condition.prompts is not None:
            supervise_options["prompts"] = condition.prompts
        if teacher_timeout_s is not None:
            supervise_options.update(
                teacher_timeout_s=teacher_timeout_s, probe_timeout_s=teacher_timeout_s
            )
        if condition.teacher is None:
            # No teacher: the auto lane, the student alone, still one stored session per task.
            supervise_options.update(teacher=student, lane="auto")
        else:
            supervise_options.update(teacher=condition.teacher, lane=condition.lane)

        @supervise(**supervise_options)
        async def solve(task: str) -> str:
            seen = _SEEN.get()
            seen["trace_id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
            messages = student_messages(task)
            if seen.get("hint"):
                from atlas_middleware.guidance import use_guidance

                with use_guidance(seen["hint"], task=task):
                    messages = student_messages(task)
            reply = await student.chat(messages, max_tokens=max_tokens)
            return reply.text

        async def one(item: Task, condition: Condition = condition, solve: Any = solve) -> None:
            async with gate:
                seen: dict[str, Any] = {}
                _SEEN.set(seen)  # this asyncio task's own (gather runs each in a copied context)
                if condition.name == WITH_HINT:
                    seen["hint"] = item.metadata.get("hint")
                started = time.perf_counter()
                answer: str | None = None
                error = None
                try:
                    if reward is not False and reward is not None:
                        answer = await solve.options(reference=item.reference)(item.task)
                    else:
                        answer = await solve(item.task)
                except Exception as exc:  # the agent failed: an incomplete task, not a crash
                    error = f"{type(exc).__name__}: {exc}"
                completed = error is None and bool(answer and answer.strip())
                outcome = TaskOutcome(
                    task_id=item.id,
                    condition=condition.name,
                    answer=answer,
                    correct=item.is_correct(answer) if completed else False,
                    completed=completed,
                    trace_id=seen.get("trace_id"),
                    seconds=time.perf_counter() - started,
                    error=error,
                )
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

        await asyncio.gather(*(one(item) for item in tasks))

    # Lanes, tokens and failures as the store recorded them: the table reports what was stored.
    provider.force_flush()
    order = {(c.name, t.id): i for i, c in enumerate(conditions) for t in tasks}
    outcomes.sort(key=lambda o: order.get((o.condition, o.task_id), 0))
    with open_store(store_url) as store:
        from atlas_middleware.telemetry import schema as s

        spans = store.spans_for([o.trace_id for o in outcomes if o.trace_id])
        enriched = []
        for o in outcomes:
            row = store.get_session(o.trace_id) if o.trace_id else None
            failures: list[str] = []
            for span in spans.get(o.trace_id or "", []):
                recorded = span.attributes.get(s.ATLAS_FAILURES)
                if isinstance(recorded, (list, tuple)):
                    failures.extend(str(f) for f in recorded)
                elif recorded:
                    failures.append(str(recorded))
            changes: dict[str, Any] = {"failures": tuple(dict.fromkeys(failures))}
            if row is not None:
                changes.update(
                    lane=row.lane,
                    # The known parts: a failed session's student part is unknown (its total
                    # too) while the teacher's tokens it spent are not.
                    input_tokens=(row.student_input_tokens or 0) + (row.teacher_input_tokens or 0),
                    output_tokens=(row.student_output_tokens or 0)
                    + (row.teacher_output_tokens or 0),
                )
            enriched.append(TaskOutcome(**{**o.__dict__, **changes}))
    # The eval's provider pointed at its store; later sessions configure their own again.
    telemetry.shutdown()
    names = [c.name for c in conditions]
    return EvalReport(run_id=run_id, outcomes=enriched, stats=summarise(enriched, names))


# --- atlas eval rewards: is the reward system right about which answer is better? -----------------
@dataclass(frozen=True)
class Preference:
    prompt: str
    chosen: str
    rejected: str
    id: str = ""
    reference: str | None = None


@dataclass(frozen=True)
class PairOutcome:
    id: str
    chosen_score: float | None
    rejected_score: float | None
    # The order the judges saw the two answers in (it alternates by pair, so a judge that
    # prefers a position cannot look accurate), and how many judge-model calls were made.
    chosen_first: bool = True
    model_calls: int = 0

    @property
    def verdict(self) -> str:
        """``right`` (chosen scored higher), ``wrong``, ``tie`` or ``unscored``."""
        if self.chosen_score is None or self.rejected_score is None:
            return "unscored"
        if self.chosen_score > self.rejected_score:
            return "right"
        return "tie" if self.chosen_score == self.rejected_score else "wrong"


@dataclass(frozen=True)
class RewardEvalReport:
    pairs: list[PairOutcome]
    references: bool = True  # whether the pairs' references reached RIM

    def count(self, verdict: str) -> int:
        return sum(1 for p in self.pairs if p.verdict == verdict)

    @property
    def accuracy(self) -> float:
        """RewardBench's pairwise accuracy: a tie or an unscored pair counts as wrong."""
        return self.count("right") / len(self.pairs) if self.pairs else 0.0

    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.count("right"), len(self.pairs))

    def to_dict(self) -> dict[str, Any]:
        """The figures and the per-pair results (what ``--json`` prints)."""
        from dataclasses import asdict

        low, high = self.interval()
        return {
            "n": len(self.pairs),
            "accuracy": self.accuracy,
            "ci_low": low,
            "ci_high": high,
            **{v: self.count(v) for v in ("right", "wrong", "tie", "unscored")},
            "references": self.references,
            "model_calls": sum(p.model_calls for p in self.pairs),
            "pairs": [{**asdict(p), "verdict": p.verdict} for p in self.pairs],
        }

    def markdown(self) -> str:
        low, high = self.interval()
        source = (
            "references decide accuracy where given"
            if self.references
            else "no references: the judge models decide"
        )
        return (
            "| pairs | pairwise accuracy | 95% CI | right | wrong | ties | unscored |\n"
            "|---:|---:|---|---:|---:|---:|---:|\n"
            f"| {len(self.pairs)} | {self.accuracy:.1%} | {low:.1%}–{high:.1%} | "
            f"{self.count('right')} | {self.count('wrong')} | {self.count('tie')} | "
            f"{self.count('unscored')} |\n\n"
            f"{source}; {sum(p.model_calls for p in self.pairs)} judge-model calls.\n"
        )


def load_preferences(path: str | Path, *, limit: int | None = None) -> list[Preference]:
    """A preference file: JSON Lines of ``{"prompt", "chosen", "rejected"}`` (+ optional ``id``,
    ``reference``), the RewardBench layout."""
    import orjson

    from atlas_middleware.tasks import TaskFileError

    source = Path(path)
    if str(path) == "arithmetic":  # the bundled set, built from the bundled tasks
        from importlib import resources

        text = (
            resources.files("atlas_middleware") / "data" / "arithmetic-preferences.jsonl"
        ).read_text(encoding="utf-8")
    else:
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaskFileError(f"cannot read preference file {source}: {exc}") from None
    prefs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TaskFileError(f"{where}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise TaskFileError(f"{where}: expected a JSON object")
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), str)]
        if missing:
            raise TaskFileError(f"{where}: {', '.join(missing)} must be strings")
        reference = row.get("reference")
        prefs.append(
            Preference(
                prompt=row["prompt"],
                chosen=row["chosen"],
                rejected=row["rejected"],
                id=str(row.get("id") or f"pair-{number}"),
                reference=None if reference is None else str(reference),
            )
        )
        if limit is not None and len(prefs) >= limit:
            break
    if not prefs:
        raise TaskFileError(f"{source} holds no preference pairs")
    return prefs


async def run_reward_eval(
    prefs: Sequence[Preference],
    reward: Any,
    *,
    use_references: bool = True,
    on_pair: Callable[[PairOutcome], None] | None = None,
) -> RewardEvalReport:
    """Score chosen and rejected together (RIM's group mode: the judges see both answers in one
    call, as when ranking GRPO candidates) and count how often chosen wins.

    The two answers are shown in an order that alternates by pair (a stable hash of its id), so
    a judge that favours the first or the second answer scores about half, not 100%.
    ``use_references=False`` withholds the pairs' references: no verifier can decide accuracy,
    and the judge models judge every criterion themselves."""
    import zlib

    from atlas_middleware.rim import reference_match

    pairs = []
    for pref in prefs:
        reference = pref.reference if use_references else None
        # With a reference, accuracy is a match against it (as in supervised sessions).
        verifier = reference_match if reference is not None else None
        chosen_first = zlib.crc32(pref.id.encode()) % 2 == 0
        order = [pref.chosen, pref.rejected] if chosen_first else [pref.rejected, pref.chosen]
        first, second = await reward.evaluate_group(
            pref.prompt, order, reference, verifier=verifier
        )
        chosen, rejected = (first, second) if chosen_first else (second, first)
        calls = sum(1 for entry in first.audit if entry.role in ("sample", "escalation"))
        outcome = PairOutcome(pref.id, chosen.score, rejected.score, chosen_first, calls)
        pairs.append(outcome)
        if on_pair is not None:
            on_pair(outcome)
    return RewardEvalReport(pairs, references=use_references)
