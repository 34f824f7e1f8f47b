"""``atlas sessions``: list, show, approve, quarantine, against SQLite and Postgres."""

from __future__ import annotations

import json

from atlas_middleware.telemetry import schema
from tests.cli.conftest import trace_ids


def test_list_filters_and_order(seed):
    calc = seed(3, agent="calc", learning_key="math", score=0.9)
    web = seed(2, agent="web", learning_key="search", score=0.3)
    old = seed(1, agent="calc", learning_key="math", score=0.5, age_days=3)
    unscored = seed(1, agent="calc", learning_key="math", score=None)
    seed.store.set_review([calc[0]], "approved")
    seed.store.set_review([web[0]], "quarantined")
    everyone = {*calc, *web, *old, *unscored}

    listed = seed.json_lines("sessions", "list", "--json", "--limit", "0")
    assert set(trace_ids(listed)) == everyone and len(listed) == len(everyone)
    started = [s["started_ns"] for s in listed]
    assert started == sorted(started, reverse=True)  # newest first
    assert listed[-1]["trace_id"] == old[0]

    matching = seed.json_lines(
        "sessions", "list", "--json", "--min-reward", "0.5", "--learning-key", "math"
    )
    assert set(trace_ids(matching)) == {*calc, *old}  # no reward: excluded by --min-reward
    assert trace_ids(
        seed.json_lines("sessions", "list", "--json", "--agent", "web", "--status", "pending")
    ) == [web[1]]
    assert set(trace_ids(seed.json_lines("sessions", "list", "--json", "--since", "1d"))) == (
        everyone - set(old)
    )
    assert seed.json_lines("sessions", "list", "--json", "--limit", "2") == listed[:2]

    table = seed.cli("sessions", "list", "--limit", "0").stdout
    for trace_id in everyone:
        assert trace_id[:12] in table
    quarantined_row = next(line for line in table.splitlines() if web[0][:12] in line)
    assert "quarantined" in quarantined_row and "web" in quarantined_row
    assert "0.30" in quarantined_row and "search" in quarantined_row


def test_show_fields_evaluations_and_span_tree(seed):
    [trace_id] = seed(1, agent="calc", learning_key="math", score=0.75, children=2)
    session = seed.store.get_session(trace_id)

    out = seed.cli("sessions", "show", trace_id[:10]).stdout
    assert trace_id in out and session.session_id in out
    assert "task 0" in out and "answer 0" in out
    judge_row = next(line for line in out.splitlines() if schema.PRIMARY_EVALUATION in line)
    assert "0.75" in judge_row
    lines = out.splitlines()
    root_line = next(line for line in lines if "invoke_agent calc" in line)
    root_at = root_line.index("invoke_agent calc")
    evaluation = schema.evaluation_span_name(schema.PRIMARY_EVALUATION)
    children = [line for line in lines if "chat smol" in line or evaluation in line]
    assert len(children) == 3
    for line in children:  # indented one level deeper than the root
        name_at = line.index("chat smol") if "chat smol" in line else line.index(evaluation)
        assert name_at > root_at
    assert lines.index(root_line) < min(lines.index(line) for line in children)

    [shown] = seed.json_lines("sessions", "show", session.session_id, "--json")
    assert shown["trace_id"] == trace_id
    assert shown["evaluations"][schema.PRIMARY_EVALUATION]["score"] == 0.75
    assert shown["drift"] is not None
    spans = shown["spans"]
    assert len(spans) == 4 and {s["trace_id"] for s in spans} == {trace_id}
    [root] = [s for s in spans if s["parent_span_id"] is None]
    assert all(s["parent_span_id"] == root["span_id"] for s in spans if s is not root)
    assert json.loads(json.dumps(shown)) == shown


def test_approve_and_quarantine_by_id(seed):
    a, b, c = seed(3)
    out = seed.cli("sessions", "approve", a, b[:10], "--note", "looks right").stdout
    assert "approved 2 sessions" in out
    out = seed.cli("sessions", "quarantine", c[:10], "--note", "leaks the answer").stdout
    assert "quarantined 1 session" in out

    store = seed.store
    assert [store.get_session(t).review_status for t in (a, b, c)] == [
        "approved",
        "approved",
        "quarantined",
    ]
    assert store.get_session(a).review_note == "looks right"
    assert store.get_session(c).review_note == "leaks the answer"

    out = seed.cli("sessions", "approve", a, c).stdout
    assert "approved 1 session (1 already approved)" in out
    assert store.get_session(c).review_status == "approved"
    assert store.get_session(c).review_note == "leaks the answer"  # no --note: note kept


def test_cli_reviews_are_in_the_review_log(seed):
    a, b = seed(2)
    seed.cli("sessions", "quarantine", a, "--note", "odd", env={"ATLAS_REVIEWER": "dana"})
    seed.cli("sessions", "approve", "--all-pending", env={"ATLAS_REVIEWER": "eli"})
    seed.cli("sessions", "approve", "--all-pending", "--dry-run")  # a dry run logs nothing
    log = seed.store.review_log()
    assert [(x.actor, x.source, x.action, x.sessions, x.note) for x in log] == [
        ("eli", "cli", "approved", 1, None),
        ("dana", "cli", "quarantined", 1, "odd"),
    ]
    assert log[0].detail == {"filter": {}, "include_drift": False, "skipped_drift": 0}
    assert [x.previous_status for x in seed.store.review_log(trace_id=b)] == ["pending"]


def test_drift_is_listed_and_skipped_by_bulk_approve(seed):
    steady = [seed(1, learning_key="steady", score=s)[0] for s in (0.8, 0.82, 0.78, 0.81, 0.79)]
    steady += seed(1, learning_key="steady", score=0.8)
    [outlier] = seed(1, learning_key="steady", score=0.05)
    others = seed(2, agent="web", learning_key="search", score=0.6)

    drifted = seed.json_lines("sessions", "list", "--json", "--drift")
    assert trace_ids(drifted) == [outlier]
    assert drifted[0]["drift"]["alert"] is True

    out = seed.cli("sessions", "approve", "--all-pending").stdout
    assert "approved 8 sessions" in out
    assert "skipped 1 pending session with a drift alert" in out
    store = seed.store
    assert store.get_session(outlier).review_status == "pending"
    assert {store.get_session(t).review_status for t in steady + others} == {"approved"}

    out = seed.cli("sessions", "approve", "--all-pending", "--include-drift").stdout
    assert "approved 1 session" in out and "skipped" not in out
    assert store.get_session(outlier).review_status == "approved"


def test_bulk_approve_filters(seed):
    math_good = seed(2, learning_key="math", score=0.9)
    math_poor = seed(2, learning_key="math", score=0.2)
    search_good = seed(2, agent="web", learning_key="search", score=0.9)
    quarantined = seed(1, learning_key="math", score=0.95)
    unscored = seed(1, learning_key="math", score=None)
    seed.store.set_review(quarantined, "quarantined")

    out = seed.cli(
        "sessions", "approve", "--all-pending", "--min-reward", "0.5", "--learning-key", "math"
    ).stdout
    assert "approved 2 sessions" in out
    status = {t: seed.store.get_session(t).review_status for t in seed.all_ids()}
    assert {t for t, s in status.items() if s == "approved"} == set(math_good)
    assert {t for t, s in status.items() if s == "quarantined"} == set(quarantined)
    assert {t for t, s in status.items() if s == "pending"} == {
        *math_poor,
        *search_good,
        *unscored,
    }
