"""Supervised sessions → teacher examples, streamed from a store or an ``atlas export`` file.

Memory stays flat however large the source: stores are read page by page (keyset pagination,
one short query per page, with the page's spans fetched alongside), JSONL files line by line.
A row that cannot become an example (bad JSON, no task, a reward that is not a finite number)
is skipped and counted, never fatal: one bad session must not cost a training run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from atlas_middleware.storage import SessionFilter, open_store
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry.genai import message_text

__all__ = [
    "GRANULARITIES",
    "DataFilter",
    "DataStats",
    "StepExample",
    "TeacherExample",
    "iter_examples",
    "iter_step_examples",
    "load_references",
    "step_task",
]

GRANULARITIES = ("session", "step")

# How Teacher.guidance shows the student's failed attempt to the teacher (atlas_middleware.teacher):
# the paired lane's baseline attempt survives only inside that chat span's input messages.
_ATTEMPT_MARK = "\n\nThe student answered:\n"
_ATTEMPT_ENDS = ("\n\nWhat is wrong:\n", "\n\nGuidance:")


@dataclass(slots=True)
class TeacherExample:
    """One supervised session, as the trainer sees it."""

    trace_id: str
    task: str
    reference: str | None = None  # the task's reference answer, when the session had one
    baseline: str | None = None  # the student's unguided attempt, when the session shows it
    guidance: str | None = None  # the teacher's guidance the student got (None: auto lane)
    answer: str | None = None  # the student's final answer
    reward: float | None = None
    learning_key: str | None = None
    lane: str | None = None
    started_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class StepExample:
    """One step of a supervised session, as the trainer sees it (``--granularity step``): the
    guidance the student had before the step, the step, and the step's reward.

    ``task`` is the step's own prompt (:func:`step_task`: the session's task, the steps before
    it, this step and its input), so the sft/grpo recipes train on it as on a session's task;
    ``session_task`` is the session's."""

    trace_id: str
    span_id: str
    task: str
    session_task: str
    step: str  # the step's name
    kind: str | None = None  # node, step, agent, tool
    input: str | None = None
    output: str | None = None
    error: str | None = None
    guidance: str | None = None  # the guidance the session ran with, given before every step
    reward: float | None = None  # the step's reward
    session_reward: float | None = None
    reference: str | None = None
    learning_key: str | None = None
    lane: str | None = None
    started_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_STEP_CONTEXT_CHARS = 400  # of each earlier step's output shown in a step's prompt


def step_task(
    session_task: str, step: Mapping[str, Any], before: Iterable[Mapping[str, Any]] = ()
) -> str:
    """The prompt a step example trains on: the session's task, what the earlier steps of the
    session did (name and a short output), and the step itself with its input."""
    lines = [session_task.strip()]
    earlier = [
        f"- {x.get('name') or '?'}: "
        + (
            f"failed ({x.get('error')})"
            if x.get("status") == "error"
            else (str(x.get("output") or "")[:_STEP_CONTEXT_CHARS] or "done")
        )
        for x in before
    ]
    if earlier:
        lines += ["", "Steps so far:", *earlier]
    lines += ["", f"Next step: {step.get('name') or '?'} ({step.get('kind') or 'step'})"]
    if step.get("input"):
        lines.append(f"Its input: {str(step['input'])[: _STEP_CONTEXT_CHARS * 2]}")
    return "\n".join(lines)


@dataclass(slots=True)
class DataFilter:
    statuses: tuple[str, ...] = ("approved",)
    min_reward: float | None = None
    learning_key: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    def session_filter(self) -> SessionFilter:
        return SessionFilter(
            review_status=list(self.statuses),
            min_reward=self.min_reward,
            learning_key=self.learning_key,
            since_ns=self.since_ns,
            until_ns=self.until_ns,
        )

    def accepts(self, row: Mapping[str, Any], reward: float | None) -> bool:
        """The same filter as the store's SQL, for rows read from a file."""
        if row.get("review_status", "pending") not in self.statuses:
            return False
        if self.min_reward is not None and (reward is None or reward < self.min_reward):
            return False
        if self.learning_key is not None and row.get("learning_key") != self.learning_key:
            return False
        started = row.get("started_ns")
        if self.since_ns is not None and (not isinstance(started, int) or started < self.since_ns):
            return False
        return not (
            self.until_ns is not None and (not isinstance(started, int) or started >= self.until_ns)
        )


@dataclass(slots=True)
class DataStats:
    read: int = 0  # rows seen (after the store's own filter)
    used: int = 0
    filtered: int = 0  # valid rows the filters left out (file sources)
    skipped: Counter[str] = field(default_factory=Counter)  # bad rows, by reason

    @property
    def bad(self) -> int:
        return sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "used": self.used,
            "filtered": self.filtered,
            "skipped": dict(self.skipped),
        }

    def summary(self) -> str:
        text = f"{self.used} examples from {self.read} sessions"
        if self.filtered:
            text += f", {self.filtered} filtered out"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            text += f"; skipped {self.bad} bad rows ({reasons})"
        return text


