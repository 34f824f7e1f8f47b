"""Reading judge replies: the first JSON object in whatever the model wrote, then its fields.

Small models wrap JSON in prose or code fences, add trailing commas, use single quotes or
Python literals, leave keys unquoted, or answer 8 on a 0–1 scale. The cheap repairs here cover
those; anything else is a failed sample (recorded in the audit), never an exception.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Replies longer than this are cut before scanning: judge answers are short, and the scan below
# is quadratic in the worst case (many unbalanced braces).
MAX_REPLY_CHARS = 20_000
MAX_CANDIDATES = 64

OK = "ok"
REPAIRED = "repaired"
NO_JSON = "no_json"
INVALID = "invalid_json"
NO_SCORE = "no_score"


def extract_json_object(
    text: str, accept: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The first ``{...}`` in ``text`` that parses (strictly, else after cheap repairs) and that
    ``accept`` agrees to. Returns ``(object, status)``; status is ``ok``, ``repaired``,
    ``no_json`` (no brace at all) or ``invalid_json`` / the rejection reason."""
    text = text[:MAX_REPLY_CHARS]
    start = text.find("{")
    if start < 0:
        return None, NO_JSON
    tried = 0
    while start >= 0 and tried < MAX_CANDIDATES:
        tried += 1
        end = _balanced_end(text, start)
        if end is not None:
            candidate = text[start : end + 1]
            obj, repaired = _loads(candidate)
            if isinstance(obj, dict) and (accept is None or accept(obj)):
                return obj, REPAIRED if repaired else OK
        # Try the next brace: prose may contain a stray "{", or the real object may be nested.
        start = text.find("{", start + 1)
    return None, INVALID


def _balanced_end(text: str, start: int) -> int | None:
    depth = 0
    quote: str | None = None
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == '"' or c == "'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _loads(candidate: str) -> tuple[Any, bool]:
    try:
        return json.loads(candidate, strict=False, parse_constant=_reject_constant), False
    except (ValueError, RecursionError):
        pass
    try:
        fixed = _repair(candidate)
        return json.loads(fixed, strict=False, parse_constant=_reject_constant), True
    except (ValueError, RecursionError):
        return None, False


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are valid to Python's json but never a usable score.
    raise ValueError(f"non-finite number {name}")


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_BARE_KEY = re.compile(r"([{,]\s*)([A-Za-z_][\w\-]*)(\s*:)")
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_PY_LITERAL = re.compile(r"\b(True|False|None)\b")


def _repair(candidate: str) -> str:
    """Rewrite the non-string parts (trailing commas, bare keys, Python literals) and turn
    single-quoted strings into JSON strings."""
    out: list[str] = []
    i = 0
    n = len(candidate)
    while i < n:
        c = candidate[i]
        if c == '"' or c == "'":
            j = i + 1
            body: list[str] = []
            while j < n and candidate[j] != c:
                if candidate[j] == "\\" and j + 1 < n:
                    body.append(candidate[j : j + 2])
                    j += 2
                    continue
                body.append(candidate[j])
                j += 1
            text = "".join(body).replace("\\'", "'")  # \' is not a JSON escape
            if c == "'":
                text = text.replace('"', '\\"')
            out.append('"' + text + '"')
            i = j + 1
            continue
        j = i
        while j < n and candidate[j] not in "\"'":
            j += 1
        segment = _TRAILING_COMMA.sub(r"\1", candidate[i:j])
        segment = _BARE_KEY.sub(r'\1"\2"\3', segment)
        segment = _PY_LITERAL.sub(lambda m: _PY_LITERALS[m.group(1)], segment)
        out.append(segment)
        i = j
    return "".join(out)


# --- fields ---------------------------------------------------------------------------------------
def read_unit(value: Any) -> tuple[float | None, bool]:
    """A number in [0, 1] from a JSON value: ``(value, clamped)``; ``(None, False)`` when it is
    not a finite number. Accepts numeric strings and percentages ("80%")."""
    if isinstance(value, bool) or value is None:
        return None, False
    if isinstance(value, str):
        text = value.strip()
        scale = 1.0
        if text.endswith("%"):
            text, scale = text[:-1].strip(), 100.0
        try:
            number = float(text) / scale
        except ValueError:
            return None, False
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return None, False
    if not math.isfinite(number):
        return None, False
    clamped = min(1.0, max(0.0, number))
    return clamped, clamped != number


@dataclass(frozen=True, slots=True)
class Principle:
    name: str
    weight: float | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "description": self.description}


MAX_PRINCIPLES = 5
MAX_TEXT = 1_000


