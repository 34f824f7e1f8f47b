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

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)\s*(%?)")


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str
    source: str  # "reference", "verifier" or "teacher"


def parse_confidence(text: str) -> float | None:
    """The first number in a reply as a confidence in [0, 1] (``85%`` and ``85`` mean 0.85)."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    if match.group(2) == "%" or 1 < value <= 100:
        value /= 100
    return value if 0.0 <= value <= 1.0 else None


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
