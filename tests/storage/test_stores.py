"""Behaviour both stores share (each test runs against SQLite and the real Postgres).

A Postgres test costs a fresh database (about a second to create and drop), so related checks
share one test where they share their data.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from atlas_middleware.storage import (
    SessionFilter,
    SpanEvent,
    SpanRecord,
    StoreError,
    WriteResult,
    open_store,
)
from atlas_middleware.storage.base import load_migrations
from atlas_middleware.storage.sqlite import SQLiteStore
from atlas_middleware.telemetry import schema as s
from tests.storage.factories import (
    BASE_NS,
    by_trace,
    evaluation,
    expected_spans,
    root,
    sdk_records,
    session,
    span_id,
    split_evaluations,
    stored_spans,
    tid,
    trace_ids,
)

UNICODE = "naïve café · 日本語 · مرحبا · 🚀🧪 · Ω≈ç√"


def is_postgres(store) -> bool:
    return type(store).__name__ == "PostgresStore"


def all_sessions(store, **kwargs):
    return list(store.iter_sessions(**kwargs))


def ids_of(sessions) -> list[int]:
    return [int(x.trace_id, 16) for x in sessions]


# --- round trip --------------------------------------------------------------------------------
def test_sdk_spans_round_trip(store):
    assert store.write_spans([]) == WriteResult(0)
    records = sdk_records(3, children=2, score=0.8)
    result = store.write_spans(records)
    assert result == WriteResult(received=12, sessions=3, drift_alerts=0)
    assert store.count_spans() == 12
    assert by_trace(stored_spans(store, records)) == expected_spans(records)
    first = records[0].trace_id
    assert store.spans_for([]) == {}
    got = store.spans_for([first, tid(99)])
    assert len(got[first]) == 4 and got[tid(99)] == []
    store.health()
    assert store.schema_version() == max(v for v, _, _ in load_migrations("sqlite"))


def test_nested_values_unicode_events_and_resource_round_trip(store):
    trace = tid(42)
    rec = root(
        trace,
        task=f"translate: {UNICODE}",
        answer=UNICODE,
        attributes={
            "nested": {"list": [1, 2.5, True, None, "x"], "obj": {"deeper": {"k": [{"a": "b"}]}}},
            "unicode.key.ключ": UNICODE,
            "ints": [0, -1, 2**62],
            'quote"and\\backslash': "line\nbreak\ttab \\u0000 literal",
            "empty": "",
            "flag": False,
        },
        events=[
            SpanEvent("gen_ai.user.message", BASE_NS + 10, {"content": UNICODE, "n": [1, 2]}),
            SpanEvent("bare", BASE_NS + 20),
        ],
        resource={s.SERVICE_NAME: "svc-ü", "host": {"cores": 2, "tags": ["a", "b"]}},
    )
    child = SpanRecord(
        trace_id=trace,
        span_id="c" * 16,
        parent_span_id=rec.span_id,
        name="execute_tool lookup",
        kind="CLIENT",
        start_ns=BASE_NS + 100,
        end_ns=BASE_NS + 200,
        status_code="ERROR",
        status_message=f"boom {UNICODE}",
        attributes={s.GEN_AI_OPERATION_NAME: s.OP_EXECUTE_TOOL},
        resource=rec.resource,
        scope=None,
    )
    store.write_spans([rec, child])
    got = store.spans_for([trace])[trace]
    assert [r.to_json() for r in got] == [rec.to_json(), child.to_json()]
    [sess] = all_sessions(store)
    assert sess.task == f"translate: {UNICODE}" and sess.final_answer == UNICODE
    assert sess.service_name == "svc-ü"


def test_odd_values_do_not_make_a_batch_unwritable(store):
    """NUL characters (valid in OTLP and SQLite, not in Postgres text/JSONB) and integers beyond
    64 bits (the SDK accepts them) must not turn a batch into one that fails on every retry."""
    bad = root(tid(1), task="before\x00after", attributes={"blob": "a\x00b", "k\x00": 1})
    bad.status_message = "nul\x00"
    big = root(tid(3), attributes={s.GEN_AI_USAGE_INPUT_TOKENS: 2**70, "attr": -(2**80)})
    store.write_spans([bad, *session(2, score=0.5), big])
    assert store.count_spans() == 4
    [stored] = store.spans_for([tid(1)])[tid(1)]
    # Postgres cannot hold NUL: it may become U+FFFD, and nothing else may change.
    assert stored.attributes["blob"].replace("\ufffd", "\x00") == "a\x00b"
    assert stored.status_message.replace("\ufffd", "\x00") == "nul\x00"
    assert store.get_session(tid(1)).task.replace("\ufffd", "\x00") == "before\x00after"
    assert store.get_session(tid(2)).reward_score == 0.5
    assert store.get_session(tid(3)).input_tokens is None  # not a 64-bit count: dropped
    [span] = store.spans_for([tid(3)])[tid(3)]
    assert str(span.attributes["attr"]) == str(-(2**80))


def test_store_is_durable_across_reopen(store_url):
    records = sdk_records(2, score=0.7)
    with open_store(store_url) as first:
        first.write_spans(records)
        first.set_review(trace_ids(records)[:1], "approved", note="fine")
    with open_store(store_url) as second:
        assert second.count_spans() == len(records)
        sessions = all_sessions(second)
        assert [x.reward_score for x in sessions] == [0.7, 0.7]
        assert sorted(x.review_status for x in sessions) == ["approved", "pending"]


# --- duplicates --------------------------------------------------------------------------------
def staging_tables(store) -> int:
    """How many Postgres connections took the COPY → staging → ON CONFLICT fallback."""
    with psycopg.connect(store.url) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM pg_class WHERE relname = 'spans_staging' AND relpersistence = 't'"
        ).fetchone()[0]


def test_duplicates_across_batches_are_stored_once(store):
    records = sdk_records(2, score=0.8)
    store.write_spans(records)
    if is_postgres(store):
        assert staging_tables(store) == 0  # a clean batch takes the direct COPY path
    again = store.write_spans(records)
    assert again.received == len(records)
    if is_postgres(store):
        assert staging_tables(store) == 1  # the re-sent batch went through the fallback
    assert store.count_spans() == len(records)
    assert by_trace(stored_spans(store, records)) == expected_spans(records)
    assert [x.reward_score for x in all_sessions(store)] == [0.8, 0.8]
    assert store.drift_alerts() == []


def test_duplicates_inside_a_batch_and_a_batch_mixing_new_and_old(store):
    first = sdk_records(2, score=0.6)
    store.write_spans(first + first[::-1])  # the very first COPY already hits a duplicate
    assert store.count_spans() == len(first)
    assert [x.reward_score for x in all_sessions(store)] == [0.6, 0.6]
    second = sdk_records(1, score=0.4)
    result = store.write_spans([first[0], *second, first[-1]])
    assert result.received == len(second) + 2
    assert store.count_spans() == len(first) + len(second)
    assert by_trace(stored_spans(store, first + second)) == expected_spans(first + second)
    assert store.get_session(second[0].trace_id).reward_score == 0.4
    assert len(all_sessions(store)) == 3


def test_concurrent_writers_sending_the_same_spans(store):
    records = sdk_records(4, score=0.9)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            store.write_spans(records)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_spans() == len(records)
    assert len(all_sessions(store)) == 4


def test_a_failed_batch_leaves_nothing_behind(store):
    """write_spans is one transaction: when the session update fails (here: the drift log table
    is gone), no span of the batch stays behind."""
    store.write_spans(sdk_records(6, score=0.8))
    with store._transaction() as conn:
        store._run(conn, "DROP TABLE drift_alerts")
    before = store.count_spans()
    with pytest.raises(StoreError):
        store.write_spans([*session(20, 0.8), *session(21, 0.01)])  # 21 drifts
    assert store.count_spans() == before
    assert store.get_session(tid(20)) is None and store.get_session(tid(21)) is None


# --- session derivation ------------------------------------------------------------------------
def test_session_from_real_spans(store):
    records = sdk_records(1, agent="calc", learning_key="math", score=0.8, service="svc")
    store.write_spans(records)
    [sess] = all_sessions(store)
    [rootrec] = [r for r in records if r.parent_span_id is None]
    assert sess.trace_id == rootrec.trace_id
    assert sess.session_id == rootrec.attributes[s.ATLAS_SESSION_ID]
    assert (sess.agent_name, sess.learning_key, sess.service_name) == ("calc", "math", "svc")
    assert (sess.task, sess.final_answer, sess.lane) == ("task 0", "answer 0", "paired")
    assert sess.status == "ok" and sess.error_type is None
    assert (sess.started_ns, sess.ended_ns) == (rootrec.start_ns, rootrec.end_ns)
    assert sess.reward_score == 0.8
    assert sess.evaluations[s.PRIMARY_EVALUATION]["score"] == 0.8
    assert sess.evaluations[s.PRIMARY_EVALUATION]["explanation"] == "ok"
    assert sess.review_status == "pending"
    assert sess.drift is not None and sess.drift["alert"] is False
    assert sess.to_json()["trace_id"] == rootrec.trace_id
    # A failed session with usage numbers.
    store.write_spans(
        [
            root(
                tid(1),
                status_code="ERROR",
                attributes={
                    s.ERROR_TYPE: "ValueError",
                    s.GEN_AI_USAGE_INPUT_TOKENS: 120,
                    s.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
                    s.GEN_AI_REQUEST_MODEL: "smol",
                    s.ATLAS_PROBE_CONFIDENCE: 0.35,
                    s.ATLAS_GUIDANCE: "check units",
                },
            )
        ]
    )
    failed = store.get_session(tid(1))
    assert (failed.status, failed.error_type) == ("error", "ValueError")
    assert (failed.input_tokens, failed.output_tokens, failed.model) == (120, 30, "smol")
    assert failed.probe_confidence == pytest.approx(0.35)
    assert failed.guidance == "check units"
    assert failed.reward_score is None and failed.evaluations == {}


def test_late_evaluation_and_evaluation_before_its_root(store):
    late = sdk_records(1, score=0.8)
    early = sdk_records(1, score=0.3)
    late_spans, late_eval = split_evaluations(late)
    early_spans, early_eval = split_evaluations(early)
    [late_id], [early_id] = trace_ids(late), trace_ids(early)

    assert store.write_spans(late_spans + early_eval).sessions == 2
    sess = store.get_session(late_id)
    assert sess.reward_score is None and sess.evaluations == {} and sess.task == "task 0"
    sess = store.get_session(early_id)
    assert sess.reward_score == 0.3 and sess.task is None and sess.started_ns is None

    assert store.write_spans(late_eval + early_spans).sessions == 2
    for trace, spans, reward in ((late_id, late_spans, 0.8), (early_id, early_spans, 0.3)):
        sess = store.get_session(trace)
        assert sess.reward_score == reward
        # Neither batch erases what the other said.
        assert (sess.task, sess.final_answer, sess.lane) == ("task 0", "answer 0", "paired")
        assert (sess.learning_key, sess.agent_name) == ("math", "calc")
        assert sess.started_ns == min(r.start_ns for r in spans)
    assert len(all_sessions(store)) == 2


def test_reward_is_primary_evaluation_else_mean_and_evaluations_accumulate(store):
    a, b = tid(1), tid(2)
    store.write_spans(
        [
            root(a),
            evaluation(a, 0.2, name=s.PRIMARY_EVALUATION),
            evaluation(a, 1.0, name="exact_match", start_ns=BASE_NS + 9),
            root(b),
            evaluation(b, 0.4, name="judge_a"),
        ]
    )
    assert store.get_session(a).reward_score == 0.2
    assert store.get_session(b).reward_score == 0.4
    store.write_spans([evaluation(b, 0.8, name="judge_b", start_ns=BASE_NS + 50)])
    sess = store.get_session(b)
    assert {k: v["score"] for k, v in sess.evaluations.items()} == {"judge_a": 0.4, "judge_b": 0.8}
    assert sess.reward_score == pytest.approx(0.6)
    # A late primary evaluation takes over from the mean.
    store.write_spans([evaluation(b, 0.1, start_ns=BASE_NS + 99)])
    sess = store.get_session(b)
    assert sess.reward_score == 0.1
    assert set(sess.evaluations) == {"judge_a", "judge_b", s.PRIMARY_EVALUATION}


def test_rejudged_evaluation_replaces_the_previous_one(store):
    a = tid(1)
    old_payload = '{"judges": {"x": 0.1, "y": 0.3}}'
    store.write_spans([root(a), evaluation(a, 0.2, label="fail", payload=old_payload)])
    rejudged = evaluation(a, 0.9, start_ns=BASE_NS + 10**9, payload='{"judges": {"x": 1}}')
    store.write_spans([rejudged])
    sess = store.get_session(a)
    rim = sess.evaluations[s.PRIMARY_EVALUATION]
    # Nothing of the old verdict is mixed into the new one (SQLite's json_patch merges deeply).
    assert rim == {
        "score": 0.9,
        "time_unix_nano": rejudged.events[0].time_ns,
        "span_id": rejudged.span_id,
        "payload": {"judges": {"x": 1}},
    }
    assert sess.reward_score == 0.9


# --- review ------------------------------------------------------------------------------------
def test_set_review_and_invalid_status(store):
    records = sdk_records(3, score=0.8)
    ids = trace_ids(records)
    store.write_spans(records)
    assert store.set_review(ids[:2], "approved", note="looks right") == 2
    assert store.set_review([tid(12345)], "approved") == 0
    statuses = {x.trace_id: (x.review_status, x.review_note) for x in all_sessions(store)}
    assert statuses == {
        ids[0]: ("approved", "looks right"),
        ids[1]: ("approved", "looks right"),
        ids[2]: ("pending", None),
    }
    # Without a note the previous note stays.
    assert store.set_review([ids[0]], "quarantined") == 1
    assert store.get_session(ids[0]).review_status == "quarantined"
    assert store.get_session(ids[0]).review_note == "looks right"
    with pytest.raises(ValueError, match=r"pending, approved, quarantined.*'aproved'"):
        store.set_review([ids[2]], "aproved")
    with pytest.raises(ValueError, match="review status must be one of"):
        list(store.iter_sessions(SessionFilter(review_status=["pending", "nope"])))
    assert store.get_session(ids[2]).review_status == "pending"
    # A later batch about a reviewed session does not reset its review.
    store.write_spans(records)
    assert store.get_session(ids[1]).review_status == "approved"


# --- filters -----------------------------------------------------------------------------------
HOUR = 3_600 * 10**9


def test_session_filters(store):
    plan = [  # index, learning key, reward, review status; sessions an hour apart
        (1, "math", 0.9, "approved"),
        (2, "math", 0.2, "pending"),
        (3, "code", 0.7, "quarantined"),
        (4, "code", None, "pending"),
        (5, "math", 0.5, "approved"),
        (6, "prose", 1.0, "pending"),
    ]
    for i, key, reward, status in plan:
        agent = "coder" if key == "code" else "calc"
        store.write_spans(
            session(i, reward, learning_key=key, agent=agent, start_ns=BASE_NS + i * HOUR)
        )
        if status != "pending":
            store.set_review([tid(i)], status)
    cases = [
        (SessionFilter(), [1, 2, 3, 4, 5, 6]),
        (SessionFilter(review_status="approved"), [1, 5]),
        (SessionFilter(review_status=["pending", "quarantined"]), [2, 3, 4, 6]),
        (SessionFilter(min_reward=0.7), [1, 3, 6]),
        (SessionFilter(min_reward=0.0), [1, 2, 3, 5, 6]),  # no reward yet: not >= anything
        (SessionFilter(learning_key="code"), [3, 4]),
        (SessionFilter(agent_name="coder"), [3, 4]),
        (SessionFilter(agent_name="nobody"), []),
        (SessionFilter(learning_key="math", review_status="approved", min_reward=0.6), [1]),
        # Time window: since inclusive, until exclusive.
        (SessionFilter(since_ns=BASE_NS + 2 * HOUR, until_ns=BASE_NS + 5 * HOUR), [2, 3, 4]),
        (SessionFilter(since_ns=BASE_NS + 6 * HOUR), [6]),
        (SessionFilter(until_ns=BASE_NS + 2 * HOUR), [1]),
        (SessionFilter(since_ns=BASE_NS, review_status="pending", min_reward=0.5), [6]),
        (SessionFilter(drift_only=True), []),
    ]
    for where, expected in cases:
        assert ids_of(store.iter_sessions(where)) == expected, where


# --- streaming ---------------------------------------------------------------------------------
def eleven_sessions(store) -> list[int]:
    """Eleven sessions; 2..4 share one start time, so pages must break ties by trace id, and one
    has no root yet (no start time). Returns the ids in ascending order."""
    starts = {1: 10, 2: 20, 3: 20, 4: 20, 5: 30, 6: 40, 7: 50, 8: 60, 9: 70, 10: 80}
    batch = []
    for i, start in starts.items():
        batch += session(i, 0.5, start_ns=BASE_NS + start)
    batch.append(evaluation(tid(11), 0.5))  # evaluation only: started_ns is NULL
    store.write_spans(batch)
    return [11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_iter_sessions_pages_orders_and_limits(store):
    ascending = eleven_sessions(store)
    for page_size in (1, 2, 3, 500):
        got = ids_of(store.iter_sessions(page_size=page_size))
        assert got == ascending, page_size
        got = ids_of(store.iter_sessions(newest_first=True, page_size=page_size))
        assert got == ascending[::-1], page_size
    for limit, page_size in ((3, 2), (4, 2), (1, 500), (11, 3), (50, 4), (0, 2)):
        got = ids_of(store.iter_sessions(limit=limit, page_size=page_size))
        assert got == ascending[:limit], (limit, page_size)
        got = ids_of(store.iter_sessions(newest_first=True, limit=limit, page_size=page_size))
        assert got == ascending[::-1][:limit], (limit, page_size)
    store.set_review([tid(2), tid(4), tid(7), tid(9)], "approved")
    approved = SessionFilter(review_status="approved")
    assert ids_of(store.iter_sessions(approved, page_size=1)) == [2, 4, 7, 9]
    assert ids_of(store.iter_sessions(approved, newest_first=True, page_size=3)) == [9, 7, 4, 2]
    assert ids_of(store.iter_sessions(approved, limit=3, page_size=2)) == [2, 4, 7]


def test_iter_sessions_streams(store):
    """The first session is available before later pages are read, and a write between pages
    neither breaks the iteration nor repeats sessions."""
    eleven_sessions(store)
    it = store.iter_sessions(page_size=2)
    assert int(next(it).trace_id, 16) == 11
    store.write_spans(session(50, 0.5, start_ns=BASE_NS + 1000))
    assert ids_of(it) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50]


# --- get_session -------------------------------------------------------------------------------
def test_get_session(store):
    batch = session(0xABC1, session_id="run-alpha") + session(0xDEF2, session_id="run-beta")
    # "job-1" goes in last, so a scan meets the longer ids first.
    for i, name in enumerate(["job-10", "job-11", "job-12", "job-100", "job-1"], start=1):
        batch += session(i, session_id=name)
    batch += session(0x51, session_id="a-b-1") + session(0x52, session_id="a_b_2")
    store.write_spans(batch)

    a = tid(0xABC1)
    assert store.get_session(a).session_id == "run-alpha"  # trace id
    assert store.get_session("run-beta").trace_id == tid(0xDEF2)  # session id
    assert store.get_session("run-al").trace_id == a  # session id prefix
    assert store.get_session(a[:-2]).trace_id == a  # trace id prefix
    assert store.get_session("nothing-like-it") is None
    with pytest.raises(StoreError, match="several sessions"):
        store.get_session("run-")
    with pytest.raises(StoreError, match="several sessions"):
        store.get_session("0000")  # every trace id here starts with zeros
    # An exact id wins over longer ids it is a prefix of.
    assert store.get_session("job-1").session_id == "job-1"
    assert store.get_session("job-10").session_id == "job-10"
    assert store.get_session("job-100").session_id == "job-100"
    with pytest.raises(StoreError):
        store.get_session("job-")
    # "_" and "%" in a key are characters, not LIKE wildcards.
    assert store.get_session("a_b").session_id == "a_b_2"
    assert store.get_session("a-b").session_id == "a-b-1"
    assert store.get_session("a%") is None


# --- playbooks and training lineage ------------------------------------------------------------
def test_playbooks_and_training_run_lineage(store):
    assert store.get_playbook("math") is None
    book = {"rules": ["show work", UNICODE], "stats": {"n": 3, "mean": 0.75}, "nested": [[1]]}
    store.put_playbook("math", book)
    store.put_playbook("code", {"rules": []})
    assert store.get_playbook("math") == book
    store.put_playbook("math", {"rules": ["new"]})
    assert store.get_playbook("math") == {"rules": ["new"]}
    assert store.get_playbook("code") == {"rules": []}

    records = sdk_records(3, score=0.8)
    ids = trace_ids(records)
    store.write_spans(records)
    assert store.training_runs() == []
    store.record_training_run(
        "run-1", checkpoint="ckpt/1", recipe="grpo", trace_ids=ids[:2], metrics={"loss": 0.5}
    )
    store.record_training_run("run-2", checkpoint="ckpt/2", recipe="sft", trace_ids=iter(ids))
    runs = store.training_runs()
    assert [(r["run_id"], r["checkpoint"], r["recipe"], r["sessions"]) for r in runs] == [
        ("run-1", "ckpt/1", "grpo", 2),
        ("run-2", "ckpt/2", "sft", 3),
    ]
    assert runs[0]["metrics"] == {"loss": 0.5} and runs[1]["metrics"] == {}
    assert runs[0]["created_ns"] <= runs[1]["created_ns"]
    # Recording the same run again (a resumed job) updates it and adds sessions only once.
    store.record_training_run(
        "run-1", checkpoint="ckpt/1b", recipe="grpo", trace_ids=ids, metrics={"loss": 0.4}
    )
    runs = store.training_runs()
    assert [r["run_id"] for r in runs] == ["run-1", "run-2"]
    assert (runs[0]["checkpoint"], runs[0]["sessions"], runs[0]["metrics"]) == (
        "ckpt/1b",
        3,
        {"loss": 0.4},
    )


# --- opening stores (SQLite only) --------------------------------------------------------------
def test_open_store_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATLAS_STORE_URL", raising=False)
    with open_store() as default:
        assert isinstance(default, SQLiteStore)
        default.write_spans(session(1))
        assert default._read("PRAGMA journal_mode")[0][0] == "wal"
    assert (tmp_path / ".atlas" / "atlas.db").is_file()
    with open_store(str(tmp_path / "bare" / "x.db")) as bare:
        assert bare.path == Path(tmp_path / "bare" / "x.db")
        assert bare.count_spans() == 0
    monkeypatch.setenv("ATLAS_STORE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    with open_store() as from_env:
        assert from_env.path == tmp_path / "env.db"
    with open_store("sqlite:///:memory:") as memory:
        memory.write_spans(session(1))
        assert memory.count_spans() == 1
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://localhost/db")


def test_sqlite_two_store_objects_on_one_file(tmp_path):
    """The CLI reads while a collector writes: two stores on one file see each other."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with open_store(url) as writer, open_store(url) as reader:
        writer.write_spans(session(1, 0.5))
        assert reader.get_session(tid(1)).reward_score == 0.5
        reader.set_review([tid(1)], "approved")
        assert writer.get_session(tid(1)).review_status == "approved"


