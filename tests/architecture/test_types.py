"""The package type-checks with pyproject's [tool.mypy] (strict for the core), as `make lint`
runs it (scripts/typecheck.py), and a supervised function keeps its signature for type checkers:
tests/architecture/typed_usage.py is checked with the package, and a wrong call is reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def typecheck(*extra: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "typecheck.py"), *map(str, extra)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_the_package_and_the_typed_usage_example_type_check():
    done = typecheck()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_a_wrong_call_of_a_supervised_function_is_reported(tmp_path):
    wrong = tmp_path / "wrong_supervised_call.py"
    wrong.write_text(
        "import atlas_middleware as atlas\n"
        "\n"
        "\n"
        "@atlas.supervise(agent='calc')\n"
        "def solve(task: str, attempts: int = 1) -> str:\n"
        "    return task\n"
        "\n"
        "\n"
        "solve(5)\n"
        "solve('2 + 3', tries=2)\n"
        "reveal_type(solve('2 + 3'))\n"
    )
    done = typecheck(wrong)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    name = str(wrong)
    assert f'{name}:9: error: Argument 1 to "__call__" of "Supervised" has incompatible type' in out
    assert f'{name}:10: error: Unexpected keyword argument "tries"' in out
    assert f'{name}:11: note: Revealed type is "str"' in out
    # Nothing else is reported: the package itself is clean.
    assert all(line.startswith(name) or line.startswith("Found ") for line in out.splitlines())
