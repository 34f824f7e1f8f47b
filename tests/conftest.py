"""Shared fixtures. Postgres tests use a database of their own per run, dropped afterwards.

With ATLAS_REQUIRE_POSTGRES=1 (CI) a missing Postgres fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for_port

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Tests that import litellm before atlas does would otherwise fetch its price list from the
# network at import (atlas's own backend sets the same default). No hub, no network at test time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def _background_work_stays_in_its_test() -> Iterator[None]:
    """A test's background rewards finish before the next test starts: a reward still judging
    when the next test configures its own store would otherwise count towards that test."""
    yield
    from atlas_middleware.portal import current_portal

    running = current_portal()
    if running is not None and running.pending:
        running.drain(60)


def _admin_url() -> str:
    return os.environ.get("ATLAS_TEST_DATABASE_URL", DEFAULT_URL)


def _with_db(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.split("?", 1)[1] if "?" in rest else ""
    return f"{base}/{name}" + (f"?{query}" if query else "")


def _need_postgres(reason: str) -> None:
    if os.environ.get("ATLAS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"Postgres required (ATLAS_REQUIRE_POSTGRES=1) but unavailable: {reason}")
    pytest.skip(f"Postgres unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """Admin URL of the test Postgres server (fails or skips when it is not reachable)."""
    try:
        import psycopg
    except ImportError:
        _need_postgres("psycopg not installed")
    url = _admin_url()
    try:
        psycopg.connect(url, connect_timeout=3, autocommit=True).close()
    except psycopg.Error as exc:
        _need_postgres(str(exc).strip().splitlines()[0])
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    import psycopg

    name = f"atlas_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'atlas.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once against each store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'atlas.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str):
    from atlas_middleware.storage import open_store

    s = open_store(store_url)
    yield s
    s.close()


TEST_CACHE = Path(os.environ.get("ATLAS_TEST_CACHE_DIR", "/tmp/atlas-test-cache"))


@pytest.fixture(scope="session")
def embedded_cache() -> Path:
    """The cache folder holding the converted embedded model (converted here on first use)."""
    from atlas_middleware.models import embedded_model_dir

    embedded_model_dir(TEST_CACHE)
    return TEST_CACHE


@pytest.fixture(scope="session")
def embedded(embedded_cache: Path):
    """The embedded SmolLM2, loaded once in this process and shared by the tests that chat."""
    import asyncio

    from atlas_middleware.models import EmbeddedModel

    model = EmbeddedModel(cache=embedded_cache)
    model.load()
    yield model
    asyncio.run(model.aclose())


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
