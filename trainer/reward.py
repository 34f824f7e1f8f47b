"""The teaching reward GRPO optimises: does the teacher's guidance make the frozen student better?

For each candidate guidance the student answers twice — once without guidance (the baseline,
cached per task: the student is frozen, so it never changes) and once with it — and both answers
are scored by the task's verifier or reference, or by RIM when there is neither. Then:

=====================  =====================  ==========================================
baseline               with guidance          reward
=====================  =====================  ==========================================
wrong                  right                  ``improvement`` + efficiency
right                  right                  efficiency
right                  wrong                  ``-degradation``
wrong                  wrong                  0
=====================  =====================  ==========================================

Efficiency is ``efficiency × (1 − guidance_tokens / guidance_budget)``, floored at 0, so longer
guidance earns less. Guidance that states the reference answer (when the task does not already
show it), or states any result at all ("= 43", "the answer is 41", right or wrong), is a leak: its reward becomes ``min(reward, 0) − leak_penalty``, so leaking is never
better than an honest failure (``leak_penalty: 0`` switches the check off). Without a reference
or verifier, RIM's scores stand in and the reward follows their delta.

Unlike ATLAS Core's later judge average, the student's *answers* are scored, never the
teacher's text.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from atlas_middleware.leaks import leaks_reference, states_an_answer
from atlas_middleware.rim.judges import as_verifier, reference_match, verdict_score

__all__ = [
    "Outcome",
    "RewardWeights",
    "Student",
    "StudentAnswer",
    "TeachingReward",
    "leaks_reference",
    "teaching_reward",
]

# Two graded scores are "the same" within this margin (RIM's scores are noisy floats).
_SAME = 1e-6


@dataclass(slots=True)
class RewardWeights:
    """The reward's terms; every one is configurable from the recipe's ``reward:`` section."""

    improvement: float = 1.0  # guidance fixed a wrong baseline
    efficiency: float = 0.5  # most a short guidance earns on a right answer
    degradation: float = 1.0  # penalty when guidance breaks a right baseline
    leak_penalty: float = 1.0  # penalty when guidance states the reference (0: no check)
    guidance_budget: int = 128  # tokens; guidance this long earns no efficiency bonus
    threshold: float = 0.5  # a score at least this is "right"

    def __post_init__(self) -> None:
        for name in ("improvement", "efficiency", "degradation", "leak_penalty"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reward.{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.guidance_budget, int) or self.guidance_budget < 1:
            raise ValueError(
                f"reward.guidance_budget must be a whole number >= 1, got {self.guidance_budget!r}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"reward.threshold must be in (0, 1], got {self.threshold!r}")


@dataclass(slots=True)
class Outcome:
    reward: float
    branch: str  # fixed, kept, broke, neither, unscored (+ ", leak")
    baseline_right: bool | None
    guided_right: bool | None
    efficiency: float = 0.0
    leaked: bool = False


def _efficiency(weights: RewardWeights, guidance_tokens: int) -> float:
    return weights.efficiency * max(0.0, 1.0 - guidance_tokens / weights.guidance_budget)


def teaching_reward(
    baseline: float | None,
    guided: float | None,
    *,
    guidance_tokens: int,
    leaked: bool = False,
    graded: bool = True,
    weights: RewardWeights | None = None,
) -> Outcome:
    """The reward for one candidate guidance given the student's two scores in [0, 1].

    ``graded``: the scores come from a verifier or reference (right/wrong at ``threshold``);
    otherwise they are RIM scores and their delta counts. A ``None`` score (nothing could
    judge the answer) gives 0: no signal, rather than a guess.
    """
    w = weights or RewardWeights()
    eff = _efficiency(w, guidance_tokens)
    if baseline is None or guided is None:
        outcome = Outcome(0.0, "unscored", None, None)
    elif graded:
        before, after = baseline >= w.threshold, guided >= w.threshold
        if after and not before:
            outcome = Outcome(w.improvement + eff, "fixed", before, after, eff)
        elif after and before:
            outcome = Outcome(eff, "kept", before, after, eff)
        elif before:
            outcome = Outcome(-w.degradation, "broke", before, after)
        else:
            outcome = Outcome(0.0, "neither", before, after)
    else:
        before, after = baseline >= w.threshold, guided >= w.threshold
        delta = guided - baseline
        if delta > _SAME:
            outcome = Outcome(w.improvement * delta + eff, "fixed", before, after, eff)
        elif delta < -_SAME:
            outcome = Outcome(w.degradation * delta, "broke", before, after)
        elif after:
            outcome = Outcome(eff, "kept", before, after, eff)
        else:
            outcome = Outcome(0.0, "neither", before, after)
    if leaked and w.leak_penalty > 0:
        outcome.reward = min(outcome.reward, 0.0) - w.leak_penalty
        outcome.efficiency = 0.0
        outcome.leaked = True
        outcome.branch += ", leak"
    return outcome


@dataclass(slots=True)
class StudentAnswer:
    text: str
    tokens: int = 0


class Student(Protocol):
    """The frozen student: answers a batch of tasks, each with or without guidance."""

    def answer(
        self, tasks: Sequence[str], guidance: Sequence[str | None]
    ) -> list[StudentAnswer]: ...


Scorer = Callable[[str, str, str | None], float | None]


def _default_scorer(verifier: Any = None, rim: Any = None) -> Scorer:
    """score(task, answer, reference) → [0, 1] or None: the verifier, else the reference (atlas's
    ``reference_match``), else RIM, else None (unscored)."""
    check = as_verifier(verifier) if verifier is not None else None

    def score(task: str, answer: str, reference: str | None) -> float | None:
        if check is not None:
            result = check.check(task, answer, reference)
            if hasattr(result, "__await__"):
                raise TypeError("the trainer's verifier must be synchronous")
            if _non_finite(result):
                return float(result)  # TeachingReward rejects and counts it
            value = verdict_score(result)
            if value is not None:
                return value
        if reference is not None:
            return verdict_score(reference_match(task, answer, reference))
        if rim is not None:
            return rim.evaluate_sync(task, answer).score
        return None

    return score


def _non_finite(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, float | int) and not isinstance(value, bool) and not math.isfinite(value)
    )


@dataclass
class StepMetrics:
    """What one reward call saw, for logs and the curves PNG."""

    reward_mean: float
    baseline_accuracy: float
    guided_accuracy: float
    accuracy_delta: float
    non_degradation: float
    leak_rate: float
    unscored_rate: float = 0.0  # share of rollouts nothing could score (reward 0, no signal)
    rejected_scores: int = 0  # NaN/inf scores refused in this call (they count as unscored)
    branches: dict[str, int] = field(default_factory=dict)


class TeachingReward:
    """A TRL reward function (``reward_funcs=[TeachingReward(student)]``).

    The dataset needs ``task`` and ``reference`` columns (``reference`` may be None); the
    completions are the teacher's candidate guidance. Each call logs
    ``teaching/reward_mean``, ``teaching/accuracy_delta``, ``teaching/non_degradation`` and
    friends through TRL's ``log_metric`` and keeps them in :attr:`history`.
    """

    __name__ = "teaching_reward"  # TRL names the reward's metrics after this

    def __init__(
        self,
        student: Student,
        weights: RewardWeights | None = None,
        *,
        verifier: Any = None,
        rim: Any = None,
        scorer: Scorer | None = None,
        graded: bool | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self.student = student
        self.weights = weights or RewardWeights()
        self.scorer = scorer or _default_scorer(verifier, rim)
        # Graded (right/wrong) when a verifier or reference decides; RIM scores count as deltas.
        self._graded = graded
        self._has_verifier = verifier is not None or scorer is not None
        self.cache_size = cache_size
        self._baselines: dict[tuple[str, str | None], float | None] = {}
        self._lock = threading.Lock()
        self.history: list[StepMetrics] = []
        self.student_calls = 0
        self.rejected_scores = 0  # NaN/inf scores refused over the run
        self._rejected_now = 0

    def _scored(self, task: str, answer: str, reference: str | None) -> float | None:
        """The scorer's verdict, with NaN/inf refused and counted instead of reaching GRPO."""
        value = self.scorer(task, answer, reference)
        if value is not None and _non_finite(value):
            with self._lock:
                self.rejected_scores += 1
                self._rejected_now += 1
            return None
        return value

    def _is_graded(self, reference: str | None) -> bool:
        if self._graded is not None:
            return self._graded
        return self._has_verifier or reference is not None

    def baseline(
        self, tasks: Sequence[str], references: Sequence[str | None]
    ) -> list[float | None]:
        """The unguided student's score per task, each task asked once over the whole run."""
        keys = list(zip(tasks, references, strict=True))
        known, missing = self._known(keys)
        if missing:
            answers = self.student.answer([t for t, _ in missing], [None] * len(missing))
            known.update(self._remember(missing, answers))
        return [known[k] for k in keys]

    def _known(self, keys: Sequence[tuple[str, str | None]]) -> tuple[dict, list]:
        """The cached baselines of ``keys`` (a snapshot: the cache may be cleared meanwhile)
        and the distinct keys still to ask."""
        with self._lock:
            known = {k: self._baselines[k] for k in keys if k in self._baselines}
        return known, list(dict.fromkeys(k for k in keys if k not in known))

    def _remember(
        self, missing: Sequence[tuple[str, str | None]], answers: Sequence[StudentAnswer]
    ) -> dict[tuple[str, str | None], float | None]:
        self.student_calls += len(missing)
        scores = {
            k: self._scored(k[0], a.text, k[1]) for k, a in zip(missing, answers, strict=True)
        }
        with self._lock:
            if len(self._baselines) + len(missing) > self.cache_size:
                self._baselines.clear()  # a bounded cache: re-asking is only slower
            self._baselines.update(scores)
        return scores

    def score(
        self,
        tasks: Sequence[str],
        guidance: Sequence[str],
        references: Sequence[str | None],
        guidance_tokens: Sequence[int],
    ) -> list[Outcome]:
        keys = list(zip(tasks, references, strict=True))
        known, missing = self._known(keys)
        # Baselines the cache lacks and the guided answers go to the student as one batch: an
        # engine schedules them together, a server gets them concurrently.
        answers = self.student.answer(
            [t for t, _ in missing] + list(tasks), [None] * len(missing) + list(guidance)
        )
        if missing:
            known.update(self._remember(missing, answers[: len(missing)]))
        answers = answers[len(missing) :]
        self.student_calls += len(answers)
        base = [known[k] for k in keys]
        outcomes = []
        for task, text, ref, tokens, before, answer in zip(
            tasks, guidance, references, guidance_tokens, base, answers, strict=True
        ):
            after = self._scored(task, answer.text, ref)
            # A stated result ("= 43", "the answer is 41") is a leak whether or not it is right:
            # guidance that solves instead of teaching is what the teacher must unlearn.
            leaked = self.weights.leak_penalty > 0 and (
                leaks_reference(text, ref, task) or states_an_answer(text)
            )
            outcomes.append(
                teaching_reward(
                    before,
                    after,
                    guidance_tokens=tokens,
                    leaked=leaked,
                    graded=self._is_graded(ref),
                    weights=self.weights,
                )
            )
        return outcomes

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        *,
        task: Sequence[str],
        reference: Sequence[str | None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float]:
        texts = [_completion_text(c) for c in completions]
        references = list(reference) if reference is not None else [None] * len(texts)
        if completion_ids is not None:
            tokens = [len(ids) for ids in completion_ids]
        else:
            tokens = [max(1, len(t.split())) for t in texts]
        with self._lock:
            self._rejected_now = 0
        outcomes = self.score(list(task), texts, references, tokens)
        metrics = summarise(outcomes)
        metrics.rejected_scores = self._rejected_now
        self.history.append(metrics)
        if log_metric is not None:
            for name in (
                "reward_mean",
                "baseline_accuracy",
                "guided_accuracy",
                "accuracy_delta",
                "non_degradation",
                "leak_rate",
                "unscored_rate",
                "rejected_scores",
            ):
                log_metric(f"teaching/{name}", float(getattr(metrics, name)))
        return [o.reward for o in outcomes]


