"""The review log (who, when, note, status before), undo, and the queries ``atlas ui`` pages on:
keyset pages with every filter, status counts of a filter, learning series, facets. Both stores."""

from __future__ import annotations

import pytest

from atlas_middleware.review import review_pending, review_sessions
from atlas_middleware.storage import SessionFilter, StoreError, open_store
from atlas_middleware.storage.base import REVIEW_LOG_VERSION, session_cursor
from atlas_middleware.telemetry import schema as s
from tests.storage.factories import BASE_NS, DAY_NS, evaluation, root, session, tid

HOUR_NS = DAY_NS // 24


def _write(store, i: int, score: float | None = None, **kwargs) -> str:
    store.write_spans(session(i, score, **kwargs))
    return tid(i)


def _status(store, trace_id: str) -> tuple[str, str | None]:
    found = store.get_session(trace_id)
    return found.review_status, found.review_note


def test_every_review_is_logged_with_who_where_note_and_the_status_before(store):
    a, b = _write(store, 1, 0.9), _write(store, 2, 0.8)
    store.set_review([a], "quarantined", "leaked the answer", actor="ann", source="cli")
    matched = store.set_review(
        [a, b], "approved", "checked", actor="bob", source="ui", action_id="f" * 32
    )
    assert matched == 2
    assert _status(store, a) == ("approved", "checked")

    log = store.review_log()
    assert [(x.actor, x.source, x.action, x.note) for x in log] == [
        ("bob", "ui", "approved", "checked"),
        ("ann", "cli", "quarantined", "leaked the answer"),
    ]
    assert (log[0].action_id, log[0].sessions, log[0].changed) == ("f" * 32, 2, 2)
    assert log[0].created_ns >= log[1].created_ns
    # Per session: what it was before each action, newest first.
    history = store.review_log(trace_id=a)
    assert [(x.action, x.previous_status, x.previous_note) for x in history] == [
        ("approved", "quarantined", "leaked the answer"),
        ("quarantined", "pending", None),
    ]
    assert [x.action for x in store.review_log(trace_id=b)] == ["approved"]
    assert store.review_action("f" * 32).actor == "bob"
    assert store.review_action("0" * 32) is None


def test_chunks_of_one_action_add_up_and_unmatched_sessions_are_not_logged(store):
    ids = [_write(store, i, 0.8) for i in range(1, 6)]
    store.set_review(ids[:1], "approved", actor="x")  # already approved below
    for chunk in (ids[:3], ids[3:]):
        store.set_review(chunk, "approved", actor="x", action_id="a" * 32)
    action = store.review_action("a" * 32)
    assert (action.sessions, action.changed) == (5, 4)
    # Nothing matched (unknown id, or the condition fails): no log entry at all.
    before = len(store.review_log())
    assert store.set_review(["no-such-trace"], "approved", actor="x") == 0
    assert store.set_review(ids, "quarantined", only_from=("pending",), actor="x") == 0
    assert len(store.review_log()) == before


def test_undo_restores_status_and_note_and_is_logged_once(store):
    a, b = _write(store, 1, 0.9), _write(store, 2, 0.8)
    store.set_review([a], "approved", "first look", actor="ann")
    store.set_review([a, b], "quarantined", "bad batch", actor="bob", action_id="b" * 32)
    result = store.undo_review("b" * 32, actor="carol", source="ui")
    assert (result.undid, result.restored, result.moved_on, result.held_for_drift) == (
        "b" * 32,
        2,
        0,
        0,
    )
    assert _status(store, a) == ("approved", "first look")
    assert _status(store, b) == ("pending", None)
    undone = store.review_action("b" * 32)
    assert undone.undone_by == result.action_id
    entry = store.review_action(result.action_id)
    assert (entry.action, entry.actor, entry.source, entry.undoes) == (
        "undo",
        "carol",
        "ui",
        "b" * 32,
    )
    assert entry.changed == 2
    with pytest.raises(StoreError, match="already undone"):
        store.undo_review("b" * 32)
    with pytest.raises(StoreError, match="itself an undo"):
        store.undo_review(result.action_id)
    with pytest.raises(StoreError, match="no review action"):
        store.undo_review("c" * 32)


def test_undo_leaves_sessions_that_changed_since(store):
    a, b = _write(store, 1, 0.9), _write(store, 2, 0.8)
    store.set_review([a, b], "approved", actor="ann", action_id="d" * 32)
    store.set_review([b], "quarantined", "on second thought", actor="bob")
    result = store.undo_review("d" * 32)
    assert (result.restored, result.moved_on) == (1, 1)
    assert _status(store, a)[0] == "pending"
    assert _status(store, b) == ("quarantined", "on second thought")