def read_principles(value: Any) -> list[Principle]:
    """2–3 weighted principles are asked for; accept lists of objects or strings, normalise
    the weights to sum to 1 when all are given, drop anything unusable."""
    if not isinstance(value, list):
        return []
    found: list[Principle] = []
    for item in value[:MAX_PRINCIPLES]:
        if isinstance(item, str) and item.strip():
            found.append(Principle(_short(item, 200)))
        elif isinstance(item, Mapping):
            name = item.get("name") or item.get("principle") or item.get("title")
            if not isinstance(name, str) or not name.strip():
                continue
            weight = _read_weight(item.get("weight"))
            description = item.get("description") or item.get("detail")
            found.append(
                Principle(
                    _short(name, 200),
                    weight,
                    _short(description, 400) if isinstance(description, str) else None,
                )
            )
    total = sum(p.weight or 0.0 for p in found)
    if found and all(p.weight is not None for p in found) and total > 0:
        found = [Principle(p.name, (p.weight or 0.0) / total, p.description) for p in found]
    return found


def _read_weight(value: Any) -> float | None:
    # Weights are relative (models write 2 and 3 as often as 0.4 and 0.6): no clamping to 1,
    # normalised below; negative or non-numeric weights count as missing.
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def read_text(value: Any) -> str:
    if isinstance(value, str):
        return _short(value.strip(), MAX_TEXT)
    if isinstance(value, list):
        return _short(" ".join(str(v) for v in value), MAX_TEXT)
    return ""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class ParsedJudgement:
    """One judge reply: a score per answer (one answer unless relative), plus the rest."""

    status: str
    scores: list[float | None]
    rationales: list[str]
    principles: list[Principle]
    uncertainty: float | None
    clamped: bool = False

    @property
    def usable(self) -> bool:
        return self.status in (OK, REPAIRED) and any(s is not None for s in self.scores)


def parse_judgement(reply: str) -> ParsedJudgement:
    """A reply to the single-answer prompt: ``{"principles": [...], "score": x,
    "rationale": "...", "uncertainty": u}``."""
    obj, status = extract_json_object(reply, accept=lambda o: "score" in o)
    if obj is None:
        # Distinguish "JSON without a score" from "no JSON" for the audit.
        if status == INVALID and extract_json_object(reply)[0] is not None:
            status = NO_SCORE
        return ParsedJudgement(status, [None], [""], [], None)
    score, clamped = read_unit(obj.get("score"))
    if score is None:
        return ParsedJudgement(NO_SCORE, [None], [""], [], None)
    uncertainty, _ = read_unit(obj.get("uncertainty"))
    return ParsedJudgement(
        status,
        [score],
        [read_text(obj.get("rationale") or obj.get("reason") or obj.get("explanation"))],
        read_principles(obj.get("principles")),
        uncertainty,
        clamped,
    )


def parse_group_judgement(reply: str, answers: int) -> ParsedJudgement:
    """A reply to the relative prompt: ``{"principles": [...], "scores": [{"answer": 1,
    "score": x, "rationale": "..."}, ...], "uncertainty": u}``. Also accepts a bare list of
    numbers or a mapping ``{"1": x}``; answers left out get no score from this sample."""
    obj, status = extract_json_object(reply, accept=lambda o: "scores" in o)
    scores: list[float | None] = [None] * answers
    rationales = [""] * answers
    if obj is None:
        if status == INVALID and extract_json_object(reply)[0] is not None:
            status = NO_SCORE
        return ParsedJudgement(status, scores, rationales, [], None)
    clamped_any = False
    raw = obj.get("scores")
    entries: list[tuple[int | None, Any, Any]] = []
    if isinstance(raw, list):
        for position, item in enumerate(raw):
            if isinstance(item, Mapping):
                index = _answer_index(item.get("answer", item.get("id", item.get("index"))))
                entries.append(
                    (
                        index if index is not None else position,
                        item.get("score"),
                        item.get("rationale") or item.get("reason"),
                    )
                )
            else:
                entries.append((position, item, None))
    elif isinstance(raw, Mapping):
        for key, item in raw.items():
            index = _answer_index(key)
            if isinstance(item, Mapping):
                entries.append((index, item.get("score"), item.get("rationale")))
            else:
                entries.append((index, item, None))
    for index, value, rationale in entries:
        if index is None or not 0 <= index < answers:
            continue
        score, clamped = read_unit(value)
        clamped_any = clamped_any or clamped
        scores[index] = score
        rationales[index] = read_text(rationale)
    if all(s is None for s in scores):
        status = NO_SCORE
    uncertainty, _ = read_unit(obj.get("uncertainty"))
    return ParsedJudgement(
        status,
        scores,
        rationales,
        read_principles(obj.get("principles")),
        uncertainty,
        clamped_any,
    )


def _answer_index(value: Any) -> int | None:
    """Answers are numbered from 1 in the prompt; accept 1, "1", "answer 1", "A1"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value - 1
    if isinstance(value, str):
        digits = re.search(r"\d+", value)
        if digits:
            return int(digits.group()) - 1
    return None
