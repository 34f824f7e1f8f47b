"""Fixtures for CLI tests: a store seeded with real SDK spans, and a runner for the real CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from atlas_middleware.otel_exporters.sdk import to_records

from atlas_middleware.storage import Store, open_store
from tests.helpers import atlas_cli, session_spans

DAY_NS = 86_400 * 1_000_000_000


class Seeder:
    """Writes sessions into the store at ``url`` the way the exporter does, and runs the CLI
    against it. The store is opened on first use, so a test can run ``atlas db migrate`` on a
    still-empty database first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.url)
        return self._store

    def __call__(self, n: int = 1, *, age_days: float = 0, **kwargs: Any) -> list[str]:
        """Write ``n`` sessions (see tests.helpers.session_spans); returns their trace ids in
        creation order. ``age_days`` moves them (and their spans) that far into the past."""
        records = to_records(session_spans(n, **kwargs))
        shift = int(age_days * DAY_NS)
        for record in records:
            record.start_ns -= shift
            record.end_ns -= shift
            for event in record.events:
                event.time_ns -= shift
        self.store.write_spans(records)
        return [r.trace_id for r in records if r.parent_span_id is None]

    def all_ids(self) -> list[str]:
        return [s.trace_id for s in self.store.iter_sessions()]

    def cli(self, *args: str, check: bool = True, **kwargs: Any):
        return atlas_cli(*args, "--store", self.url, check=check, **kwargs)

    def json_lines(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli(*args).stdout
        return [json.loads(line) for line in out.splitlines()]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@pytest.fixture
def seed(store_url: str):
    seeder = Seeder(store_url)
    yield seeder
    seeder.close()


@pytest.fixture
def sqlite_seed(sqlite_url: str):
    seeder = Seeder(sqlite_url)
    yield seeder
    seeder.close()


def trace_ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["trace_id"] for line in lines]
