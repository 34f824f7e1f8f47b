"""When guidance gives the answer away (a leak): the one check the teacher's training data, its
reward and ``atlas learn`` share. A teacher that states a result does the student's work, and
one that states the reference teaches nothing; both are leaks."""

from __future__ import annotations

import re

# "The answer is 12", "answer: 12", "= 12", "equals 12", "result is 12", "total of 12": a
# guidance that states a result does the student's work, whether or not the result is right.
_STATED = re.compile(
    r"(=\s*-?\d)"
    r"|(\bequals?\s+-?\d)"
    r"|(\b(answer|result|total|sum|difference|product|quotient)\b[^.\n\d]{0,24}?"
    r"\b(is|was|will be|should be|of|:)\s*-?\$?\d)"
    r"|(\banswer\s*:\s*-?\d)"
    r"|(\b(you get|you will get|you'll get|left with|leaving|leaves)\s+-?\d)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def states_an_answer(guidance: str) -> bool:
    """Whether ``guidance`` states a result ("= 43", "the answer is 43"), right or wrong."""
    return bool(_STATED.search(guidance))


def leaks_reference(guidance: str, reference: str | None, task: str = "") -> bool:
    """Whether ``guidance`` states the reference answer that the task itself does not show.

    Numbers are compared as numbers (``42`` leaks ``42.0``, ``142`` does not leak ``42``);
    text references as whole words, case-insensitively. Very short text references (one or two
    characters, such as ``A``) are too common to call a leak.
    """
    if reference is None:
        return False
    ref = str(reference).strip().lower().replace(",", "")
    if not ref:
        return False
    text = guidance.lower().replace(",", "")
    try:
        value = float(ref)
    except ValueError:
        value = None
    if value is not None:

        def has(where: str) -> bool:
            return any(float(n) == value for n in _NUMBER.findall(where))

        return has(text) and not has(task.lower().replace(",", ""))
    if len(ref) < 3:
        return False
    pattern = re.compile(r"(?<!\w)" + re.escape(ref) + r"(?!\w)")
    return bool(pattern.search(text)) and not pattern.search(task.lower())
