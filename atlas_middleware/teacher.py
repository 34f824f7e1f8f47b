"""The teacher's three jobs on the request path: probe the student's capability, write guidance,
and validate an answer. Prompts are short because they sit on the user's call path, and they are
assembled by concatenation, never ``str.format``: tasks and answers are full of braces.

The system instructions of each job are data (:class:`~atlas_middleware.prompts.TeacherPrompts`),
so ``atlas optimize`` can evolve them and ``supervise`` can load a versioned prompts file.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from atlas_middleware.models.base import ChatMessage, ChatModel
from atlas_middleware.prompts import (
    DEFAULT_PROMPTS,
    GUIDANCE_SYSTEM,
    PROBE_SYSTEM,
    VALIDATE_SYSTEM,
    TeacherPrompts,
)

__all__ = [
    "GUIDANCE_SYSTEM",
    "PROBE_SYSTEM",
    "VALIDATE_SYSTEM",
    "Teacher",
    "Verdict",
    "parse_confidence",
    "plan_value",
]

# How the teacher validates an answer: "verdict" asks it for VALID / INVALID; "compute" asks it
# for the computation the task needs (its guidance) and compares the student's final number with
# what that computation gives, so a small teacher that can plan but not add still checks well;
# "auto" follows the teacher model (``ChatModel.validation``: "compute" for a teacher `atlas
# learn` trained, else "verdict").
Validation = Literal["auto", "verdict", "compute"]
VALIDATIONS: tuple[str, ...] = ("auto", "verdict", "compute")

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
# "Confidence: 0.9", "confidence is 90%", "Confidence = 8/10", "my confidence level: 0.7".
_LABELLED = re.compile(
    r"\bconfidence(?:\s+(?:level|score))?\s*(?:is|of|at|[:=\-])?\s*[:=]?\s*\**\s*"
    + _NUMBER
    + r"\s*(%|/\s*(?:10|100)\b|out of\s*(?:10|100)\b)?",
    re.IGNORECASE,
)
# {"confidence": 0.9} (a JSON answer, possibly inside other text).
_JSON = re.compile(r'"confidence"\s*:\s*"?' + _NUMBER + r"\s*(%)?", re.IGNORECASE)
# The reply is the value of the prompt's own "Confidence:" label: the number alone on its line,
# or followed by words; never arithmetic ("12 + 30 = 42") or a list item ("1. 3 boxes …").
_LEADING = re.compile(
    r"^\s*\**\s*" + _NUMBER + r"\s*(%)?\**\s*(?:[.,;]?\s*(?:\n|$)|[.,;]?\s+[A-Za-z(])"
)


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str
    source: str  # "reference", "verifier", "teacher" or "teacher-compute"


def _scaled(number: str, unit: str | None, *, labelled: bool) -> float | None:
    value = float(number)
    unit = (unit or "").replace(" ", "").lower()
    if unit == "%":
        value /= 100
    elif unit.endswith("10") and not unit.endswith("100"):
        value /= 10
    elif unit.endswith("100"):
        value /= 100
    elif value > 1 and labelled and value <= 100:
        value /= 100  # "Confidence: 85" under the label: a percentage
    return value if 0.0 <= value <= 1.0 else None


def parse_confidence(text: str) -> float | None:
    """The confidence the probe's reply states, in [0, 1], or None when it states none.

    Read from a labelled field (``Confidence: 0.9``, ``confidence is 90%``, ``8/10``), a JSON
    ``{"confidence": …}``, or a reply that starts with the value (the prompt ends with the
    ``Confidence:`` label). Any other number in the reply is not a confidence: ``"Step 1:
    easy"`` or the task's own numbers are never read as one; such replies are "unparsed"."""
    for pattern in (_JSON, _LABELLED):
        match = pattern.search(text)
        if match is not None:
            return _scaled(match.group(1), match.group(2), labelled=True)
    match = _LEADING.match(text)
    if match is not None and not _list_item(match):
        return _scaled(match.group(1), match.group(2), labelled=False)
    return None


