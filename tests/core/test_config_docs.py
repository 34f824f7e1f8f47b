"""docs/configuration.md stays a complete reference: every AtlasConfig setting is documented."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from atlas_middleware.config import AtlasConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def settings(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every leaf setting of a pydantic model (sections walked recursively)."""
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += settings(annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_in_the_configuration_reference():
    names = settings(AtlasConfig)
    assert set(AtlasConfig.SECTIONS) == {n.split(".")[0] for n in names}
    assert "telemetry.spool_max_mb" in names and "teacher.api_base" in names  # the walk works
    text = DOC.read_text()
    missing = [n for n in names if f"`{n}`" not in text]
    assert missing == [], f"docs/configuration.md does not document {missing}"
