"""Recipes: shipped YAML, user files, --set overrides, and TRL's own config classes."""

from __future__ import annotations

import pytest
from atlas_middleware.trainer.recipes import RECIPES, RecipeError, load_recipe, trl_config


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_build_trls_config(name, tmp_path):
    recipe = load_recipe(name)
    config = trl_config(recipe, output_dir=str(tmp_path), use_cpu=True)
    assert (
        type(config).__name__
        == {"sft": "SFTConfig", "grpo": "GRPOConfig", "gkd": "GKDConfig"}[name]
    )
    for key, value in recipe.trl.items():
        got = getattr(config, key)
        if key == "report_to":
            assert got in ("none", [], ["none"])
        else:
            assert got == value, key


def test_user_file_then_set_then_flags(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "trl:\n  max_steps: 7\n  learning_rate: 3.0e-6\nreward:\n  leak_penalty: 2\nmodel: a\n"
    )
    recipe = load_recipe(
        "grpo",
        config=user,
        overrides=[
            "trl.max_steps=9",
            "reward.guidance_budget=64",
            "data.statuses=[approved, pending]",
        ],
        flags={"model": "b", "student": None},
    )
    assert recipe.trl["max_steps"] == 9  # --set beats the file
    assert recipe.trl["learning_rate"] == 3.0e-6  # the file beats the shipped recipe
    assert recipe.trl["num_generations"] == 4  # shipped default kept
    assert recipe.reward == {**load_recipe("grpo").reward, "leak_penalty": 2, "guidance_budget": 64}
    assert recipe.data["statuses"] == ["approved", "pending"]
    assert recipe.model == "b"  # a CLI flag beats everything
    config = trl_config(recipe, output_dir=str(tmp_path), use_cpu=True)
    assert config.max_steps == 9 and config.learning_rate == 3.0e-6


def test_any_trl_field_passes_through(tmp_path):
    recipe = load_recipe("grpo", overrides=["trl.loss_type=dr_grpo", "trl.scale_rewards=none"])
    config = trl_config(recipe, output_dir=str(tmp_path), use_cpu=True)
    assert config.loss_type == "dr_grpo"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": ["trl.max_stepz=3"]}, "unknown GRPOConfig field(s) in trl: max_stepz"),
        ({"overrides": ["bogus=1"]}, "unknown recipe key(s) bogus"),
        ({"overrides": ["data.min_rewrd=1"]}, "unknown data key(s) min_rewrd"),
        ({"overrides": ["trl.max_steps"]}, "--set expects section.key=value"),
        ({"overrides": ["trl.num_generations=1"]}, "GRPOConfig: GRPO requires at least 2"),
    ],
)
def test_mistakes_are_one_line_errors(kwargs, message, tmp_path):
    with pytest.raises(RecipeError) as info:
        trl_config(load_recipe("grpo", **kwargs), output_dir=str(tmp_path), use_cpu=True)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_recipe_file_is_refused(tmp_path):
    user = tmp_path / "sft.yaml"
    user.write_text("recipe: sft\n")
    with pytest.raises(RecipeError, match="run 'atlas-train sft'"):
        load_recipe("grpo", config=user)
    user.write_text("- a list\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe("grpo", config=user)


def test_importing_the_trainer_and_its_cli_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, atlas_middleware.trainer, atlas_middleware.trainer.cli as c;"
        "c.build_parser();"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
