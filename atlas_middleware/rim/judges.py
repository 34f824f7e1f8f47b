"""What a RIM judge and a programmatic verifier are, and the four built-in judges.

A :class:`Judge` is data, not code: a name, the rubric the judge model reads, a default weight
and how it relates to ground truth. :class:`~atlas_middleware.rim.RIMReward` does the prompting,
sampling, escalation and parsing the same way for every judge, so a plugin adds a judge by
returning one from the ``atlas_judges`` hook.

A :class:`Verifier` is code: ``check(task, answer, reference)`` returns ``True``/``False`` or a
score in [0, 1] (decides the ``accuracy`` judge without a model call), or ``None`` to abstain
(e.g. it does not recognise the task), and the judges fall back to model judgement.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

VerifierResult = bool | float | None
VerifierCheck = Callable[[str, str, Any], VerifierResult | Awaitable[VerifierResult]]

ACCURACY = "accuracy"


@dataclass(frozen=True, slots=True)
class Judge:
    name: str
    rubric: str  # what this judge looks at; shown to the judge model verbatim
    weight: float = 0.2  # default weight in the aggregate (RIMReward(weights=...) overrides)
    # Show the reference answer to this judge when one is given.
    uses_reference: bool = False
    # Show the agent's trajectory (tool calls, intermediate steps) when one is given.
    uses_trajectory: bool = False
    # A verifier's verdict decides this judge's score: no model call is made.
    decided_by_verifier: bool = False
    # Consistency cap: when accuracy is grounded (reference or verifier), this judge's score may
    # not exceed accuracy + cap. A wrong answer cannot be rescued by a nice process or tone.
    cap_above_accuracy: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"judge name {self.name!r}: use letters, digits, '_' or '-' "
                "(it becomes the evaluation name atlas.rim.<name>)"
            )
        if self.weight < 0:
            raise ValueError(f"judge {self.name}: weight must be 0 or more (got {self.weight})")


@dataclass(frozen=True, slots=True)
class Verifier:
    """A programmatic check of an answer, e.g. exact match, unit tests, a SQL result compare."""

    name: str
    check: VerifierCheck

    async def run(self, task: str, answer: str, reference: Any) -> float | None:
        """The verdict as a score in [0, 1], or None when the verifier abstains."""
        result = self.check(task, answer, reference)
        if inspect.isawaitable(result):
            result = await result
        return verdict_score(result)


def verdict_score(result: Any) -> float | None:
    if result is None:
        return None
    if isinstance(result, bool):
        return 1.0 if result else 0.0
    if isinstance(result, int | float):
        value = float(result)
        if not math.isfinite(value):  # NaN or ±inf: no verdict rather than a poisoned aggregate
            return None
        return min(1.0, max(0.0, value))
    raise TypeError(
        f"verifier returned {type(result).__name__}; return True/False, a score in [0, 1] "
        "or None to abstain"
    )


def as_verifier(value: Verifier | VerifierCheck, name: str | None = None) -> Verifier:
    """Accept a :class:`Verifier` or a bare callable (named after the function)."""
    if isinstance(value, Verifier):
        return value
    if not callable(value):
        raise TypeError(f"verifier must be a Verifier or a callable, got {type(value).__name__}")
    label = name or str(getattr(value, "__name__", "verifier"))
    return Verifier(label, value)


def exact_match(task: str, answer: str, reference: Any) -> bool | None:
    """A ready-made verifier: normalised string equality with the reference (None without one)."""
    if reference is None:
        return None
    return _normalise(answer) == _normalise(str(reference))


def reference_match(task: str, answer: str, reference: Any) -> bool | None:
    """A ready-made verifier for references that are answers: equal after trimming and
    lower-casing, or, for a numeric reference, equal to the last number in the answer (agents
    rarely answer with the bare number). None without a reference."""
    if reference is None:
        return None
    a, r = answer.strip().lower(), str(reference).strip().lower()
    if a == r:
        return True
    numbers = re.findall(r"-?\d+(?:\.\d+)?", a.replace(",", ""))
    try:
        return bool(numbers) and float(numbers[-1]) == float(r.replace(",", ""))
    except ValueError:
        return False


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


# --- built-in judges ------------------------------------------------------------------------------
# Weights: accuracy dominates (a right answer matters more than how it was reached); they are
# normalised over the judges that produced a score, so an excluded judge's weight is redistributed.
ACCURACY_JUDGE = Judge(
    name=ACCURACY,
    rubric=(
        "Is the response's final answer correct and does it actually solve the task? When a "
        "reference answer is given, compare the response with it: equivalent answers in another "
        "form are correct; a wrong final result is wrong however good the explanation. Without a "
        "reference, check the answer yourself and say how sure you are."
    ),
    weight=0.5,
    uses_reference=True,
    decided_by_verifier=True,
)

PROCESS_JUDGE = Judge(
    name="process",
    rubric=(
        "Is the reasoning or procedure sound? Look for valid steps, correct use of tools and "
        "information, no unjustified leaps, and checks of the result. Judge the method, not the "
        "style."
    ),
    weight=0.2,
    uses_trajectory=True,
    cap_above_accuracy=0.1,
)

HELPFULNESS_JUDGE = Judge(
    name="helpfulness",
    rubric=(
        "Does the response give the user what they asked for, clearly and completely, following "
        "every instruction in the task (format, constraints, scope)?"
    ),
    weight=0.2,
    cap_above_accuracy=0.2,
)

EFFICIENCY_JUDGE = Judge(
    name="efficiency",
    rubric=(
        "Is the response economical? Penalise padding, repetition, needless steps or tool calls "
        "and excessive length for what the task needs; do not penalise length the task requires."
    ),
    weight=0.1,
    uses_trajectory=True,
)

DEFAULT_JUDGES: tuple[Judge, ...] = (
    ACCURACY_JUDGE,
    PROCESS_JUDGE,
    HELPFULNESS_JUDGE,
    EFFICIENCY_JUDGE,
)
