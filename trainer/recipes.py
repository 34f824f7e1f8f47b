"""Recipes: YAML files with CLI overrides. The ``trl:`` section goes to TRL's own config class
(``GRPOConfig``, ``SFTConfig``, ``GKDConfig``) unchanged, so every TRL option works and none is
re-invented here; the other sections are atlas's (data, reward, student).

Precedence, lowest first: the shipped recipe (``trainer/recipes/<name>.yaml``), ``--config
my.yaml``, ``--set section.key=value`` (values parsed as YAML), then dedicated CLI flags.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RECIPES", "Recipe", "RecipeError", "load_recipe", "trl_config"]

RECIPES = ("sft", "grpo", "gkd")

_TOP_KEYS = {
    "recipe",
    "model",
    "student",
    "teacher_model",
    "output_dir",
    "data",
    "reward",
    "student_options",
    "trl",
}
_DATA_KEYS = {
    "granularity",
    "statuses",
    "min_reward",
    "learning_key",
    "since",
    "until",
    "references",
    "max_examples",
    "dedupe_tasks",
    "require_guidance",
}
_STUDENT_KEYS = {"max_tokens", "concurrency", "system", "guidance_in"}


class RecipeError(ValueError):
    """A recipe or override the user can fix; the message is one line."""


@dataclass
class Recipe:
    recipe: str
    model: str | None = None
    student: str | None = None
    teacher_model: str | None = None
    output_dir: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    student_options: dict[str, Any] = field(default_factory=dict)
    trl: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shipped(name: str) -> Path:
    return Path(
        str(importlib.resources.files("atlas_middleware.trainer") / "recipes" / f"{name}.yaml")
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(
            f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping (key: value), not a list or text")
    return value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``trl.max_steps=3`` → (["trl", "max_steps"], 3); values are YAML (``null``, lists...)."""
    key, sep, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not sep or not all(path):
        raise RecipeError(f"--set expects section.key=value (e.g. trl.max_steps=3), got {text!r}")
    # YAML 1.1 reads yes/no/on/off as booleans; on the command line they are words
    # (trl.save_strategy=no).
    if raw.strip().lower() in ("yes", "no", "on", "off", "y", "n"):
        return path, raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        # YAML 1.1 reads 1e-5 (no dot) as a string; on the command line it is a number.
        value = float(value)
    return path, value


def load_recipe(
    name: str,
    *,
    config: str | Path | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    flags: dict[str, Any] | None = None,
) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    values = _read_yaml(shipped(name))
    if config is not None:
        user = _read_yaml(Path(config))
        if user.get("recipe", name) != name:
            raise RecipeError(
                f"{config} is a {user['recipe']!r} recipe; run 'atlas-train {user['recipe']}'"
            )
        values = _merge(values, user)
    for text in overrides:
        path, value = parse_override(text)
        target = values
        for part in path[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise RecipeError(f"--set {text}: {part!r} is not a section")
            target = nxt
        target[path[-1]] = value
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = value
    values["recipe"] = name
    unknown = set(values) - _TOP_KEYS
    if unknown:
        raise RecipeError(
            f"unknown recipe key(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(_TOP_KEYS))}"
        )
    for section, allowed in (("data", _DATA_KEYS), ("student_options", _STUDENT_KEYS)):
        got = values.get(section) or {}
        if not isinstance(got, dict):
            raise RecipeError(f"recipe section {section!r} must be a mapping")
        bad = set(got) - allowed
        if bad:
            raise RecipeError(
                f"unknown {section} key(s) {', '.join(sorted(bad))}: use {', '.join(sorted(allowed))}"
            )
    for section in ("reward", "trl"):
        if not isinstance(values.get(section) or {}, dict):
            raise RecipeError(f"recipe section {section!r} must be a mapping")
    return Recipe(
        recipe=name,
        model=values.get("model"),
        student=values.get("student"),
        teacher_model=values.get("teacher_model"),
        output_dir=values.get("output_dir"),
        data=dict(values.get("data") or {}),
        reward=dict(values.get("reward") or {}),
        student_options=dict(values.get("student_options") or {}),
        trl=dict(values.get("trl") or {}),
    )


def config_class(recipe: str) -> type:
    if recipe == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if recipe == "sft":
        from trl import SFTConfig

        return SFTConfig
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental
    from trl.experimental.gkd import GKDConfig

    return GKDConfig


def trl_config(recipe: Recipe, **forced: Any) -> Any:
    """TRL's config object for the recipe: its ``trl:`` section plus ``forced`` values."""
    cls = config_class(recipe.recipe)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(recipe.trl) - known)
    if unknown:
        raise RecipeError(
            f"unknown {cls.__name__} field(s) in trl: {', '.join(unknown)} "
            f"(the trl section takes {cls.__name__}'s own fields, see TRL's docs)"
        )
    try:
        return cls(**{**recipe.trl, **forced})
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{cls.__name__}: {' '.join(str(exc).split())}") from None
