"""Versioned migrations (both dialects), concurrent first opens, Postgres partitions and retention."""

from __future__ import annotations

import threading

import psycopg
import pytest

from atlas_middleware.storage import StoreError, open_store
from atlas_middleware.storage.base import SPAN_COLUMN_LIST, SPAN_COLUMNS, load_migrations, span_rows
from atlas_middleware.storage.records import derive_session_updates, json_dumps
from tests.storage.factories import (
    BASE_NS,
    DAY_NS,
    sdk_records,
    session,
    split_evaluations,
    tid,
    trace_ids,
)

VERSIONS = [v for v, _, _ in load_migrations("sqlite")]
LATEST = max(VERSIONS)


def test_both_dialects_have_the_same_migration_versions():
    sqlite = [(v, name) for v, name, _ in load_migrations("sqlite")]
    postgres = [(v, name) for v, name, _ in load_migrations("postgres")]
    assert sqlite == postgres
    versions = [v for v, _ in sqlite]
    # Contiguous: a store applies the versions above its own, so a gap would be skipped forever.
    assert versions == list(range(1, len(versions) + 1))


def test_store_at_version_1_with_data_upgrades_in_place(store_url):
    records = sdk_records(6, score=None)  # v1 code wrote roots; rewards below, as v1 did
    ids = trace_ids(records)
    with open_store(store_url, migrate=False) as old:
        assert old.migrate(target=1) == 1
        assert old.schema_version() == 1
        with pytest.raises(StoreError):  # no drift log before version 2
            old.drift_alerts()
        # Rows as version-1 code wrote them: plain SQL against the version-1 schema (today's
        # write path knows columns that version 1 did not have).
        if hasattr(old, "_ensure_partitions"):
            old._ensure_partitions({r.start_ns // DAY_NS for r in records})
        sessions_v1 = derive_session_updates(records).values()
        with old._transaction() as conn:
            old._run_many(
                conn,
                f"INSERT INTO spans ({SPAN_COLUMN_LIST}) "
                f"VALUES ({', '.join(['%s'] * len(SPAN_COLUMNS))})",
                span_rows(records),
            )
            old._run_many(
                conn,
                "INSERT INTO sessions (trace_id, agent_name, learning_key, task, started_ns, "
                "evaluations, reward_score, updated_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        u.trace_id,
                        u.agent_name,
                        u.learning_key,
                        u.task,
                        u.started_ns,
                        json_dumps({"atlas.rim": {"score": 0.8}}),
                        0.8,
                        1,
                    )
                    for u in sessions_v1
                ],
            )
        old.set_review(ids[:2], "approved", note="v1 review")
        old.put_playbook("math", {"rules": ["v1"]})
        old.record_training_run("run-v1", checkpoint="c1", recipe="sft", trace_ids=ids[:3])

    with open_store(store_url, migrate=False) as store:
        assert store.migrate() == LATEST
        assert store.schema_version() == LATEST
        assert store.migrate() == LATEST  # idempotent
        # Everything written at version 1 is still there.
        assert store.count_spans() == len(records)
        sessions = list(store.iter_sessions())
        assert sorted(x.trace_id for x in sessions) == ids
        assert all(x.reward_score == 0.8 and x.task.startswith("task ") for x in sessions)
        assert all(x.drift is None for x in sessions)  # new column, not back-filled
        assert sorted(x.review_status for x in sessions) == ["approved"] * 2 + ["pending"] * 4
        assert store.get_session(ids[0]).review_note == "v1 review"
        assert store.get_playbook("math") == {"rules": ["v1"]}
        [run] = store.training_runs()
        assert (run["run_id"], run["sessions"]) == ("run-v1", 3)
        # ... and the version 2 features work on top of the old data: the six v1 rewards are
        # the drift baseline of a new session.
        assert store.drift_alerts() == []
        spans, evaluations = split_evaluations(sdk_records(1, score=0.1))
        store.write_spans(spans)
        assert store.write_spans(evaluations).drift_alerts == 1
        assert store.drift_alerts()[0]["baseline"] == 6

    with open_store(store_url) as reopened:  # a normal open of an up-to-date store
        assert reopened.schema_version() == LATEST
        assert reopened._read("SELECT version FROM atlas_schema_version ORDER BY 1") == [
            (v,) for v in VERSIONS
        ]