def test_undo_does_not_approve_a_session_that_drifted(store):
    # Five steady rewards, then an outlier that raises a drift alert (and stays pending).
    for i in range(1, 6):
        _write(store, i, 0.9, start_ns=BASE_NS + i * HOUR_NS)
    outlier = _write(store, 9, 0.0, start_ns=BASE_NS + 9 * HOUR_NS)
    assert store.get_session(outlier).drift["alert"]
    store.set_review([outlier], "approved", actor="ann")  # by id: allowed, as in the CLI
    store.set_review([outlier], "quarantined", actor="bob", action_id="e" * 32)
    result = store.undo_review("e" * 32)
    assert (result.restored, result.held_for_drift) == (1, 1)
    assert _status(store, outlier)[0] == "pending"


def test_reviews_before_the_review_log_migration_still_work(store_url):
    with open_store(store_url, migrate=False) as store:
        store.migrate(target=REVIEW_LOG_VERSION - 1)
        store.write_spans(session(1, 0.9))
        assert store.set_review([tid(1)], "approved", actor="ann") == 1
        assert store.get_session(tid(1)).review_status == "approved"
        store.migrate()
        assert store.review_log() == []  # nothing was logged before the table existed


def test_review_pending_skips_drift_and_records_the_filter(store):
    for i in range(1, 6):
        _write(store, i, 0.9, start_ns=BASE_NS + i * HOUR_NS, agent="calc")
    outlier = _write(store, 9, 0.0, start_ns=BASE_NS + 9 * HOUR_NS, agent="calc")
    other = _write(store, 20, 0.9, learning_key="other", agent="chat")
    dry = review_pending(store, SessionFilter(agent_name="calc"), "approved", dry_run=True)
    assert (len(dry.changing), dry.skipped_drift, dry.action_id) == (5, 1, None)
    assert store.review_log() == []
    done = review_pending(
        store, SessionFilter(agent_name="calc"), "approved", note="ok", actor="ann", source="ui"
    )
    assert _status(store, outlier)[0] == "pending"
    assert _status(store, other)[0] == "pending"
    entry = store.review_action(done.action_id)
    assert (entry.sessions, entry.actor, entry.source, entry.note) == (5, "ann", "ui", "ok")
    assert entry.detail == {
        "filter": {"agent_name": "calc"},
        "include_drift": False,
        "skipped_drift": 1,
    }
    # By id, a drift-flagged session can be approved (a reviewer looked at it).
    by_id = review_sessions(store, [store.get_session(outlier)], "approved", actor="ann")
    assert by_id.changing == [outlier] and _status(store, outlier)[0] == "approved"


def test_pages_walk_the_newest_first_order_both_ways_with_every_filter(store):
    ids = [
        _write(
            store,
            i,
            0.1 * (i % 10),
            start_ns=BASE_NS + i * HOUR_NS,
            agent="calc" if i % 2 else "chat",
            attributes={s.ATLAS_LANE: ("auto", "paired", "coach")[i % 3]},
            task=f"Task {i}: 50% OFF_sale" if i % 4 == 0 else f"task number {i}",
        )
        for i in range(1, 31)
    ]
    newest_first = ids[::-1]
    page = store.page_sessions(limit=7)
    assert [x.trace_id for x in page] == newest_first[:7]
    page2 = store.page_sessions(limit=7, cursor=session_cursor(page[-1]))
    assert [x.trace_id for x in page2] == newest_first[7:14]
    back = store.page_sessions(limit=7, cursor=session_cursor(page2[0]), newer=True)
    assert [x.trace_id for x in back] == newest_first[:7]
    # A session without a root yet (its reward came first) sorts last, as time 0.
    store.write_spans([evaluation(tid(99), 0.95)])
    assert store.page_sessions(limit=100)[-1].trace_id == tid(99)

    def find(**kwargs) -> list[str]:
        return [x.trace_id for x in store.page_sessions(SessionFilter(**kwargs), limit=100)]

    assert find(lane="coach") == [tid(i) for i in range(30, 0, -1) if i % 3 == 2]
    assert find(agent_name="chat", lane="auto") == [tid(i) for i in (30, 24, 18, 12, 6)]
    assert find(min_reward=0.35, max_reward=0.55) == [
        tid(i) for i in range(30, 0, -1) if 4 <= i % 10 <= 5
    ]
    # Text search: case-insensitive, and % / _ are literal characters, not wildcards.
    assert find(text="OFF_SALE") == [tid(i) for i in range(28, 0, -4)]
    assert find(text="50%") == find(text="off_sale")
    assert find(text="number 1") == [
        tid(i) for i in range(30, 0, -1) if i % 4 and str(i).startswith("1")
    ]
    assert find(text="no such words") == []
    assert find(since_ns=BASE_NS + 25 * HOUR_NS, until_ns=BASE_NS + 28 * HOUR_NS) == [
        tid(27),
        tid(26),
        tid(25),
    ]


