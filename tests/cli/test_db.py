"""``atlas db``: migrate, status, prune."""

from __future__ import annotations

import json

from atlas_middleware.storage.base import load_migrations


def test_migrate_status_prune(seed):
    dialect = "postgres" if seed.url.startswith("postgresql") else "sqlite"
    latest = load_migrations(dialect)[-1][0]

    out = seed.cli("db", "migrate").stdout
    assert f"from version 0 to {latest}" in out
    assert "already at version" in seed.cli("db", "migrate").stdout

    old = seed(2, children=1, age_days=3)
    recent = seed(1, children=1)
    seed.store.set_review(old[:1], "approved")
    seed.store.set_review(old[1:], "quarantined")

    status = json.loads(seed.cli("db", "status", "--json").stdout)
    assert status["url"] == seed.url
    assert status["backend"] == dialect
    assert status["schema_version"] == status["latest_schema_version"] == latest
    assert status["spans"] == 9
    assert status["sessions"] == {"pending": 1, "approved": 1, "quarantined": 1}

    out = seed.cli("db", "prune", "--older-than", "1d").stdout
    assert ("dropped" if dialect == "postgres" else "deleted 6 spans") in out
    assert seed.store.count_spans() == 3
    assert sorted(seed.all_ids()) == sorted(old + recent)  # sessions are kept
    assert seed.store.spans_for(old) == {t: [] for t in old}

    text = seed.cli("db", "status").stdout
    assert seed.url in text and "up to date" in text
    assert "3 (1 pending, 1 approved, 1 quarantined)" in text
