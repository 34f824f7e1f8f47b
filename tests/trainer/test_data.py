"""Sessions → teacher examples from the real stores (SQLite and Postgres) and from the JSONL
that `atlas export` writes: filters, references, baseline attempts, bad rows, flat memory."""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import pytest
from atlas_middleware.trainer.data import DataFilter, DataStats, iter_examples

from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli
from tests.trainer.factories import Sess, arithmetic, write_sessions


def test_store_sessions_become_examples(store_url):
    ids = write_sessions(store_url, arithmetic(3))
    write_sessions(store_url, [Sess("pending task")], status="pending")
    write_sessions(store_url, [Sess("quarantined task")], status="quarantined")
    stats = DataStats()
    examples = list(iter_examples(store_url, stats=stats))
    assert [e.trace_id for e in examples] == ids  # approved only, oldest first
    first = examples[0]
    assert first.task == "What is 10 + 3?"
    assert first.reference == "13"  # from the root span's atlas.reference
    assert first.baseline == "12"  # the attempt the teacher's guidance call quoted
    assert first.guidance == "Add the two numbers and answer with the sum."
    assert first.answer == "13" and first.reward == pytest.approx(0.5)
    assert first.learning_key == "math" and first.lane == "paired"
    assert stats.read == 3 and stats.used == 3 and stats.bad == 0


def test_store_filters(store_url):
    write_sessions(store_url, [Sess("low", reward=0.2), Sess("high", reward=0.9)])
    write_sessions(store_url, [Sess("other key", learning_key="code", reward=0.9)])
    middle = time.time_ns()
    write_sessions(store_url, [Sess("late", reward=0.95)])
    write_sessions(store_url, [Sess("waiting", reward=0.9)], status="pending")

    def tasks(**kw):
        return [e.task for e in iter_examples(store_url, DataFilter(**kw))]

    assert tasks(min_reward=0.8) == ["high", "other key", "late"]
    assert tasks(learning_key="code") == ["other key"]
    assert tasks(since_ns=middle) == ["late"]
    assert tasks(until_ns=middle) == ["low", "high", "other key"]
    assert tasks(statuses=("pending",)) == ["waiting"]
    assert "waiting" in tasks(statuses=("approved", "pending"))


def test_references_file_fills_in_missing_references(sqlite_url, tmp_path):
    write_sessions(sqlite_url, [Sess("What is 2 + 2?", reference=None)])
    refs = tmp_path / "tasks.jsonl"
    refs.write_text(json.dumps({"task": "What is 2 + 2?", "reference": 4}) + "\n")
    from atlas_middleware.trainer.data import load_references

    [example] = iter_examples(sqlite_url, references=load_references(refs))
    assert example.reference == "4"


def test_export_jsonl_gives_the_same_examples(sqlite_url, tmp_path):
    write_sessions(sqlite_url, arithmetic(4))
    write_sessions(sqlite_url, [Sess("quarantined")], status="quarantined")
    out = tmp_path / "traces.jsonl"
    atlas_cli("export", "-o", str(out), "--store", sqlite_url)
    from_store = [e.to_json() for e in iter_examples(sqlite_url)]
    from_file = [e.to_json() for e in iter_examples(str(out))]
    assert from_file == from_store and len(from_file) == 4


def test_bad_rows_are_skipped_and_counted(tmp_path):
    good = {"trace_id": "a" * 32, "task": "t", "review_status": "approved", "reward_score": 0.5}
    lines = [
        json.dumps(good),
        "{not json",
        "[1, 2]",
        json.dumps({**good, "task": ""}),
        json.dumps({**good, "trace_id": None}),
        json.dumps({**good, "reward_score": "high"}),
        json.dumps({**good, "reward_score": math.nan}),  # json writes NaN
        json.dumps({**good, "reward_score": math.inf}),
        json.dumps({**good, "reward_score": -math.inf}),
        json.dumps({**good, "spans": "oops"}),
        json.dumps({**good, "review_status": "pending"}),
        "",
        json.dumps({**good, "trace_id": "b" * 32}),
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(lines) + "\n")
    stats = DataStats()
    examples = list(iter_examples(str(path), DataFilter(min_reward=0.1), stats=stats))
    assert [e.trace_id for e in examples] == ["a" * 32, "b" * 32]
    assert stats.skipped == {
        "invalid JSON": 1,
        "not an object": 1,
        "no task": 1,
        "no trace id": 1,
        "reward not a number": 1,
        "non-finite reward": 3,
        "spans not a list": 1,
    }
    assert stats.filtered == 1 and stats.read == 12 and stats.used == 2
    assert "3 non-finite reward" in stats.summary()


def test_jsonl_filters_match_the_store_semantics(tmp_path):
    rows = [
        {
            "trace_id": f"{i:032x}",
            "task": f"t{i}",
            "review_status": status,
            "reward_score": r,
            "learning_key": key,
            "started_ns": 100 * i,
        }
        for i, (status, r, key) in enumerate(
            [
                ("approved", 0.9, "a"),
                ("approved", None, "a"),
                ("quarantined", 0.9, "a"),
                ("approved", 0.2, "b"),
                ("approved", 0.95, "a"),
            ]
        )
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def tasks(**kw):
        return [e.task for e in iter_examples(str(path), DataFilter(**kw))]

    assert tasks() == ["t0", "t1", "t3", "t4"]
    assert tasks(min_reward=0.5) == ["t0", "t4"]
    assert tasks(learning_key="b") == ["t3"]
    assert tasks(since_ns=100, until_ns=400) == ["t1", "t3"]
    assert tasks(statuses=("quarantined",)) == ["t2"]


def _peak_while_reading(source: str, **kw) -> tuple[int, int]:
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_examples(source, **kw))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_large_export_keeps_memory_flat(tmp_path):
    span = {"name": "chat", "attributes": {"gen_ai.output.messages": "x" * 2000}}
    row = {"task": "t", "review_status": "approved", "reward_score": 0.5, "spans": [span] * 4}
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    for path, n in ((small, 200), (large, 4000)):  # 1.6 MB and 33 MB
        with path.open("w") as f:
            for i in range(n):
                f.write(json.dumps({**row, "trace_id": f"{i:032x}"}) + "\n")
    n_small, peak_small = _peak_while_reading(str(small))
    n_large, peak_large = _peak_while_reading(str(large))
    assert (n_small, n_large) == (200, 4000)
    assert peak_large < 2 * peak_small + 200_000  # 20× the data, about the same peak


@pytest.mark.postgres
def test_reading_the_store_holds_one_page_at_a_time(postgres_url):
    write_sessions(postgres_url, arithmetic(300))
    n_small, peak_small = _peak_while_reading(postgres_url, page_size=20)
    n_big, peak_big = _peak_while_reading(postgres_url, page_size=300)
    assert n_small == n_big == 300
    assert peak_small * 3 < peak_big  # memory follows the page, not the table
    with open_store(postgres_url) as store:
        assert store.session_counts()["approved"] == 300


def test_sources_are_recognised_without_creating_anything(sqlite_url, tmp_path):
    write_sessions(sqlite_url, arithmetic(1))
    bare_sqlite = sqlite_url[len("sqlite:///") :]
    assert len(list(iter_examples(bare_sqlite))) == 1  # a bare path to a SQLite file
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(iter_examples(str(tmp_path / "typo.db")))
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(ValueError, match="unsupported source"):
        list(iter_examples("mysql://x/y"))
