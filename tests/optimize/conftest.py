"""Fixtures for atlas optimize: config isolation, a private store, in-memory spans."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware import telemetry
from atlas_middleware.config import AtlasConfig


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The developer's ATLAS_* settings must not leak in, and nothing touches ./.atlas."""
    prefixes = tuple(f"ATLAS_{section.upper()}__" for section in AtlasConfig.SECTIONS)
    for key in list(os.environ):
        if key.upper().startswith(prefixes) or key.upper() == "ATLAS_CONFIG_FILE":
            monkeypatch.delenv(key)
    url = f"sqlite:///{tmp_path / 'atlas.db'}"
    monkeypatch.setenv("ATLAS_STORE_URL", url)
    yield url


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    yield exporter
    telemetry.shutdown()
