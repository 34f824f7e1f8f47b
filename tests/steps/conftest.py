"""What every integration test shares: private atlas settings and store, in-memory spans."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from atlas_middleware import telemetry
from atlas_middleware.config import AtlasConfig


@pytest.fixture(autouse=True)
def _private_atlas(tmp_path, monkeypatch) -> Iterator[None]:
    """No developer ATLAS_<SECTION>__* settings or config file, no ./.atlas store, and no atlas
    tracing left configured afterwards (per-file fixtures undo their framework's hooks)."""
    prefixes = tuple(f"ATLAS_{section.upper()}__" for section in AtlasConfig.SECTIONS)
    for key in list(os.environ):
        if key.upper().startswith(prefixes) or key.upper() == "ATLAS_CONFIG_FILE":
            monkeypatch.delenv(key)
    monkeypatch.setenv("ATLAS_STORE_URL", f"sqlite:///{tmp_path / 'default.db'}")
    yield
    telemetry.shutdown()


@pytest.fixture
def memory() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter=exporter, batch=False, set_global=False)
    return exporter
