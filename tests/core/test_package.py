"""The package's public names survive imports of same-named submodules, and importing it (or an
integration) pulls in no framework it does not need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_supervise_stays_the_decorator_after_its_module_is_imported():
    code = (
        "from atlas_middleware.supervise import Supervisor\n"  # the module is imported first
        "import atlas_middleware as atlas\n"
        "import atlas_middleware.evaluate\n"
        "assert callable(atlas.supervise) and atlas.supervise.__name__ == 'supervise'\n"
        "assert atlas.guidance.__name__ == 'guidance'\n"
        "import sys; assert 'torch' not in sys.modules and 'langgraph' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Every agent framework, torch, and litellm (a core dependency, imported only when a litellm
# model or the litellm integration is used).
HEAVY = ("agents", "llama_index", "langchain_core", "langgraph", "litellm", "torch", "transformers")


def _imported_after(statement: str, cwd: Path) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    env = {**os.environ, "ATLAS_STORE_URL": f"sqlite:///{cwd / 'atlas.db'}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_importing_the_package_and_the_integrations_package_imports_no_framework(tmp_path):
    statement = "import atlas_middleware\nimport atlas_middleware.integrations"
    assert _imported_after(statement, tmp_path) == []


def test_a_supervised_call_with_no_models_imports_no_framework(tmp_path):
    statement = (
        "import atlas_middleware as atlas\n"
        "f = atlas.supervise(lambda task: '4', agent='calc', lane='auto', reward=False)\n"
        "assert f('What is 2 + 2?') == '4'\n"
        "atlas.shutdown()"
    )
    assert _imported_after(statement, tmp_path) == []


@pytest.mark.parametrize(
    ("module", "frameworks"),
    [
        ("langchain", ["langchain_core"]),
        ("langgraph", ["langchain_core", "langgraph"]),
        ("llama_index", ["llama_index"]),
        ("openai_agents", ["agents"]),
        ("litellm", ["litellm"]),
        ("remote", []),
    ],
)
def test_each_integration_imports_only_its_own_framework(module, frameworks, tmp_path):
    imported = _imported_after(f"import atlas_middleware.integrations.{module}", tmp_path)
    assert imported == frameworks