def test_conditional_review_and_session_counts(store):
    records = sdk_records(3, score=0.8)
    ids = trace_ids(records)
    store.write_spans(records)
    store.set_review([ids[0]], "quarantined")
    # Approving "only what is still pending" leaves the quarantined session alone.
    assert store.set_review(ids, "approved", only_from=["pending"]) == 2
    assert store.get_session(ids[0]).review_status == "quarantined"
    assert store.session_counts() == {"pending": 0, "approved": 2, "quarantined": 1}
    with pytest.raises(ValueError, match="review status must be one of"):
        store.set_review(ids, "approved", only_from=["pendng"])


def test_conditional_review_skips_drift_alerts(store):
    steady = [r for i in range(6) for r in sdk_records(1, learning_key="k", score=0.9)]
    store.write_spans(steady)
    outlier = sdk_records(1, learning_key="k", score=0.0)
    [drifting] = trace_ids(outlier)
    assert store.write_spans(outlier).drift_alerts == 1
    ids = [*trace_ids(steady), drifting]
    assert store.set_review(ids, "approved", only_from=["pending"], unless_drift=True) == 6
    assert store.get_session(drifting).review_status == "pending"
    assert store.set_review([drifting], "approved", only_from=["pending"]) == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/atlas_no_such_db", 'database "atlas_no_such_db" does not exist'),
        ("/test?bogus=1", "bad Postgres URL"),
    ],
)
def test_postgres_configuration_errors_fail_fast(postgres_server, path, message):
    import time

    from atlas_middleware.storage import StoreError, open_store

    base = postgres_server.rsplit("/", 1)[0]
    started = time.monotonic()
    with pytest.raises(StoreError, match=message):
        open_store(base + path)
    assert time.monotonic() - started < 4  # no waiting out the pool's connection timeout


