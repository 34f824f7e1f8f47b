"""An installed wheel carries every template and static file of the page (package-data)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_covers_every_template_and_static_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    assert "atlas_middleware.ui" in tool["packages"]
    patterns = tool["package-data"]["atlas_middleware.ui"]
    ui = ROOT / "atlas_middleware" / "ui"
    files = [
        p.relative_to(ui).as_posix() for d in ("templates", "static") for p in (ui / d).iterdir()
    ]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert missing == [], f"not in the wheel: {missing}"
