"""Teacher prompts as data: supervise loads a versioned prompts file (option, config, environment)
and the teacher model receives exactly those texts."""

from __future__ import annotations

import pytest

import atlas_middleware as atlas
from atlas_middleware.config import AtlasConfig
from atlas_middleware.models import ScriptedModel
from atlas_middleware.prompts import (
    DEFAULT_PROMPTS,
    PROBE_SYSTEM,
    PromptsError,
    TeacherPrompts,
    load_prompts,
    save_prompts,
)

CUSTOM = TeacherPrompts(
    version=3,
    probe="PROBE-V3: rate the student's chance from 0 to 1.",
    guidance="GUIDE-V3: name the operation to use.",
    validate="CHECK-V3: reply VALID or INVALID: reason.",
    playbook="- Write the final answer as a bare number.\n- Re-read the question.",
)


def teacher(probe: str = "0.1", validate: str = "VALID") -> ScriptedModel:
    def respond(messages):
        system = messages[0]["content"]
        if "PROBE" in system or system.startswith("You judge whether"):
            return probe
        if "CHECK" in system or system.startswith("You check"):
            return validate
        return "Add the two numbers."

    return ScriptedModel(respond=respond, name="teacher")


def systems(model: ScriptedModel) -> list[str]:
    return [call[0]["content"] for call in model.calls]


def test_prompts_option_reaches_the_teacher_and_the_playbook_reaches_the_student(spans):
    model = teacher(probe="0.1")  # coach lane: guidance first, then validation
    seen = []

    @atlas.supervise(agent="calc", teacher=model, reward=False, prompts=CUSTOM)
    def solve(task: str) -> str:
        seen.append(atlas.guidance())
        return "5"

    solve("What is 2 + 3?")
    assert systems(model) == [CUSTOM.probe, CUSTOM.guidance, CUSTOM.validate_]
    # The standing playbook is in the probe's and the guidance's prompt, and follows the
    # teacher's guidance into the student's.
    for call in model.calls[:2]:
        assert "Write the final answer as a bare number." in call[1]["content"]
    assert seen[0].startswith("Add the two numbers.")
    assert "- Re-read the question." in seen[0]


def test_config_file_and_environment_name_the_prompts_file(tmp_path, monkeypatch, spans):
    path = save_prompts(CUSTOM, tmp_path / "prompts-v3.yaml")
    assert load_prompts(path) == CUSTOM

    monkeypatch.setenv("ATLAS_TEACHER__PROMPTS", str(path))
    assert AtlasConfig.load().teacher.prompts == str(path)
    model = teacher(probe="0.95")  # auto lane: the probe only

    @atlas.supervise(agent="calc", teacher=model, reward=False)
    def solve(task: str) -> str:
        return "5"

    solve("What is 2 + 3?")
    assert systems(model) == [CUSTOM.probe]

    # A directory written by `atlas optimize --out` means its active.yaml.
    save_prompts(CUSTOM.with_components({"probe": "PROBE-ACTIVE"}), tmp_path / "active.yaml")
    config = AtlasConfig(teacher={"prompts": str(tmp_path)})
    model = teacher(probe="0.95")

    @atlas.supervise(agent="calc", teacher=model, reward=False, config=config)
    def solve_again(task: str) -> str:
        return "5"

    solve_again("What is 2 + 3?")
    assert systems(model) == ["PROBE-ACTIVE"]


def test_without_prompts_the_built_in_texts_are_used(spans):
    model = teacher(probe="0.95")

    @atlas.supervise(agent="calc", teacher=model, reward=False)
    def solve(task: str) -> str:
        return "5"

    solve("What is 2 + 3?")
    assert systems(model) == [PROBE_SYSTEM]
    assert DEFAULT_PROMPTS.lessons() == []


def test_unusable_prompts_files_fail_in_one_line(tmp_path):
    with pytest.raises(PromptsError, match=r"prompts file not found: .*nope.yaml"):
        load_prompts(tmp_path / "nope.yaml")
    with pytest.raises(PromptsError, match=r"no active prompts there yet"):
        load_prompts(tmp_path)
    (tmp_path / "bad.yaml").write_text("probe: ''\n")
    with pytest.raises(PromptsError, match=r"bad.yaml: probe: must not be empty"):
        load_prompts(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("prob: x\n")
    with pytest.raises(PromptsError, match=r"prob: unknown field"):
        load_prompts(tmp_path / "typo.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(PromptsError, match=r"expected a mapping"):
        load_prompts(tmp_path / "list.yaml")
    assert issubclass(PromptsError, ValueError)  # the CLI prints ValueErrors as one line
