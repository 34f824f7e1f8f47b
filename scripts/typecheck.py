"""Type-check the package with mypy and pyproject's [tool.mypy] (strict for the core; the CLI, UI,
integrations, exporters and trainer in mypy's default mode). ``make lint`` runs it.

The repository keeps ``integrations/``, ``otel_exporters/`` and ``trainer/`` at the top level,
installed as ``atlas_middleware.integrations`` and so on (pyproject's package-dir), which mypy
cannot follow. So, as scripts/lint_imports.py does for import-linter, this lays the package out as
it is installed (links into build/typecheck/), runs mypy there and reports the sources' own paths.

Usage: ``python scripts/typecheck.py [extra files to check with the package...]``; exits with
mypy's status."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "build" / "typecheck"
INSTALLED_AS = {
    "integrations": "integrations",
    "otel_exporters": "otel_exporters",
    "trainer": "trainer",
}
# Checked with the package, as a user's code would be: decorated functions keep their signatures.
EXAMPLES = [ROOT / "tests" / "architecture" / "typed_usage.py"]


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    # (another run, make lint beside the tests, may have made it meanwhile)
    with contextlib.suppress(FileExistsError):
        link.symlink_to(target)


def lay_out() -> dict[str, str]:
    """Links build/typecheck/atlas_middleware/* to the sources (kept between runs, so mypy's
    cache stays valid); returns {laid-out prefix: source prefix} to translate mypy's paths."""
    package = LAYOUT / "atlas_middleware"
    package.mkdir(parents=True, exist_ok=True)
    for link in [*LAYOUT.iterdir(), *package.iterdir()]:
        if link.is_symlink() and not link.exists():  # its source is gone
            link.unlink()
    for entry in (ROOT / "atlas_middleware").iterdir():
        if entry.name != "__pycache__":
            _link(package / entry.name, entry)
    back = {}
    for folder, name in INSTALLED_AS.items():
        _link(package / name, ROOT / folder)
        back[f"atlas_middleware/{name}/"] = f"{folder}/"
    return back


def main(argv: list[str]) -> int:
    back = lay_out()
    files = ["atlas_middleware"]
    for extra in [*EXAMPLES, *(Path(a).resolve() for a in argv)]:
        _link(LAYOUT / extra.name, extra)
        files.append(extra.name)
        back[extra.name] = (
            str(extra.relative_to(ROOT)) if extra.is_relative_to(ROOT) else str(extra)
        )
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
        *files,
    ]
    env = {**os.environ, "MYPYPATH": ""}
    done = subprocess.run(command, cwd=LAYOUT, env=env, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        for laid, source in back.items():
            if line.startswith(laid):
                line = source + line[len(laid) :]
                break
        print(line)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
