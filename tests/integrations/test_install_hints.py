"""Each integration, imported without its framework, fails with one line naming what to install.

A fresh interpreter per case puts ``None`` in ``sys.modules`` for the framework, which is how
Python reports a module that is not there (``import`` raises ImportError), without uninstalling
anything or disturbing the frameworks this test process has loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import sys
sys.modules[{blocked!r}] = None
try:
    import atlas_middleware.integrations.{module}
except ImportError as exc:
    print(str(exc))
else:
    raise SystemExit("imported without " + {blocked!r})
"""


@pytest.mark.parametrize(
    ("module", "blocked", "hint"),
    [
        ("openai_agents", "agents", "pip install 'atlas-middleware[openai-agents]'"),
        ("llama_index", "llama_index", "pip install 'atlas-middleware[llama-index]'"),
        ("langchain", "langchain_core", "pip install 'atlas-middleware[langchain]'"),
        ("langgraph", "langgraph", "pip install 'atlas-middleware[langgraph]'"),
        # litellm is a core dependency: no extra, the package itself.
        ("litellm", "litellm", "pip install 'litellm>=1.83'"),
    ],
)
def test_a_missing_framework_is_a_one_line_install_hint(module, blocked, hint, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CODE.format(module=module, blocked=blocked)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "ATLAS_STORE_URL": f"sqlite:///{tmp_path / 'atlas.db'}"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    [message] = lines
    assert message.startswith(f"{blocked}") and " is not installed: " in message
    assert hint in message
    assert "Traceback" not in proc.stderr