@pytest.mark.postgres
def test_postgres_password_never_appears_in_errors(postgres_server):
    from atlas_middleware.storage import StoreError, open_store

    base = postgres_server.rsplit("/", 1)[0].replace("postgres@", "postgres:pw-s3cret@")
    with pytest.raises(StoreError) as info:
        open_store(base + "/atlas_no_such_db?password=pw-s3cret")
    assert "pw-s3cret" not in str(info.value)


@pytest.mark.postgres
def test_concurrent_first_writes_of_a_session_are_judged_on_the_merged_state(postgres_url):
    """Writer A reads a session's prior state (none yet), writer B creates the session with the
    primary reward and commits, then A writes: A must end up judging what is stored, both
    evaluations, not only its own."""
    trace = tid(4242)
    batch_a = [root(trace), evaluation(trace, 0.2, name="judge.helpfulness", span=span_id(2))]
    batch_b = [evaluation(trace, 0.9, span=span_id(3))]
    with open_store(postgres_url) as a, open_store(postgres_url) as b:
        # B knows the day's partition already; creating one inside A's transaction would wait
        # for A, which waits for B in this single-threaded test.
        b.write_spans([root(tid(1))])
        original = a._reward_histories
        fired = []

        def b_commits_in_between(conn, keys, *, exclude):
            if not fired:  # once: A reads histories again when it re-judges the session
                fired.append(b.write_spans(batch_b))
            return original(conn, keys, exclude=exclude)

        a._reward_histories = b_commits_in_between
        a.write_spans(batch_a)
        session = a.get_session(trace)
    assert set(session.evaluations) == {"judge.helpfulness", "atlas.rim"}
    assert session.reward_score == 0.9  # the primary evaluation, which A never saw itself
    assert session.drift is not None
    assert len(fired) == 1


