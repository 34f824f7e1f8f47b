"""AtlasConfig: defaults, precedence (kwargs > env > YAML > defaults), one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas_middleware.config import AtlasConfig, ConfigError, LaneSettings
from atlas_middleware.review import DriftPolicy


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "atlas.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_documented_values() -> None:
    config = AtlasConfig()
    assert config.teacher.model == "embedded" and config.student.model == "embedded"
    assert (config.lanes.auto_threshold, config.lanes.paired_threshold) == (0.85, 0.65)
    assert config.lanes.fallback_lane == "paired" and config.lanes.forced_lane is None
    assert config.lanes.probe_max_tokens == 50 and config.lanes.max_retries == 1
    assert config.rim.judges == ["accuracy", "process", "helpfulness", "efficiency"]
    assert config.rim.samples == 3 and config.rim.temperatures == (0.2, 0.5, 0.8)
    assert (config.rim.variance_threshold, config.rim.uncertainty_threshold) == (0.15, 0.3)
    assert config.rim.mode == "background" and config.rim.reward_rate == 1.0
    assert config.supervision.rate == 1.0
    assert config.storage.url is None
    assert config.telemetry.capture_content is True
    assert config.review.policy() == DriftPolicy(window=50, min_baseline=5, threshold=3.0)


def test_precedence_kwargs_over_env_over_yaml_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "teacher:\n  model: yaml/model\n  temperature: 0.3\n  max_tokens: 100\n"
        "lanes:\n  paired_threshold: 0.5\nrim:\n  samples: 5\n",
    )
    monkeypatch.setenv("ATLAS_TEACHER__MODEL", "env/model")
    monkeypatch.setenv("ATLAS_TEACHER__MAX_TOKENS", "200")
    monkeypatch.setenv("ATLAS_RIM__JUDGES", '["accuracy", "process"]')

    config = AtlasConfig.from_yaml(path, teacher={"max_tokens": 300})

    assert config.teacher.max_tokens == 300  # kwargs beat env and YAML
    assert config.teacher.model == "env/model"  # env beats YAML
    assert config.teacher.temperature == 0.3  # YAML beats defaults; merged per field
    assert config.lanes.paired_threshold == 0.5
    assert config.rim.samples == 5
    assert config.rim.judges == ["accuracy", "process"]  # JSON lists from env
    assert config.teacher.timeout_s == 60.0  # default


def test_env_alone_and_kwargs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_LANES__FORCED_LANE", "coach")
    monkeypatch.setenv("ATLAS_STORAGE__URL", "sqlite:///x.db")
    config = AtlasConfig()
    assert config.lanes.forced_lane == "coach" and config.storage.url == "sqlite:///x.db"
    assert AtlasConfig(lanes={"forced_lane": "auto"}).lanes.forced_lane == "auto"
    assert AtlasConfig(teacher={"model": "openai/gpt-4o-mini"}).teacher.model == (
        "openai/gpt-4o-mini"
    )


def test_load_reads_the_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "supervision:\n  rate: 0.25\n")
    monkeypatch.setenv("ATLAS_CONFIG_FILE", str(path))
    assert AtlasConfig.load().supervision.rate == 0.25
    assert AtlasConfig.load(supervision={"rate": 0.5}).supervision.rate == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"lanes": {"auto_threshold": 1.7}},
            "lanes.auto_threshold: must be between 0 and 1 (got 1.7)",
        ),
        ({"lanes": {"max_retries": -1}}, "lanes.max_retries: must be 0 or more (got -1)"),
        ({"rim": {"samples": 0}}, "rim.samples: must be 1 or more (got 0)"),
        (
            {"rim": {"temperatures": [0.2, 3]}},
            "rim.temperatures[1]: must be between 0 and 2 (got 3)",
        ),
        (
            {"rim": {"mode": "later"}},
            "rim.mode: input should be 'background' or 'inline' (got 'later')",
        ),
        ({"teacher": {"timeout_s": 0}}, "teacher.timeout_s: must be greater than 0 (got 0)"),
        ({"supervision": {"rate": 2}}, "supervision.rate: must be between 0 and 1 (got 2)"),
    ],
)
def test_invalid_values_give_one_line_naming_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AtlasConfig(**kwargs)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_unknown_keys_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^lanes\.auto_treshold: unknown setting \(got 0\.9\); known: auto_threshold",
    ):
        AtlasConfig(lanes={"auto_treshold": 0.9})
    with pytest.raises(ConfigError, match=r"^teachr: unknown setting"):
        AtlasConfig(teachr={"model": "x"})
    path = write(tmp_path, "teacher:\n  modle: x\n")
    with pytest.raises(ConfigError) as caught:
        AtlasConfig.from_yaml(path)
    assert str(caught.value).startswith("teacher.modle: unknown setting (got 'x')")
    assert str(path) in str(caught.value) and caught.value.field == "teacher.modle"


def test_env_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_LANES__AUTO_THRESHOLD", "high")
    with pytest.raises(ConfigError) as caught:
        AtlasConfig()
    text = str(caught.value)
    assert text.startswith("lanes.auto_threshold: ") and "'high'" in text
    assert "$ATLAS_LANES__AUTO_THRESHOLD" in text and "\n" not in text


def test_cross_field_check_and_assignment_errors() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^lanes: paired_threshold \(0\.9\) must not exceed auto_threshold \(0\.85\)$",
    ):
        AtlasConfig(lanes={"paired_threshold": 0.9})
    config = AtlasConfig()
    with pytest.raises(
        ConfigError, match=r"^LaneSettings\.auto_threshold: must be between 0 and 1 \(got 5\)$"
    ):
        config.lanes.auto_threshold = 5
    assert config.lanes.auto_threshold == 0.85


def test_yaml_file_problems_say_which_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found: " + str(missing)):
        AtlasConfig.from_yaml(missing)
    broken = write(tmp_path, "teacher: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        AtlasConfig.from_yaml(broken)
    assert str(broken) in str(caught.value) and "invalid YAML" in str(caught.value)
    assert "\n" not in str(caught.value)
    listing = write(tmp_path, "- teacher\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        AtlasConfig.from_yaml(listing)
    empty = write(tmp_path, "")
    assert AtlasConfig.from_yaml(empty) == AtlasConfig()


def test_api_key_is_never_printed(tmp_path: Path) -> None:
    secret = "sk-test-0123456789abcdefghij"
    config = AtlasConfig(teacher={"api_key": secret})
    assert config.teacher.api_key is not None
    assert config.teacher.api_key.get_secret_value() == secret
    for text in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert secret not in text
    with pytest.raises(ConfigError) as caught:
        AtlasConfig(teacher={"api_key": 12345678901})
    assert "12345678901" not in str(caught.value) and "[REDACTED]" in str(caught.value)


@pytest.mark.parametrize(
    ("confidence", "lane"),
    [
        (0.95, "auto"),
        (0.85, "auto"),
        (0.7, "paired"),
        (0.65, "paired"),
        (0.2, "coach"),
        (None, "paired"),
    ],
)
def test_lane_thresholds(confidence: float | None, lane: str) -> None:
    assert LaneSettings().lane_for(confidence) == lane


def test_forced_and_fallback_lanes() -> None:
    assert LaneSettings(forced_lane="coach").lane_for(0.99) == "coach"
    assert LaneSettings(fallback_lane="coach").lane_for(None) == "coach"
    assert LaneSettings(max_retries=0).max_retries == 0


def test_env_lists_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_RIM__JUDGES", "accuracy,process")
    with pytest.raises(ConfigError) as caught:
        AtlasConfig()
    assert str(caught.value).startswith("rim: an environment value could not be parsed")
    assert "$ATLAS_RIM__JUDGES" in str(caught.value) and "\n" not in str(caught.value)
