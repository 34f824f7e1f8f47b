"""atlas ui over HTTP (no browser): the security rules, filters and pages, review actions and
undo against the store, the export download, the files it serves. Both stores where the store
is involved; the browser tests (test_browser.py) cover what a person sees and clicks."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from atlas_middleware.storage import open_store
from atlas_middleware.ui import UISettings, make_server
from atlas_middleware.ui.server import ConfigError
from tests.helpers import atlas_cli
from tests.ui.conftest import serving
from tests.ui.seed import EVAL_RUN, XSS_TASK

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def _csrf(client: httpx.Client, path: str = "/sessions") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return CSRF.search(page.text).group(1)


def _status(url: str, trace_id: str) -> str:
    with open_store(url) as store:
        return store.get_session(trace_id).review_status


def test_pages_render_filter_and_escape_user_content(seeded):
    url, found = seeded
    with serving(url, reports=[found.report.parent]) as base, httpx.Client(base_url=base) as web:
        page = web.get("/sessions")
        assert page.status_code == 200
        # Security headers on every page: only this server's script and styles may run.
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        # The markup task is text, never markup.
        assert "<script>window.__atlas_xss" not in page.text
        assert "&lt;script&gt;window.__atlas_xss = 1&lt;/script&gt;" in page.text
        detail = web.get(f"/sessions/{found.ids['markup']}")
        assert XSS_TASK not in detail.text and "&lt;img src=x onerror=" in detail.text
        assert "&lt;b&gt;bold?&lt;/b&gt; &amp; &#34;quotes&#34;" in detail.text
        # Counts per status and filters: the support key has 8 sessions, 1 with a drift alert.
        support = web.get("/sessions", params={"key": "support"})
        assert re.search(r'data-testid="tab-all">All <span class="count">8<', support.text)
        assert support.text.count('<tr data-trace="') == 8
        drift = web.get("/sessions", params={"key": "support", "drift": "1"})
        assert drift.text.count('<tr data-trace="') == 1 and found.ids["drift"] in drift.text
        text = web.get("/sessions", params={"q": "RESET MY"})
        assert text.text.count('<tr data-trace="') == 1
        assert found.ids["unrewarded"] in text.text
        # A filter that cannot be read is said, not a server error.
        bad = web.get("/sessions", params={"min": "lots", "since": "yesterday-ish"})
        assert bad.status_code == 200
        assert "min reward: expected a number" in bad.text and "since:" in bad.text
        # Learning pages show the charts, the lessons, the training run's and eval's PNGs.
        learning = web.get("/learning/key", params={"key": "arithmetic"})
        assert learning.status_code == 200
        assert learning.text.count('<svg class="chart"') == 2
        assert "Add every amount the task mentions" in learning.text
        assert "/files/run/grpo-20261201-0930/curves.png" in learning.text
        curves = web.get("/files/run/grpo-20261201-0930/curves.png")
        assert curves.headers["content-type"] == "image/png"
        assert curves.content[:8] == b"\x89PNG\r\n\x1a\n"
        eval_page = web.get("/learning/key", params={"key": f"eval:{EVAL_RUN}"})
        assert f"/files/report/0/eval-{EVAL_RUN}.png" in eval_page.text
        assert web.get(f"/files/report/0/eval-{EVAL_RUN}.png").content[:4] == b"\x89PNG"
        table = web.get(f"/files/report/0/eval-{EVAL_RUN}.md")
        assert table.headers["content-type"].startswith("text/plain")
        assert "| condition | accuracy |" in table.text
        # Nothing but PNG and markdown files directly in those folders.
        for path in (
            "/files/report/0/..%2F..%2Fetc%2Fpasswd",
            "/files/report/0/eval.txt",
            "/files/report/5/x.png",
            "/files/run/grpo-20261201-0930/metrics.jsonl",
            "/files/run/no-such-run/curves.png",
        ):
            assert web.get(path).status_code == 404, path
        assert web.get("/sessions/0123456789abcdef0123456789abcdef").status_code == 404
        head = web.head("/sessions")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 1000


def test_pagination_walks_every_session_once(seeded):
    url, found = seeded
    with serving(url) as base, httpx.Client(base_url=base) as web:
        seen: list[str] = []
        link = "/sessions?limit=25"
        pages = 0
        while link:
            page = web.get(link.replace("&amp;", "&"))
            seen += re.findall(r'<tr data-trace="([0-9a-f]+)"', page.text)
            older = re.search(r'href="([^"]+)" data-testid="older"', page.text)
            link = older.group(1) if older else None
            pages += 1
        assert pages == -(-len(found.all_ids) // 25)
        assert sorted(seen) == sorted(found.all_ids) and len(seen) == len(set(seen))
        newer = re.search(r'href="([^"]+)" data-testid="newer"', page.text).group(1)
        back = web.get(newer.replace("&amp;", "&"))
        last = len(seen) - 25 * (pages - 1)
        assert re.findall(r'<tr data-trace="([0-9a-f]+)"', back.text) == seen[-last - 25 : -last]


def test_review_approve_quarantine_bulk_and_undo_change_the_store(seeded):
    url, found = seeded
    markup, drift = found.ids["markup"], found.ids["drift"]
    with serving(url, reviewer="ann") as base, httpx.Client(base_url=base) as web:
        token = _csrf(web)
        done = web.post(
            f"/sessions/{markup}/review",
            data={"csrf": token, "action": "quarantined", "note": "markup <in> task"},
        )
        assert done.status_code == 303
        assert _status(url, markup) == "quarantined"
        page = web.get(done.headers["location"])
        assert "ann</strong> quarantined 1 session" in page.text
        assert "“markup &lt;in&gt; task”" in page.text  # in the session's history, escaped
        # Bulk approval of the support key's pending sessions skips the drift outlier.
        dry = web.get("/review/approve-filter", params={"key": "support"})
        assert re.search(r'data-testid="would-approve">7<', dry.text)
        assert re.search(r'data-testid="skipped-drift">1<', dry.text)
        bulk = web.post(
            "/review/approve-filter", data={"csrf": token, "key": "support", "note": "steady"}
        )
        assert bulk.status_code == 303
        action_id = re.search(r"done=([0-9a-f]{32})", bulk.headers["location"]).group(1)
        with open_store(url) as store:
            statuses = {
                s.trace_id: s.review_status
                for s in store.iter_sessions()
                if s.learning_key == "support"
            }
            entry = store.review_action(action_id)
        assert statuses.pop(drift) == "pending"
        assert set(statuses.values()) == {"approved"} and len(statuses) == 7
        assert (entry.actor, entry.source, entry.sessions, entry.note) == ("ann", "ui", 7, "steady")
        # Undo puts them back and is itself in the activity log.
        undo = web.post(f"/review/undo/{action_id}", data={"csrf": token, "next": "/activity"})
        assert undo.status_code == 303
        with open_store(url) as store:
            assert {
                s.review_status for s in store.iter_sessions() if s.learning_key == "support"
            } == {"pending"}
        activity = web.get("/activity").text
        assert "of approved · 7 restored" in activity
        assert "steady" in activity and "1 skipped (drift)" in activity
        again = web.post(f"/review/undo/{action_id}", data={"csrf": token})
        assert again.status_code == 409 and "already undone" in again.text
        # Selected sessions, as the list's checkboxes send them.
        picked = found.all_ids[:3]
        sel = web.post(
            "/review/selected",
            data={"csrf": token, "action": "approved", "ids": picked, "next": "/sessions"},
        )
        assert sel.status_code == 303 and {_status(url, t) for t in picked} == {"approved"}
        # The reviewer's name set on the page is what the log records.
        web.post("/reviewer", data={"csrf": token, "reviewer": "Bo <b>", "next": "/sessions"})
        web.post(f"/sessions/{picked[0]}/review", data={"csrf": token, "action": "pending"})
        with open_store(url) as store:
            assert store.review_log(trace_id=picked[0])[0].actor == "Bo <b>"
        assert "Bo &lt;b&gt;" in web.get("/activity").text


def test_writes_need_the_form_token_and_the_same_origin(seeded):
    url, found = seeded
    target = found.all_ids[0]
    with serving(url) as base, httpx.Client(base_url=base) as web:
        token = _csrf(web)
        attempts = [
            ({"action": "approved"}, {}),  # no token
            ({"action": "approved", "csrf": "0" * 64}, {}),  # a wrong one
            ({"action": "approved", "csrf": token}, {"Origin": "http://evil.example"}),
            ({"action": "approved", "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
        ]
        for data, headers in attempts:
            answer = web.post(f"/sessions/{target}/review", data=data, headers=headers)
            assert answer.status_code == 403, (data, headers)
        # A token is bound to its cookie: another browser's cookie does not fit it.
        with httpx.Client(base_url=base) as other:
            other.get("/sessions")
            stolen = other.post(
                f"/sessions/{target}/review", data={"action": "approved", "csrf": token}
            )
            assert stolen.status_code == 403
        # Reads never change anything; GET on a write route is refused.
        assert web.get(f"/sessions/{target}/review").status_code == 405
        assert _status(url, target) == "pending"
        ok = web.post(f"/sessions/{target}/review", data={"action": "approved", "csrf": token})
        assert ok.status_code == 303 and _status(url, target) == "approved"
        # DNS rebinding: a page on another name that resolves here gets nothing.
        assert web.get("/sessions", headers={"Host": "evil.example:80"}).status_code == 421


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_token_guards_every_page_for_browsers_and_scripts(seeded):
    url, found = seeded
    secret = "s3cret-token-value"
    with serving(url, token=secret) as base:
        with httpx.Client(base_url=base) as web:
            first = web.get("/sessions/" + found.all_ids[0])
            assert first.status_code == 303 and first.headers["location"].startswith("/login")
            assert web.get("/export").status_code == 303
            token = _csrf(web, "/login")
            wrong = web.post("/login", data={"csrf": token, "token": "guess"})
            assert wrong.status_code == 401 and secret not in wrong.text
            right = web.post("/login", data={"csrf": token, "token": secret, "next": "/learning"})
            assert right.status_code == 303 and right.headers["location"] == "/learning"
            page = web.get("/sessions")
            assert page.status_code == 200 and secret not in page.text
            web.post("/logout", data={"csrf": _csrf(web)})
            assert web.get("/sessions").status_code == 303
        # Scripts: the collector's bearer rule, no cookie, no form token needed.
        with httpx.Client(base_url=base) as script:
            assert (
                script.get("/sessions", headers={"Authorization": "Bearer no"}).status_code == 401
            )
            auth = {"Authorization": f"Bearer {secret}"}
            assert script.get("/sessions", headers=auth).status_code == 200
            done = script.post(
                f"/sessions/{found.all_ids[1]}/review", data={"action": "approved"}, headers=auth
            )
            assert done.status_code == 303 and _status(url, found.all_ids[1]) == "approved"


def test_off_loopback_needs_a_token(sqlite_url):
    with pytest.raises(ConfigError, match="not loopback: set --token"):
        UISettings(store_url=sqlite_url, host="0.0.0.0").validate()
    UISettings(store_url=sqlite_url, host="0.0.0.0", token="t").validate()
    with open_store(sqlite_url) as store, pytest.raises(ConfigError):
        make_server(UISettings(store_url=sqlite_url, host="192.0.2.1"), store)
    proc = atlas_cli("ui", "--store", sqlite_url, "--host", "0.0.0.0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "atlas: error: --host 0.0.0.0 is not loopback: set --token (or $ATLAS_UI_TOKEN) so only "
        "people with the token can read and review sessions"
    ]
    missing = atlas_cli("ui", "--store", "sqlite:///no/such/atlas.db", check=False)
    assert missing.returncode == 1 and "no Atlas store at no/such/atlas.db" in missing.stderr


def test_export_download_is_what_atlas_export_writes(seeded, tmp_path):
    url, found = seeded
    with open_store(url) as store:
        store.set_review(found.all_ids[:5], "approved", actor="t")
        store.set_review(found.all_ids[5:7], "quarantined", actor="t")
    cli_file = tmp_path / "cli.jsonl"
    atlas_cli("export", "--store", url, "--learning-key", "arithmetic", "-o", str(cli_file))
    with serving(url) as base, httpx.Client(base_url=base) as web:
        download = web.get("/export", params={"key": "arithmetic"})
        assert download.headers["content-type"] == "application/x-ndjson"
        assert (
            'attachment; filename="atlas-export-approved-'
            in download.headers["content-disposition"]
        )
        assert download.content == cli_file.read_bytes()
        lines = [json.loads(line) for line in download.text.splitlines()]
        assert sorted(x["trace_id"] for x in lines) == sorted(found.all_ids[:5])
        assert all(x["spans"] for x in lines)
        # Quarantined sessions only when the filter names that status.
        quarantined = web.get("/export", params={"status": "quarantined"}).text.splitlines()
        assert sorted(json.loads(x)["trace_id"] for x in quarantined) == sorted(found.all_ids[5:7])


def test_store_outage_is_a_page_not_a_traceback(sqlite_url):
    with serving(sqlite_url) as base, httpx.Client(base_url=base) as web:
        assert web.get("/sessions").status_code == 200
        with open_store(sqlite_url) as store:
            store._conn.execute("DROP TABLE review_actions")  # a store broken under the server
        page = web.get("/activity")
        # SQLite reports it as an OperationalError, which the store treats as unavailable.
        assert page.status_code == 503 and "Traceback" not in page.text
        assert "no such table: review_actions" in page.text


def test_the_cli_command_serves_and_stops_on_sigterm(seeded):
    from tests.ui.conftest import atlas_ui

    url, found = seeded
    started = time.monotonic()
    with atlas_ui("--store", url) as base:
        page = httpx.get(base + "/sessions")
        assert page.status_code == 200 and found.all_ids[-1] in page.text
    assert time.monotonic() - started < 60