def summarise(outcomes: Sequence[Outcome]) -> StepMetrics:
    n = max(1, len(outcomes))
    scored = [o for o in outcomes if o.baseline_right is not None]
    m = max(1, len(scored))
    before = sum(bool(o.baseline_right) for o in scored) / m
    after = sum(bool(o.guided_right) for o in scored) / m
    # Non-degradation: of the answers the student had right alone, the share still right with
    # the guidance (1.0 when it had none right: nothing was there to break).
    right_before = [o for o in scored if o.baseline_right]
    kept = (
        sum(bool(o.guided_right) for o in right_before) / len(right_before) if right_before else 1.0
    )
    branches: dict[str, int] = {}
    for o in outcomes:
        branches[o.branch] = branches.get(o.branch, 0) + 1
    return StepMetrics(
        reward_mean=sum(o.reward for o in outcomes) / n,
        baseline_accuracy=before,
        guided_accuracy=after,
        accuracy_delta=after - before,
        non_degradation=kept,
        leak_rate=sum(o.leaked for o in outcomes) / n,
        unscored_rate=sum(o.baseline_right is None for o in outcomes) / n,
        branches=branches,
    )


def _completion_text(completion: Any) -> str:
    # Conversational datasets give [{"role": "assistant", "content": ...}]; plain ones a str.
    if isinstance(completion, str):
        return completion.strip()
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "").strip()
    return str(completion).strip()
