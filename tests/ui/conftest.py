"""Fixtures for atlas ui: a seeded store (both stores), the server in-process or as the real
``atlas ui`` command, and one headless Chromium per module (Debian's, never a download)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store
from tests.ui.seed import Seeded, seed_store

CHROMIUM = os.environ.get("ATLAS_CHROMIUM", "/usr/bin/chromium")
# What the machine notes require of Chromium here: no sandbox as root, and no background
# connections (the network is closed; Chromium would keep trying).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def seeded(store_url: str, tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    """(store URL, what was seeded): a few days of sessions, a playbook, a training run with
    its curves.png and an eval report, in the store of the test's parameter."""
    with open_store(store_url) as store:
        found = seed_store(
            store,
            now_ns=time.time_ns(),
            run_dir=tmp_path / "grpo-run",
            reports_dir=tmp_path / "atlas-eval",
        )
    yield store_url, found


@contextlib.contextmanager
def serving(store_url: str, **settings) -> Iterator[str]:
    """The UI server in this process on a free port; yields its URL."""
    from atlas_middleware.ui import UISettings, make_server

    store = open_store(store_url)
    server = make_server(UISettings(store_url=store_url, port=0, **settings), store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.close()


_LISTENING = re.compile(r"atlas ui: (http://\S+)")


@contextlib.contextmanager
def atlas_ui(*args: str, cwd: Path | None = None) -> Iterator[str]:
    """The real ``atlas ui`` command as a subprocess on a free port; yields its URL."""
    log = Path(tempfile.mkstemp(prefix="atlas-ui-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atlas_middleware.cli", "ui", "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "ATLAS_REVIEWER": "reviewer-1"},
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := _LISTENING.search(log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"atlas ui did not start: {log.read_text()}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


def _need_browser(reason: str) -> None:
    if os.environ.get("ATLAS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (ATLAS_REQUIRE_BROWSER=1) but {reason}")
    pytest.skip(f"no browser: {reason} (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the whole module (starting one costs about a second)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need_browser("the playwright package is not installed (the [dev] extra has it)")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        _need_browser(f"{CHROMIUM} not found")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path):
    """Save a screenshot of a page under the test's output folder (and, with
    $ATLAS_UI_SCREENSHOTS set, copy it there too: that is how docs/ui/ is refreshed)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    copy_to = os.environ.get("ATLAS_UI_SCREENSHOTS")

    def take(page, name: str, *, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(copy_to) / path.name)
        return path

    take.folder = folder
    return take