def open_at_once(url: str, n: int = 3) -> list:
    """``n`` threads open the store at ``url`` at the same moment; returns the stores."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    stores = []

    def open_one() -> None:
        try:
            barrier.wait()
            stores.append(open_store(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for store in stores:
            store.close()
        raise AssertionError(f"concurrent open failed: {errors!r}")
    return stores


def test_concurrent_first_opens_migrate_once(store_url):
    """A collector and the CLI (or several collector replicas) opening a new store at the same
    moment must not both apply the same migrations."""
    sqlite = store_url.startswith("sqlite")
    # The SQLite race was lost about every other time; several fresh files make it certain.
    urls = (
        [store_url.replace("atlas.db", f"race{n}.db") for n in range(6)] if sqlite else [store_url]
    )
    for url in urls:
        stores = open_at_once(url)
        try:
            assert [x.schema_version() for x in stores] == [LATEST] * 3
            stores[0].write_spans(session(1, 0.5))
            assert stores[1].get_session(tid(1)).reward_score == 0.5
        finally:
            for x in stores:
                x.close()


# --- Postgres partitions -------------------------------------------------------------------------
def test_postgres_daily_partitions_and_retention(postgres_url):
    days = [0, 1, 5]
    batch = []
    for i, day in enumerate(days, start=1):
        # Sessions right at the start and at the end of their UTC day.
        batch += session(i, 0.5, start_ns=BASE_NS + day * DAY_NS)
        batch += session(10 + i, 0.5, start_ns=BASE_NS + (day + 1) * DAY_NS - 10_000_000)
    with open_store(postgres_url) as store:
        assert store.partitions() == []
        store.write_spans(batch)
        assert store.partitions() == ["spans_p20250921", "spans_p20250922", "spans_p20250926"]
        assert store.count_spans() == len(batch)
        with psycopg.connect(postgres_url) as conn:
            per_partition = dict(
                conn.execute(
                    "SELECT tableoid::regclass::text, COUNT(*) FROM spans GROUP BY 1"
                ).fetchall()
            )
        assert per_partition == {
            "spans_p20250921": 4,
            "spans_p20250922": 4,
            "spans_p20250926": 4,
        }
        # Retention drops whole days that end at or before the cut-off; sessions stay.
        assert store.prune_spans(BASE_NS + 2 * DAY_NS) == 2
        assert store.partitions() == ["spans_p20250926"]
        assert store.count_spans() == 4
        assert store.spans_for([tid(1)]) == {tid(1): []}
        assert store.get_session(tid(1)).reward_score == 0.5
        assert len(list(store.iter_sessions())) == 6
        assert store.prune_spans(BASE_NS + 2 * DAY_NS) == 0
        # A late span for a pruned day recreates its partition.
        store.write_spans(session(30, 0.5, start_ns=BASE_NS + 12_345))
        assert "spans_p20250921" in store.partitions()
        assert store.count_spans() == 6

    # Another replica (its own partition cache) writing into a day created by the first.
    with open_store(postgres_url) as replica:
        replica.write_spans(session(31, 0.5, start_ns=BASE_NS + 5 * DAY_NS + 1))
        assert replica.count_spans() == 8
        assert len(replica.partitions()) == 2


def test_sqlite_prune_spans_keeps_sessions(sqlite_url):
    with open_store(sqlite_url) as store:
        store.write_spans(
            session(1, 0.5, start_ns=BASE_NS) + session(2, 0.6, start_ns=BASE_NS + DAY_NS)
        )
        assert store.prune_spans(BASE_NS + DAY_NS) == 2
        assert store.count_spans() == 2
        assert store.spans_for([tid(1)]) == {tid(1): []}
        assert [x.reward_score for x in store.iter_sessions()] == [0.5, 0.6]


def test_postgres_partition_pruned_by_another_replica_is_recreated(postgres_url):
    with open_store(postgres_url) as writer, open_store(postgres_url) as pruner:
        writer.write_spans(session(40, 0.5, start_ns=BASE_NS + 1))
        assert pruner.prune_spans(BASE_NS + DAY_NS) == 1  # the writer still believes in the day
        writer.write_spans(session(41, 0.5, start_ns=BASE_NS + 2))
        assert writer.partitions() == ["spans_p20250921"]
        assert writer.count_spans() == 2
