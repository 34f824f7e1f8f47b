"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject) pass, and every
core module is named in them, so a new module cannot slip past the check unclassified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
UPPER = {"cli", "ui", "integrations", "otel_exporters", "trainer"}
NOT_CODE = {"__init__", "__main__", "data"}


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_core_module_is_under_the_core_contract():
    core = next(c for c in contracts() if c["name"].startswith("the core imports no"))
    listed = {name.removeprefix("atlas_middleware.") for name in core["source_modules"]}
    found = {
        path.stem if path.is_file() else path.name
        for path in (ROOT / "atlas_middleware").iterdir()
        if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))
    }
    assert found - UPPER - NOT_CODE == listed
    assert {name.removeprefix("atlas_middleware.") for name in core["forbidden_modules"]} == UPPER


def test_the_import_contracts_are_kept():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lint_imports.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