def load_references(path: str | Path) -> dict[str, str]:
    """``{task: reference}`` from a JSONL task file (``{"task": ..., "reference": ...}`` per
    line; ``answer`` is accepted for ``reference``), for sessions that did not record theirs."""
    references: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                task = row["task"]
                reference = row.get("reference", row.get("answer"))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with 'task' and 'reference'"
                ) from None
            if isinstance(task, str) and reference is not None:
                references[task] = str(reference)
    return references


def iter_examples(
    source: str,
    where: DataFilter | None = None,
    *,
    stats: DataStats | None = None,
    references: Mapping[str, str] | None = None,
    page_size: int = 256,
) -> Iterator[TeacherExample]:
    """Stream teacher examples from ``source``: a store URL (``postgresql://…``,
    ``sqlite:///…``) or a ``.jsonl`` file written by ``atlas export``."""
    where = where or DataFilter()
    stats = stats if stats is not None else DataStats()
    references = references or {}
    if _is_file_source(source):
        yield from _from_jsonl(Path(source), where, stats, references)
    else:
        yield from _from_store(source, where, stats, references, page_size)


def iter_step_examples(
    source: str,
    where: DataFilter | None = None,
    *,
    stats: DataStats | None = None,
    references: Mapping[str, str] | None = None,
    page_size: int = 256,
) -> Iterator[StepExample]:
    """Stream per-step examples from ``source`` (a store URL or an ``atlas export`` JSONL):
    one per rewarded step of each session the filter keeps. ``where.min_reward`` applies to the
    step's reward here, not the session's; steps without a reward are skipped (counted as
    ``step without reward``)."""
    where = where or DataFilter()
    stats = stats if stats is not None else DataStats()
    session_where = DataFilter(
        statuses=where.statuses,
        learning_key=where.learning_key,
        since_ns=where.since_ns,
        until_ns=where.until_ns,
    )
    if _is_file_source(source):
        rows: Iterator[tuple[dict[str, Any], TeacherExample]] = _rows_from_jsonl(
            Path(source), session_where, stats, references or {}
        )
    else:
        rows = _rows_from_store(source, session_where, stats, references or {}, page_size)
    for row, session in rows:
        steps = row.get("steps")
        if not isinstance(steps, list):
            stats.skipped["steps not a list"] += 1
            continue
        steps = [x for x in steps if isinstance(x, Mapping)]
        for index, step in enumerate(steps):
            reward = step.get("reward_score")
            if reward is None:
                stats.skipped["step without reward"] += 1
                continue
            if not _check_reward(reward, stats):
                continue
            if where.min_reward is not None and reward < where.min_reward:
                stats.filtered += 1
                continue
            stats.used += 1
            yield StepExample(
                trace_id=session.trace_id,
                span_id=str(step.get("span_id") or ""),
                task=step_task(session.task, step, steps[:index]),
                session_task=session.task,
                step=str(step.get("name") or ""),
                kind=_text(step.get("kind")),
                input=_text(step.get("input")),
                output=_text(step.get("output")),
                error=_text(step.get("error")),
                guidance=session.guidance,
                reward=float(reward),
                session_reward=session.reward,
                reference=None,
                learning_key=session.learning_key,
                lane=session.lane,
                started_ns=step.get("started_ns")
                if isinstance(step.get("started_ns"), int)
                else None,
            )


def _rows_from_store(
    url: str,
    where: DataFilter,
    stats: DataStats,
    references: Mapping[str, str],
    page_size: int,
) -> Iterator[tuple[dict[str, Any], TeacherExample]]:
    store = open_store(url)
    try:
        sessions = store.iter_sessions(where.session_filter(), page_size=page_size)
        while page := list(islice(sessions, page_size)):
            if "quarantined" not in where.statuses:
                page = [x for x in page if x.review_status != "quarantined"]
            spans = store.spans_for([x.trace_id for x in page])
            steps = store.steps_of([x.trace_id for x in page])
            for session in page:
                stats.read += 1
                row = session.to_json()
                row["spans"] = [r.to_json() for r in spans.get(session.trace_id, ())]
                row["steps"] = [x.to_json() for x in steps.get(session.trace_id, ())]
                example = _example(row, stats, references)
                if example is not None:
                    yield row, example
    finally:
        store.close()


def _rows_from_jsonl(
    path: Path, where: DataFilter, stats: DataStats, references: Mapping[str, str]
) -> Iterator[tuple[dict[str, Any], TeacherExample]]:
    for example, row in _from_jsonl(path, where, stats, references, with_rows=True):
        yield row, example


