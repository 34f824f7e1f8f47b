"""GEPA's view of atlas: a candidate (the four prompt texts) is scored by supervising the student
on each task with those prompts and judging the final answer with RIM; the trajectory of each
supervised run (probe, lane, guidance, validation, attempts, reward) becomes the reflective
feedback for each prompt.

Every (candidate, task) result is cached on disk, and so is every reflection reply: GEPA
re-evaluates its seed when it resumes, and a resumed run replays its interrupted iteration, so
both must be free the second time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from atlas_middleware.guidance import guidance as current_guidance
from atlas_middleware.guidance import with_guidance
from atlas_middleware.models.base import ChatModel
from atlas_middleware.optimize.ledger import Budget, BudgetExhausted, Ledger, Metered
from atlas_middleware.optimize.tasks import OptimizeTask
from atlas_middleware.prompts import COMPONENTS, TeacherPrompts
from atlas_middleware.supervise import SupervisionOptions, Supervisor
from atlas_middleware.teacher import Teacher, Verdict

if TYPE_CHECKING:
    from gepa.core.adapter import EvaluationBatch

# What each prompt must keep doing, told to the reflection model with the prompt's feedback.
CONTRACTS = {
    "probe": "It is the system instruction the teacher reads before estimating whether the "
    "student will solve a task alone. The teacher's reply must be one number between 0 and 1 "
    "(0.85 or more lets the student answer alone; below 0.65 the teacher guides first).",
    "guidance": "It is the system instruction the teacher reads before writing guidance that "
    "the student reads before answering (or before retrying a wrong answer). The guidance must "
    "be brief and must not state the final answer.",
    "validate": "It is the system instruction the teacher reads before checking a student's "
    "answer. The teacher's reply must start with VALID when the answer is correct, otherwise "
    "with INVALID: followed by what is wrong.",
    "playbook": "It is the student's playbook: standing lessons, one per line, shown to the "
    "teacher and the student on every task. Keep at most 6 short, general lessons.",
}

REFLECTION_TEMPLATE = (
    "You improve one prompt of an AI teacher that supervises a student AI. "
    "<contract>\n\nThe current text:\n```\n<curr_param>\n```\n\n"
    "How it worked on recent tasks (the inputs, what was produced, and feedback from the "
    "rewards):\n```\n<side_info>\n```\n\n"
    "Write an improved text. Keep it short and general (it is used for every task, not only "
    "these), keep the required reply format, and never include the answer to a specific task. "
    "Put the new text in one ``` block."
)
_CLIP = 400  # characters of a task, answer or guidance shown to the reflection model


def reflection_templates() -> dict[str, str]:
    return {c: REFLECTION_TEMPLATE.replace("<contract>", CONTRACTS[c]) for c in COMPONENTS}


def candidate_key(candidate: Mapping[str, str]) -> str:
    data = orjson.dumps({k: candidate.get(k, "") for k in COMPONENTS})
    return hashlib.sha256(data).hexdigest()[:20]


class JsonlCache:
    """An append-only JSON Lines map: one ``{"key": ..., "value": ...}`` per line; the last
    line of a key wins; a torn last line (killed mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                self.data[row["key"]] = row["value"]

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(orjson.dumps({"key": key, "value": value}) + b"\n")

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class RolloutSettings:
    student_max_tokens: int = 64
    probe_max_tokens: int = 50
    guidance_max_tokens: int = 160
    lane: str | None = None  # force a lane; None lets the candidate's probe decide
    teacher_timeout_s: float = 120.0
    concurrency: int = 1
    student_system: str | None = None


class _RecordingTeacher(Teacher):
    """The teacher with the candidate's prompts, noting each job's inputs and output."""

    def __init__(self, model: ChatModel, steps: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.steps = steps

    async def probe(self, task: str, playbook: Sequence[str] = ()) -> float | None:
        step: dict[str, Any] = {"job": "probe"}
        self.steps.append(step)
        try:
            step["confidence"] = value = await super().probe(task, playbook)
        except Exception as exc:
            step["error"] = f"{type(exc).__name__}: {exc}"[:200]
            raise
        return value

    async def guidance(
        self,
        task: str,
        playbook: Sequence[str] = (),
        *,
        attempt: str | None = None,
        problem: str | None = None,
    ) -> str:
        step: dict[str, Any] = {"job": "guidance", "attempt": attempt, "problem": problem}
        self.steps.append(step)
        try:
            step["text"] = text = await super().guidance(
                task, playbook, attempt=attempt, problem=problem
            )
        except Exception as exc:
            step["error"] = f"{type(exc).__name__}: {exc}"[:200]
            raise
        return text

    async def validate(self, task: str, answer: str, *, plan: str | None = None) -> Verdict:
        step: dict[str, Any] = {"job": "validate", "answer": answer}
        self.steps.append(step)
        try:
            verdict = await super().validate(task, answer, plan=plan)
        except Exception as exc:
            step["error"] = f"{type(exc).__name__}: {exc}"[:200]
            raise
        step["valid"], step["reason"] = verdict.valid, verdict.reason
        return verdict


class _RolloutSupervisor(Supervisor):
    consulted = False  # the flow asked for the lessons (it does whenever a teacher step runs)

    def lessons(self, key: str) -> list[str]:
        # Only the candidate's playbook: learned lessons in a store would change between
        # rollouts and make candidates incomparable.
        self.consulted = True
        return self.prompts.lessons()


class AtlasAdapter:
    """A :class:`gepa.GEPAAdapter` over supervised runs of the student, scored by RIM."""

    propose_new_texts = None  # GEPA's reflective proposer writes the new texts

    def __init__(
        self,
        *,
        base: TeacherPrompts,
        student: ChatModel,
        teacher: ChatModel,
        reward: Any,  # RIMReward
        verifiers: Mapping[str, Any],  # task id -> Verifier or None
        ledger: Ledger,
        budget: Budget,
        cache: JsonlCache,
        settings: RolloutSettings,
        rollout_bound: int,
        on_rollout: Callable[[], None] | None = None,
    ) -> None:
        self.base = base
        self.student = student
        self.teacher = teacher
        self.reward = reward
        self.verifiers = verifiers
        self.ledger = ledger
        self.budget = budget
        self.cache = cache
        self.settings = settings
        self.rollout_bound = rollout_bound  # worst-case model calls of one rollout
        self.on_rollout = on_rollout
        self.reserve_calls = 0  # kept back for the held-out check
        self.reserve_s = 0.0

    # --- budget ---------------------------------------------------------------------------
    def rollout_calls(self) -> int:
        """What one more rollout may cost: the most any rollout needed so far, or the bound."""
        return self.ledger.max_rollout_calls or self.rollout_bound

    # --- GEPA protocol --------------------------------------------------------------------
    def prompts_for(self, candidate: Mapping[str, str]) -> TeacherPrompts:
        texts = {}
        for name in COMPONENTS:
            text = str(candidate.get(name, ""))[:4000]
            # A blank job prompt cannot work; keep the base text rather than crash the search.
            texts[name] = (
                text if text.strip() or name == "playbook" else self.base.components()[name]
            )
        return self.base.with_components(texts)

    def evaluate(
        self, batch: list[OptimizeTask], candidate: dict[str, str], capture_traces: bool = False
    ) -> EvaluationBatch[dict[str, Any], dict[str, Any]]:
        from gepa.core.adapter import EvaluationBatch

        records = self.run(batch, candidate)
        return EvaluationBatch(
            outputs=[{"answer": r["answer"], "score": r["score"]} for r in records],
            scores=[float(r["score"]) for r in records],
            trajectories=records if capture_traces else None,
        )

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        dataset: dict[str, list[dict[str, Any]]] = {}
        for component in components_to_update:
            rows = [
                row
                for record in eval_batch.trajectories or []
                for row in _feedback(component, record)
            ]
            if rows:
                dataset[component] = rows
        return dataset

    # --- rollouts -------------------------------------------------------------------------
    def run(
        self, batch: Sequence[OptimizeTask], candidate: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """One record per task: from the cache, else a supervised run (budget permitting)."""
        from atlas_middleware.portal import get_portal

        key = candidate_key(candidate)
        records: list[dict[str, Any] | None] = []
        todo: list[int] = []
        for index, task in enumerate(batch):
            cached = self.cache.get(f"{key}:{task.id}")
            records.append(cached)
            if cached is None:
                todo.append(index)
            else:
                self.ledger.cached_rollouts += 1
        if todo:
            prompts = self.prompts_for(candidate)
            get_portal().call(lambda: self._run_all(prompts, key, batch, todo, records))
        return [r for r in records if r is not None]

    async def _run_all(
        self,
        prompts: TeacherPrompts,
        key: str,
        batch: Sequence[OptimizeTask],
        todo: list[int],
        records: list[dict[str, Any] | None],
    ) -> None:
        limit = asyncio.Semaphore(max(1, self.settings.concurrency))
        stop: list[str] = []
        in_flight = 0

        async def one(index: int) -> None:
            nonlocal in_flight
            async with limit:
                if stop:
                    return
                reason = self.budget.shortfall(
                    self.rollout_calls() * (in_flight + 1),
                    self.ledger.mean_rollout_seconds(),
                    reserve_calls=self.reserve_calls,
                    reserve_s=self.reserve_s,
                )
                if reason is not None:
                    stop.append(reason)
                    return
                in_flight += 1
                try:
                    task = batch[index]
                    record = await self.rollout(prompts, task)
                    records[index] = record
                    self.cache.put(f"{key}:{task.id}", record)
                finally:
                    in_flight -= 1
                if self.on_rollout is not None:
                    self.on_rollout()

        jobs = [asyncio.ensure_future(one(i)) for i in todo]
        try:
            await asyncio.gather(*jobs)
        except BaseException:
            # One rollout failed: the rest must not go on spending in the background.
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        if stop:
            raise BudgetExhausted(stop[0])

    async def rollout(self, prompts: TeacherPrompts, task: OptimizeTask) -> dict[str, Any]:
        """Supervise the student on ``task`` with ``prompts``; judge the answer with RIM."""
        started = time.monotonic()
        s = self.settings
        student = Metered(self.student, "student", self.ledger)
        teacher = Metered(self.teacher, "teacher", self.ledger)
        # The judge is shared: with concurrent rollouts this over-counts, which only makes the
        # budget check more careful.
        judge_calls_before = self.ledger.roles["judge"].calls
        steps: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        options = SupervisionOptions(
            agent="atlas-optimize",
            lane=s.lane,
            teacher_timeout_s=s.teacher_timeout_s,
            probe_timeout_s=s.teacher_timeout_s,
            reward_rate=0.0,
            task=lambda *args, **kwargs: task.task,
        )
        supervisor = _RolloutSupervisor(options, teacher=teacher, reward=None, prompts=prompts)
        supervisor.teacher = _RecordingTeacher(
            teacher,
            steps,
            prompts=prompts,
            probe_max_tokens=s.probe_max_tokens,
            guidance_max_tokens=s.guidance_max_tokens,
        )

        async def solve(text: str) -> str:
            messages: list[Any] = [{"role": "user", "content": text}]
            if s.student_system:
                messages.insert(0, {"role": "system", "content": s.student_system})
            reply = await student.chat(with_guidance(messages), max_tokens=s.student_max_tokens)
            attempts.append({"guidance": current_guidance(), "answer": reply.text})
            return reply.text

        answer = await supervisor.run_async(solve, (task.task,), {}, options)
        verifier = self.verifiers.get(task.id)
        reward = await self.reward.evaluate(task.task, answer, task.reference, verifier=verifier)
        if verifier is not None and task.reference is not None:
            for attempt in attempts:
                attempt["correct"] = _truth(
                    await verifier.run(task.task, attempt["answer"], task.reference)
                )
            for step in steps:
                if step["job"] == "validate" and "valid" in step:
                    step["truth"] = _truth(
                        await verifier.run(task.task, step["answer"], task.reference)
                    )
        calls = student.usage.calls + teacher.usage.calls
        calls += self.ledger.roles["judge"].calls - judge_calls_before
        seconds = time.monotonic() - started
        self.ledger.rollouts += 1
        if reward.score is None:
            self.ledger.unscored_rollouts += 1
        self.ledger.max_rollout_calls = max(self.ledger.max_rollout_calls, calls)
        self.ledger.rollout_seconds += seconds
        return {
            "task_id": task.id,
            "task": task.task,
            "reference": task.reference,
            "lane": _lane(steps, attempts),
            "playbook_used": supervisor.consulted,
            "steps": steps,
            "attempts": attempts,
            "answer": answer,
            "score": float(reward.score) if reward.score is not None else 0.0,
            "scored": reward.score is not None,
            "rationale": (reward.rationale or reward.error or "")[:600],
            "calls": calls,
            "seconds": round(seconds, 3),
        }


def _truth(score: float | None) -> bool | None:
    return None if score is None else score >= 0.5


def _lane(steps: list[dict[str, Any]], attempts: list[dict[str, Any]]) -> str:
    jobs = [step["job"] for step in steps]
    if attempts and attempts[0]["guidance"]:
        return "coach"
    if "validate" in jobs:
        return "paired"
    return "auto"


def _clip(text: Any) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= _CLIP else value[: _CLIP - 3] + "..."


def _outcome(record: dict[str, Any]) -> str:
    parts = [f"reward {record['score']:.2f}"]
    if record.get("reference") is not None:
        parts.append(f"reference answer: {_clip(record['reference'])}")
    if record.get("rationale"):
        parts.append(f"judges: {_clip(record['rationale'])}")
    return "; ".join(parts)


def _feedback(component: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Reflective-dataset rows for one prompt from one supervised run."""
    task = _clip(record["task"])
    steps, attempts = record["steps"], record["attempts"]
    rows: list[dict[str, Any]] = []
    if component == "probe":
        for step in (s for s in steps if s["job"] == "probe"):
            first = attempts[0] if attempts else {}
            if "error" in step:
                said, note = "no reply", f"The probe call failed ({step['error']})."
            elif step.get("confidence") is None:
                said = "a reply without a number"
                note = "The reply must be one number between 0 and 1."
            else:
                said = f"confidence {step['confidence']:.2f} (lane {record['lane']})"
                correct = first.get("correct") if not first.get("guidance") else None
                if correct is None:
                    note = f"Final {_outcome(record)}."
                elif correct:
                    note = "The student's own answer was right: a high confidence fits."
                else:
                    note = "The student's own answer was wrong: the confidence should be low."
            rows.append({"Inputs": {"task": task}, "Generated Outputs": said, "Feedback": note})
    elif component == "guidance":
        for step in (s for s in steps if s["job"] == "guidance" and s.get("text")):
            inputs = {"task": task}
            if step.get("attempt") is not None:
                inputs["student's first answer"] = _clip(step["attempt"])
                inputs["what was wrong"] = _clip(step.get("problem"))
            after = next((a for a in attempts if a["guidance"] == step["text"]), None)
            answer = _clip(after["answer"]) if after else _clip(record["answer"])
            verdict = {True: " (right)", False: " (wrong)", None: ""}.get(
                after.get("correct") if after else None, ""
            )
            rows.append(
                {
                    "Inputs": inputs,
                    "Generated Outputs": _clip(step["text"]),
                    "Feedback": f"With this guidance the student answered: {answer}{verdict}. "
                    f"{_outcome(record)}.",
                }
            )
    elif component == "validate":
        for step in (s for s in steps if s["job"] == "validate" and "valid" in s):
            truth = step.get("truth")
            said = "VALID" if step["valid"] else f"INVALID: {_clip(step.get('reason'))}"
            if truth is None:
                note = f"Final {_outcome(record)}."
            elif truth == step["valid"]:
                note = "The verdict was right."
            else:
                actual = "right" if truth else "wrong"
                note = f"The verdict was wrong: the answer is {actual} ({_outcome(record)})."
            rows.append(
                {
                    "Inputs": {"task": task, "student's answer": _clip(step["answer"])},
                    "Generated Outputs": said,
                    "Feedback": note,
                }
            )
    elif component == "playbook" and record.get("playbook_used", True):
        rows.append(
            {
                "Inputs": {"task": task},
                "Generated Outputs": _clip(record["answer"]),
                "Feedback": f"Lane {record['lane']}; {_outcome(record)}.",
            }
        )
    return rows


class FeedbackRoundRobin:
    """GEPA's round-robin over the prompts, skipping a prompt the minibatch gave no feedback on
    (the probe when the lane is forced, validation when every run took the auto lane): asking
    the reflection model about it would cost an iteration for nothing."""

    def __call__(
        self,
        state: Any,
        trajectories: list[dict[str, Any]],
        subsample_scores: list[float],
        candidate_idx: int,
        candidate: dict[str, str],
    ) -> list[str]:
        names = state.list_of_named_predictors
        start = state.named_predictor_id_to_update_next_for_program_candidate[candidate_idx]
        for offset in range(len(names)):
            index = (start + offset) % len(names)
            if any(_feedback(names[index], record) for record in trajectories):
                break
        else:
            index = start % len(names)
        state.named_predictor_id_to_update_next_for_program_candidate[candidate_idx] = (
            index + 1
        ) % len(names)
        return [names[index]]


class ReflectionModel:
    """The reflection LM GEPA calls with a prompt string: metered, budgeted and cached (a
    resumed run replays its interrupted iteration without paying for the same reflection)."""

    def __init__(
        self,
        model: ChatModel,
        *,
        ledger: Ledger,
        budget: Budget,
        cache: JsonlCache,
        max_tokens: int = 400,
        reserve: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
    ) -> None:
        self.model = Metered(model, "reflection", ledger)
        self.ledger = ledger
        self.budget = budget
        self.cache = cache
        self.max_tokens = max_tokens
        self.reserve = reserve

    @property
    def total_cost(self) -> float:
        return self.ledger.roles["reflection"].cost_usd

    @property
    def total_tokens_in(self) -> int:
        return self.ledger.roles["reflection"].input_tokens

    @property
    def total_tokens_out(self) -> int:
        return self.ledger.roles["reflection"].output_tokens

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        from atlas_middleware.portal import get_portal

        if isinstance(prompt, str):
            messages: list[Any] = [{"role": "user", "content": prompt}]
        else:
            messages = [{"role": m["role"], "content": str(m["content"])} for m in prompt]
        key = hashlib.sha256(orjson.dumps(messages)).hexdigest()[:24]
        cached: str | None = self.cache.get(key)
        if cached is not None:
            return cached
        calls, seconds = self.reserve()
        self.budget.require(1, 0.0, reserve_calls=calls, reserve_s=seconds)
        result = get_portal().call(lambda: self.model.chat(messages, max_tokens=self.max_tokens))
        self.cache.put(key, result.text)
        return result.text
