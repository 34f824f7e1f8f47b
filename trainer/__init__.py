"""``atlas-train``: supervised sessions → a better teacher (SFT warm-up, GRPO with the teaching
reward, GKD distillation), on TRL, with vLLM rollouts and DeepSpeed through accelerate.

Importing this package imports neither torch nor TRL; the modules that need them do, when used.

    from atlas_middleware.trainer import load_recipe, train
    recipe = load_recipe("grpo", overrides=["trl.max_steps=50"],
                         flags={"model": "./teacher", "student": "vllm:./student"})
    result = train(recipe, source="postgresql://atlas@db/atlas", output_dir="runs/grpo")

See docs/training.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_middleware.trainer.data import DataFilter, TeacherExample, iter_examples
    from atlas_middleware.trainer.recipes import Recipe, load_recipe
    from atlas_middleware.trainer.reward import RewardWeights, TeachingReward, teaching_reward
    from atlas_middleware.trainer.run import RunResult, train

__all__ = [
    "DataFilter",
    "Recipe",
    "RewardWeights",
    "RunResult",
    "TeacherExample",
    "TeachingReward",
    "iter_examples",
    "load_recipe",
    "teaching_reward",
    "train",
]

_LAZY = {
    "DataFilter": "data",
    "TeacherExample": "data",
    "iter_examples": "data",
    "Recipe": "recipes",
    "load_recipe": "recipes",
    "RewardWeights": "reward",
    "TeachingReward": "reward",
    "teaching_reward": "reward",
    "RunResult": "run",
    "train": "run",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
