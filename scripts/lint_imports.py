"""Check the layer contracts of pyproject's [tool.importlinter] (docs/architecture.md).

The repository keeps ``integrations/``, ``otel_exporters/`` and ``trainer/`` at the top level,
installed as ``atlas_middleware.integrations`` and so on (pyproject's package-dir), while
import-linter reads packages from the file system. So this lays the tree out as it is installed
(links to the sources, in a temporary folder) and runs ``lint-imports`` on that."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {
    "integrations": "integrations",
    "otel_exporters": "otel_exporters",
    "trainer": "trainer",
}


def lay_out(into: Path) -> None:
    package = into / "atlas_middleware"
    for source in (ROOT / "atlas_middleware").rglob("*.py"):
        target = package / source.relative_to(ROOT / "atlas_middleware")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    for folder, name in INSTALLED_AS.items():
        for source in (ROOT / folder).rglob("*.py"):
            target = package / name / source.relative_to(ROOT / folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="atlas-imports-") as tmp:
        lay_out(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        command = [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            str(ROOT / "pyproject.toml"),
            "--no-cache",
        ]
        return subprocess.run(command, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
