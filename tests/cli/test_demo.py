"""`atlas demo` (the ingest path through atlas-collector, docs/collector.md) and `atlas collector`."""

from __future__ import annotations

from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli


def test_demo_lands_sessions_through_both_transports(sqlite_url: str) -> None:
    proc = atlas_cli("demo", "--sessions", "4", "--store", sqlite_url)
    assert "16 spans landed" in proc.stdout
    with open_store(sqlite_url) as store:
        sessions = list(store.iter_sessions())
        assert store.count_spans() == 16
        spans = store.spans_for([s.trace_id for s in sessions])
    assert len(sessions) == 4
    assert {s.service_name for s in sessions} == {"demo-http", "demo-grpc"}
    for session in sessions:
        assert session.reward_score in (0.9, 0.1)
        assert session.evaluations["atlas.rim"]["explanation"].startswith("expected ")
        names = sorted(span.name for span in spans[session.trace_id])
        assert names == [
            "chat demo-model",
            "evaluate atlas.rim",
            "execute_tool add",
            "invoke_agent demo-calculator",
        ]


def test_collector_subcommand_refuses_public_bind_without_token(sqlite_url: str) -> None:
    proc = atlas_cli("collector", "--store", sqlite_url, "--http", "0.0.0.0:0", check=False)
    assert proc.returncode == 2
    assert "--token" in proc.stderr
    assert "Traceback" not in proc.stderr