# --- batches larger than the drivers' parameter limits ---------------------------------------
def test_a_batch_with_more_traces_than_bound_parameters_allows(store):
    """One request may describe more distinct sessions than a statement can take parameters
    (65,535 on Postgres; 32,766 in a stock SQLite build, which this Python's SQLite raises to
    250,000, so the stock limit is set here). The batch used to fail on every retry (SQLite:
    "too many SQL variables", retried forever as unavailable); now it is stored whole, rewards
    and drift histories included."""
    import sqlite3

    if is_postgres(store):
        n = 65_536 + 100
    else:
        store._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
        n = 32_766 + 100
    records = [
        SpanRecord(
            tid(i + 1),
            span_id(1),
            None,
            "invoke_agent calc",
            "INTERNAL",
            BASE_NS + i,
            BASE_NS + i + 1,
            attributes={s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT, s.ATLAS_LEARNING_KEY: "big"},
            events=[
                SpanEvent(
                    s.EVENT_EVALUATION_RESULT,
                    BASE_NS + i + 1,
                    {
                        s.GEN_AI_EVALUATION_NAME: s.PRIMARY_EVALUATION,
                        s.GEN_AI_EVALUATION_SCORE_VALUE: 0.5,
                    },
                )
            ],
        )
        for i in range(n)
    ]
    result = store.write_spans(records)
    assert (result.received, result.sessions) == (n, n)
    assert store.count_spans() == n
    assert store.session_counts()["pending"] == n
    found = store.spans_for([tid(i + 1) for i in range(n)])
    assert sum(len(v) for v in found.values()) == n
    assert store.get_session(tid(n)).reward_score == pytest.approx(0.5)
