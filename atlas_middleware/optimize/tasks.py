"""The tasks ``atlas optimize`` scores prompts on: a JSON Lines file (or a bundled set), or the
tasks of a learning key's stored sessions; split into train / validation / held-out.

A task file has one JSON object per line (the rows of ``atlas eval`` task files)::

    {"id": "t1", "task": "A shop sells 38 apples and then 90 more. How many?", "reference": "128"}
    {"task": "Name the capital of France.", "reference": "Paris", "verifier": "exact_match"}

Only ``task`` is required. ``verifier`` names a RIM verifier (``reference_match`` by default
when a reference is given, ``exact_match``, or one a plugin registers); it decides the accuracy
judge, so the reward is grounded. Without a reference the RIM judges decide alone.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class TaskError(ValueError):
    """Tasks that cannot be used; the message is one line naming the file, line and field."""


@dataclass(frozen=True)
class OptimizeTask:
    id: str
    task: str
    reference: str | None = None
    verifier: str | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "task": self.task}
        if self.reference is not None:
            row["reference"] = self.reference
        if self.verifier is not None:
            row["verifier"] = self.verifier
        return row


def read_tasks(source: str | Path, *, limit: int | None = None) -> list[OptimizeTask]:
    """Tasks from a JSONL file or a bundled set by name (``arithmetic``), read by
    :func:`atlas_middleware.tasks.load_tasks` (the task files of ``atlas eval`` and
    ``atlas quickstart``); :class:`TaskError` names the first bad line."""
    from atlas_middleware.tasks import load_tasks

    try:
        rows = load_tasks(source, limit=limit)
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    tasks: list[OptimizeTask] = []
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise TaskError(f"{source}: task id {row.id!r} appears twice; ids must be unique")
        seen.add(row.id)
        tasks.append(OptimizeTask(row.id, row.task, row.reference, row.verifier))
    return tasks


def tasks_from_store(
    url: str, learning_key: str, *, limit: int = 50, min_reward: float | None = None
) -> list[OptimizeTask]:
    """The distinct tasks of a learning key's sessions, newest first (quarantined ones left
    out). Stored sessions carry no reference: the RIM judges score them ungrounded."""
    from atlas_middleware.storage import SessionFilter, open_store

    where = SessionFilter(
        learning_key=learning_key, review_status=("pending", "approved"), min_reward=min_reward
    )
    tasks: list[OptimizeTask] = []
    seen: set[str] = set()
    with open_store(url) as store:
        for session in store.iter_sessions(where, newest_first=True):
            text = (session.task or "").strip()
            if not text or text in seen:
                continue
            seen.add(text)
            tasks.append(OptimizeTask(f"session-{session.trace_id[:12]}", text))
            if len(tasks) >= limit:
                break
    if not tasks:
        raise TaskError(
            f"no stored sessions with a task for learning key {learning_key!r}; check "
            "--learning-key, or run the agent under supervision first"
        )
    return tasks


@dataclass(frozen=True)
class Split:
    train: list[OptimizeTask]
    val: list[OptimizeTask]
    heldout: list[OptimizeTask]

    def ids(self) -> dict[str, list[str]]:
        return {name: [t.id for t in getattr(self, name)] for name in ("train", "val", "heldout")}


def split_tasks(
    tasks: Sequence[OptimizeTask], *, heldout: float = 0.3, val: float = 0.3, seed: int = 0
) -> Split:
    """A seeded shuffle cut into train (GEPA's reflection minibatches), validation (GEPA's
    Pareto scores) and held-out (adoption only; GEPA never sees it). Each part gets at least one
    task, so at least three are needed."""
    if len(tasks) < 3:
        raise TaskError(
            f"need at least 3 tasks (train, validation and held-out get one each), got {len(tasks)}"
        )
    for name, value in (("heldout", heldout), ("val", val)):
        if not 0 < value < 1:
            raise TaskError(f"--{name} must be a fraction between 0 and 1 (got {value:g})")
    order = list(tasks)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_held = min(max(1, round(n * heldout)), n - 2)
    n_val = min(max(1, round(n * val)), n - n_held - 1)
    return Split(
        train=order[n_held + n_val :],
        val=order[n_held : n_held + n_val],
        heldout=order[:n_held],
    )


def fingerprint(tasks: Sequence[OptimizeTask]) -> str:
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(orjson.dumps(task.to_json(), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]
