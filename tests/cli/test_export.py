"""``atlas export``: which sessions leave the store, in what shape, page by page."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import trace_ids


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_spans(line: dict, expected: int) -> None:
    spans = line["spans"]
    assert len(spans) == expected
    assert {s["trace_id"] for s in spans} == {line["trace_id"]}
    [root] = [s for s in spans if s["parent_span_id"] is None]
    assert root["name"].startswith("invoke_agent")


def test_export_review_gate_and_filters(seed, tmp_path):
    good = seed(2, score=0.9)
    meh = seed(1, score=0.4)
    pending = seed(2, score=0.9)
    bad = seed(1, score=0.95)
    seed.store.set_review(good + meh, "approved")
    seed.store.set_review(bad, "quarantined")

    target = tmp_path / "traces.jsonl"
    proc = seed.cli("export", "-o", str(target))
    lines = _read(target)
    assert sorted(trace_ids(lines)) == sorted(good + meh)  # approved only, by default
    for line in lines:
        assert line["review_status"] == "approved"
        assert line["reward_score"] is not None and line["task"]
        _check_spans(line, 4)  # root, two chat spans, the evaluation span
    assert "exported 3 sessions (12 spans)" in proc.stderr
    assert not list(tmp_path.glob("*.partial"))

    to_stdout = seed.json_lines("export", "-o", "-", "--min-reward", "0.5")
    assert sorted(trace_ids(to_stdout)) == sorted(good)

    no_spans = seed.json_lines("export", "-o", "-", "--status", "pending", "--no-spans")
    assert sorted(trace_ids(no_spans)) == sorted(pending)
    assert all("spans" not in line for line in no_spans)

    several = seed.json_lines(
        "export", "-o", "-", "--status", "approved", "--status", "pending", "--no-spans"
    )
    assert sorted(trace_ids(several)) == sorted(good + meh + pending)  # never the quarantined

    asked = seed.json_lines("export", "-o", "-", "--status", "quarantined")
    assert trace_ids(asked) == bad
    _check_spans(asked[0], 4)


def test_export_pages_yield_every_session_once(seed):
    ids = seed(23, children=1, score=0.7)
    seed.store.set_review(ids, "approved")
    proc = seed.cli("export", "-o", "-", "--page-size", "5")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    exported = trace_ids(lines)
    assert len(exported) == len(set(exported)) == 23  # no duplicates at page boundaries
    assert set(exported) == set(ids)  # no gaps
    keys = [(line["started_ns"], line["trace_id"]) for line in lines]
    assert keys == sorted(keys)  # oldest first, in keyset order
    for line in lines:
        _check_spans(line, 3)
    assert "exported 23 sessions (69 spans) to stdout" in proc.stderr