def test_status_counts_of_a_filter_ignore_its_own_status(store):
    for i in range(1, 7):
        _write(store, i, 0.9, agent="calc" if i <= 4 else "chat")
    store.set_review([tid(1), tid(5)], "approved", actor="x")
    store.set_review([tid(2)], "quarantined", actor="x")
    counts = store.session_counts(SessionFilter(review_status="approved", agent_name="calc"))
    assert counts == {"pending": 2, "approved": 1, "quarantined": 1}
    assert store.session_counts() == {"pending": 3, "approved": 2, "quarantined": 1}


def test_learning_series_buckets_reward_accuracy_and_lanes(store):
    # Two days, 12 sessions a day: hour buckets would hold one each, so days are chosen.
    for day in range(2):
        for h in range(12):
            i = day * 100 + h + 1
            trace = tid(i)
            start = BASE_NS + day * DAY_NS + h * HOUR_NS
            lane = "coach" if day == 0 else ("auto" if h % 2 else "paired")
            records = [root(trace, start_ns=start, attributes={s.ATLAS_LANE: lane})]
            records.append(evaluation(trace, 0.4 + 0.4 * day, start_ns=start + 1000))
            if h < 10:  # RIM's accuracy judge scored 10 of the 12
                records.append(
                    evaluation(
                        trace,
                        1.0 if (h < 5 or day == 1) else 0.0,
                        name=s.rim_judge_evaluation_name("accuracy"),
                        start_ns=start + 2000,
                    )
                )
            store.write_spans(records)
    width, series, lanes = store.learning_series("math")
    assert width == DAY_NS
    assert [p["start_ns"] for p in series] == [BASE_NS, BASE_NS + DAY_NS]
    assert [p["sessions"] for p in series] == [12, 12]
    assert [round(p["mean_reward"], 6) for p in series] == [0.4, 0.8]
    assert [p["judged"] for p in series] == [10, 10]
    assert [round(p["accuracy"], 6) for p in series] == [0.5, 1.0]
    assert sorted((e["start_ns"] - BASE_NS, e["lane"], e["sessions"]) for e in lanes) == [
        (0, "coach", 12),
        (DAY_NS, "auto", 6),
        (DAY_NS, "paired", 6),
    ]
    assert store.learning_series("no-such-key")[1:] == ([], [])
    keys = {k["learning_key"]: k for k in store.learning_keys()}
    assert keys["math"]["sessions"] == 24 and keys["math"]["pending"] == 24
    assert round(keys["math"]["mean_reward"], 6) == 0.6


def test_training_runs_drift_alerts_and_facets_by_key(store):
    a = _write(store, 1, 0.9, learning_key="math", agent="calc")
    b = _write(store, 2, 0.9, learning_key="chat", agent="talk")
    store.record_training_run("r1", checkpoint="/x/final", recipe="grpo", trace_ids=[a, b])
    store.record_training_run("r2", checkpoint="/y/final", recipe="sft", trace_ids=[b])
    assert [(r["run_id"], r["key_sessions"]) for r in store.training_runs_for("math")] == [
        ("r1", 1)
    ]
    assert [r["run_id"] for r in store.training_runs_for("chat")] == ["r1", "r2"]
    facets = store.session_facets()
    assert facets["agent_name"] == ["calc", "talk"]
    assert facets["learning_key"] == ["chat", "math"]
    assert facets["lane"] == ["coach"]
    for i in range(10, 16):
        _write(store, i, 0.9, start_ns=BASE_NS + i * HOUR_NS)
    outlier = _write(store, 20, 0.0, start_ns=BASE_NS + 20 * HOUR_NS)
    assert [x["trace_id"] for x in store.drift_alerts(trace_id=outlier)] == [outlier]
    assert store.drift_alerts(trace_id=a) == []


def test_review_states_page_through_every_match_in_start_order(store):
    ids = [_write(store, i, 0.9, start_ns=BASE_NS + i * HOUR_NS) for i in range(1, 8)]
    store.set_review(ids[:2], "approved", actor="x")
    states = list(store.iter_review_states(page_size=3))
    assert [t for t, _, _ in states] == ids
    assert [status for _, status, _ in states] == ["approved"] * 2 + ["pending"] * 5
    assert not any(flagged for _, _, flagged in states)
    pending = list(store.iter_review_states(SessionFilter(review_status="pending"), page_size=2))
    assert [t for t, _, _ in pending] == ids[2:]
