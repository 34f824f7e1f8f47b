"""Fixtures for model tests: ONE converted embedded-model cache per machine, one in-process
embedded model and one ``atlas serve-model`` subprocess per test session.

The cache lives under /tmp (``$ATLAS_TEST_CACHE_DIR`` overrides) and persists between runs, so
the GGUF → safetensors conversion (~20-40 s on 2 cores) happens once per machine, not per run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for_port

# embedded_cache and embedded (one converted cache per machine) live in tests/conftest.py.


@pytest.fixture(scope="session")
def model_server(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``atlas serve-model`` (the embedded model) as a real subprocess; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve-model") / "server.log"
    with open(log_path, "w") as log:  # a file, not a pipe: nobody drains a pipe while tests run
        proc = subprocess.Popen(
            [sys.executable, "-m", "atlas_middleware.cli", "serve-model", "--port", str(port)],
            env={**os.environ, "ATLAS_CACHE_DIR": str(embedded_cache)},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        try:
            wait_for_port(port, proc, timeout=180)  # imports torch + transformers, loads weights
        except (RuntimeError, TimeoutError) as exc:
            log_text = log_path.read_text()
            raise RuntimeError(f"atlas serve-model did not start: {exc}\n{log_text}") from exc
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
