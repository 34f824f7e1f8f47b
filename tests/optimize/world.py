"""A deterministic little world for optimisation tests, built from ScriptedModels.

The student adds two numbers right only when the word HINT reaches it (through the teacher's
guidance), except on "[trap]" tasks, where a HINT makes it wrong and it is right alone. The
teacher's guidance carries HINT only when its guidance prompt mentions HINT, so a reflection that
writes HINT into the guidance prompt helps on ordinary tasks and hurts on trap tasks."""

from __future__ import annotations

import re
from collections.abc import Iterable

from atlas_middleware.models import ScriptedModel
from atlas_middleware.optimize import OptimizeTask, split_tasks

HINT_PROMPT = "You are a teacher. Always start your guidance with the word HINT."


def tasks(n: int = 6, *, traps: Iterable[str] = ()) -> list[OptimizeTask]:
    trap_ids = set(traps)
    out = []
    for i in range(n):
        a, b = 10 + i, 20 + 2 * i
        mark = " [trap]" if f"t{i}" in trap_ids else ""
        out.append(OptimizeTask(f"t{i}", f"What is {a} + {b}?{mark}", str(a + b)))
    return out


def heldout_ids(n: int = 6, **split: float) -> list[str]:
    """Which task ids the default split holds out (the split ignores the task texts)."""
    return [t.id for t in split_tasks(tasks(n), **split).heldout]


def student(
    *, fail_after: int | None = None, error: BaseException | None = None, delay_s: float = 0.0
) -> ScriptedModel:
    calls = {"n": 0}

    def respond(messages):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise error or KeyboardInterrupt()
        text = " ".join(m["content"] for m in messages)
        a, b = map(int, re.findall(r"What is (\d+) \+ (\d+)", text)[0])
        hint, trap = "HINT" in text, "[trap]" in text
        return str(a + b) if hint != trap else "0"

    return ScriptedModel(respond=respond, name="student", delay_s=delay_s)


def teacher(*, delay_s: float = 0.0) -> ScriptedModel:
    def respond(messages):
        system = messages[0]["content"]
        if system.startswith("You judge whether"):
            return "0.1"  # coach lane: guidance first, then validation
        if system.startswith("You check"):
            return "VALID"
        return "HINT: add the numbers." if "HINT" in system else "Think carefully."

    return ScriptedModel(respond=respond, name="teacher", delay_s=delay_s)


def reflection(*, helpful: bool = True, delay_s: float = 0.0) -> ScriptedModel:
    """``helpful``: proposes the HINT guidance prompt; else a new useless text every call."""
    calls = {"n": 0}

    def respond(messages):
        calls["n"] += 1
        if helpful:
            return "```\n" + HINT_PROMPT + "\n```"
        return f"```\nYou are a teacher. Think about step {calls['n']}.\n```"

    return ScriptedModel(respond=respond, name="reflector", delay_s=delay_s)