def _list_item(match: re.Match[str]) -> bool:
    """``1. First, …`` / ``2) …``: a numbered step, not a value."""
    number, rest = match.group(1), match.string[match.end(1) :]
    return "." not in number and rest[:1] in (".", ")")


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_VERB_OPERATORS = {"add": "+", "subtract": "-", "multiply by": "*", "divide by": "/"}
# The first arithmetic expression of a text ("60 - 25", "(4 * 8) + 3"), numbers and + - * / × ÷ x.
_EXPRESSION = re.compile(r"[(\s]*\d+(?:\.\d+)?(?:[\s)]*[-+*/×÷x][\s(]*\d+(?:\.\d+)?)+[\s)]*")
# ", then add 33" / "then divide by 4" after the expression.
_THEN = re.compile(
    r"^\s*[,;.]?\s*(?:and\s+)?then\s+(add|subtract|multiply by|divide by)\s+(\d+(?:\.\d+)?)",
    re.IGNORECASE,
)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return float(_OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError("not arithmetic")


def plan_value(text: str) -> float | None:
    """What the computation a guidance names gives: ``"Compute 60 - 25, then add 33."`` → 68.0;
    ``"Multiply 4 by 8"`` holds no expression → None. Only + - * / on numbers are evaluated (never
    ``eval``); None when the text has no such expression or it cannot be computed."""
    match = _EXPRESSION.search(text)
    if match is None:
        return None
    source = match.group(0).replace("×", "*").replace("÷", "/").replace("x", "*").strip()
    for verb, number in _THEN.findall(text[match.end() :])[:1]:
        source = "(" + source + ")" + _VERB_OPERATORS[verb.lower()] + number
    try:
        return _evaluate(ast.parse(source, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _number_text(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _memory(playbook: Sequence[str]) -> str:
    if not playbook:
        return ""
    return "\n\nLessons from earlier sessions:\n" + "\n".join(f"- {entry}" for entry in playbook)


class Teacher:
    def __init__(
        self,
        model: ChatModel,
        *,
        prompts: TeacherPrompts | None = None,
        probe_max_tokens: int = 50,
        guidance_max_tokens: int = 160,
        temperature: float = 0.0,
        validation: Validation = "auto",
    ):
        if validation not in VALIDATIONS:
            raise ValueError(
                f"validation must be one of {', '.join(VALIDATIONS)}, got {validation!r}"
            )
        self.model = model
        if validation == "auto":
            validation = "compute" if getattr(model, "validation", None) == "compute" else "verdict"
        self.validation: Validation = validation
        self.prompts = prompts or DEFAULT_PROMPTS
        self.probe_max_tokens = probe_max_tokens
        self.guidance_max_tokens = guidance_max_tokens
        self.temperature = temperature

    async def probe(self, task: str, playbook: Sequence[str] = ()) -> float | None:
        messages: list[ChatMessage] = [
            {"role": "system", "content": self.prompts.probe},
            {"role": "user", "content": "Task:\n" + task + _memory(playbook) + "\n\nConfidence:"},
        ]
        result = await self.model.chat(
            messages, max_tokens=self.probe_max_tokens, temperature=self.temperature
        )
        return parse_confidence(result.text)

    async def guidance(
        self,
        task: str,
        playbook: Sequence[str] = (),
        *,
        attempt: str | None = None,
        problem: str | None = None,
    ) -> str:
        content = "Task:\n" + task + _memory(playbook)
        if attempt is not None:
            content += "\n\nThe student answered:\n" + attempt
            if problem:
                content += "\n\nWhat is wrong:\n" + problem
        messages: list[ChatMessage] = [
            {"role": "system", "content": self.prompts.guidance},
            {"role": "user", "content": content + "\n\nGuidance:"},
        ]
        result = await self.model.chat(
            messages, max_tokens=self.guidance_max_tokens, temperature=self.temperature
        )
        return result.text.strip()

    async def validate(self, task: str, answer: str, *, plan: str | None = None) -> Verdict:
        """VALID / INVALID on ``answer``. With ``validation="compute"`` the teacher's guidance for
        the task (``plan``, when the caller already has it) is computed and compared with the
        answer's final number; a guidance with no computation falls back to the verdict prompt.
        The reason never states the computed result (it would leak the answer)."""
        if self.validation == "compute":
            if plan is None:
                plan = await self.guidance(task)
            value = plan_value(plan)
            if value is not None:
                from atlas_middleware.rim.judges import reference_match

                ok = bool(reference_match(task, answer, _number_text(value)))
                reason = "" if ok else "the final number does not follow from the problem"
                return Verdict(ok, reason, "teacher-compute")
        messages: list[ChatMessage] = [
            {"role": "system", "content": self.prompts.validate_},
            {"role": "user", "content": "Task:\n" + task + "\n\nStudent's answer:\n" + answer},
        ]
        result = await self.model.chat(
            messages, max_tokens=self.guidance_max_tokens, temperature=self.temperature
        )
        text = result.text.strip()
        head = text.upper()
        # "INVALID" contains "VALID": check the negative first; anything unclear is not a pass.
        valid = not head.startswith("INVALID") and head.startswith("VALID")
        reason = text.split(":", 1)[1].strip() if ":" in text and not valid else text
        return Verdict(valid, reason, "teacher")
