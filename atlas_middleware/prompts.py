"""The teacher's prompts as data: a small, typed, versioned config that ``supervise`` loads and
``atlas optimize`` evolves.

Four texts: the system instructions of the teacher's three jobs (``probe``, ``guidance``,
``validate``) and a ``playbook`` of standing lessons for the student (one per line; shown wherever
the learning key's learned lessons are shown). The task, the student's answer and the lessons are
added after these texts by concatenation in :mod:`atlas_middleware.teacher`, never by
``str.format``, so the texts may contain any characters.

A prompts file is YAML::

    version: 3
    probe: "You judge whether a student AI ..."
    guidance: "You are a teacher. ..."
    validate: "You check a student's answer ..."
    playbook: ""
    metadata: {parent: 2, score: 0.61, heldout_score: 0.58, created: "2026-11-24T10:00:00+00:00"}

``load_prompts(path)`` accepts such a file or a directory written by ``atlas optimize --out``
(its ``active.yaml``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROBE_SYSTEM = (
    "You judge whether a student AI will solve a task correctly without help. "
    "Answer with one line in exactly this form:\n"
    "Confidence: <a number between 0 and 1>"
)
GUIDANCE_SYSTEM = (
    "You are a teacher. Give the student brief, concrete guidance for the task: the method to "
    "use and the mistakes to avoid. Do not give the final answer."
)
VALIDATE_SYSTEM = (
    "You check a student's answer to a task. Reply VALID if it is correct and complete. "
    "Otherwise reply INVALID: followed by what is wrong."
)

# The texts an optimiser may change, in the order it visits them.
COMPONENTS: tuple[str, ...] = ("probe", "guidance", "validate", "playbook")
ACTIVE_FILE = "active.yaml"


class PromptsError(ValueError):
    """A prompts file that cannot be used; the message is one line naming the file and field."""


class PromptsMetadata(BaseModel):
    """Where a version came from. Free-form ``extra`` keys are kept."""

    model_config = ConfigDict(extra="allow")

    parent: int | None = None  # the version it was derived from
    score: float | None = None  # mean reward on the optimiser's validation split
    heldout_score: float | None = None  # mean reward on the held-out split (decides adoption)
    created: str | None = None  # ISO 8601, UTC
    source: str | None = None  # e.g. the versioned file an active.yaml was copied from


class TeacherPrompts(BaseModel):
    """The teacher's prompt texts (defaults: atlas's built-in wording) and their version."""

    # ``validate`` is a BaseModel classmethod name: the field is ``validate_`` in Python and
    # ``validate`` in files and component dicts.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    version: int = 0
    probe: str = PROBE_SYSTEM
    guidance: str = GUIDANCE_SYSTEM
    validate_: str = Field(default=VALIDATE_SYSTEM, alias="validate")
    playbook: str = ""
    metadata: PromptsMetadata = Field(default_factory=PromptsMetadata)

    @field_validator("probe", "guidance", "validate_")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def validate_text(self) -> str:
        return self.validate_

    def lessons(self) -> list[str]:
        """The playbook's standing lessons: its non-empty lines, bullets stripped."""
        lines = (line.strip().lstrip("-*•").strip() for line in self.playbook.splitlines())
        return [line for line in lines if line]

    def components(self) -> dict[str, str]:
        """The optimisable texts by component name (what GEPA evolves)."""
        return {
            "probe": self.probe,
            "guidance": self.guidance,
            "validate": self.validate_,
            "playbook": self.playbook,
        }

    def with_components(self, texts: dict[str, str], **changes: Any) -> TeacherPrompts:
        """A copy with the given component texts (and other fields) replaced."""
        data = self.to_dict()
        data.update({k: v for k, v in texts.items() if k in COMPONENTS})
        data.update(changes)
        return TeacherPrompts.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=False, mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "prompts") -> TeacherPrompts:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in error.get("loc", ())).replace("validate_", "validate")
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            if error.get("type") == "extra_forbidden":
                message = f"unknown field; fields: version, {', '.join(COMPONENTS)}, metadata"
            raise PromptsError(f"{where}: {field or 'prompts'}: {message}") from None

    def same_texts(self, other: TeacherPrompts) -> bool:
        return self.components() == other.components()


DEFAULT_PROMPTS = TeacherPrompts()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def resolve_prompts_path(path: str | os.PathLike[str]) -> Path:
    """A prompts file, or a directory's ``active.yaml``."""
    target = Path(path).expanduser()
    if target.is_dir():
        target = target / ACTIVE_FILE
    return target


def load_prompts(path: str | os.PathLike[str]) -> TeacherPrompts:
    """Read a prompts YAML file (or ``DIR/active.yaml``); :class:`PromptsError` when unusable."""
    import yaml

    target = resolve_prompts_path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = (
            " (no active prompts there yet: run 'atlas optimize --out DIR' first)"
            if target.name == ACTIVE_FILE
            else ""
        )
        raise PromptsError(f"prompts file not found: {target}{hint}") from None
    except OSError as exc:
        raise PromptsError(f"prompts file unreadable: {target} ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PromptsError(f"prompts file {target}{where}: invalid YAML") from None
    if not isinstance(data, dict):
        raise PromptsError(
            f"prompts file {target}: expected a mapping with {', '.join(COMPONENTS)}, "
            f"got {type(data).__name__}"
        )
    return TeacherPrompts.from_dict(data, where=str(target))


def save_prompts(prompts: TeacherPrompts, path: str | os.PathLike[str]) -> Path:
    """Write ``prompts`` as YAML, atomically (a reader never sees half a file)."""
    import yaml

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    text = yaml.safe_dump(prompts.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)
    return target


def as_prompts(value: TeacherPrompts | str | os.PathLike[str] | None) -> TeacherPrompts:
    """``None`` → the defaults; a path → :func:`load_prompts`; prompts → themselves."""
    if value is None:
        return DEFAULT_PROMPTS
    if isinstance(value, TeacherPrompts):
        return value
    if isinstance(value, str | os.PathLike):
        return load_prompts(value)
    raise TypeError(
        f"prompts must be a TeacherPrompts or the path of a prompts file, got {type(value).__name__}"
    )