def _is_file_source(source: str) -> bool:
    """A JSONL export, as opposed to a store. A bare path is a store only when it is a SQLite
    file: opening a store at a mistyped path would create an empty database there."""
    if source.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return False
    if "://" in source:
        raise ValueError(
            f"unsupported source {source!r}: use postgresql://…, sqlite:///path/atlas.db or a "
            ".jsonl file from 'atlas export'"
        )
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"cannot read {source}: no such file")
    with path.open("rb") as handle:
        return handle.read(16) != b"SQLite format 3\x00"


def _from_store(
    url: str,
    where: DataFilter,
    stats: DataStats,
    references: Mapping[str, str],
    page_size: int,
) -> Iterator[TeacherExample]:
    store = open_store(url)
    try:
        sessions = store.iter_sessions(where.session_filter(), page_size=page_size)
        while page := list(islice(sessions, page_size)):
            # Quarantined sessions never reach training unless asked for by name, whatever the
            # filter did (the same guarantee `atlas export` gives).
            if "quarantined" not in where.statuses:
                page = [x for x in page if x.review_status != "quarantined"]
            spans = store.spans_for([x.trace_id for x in page])
            for session in page:
                stats.read += 1
                row = session.to_json()
                row["spans"] = [r.to_json() for r in spans.get(session.trace_id, ())]
                example = _example(row, stats, references)
                if example is not None:
                    stats.used += 1
                    yield example
    finally:
        store.close()


def _from_jsonl(
    path: Path,
    where: DataFilter,
    stats: DataStats,
    references: Mapping[str, str],
    *,
    with_rows: bool = False,
) -> Iterator[Any]:
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for line in handle:
            if not line.strip():
                continue
            stats.read += 1
            try:
                # json (not orjson): it parses NaN/Infinity, which must be counted, not crash.
                row = json.loads(line)
            except ValueError:
                stats.skipped["invalid JSON"] += 1
                continue
            if not isinstance(row, dict):
                stats.skipped["not an object"] += 1
                continue
            reward = row.get("reward_score")
            if reward is not None and (
                isinstance(reward, bool)
                or not isinstance(reward, int | float)
                or not math.isfinite(reward)
            ):
                # Checked before filtering: a NaN reward must be counted even when a
                # --min-reward filter would have dropped it silently.
                _check_reward(reward, stats)
                continue
            if "quarantined" not in where.statuses and row.get("review_status") == "quarantined":
                stats.filtered += 1
                continue
            if not where.accepts(row, reward):
                stats.filtered += 1
                continue
            example = _example(row, stats, references)
            if example is not None:
                if not with_rows:  # (per-step reading counts its steps)
                    stats.used += 1
                yield (example, row) if with_rows else example


def _check_reward(reward: Any, stats: DataStats) -> bool:
    if reward is None:
        return True
    if isinstance(reward, bool) or not isinstance(reward, int | float):
        stats.skipped["reward not a number"] += 1
        return False
    if not math.isfinite(reward):
        stats.skipped["non-finite reward"] += 1
        return False
    return True


def _example(
    row: Mapping[str, Any], stats: DataStats, references: Mapping[str, str]
) -> TeacherExample | None:
    trace_id = row.get("trace_id")
    task = row.get("task")
    if not isinstance(trace_id, str) or not trace_id:
        stats.skipped["no trace id"] += 1
        return None
    if not isinstance(task, str) or not task.strip():
        stats.skipped["no task"] += 1
        return None
    reward = row.get("reward_score")
    if not _check_reward(reward, stats):
        return None
    spans = row.get("spans") or []
    if not isinstance(spans, list):
        stats.skipped["spans not a list"] += 1
        return None
    reference = row.get("reference")
    baseline = None
    for span in spans:
        if not isinstance(span, Mapping):
            continue
        attributes = span.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            continue
        if reference is None and attributes.get(s.ATLAS_REFERENCE) is not None:
            reference = attributes[s.ATLAS_REFERENCE]
        if baseline is None:
            baseline = _attempt(attributes.get(s.GEN_AI_INPUT_MESSAGES))
    if reference is None:
        reference = references.get(task)
    started = row.get("started_ns")
    return TeacherExample(
        trace_id=trace_id,
        task=task,
        reference=None if reference is None else str(reference),
        baseline=baseline,
        guidance=_text(row.get("guidance")),
        answer=_text(row.get("final_answer")),
        reward=None if reward is None else float(reward),
        learning_key=_text(row.get("learning_key")),
        lane=_text(row.get("lane")),
        started_ns=started if isinstance(started, int) else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _attempt(messages: Any) -> str | None:
    """The student's attempt quoted in a teacher guidance call's input, if this is one."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError:
            return None
    if not isinstance(messages, Iterable) or isinstance(messages, str | bytes | Mapping):
        return None
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message_text(message)  # GenAI parts, or the older {"role", "content"}
        if _ATTEMPT_MARK not in content:
            continue
        attempt = content.split(_ATTEMPT_MARK, 1)[1]
        for end in _ATTEMPT_ENDS:
            attempt = attempt.split(end, 1)[0]
        return attempt.strip() or None
    return None
