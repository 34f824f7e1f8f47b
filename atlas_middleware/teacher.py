"""The teacher's three jobs on the request path: probe the student's capability, write guidance,
and validate an answer. Prompts are short because they sit on the user's call path, and they are
assembled by concatenation, never ``str.format``: tasks and answers are full of braces.

The system instructions of each job are data (:class:`~atlas_middleware.prompts.TeacherPrompts`),
so ``atlas optimize`` can evolve them and ``supervise`` can load a versioned prompts file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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
]

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
    source: str  # "reference", "verifier" or "teacher"


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
    ):
        self.model = model
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

    async def validate(self, task: str, answer: str) -> Verdict:
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
