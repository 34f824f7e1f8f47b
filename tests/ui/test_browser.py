"""atlas ui in a real browser: Debian's headless Chromium driven by Playwright, against the real
``atlas ui`` command on SQLite and on Postgres. A reviewer's session: filter, open sessions,
read the waterfall, approve, quarantine with a note, undo, approve by filter with the drift rule,
read the activity log and the learning pages, download the export. Every step checks the store,
and every view is saved as a screenshot under the test's output folder (docs/ui.md shows them)."""

from __future__ import annotations

import json

import pytest

from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli
from tests.ui.conftest import atlas_ui
from tests.ui.seed import EVAL_RUN, XSS_TASK

VIEWPORT = {"width": 1360, "height": 900}


def _session(url: str, trace_id: str):
    with open_store(url) as store:
        return store.get_session(trace_id)


def _rows(page) -> list[str]:
    return page.locator("tr[data-trace]").evaluate_all("rows => rows.map(r => r.dataset.trace)")


def test_a_review_session_in_the_browser(browser, seeded, shots, tmp_path):
    url, found = seeded
    with atlas_ui("--store", url, "--reports", str(found.report.parent)) as base:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        # --- the list: newest first, counts per status, filters ------------------------------
        page.goto(base + "/sessions?limit=25")
        assert page.locator("[data-testid=tab-all] .count").inner_text() == str(len(found.all_ids))
        assert page.locator("[data-testid=tab-pending] .count").inner_text() == str(
            len(found.all_ids)
        )
        shots(page, "sessions")
        page.fill("input[name=q]", "apples")
        page.select_option("select[name=lane]", "coach")
        page.click("[data-testid=apply]")
        page.wait_for_url("**q=apples**")
        rows = _rows(page)
        assert rows
        with open_store(url) as store:
            for trace_id in rows:
                hit = store.get_session(trace_id)
                assert "apples" in hit.task and hit.lane == "coach"
        assert page.locator("[data-testid=range]").inner_text().startswith(f"1–{len(rows)} of")

        # --- markup in a task is text: shown, never run --------------------------------------
        page.goto(base + "/sessions?q=atlas_xss")
        page.click(f"a[href^='/sessions/{found.ids['markup']}']")
        page.wait_for_selector("[data-testid=task]")
        assert page.locator("[data-testid=task]").inner_text() == XSS_TASK
        assert page.evaluate("window.__atlas_xss") is None
        assert page.locator("main img[src=x]").count() == 0
        assert page.locator("[data-testid=answer]").inner_text() == '<b>bold?</b> & "quotes"'

        # --- one session: rewards per judge, tokens, the waterfall with attributes on click ---
        coach = next(
            t
            for t in found.all_ids
            if (s := _session(url, t)).lane == "coach" and s.learning_key == "arithmetic"
        )
        page.goto(f"{base}/sessions/{coach}")
        assert page.locator("[data-testid=guidance]").inner_text().startswith("Add the two")
        judges = page.locator("table.judges tbody tr td:first-child strong").all_inner_texts()
        assert judges == ["accuracy", "process", "helpfulness"]
        spans = page.locator("[data-testid=span]")
        with open_store(url) as store:
            assert spans.count() == len(store.spans_for([coach])[coach])
        tool = spans.filter(has_text="execute_tool calculator")
        assert not tool.locator("table.attrs").is_visible()
        tool.locator("summary").click()
        assert tool.locator("table.attrs").is_visible()
        assert "gen_ai.tool.call.result" in tool.locator("table.attrs").inner_text()
        shots(page, "session")

        # --- approve, quarantine with a note, undo: each lands in the store ------------------
        page.fill("textarea[name=note]", "checked the sum")
        page.click("[data-testid=approve]")
        page.wait_for_selector("[data-testid=done]")
        after = _session(url, coach)
        assert (after.review_status, after.review_note) == ("approved", "checked the sum")
        page.fill("textarea[name=note]", "the guidance gives the answer away")
        page.click("[data-testid=quarantine]")
        page.wait_for_selector("[data-testid=done] >> text=quarantined 1 session")
        after = _session(url, coach)
        assert after.review_status == "quarantined"
        assert after.review_note == "the guidance gives the answer away"
        history = page.locator("[data-testid=history] li").all_inner_texts()
        assert "reviewer-1 quarantined" in history[0] and "was approved" in history[0]
        assert "the guidance gives the answer away" in history[0]
        shots(page, "session-reviewed")
        page.click("[data-testid=done] [data-testid=undo]")
        page.wait_for_selector("[data-testid=done] >> text=undid an action")
        assert _session(url, coach).review_status == "approved"

        # --- bulk: approve every pending session of a filter, drift-flagged ones skipped -----
        page.goto(base + "/sessions?key=support&status=pending")
        page.click("[data-testid=approve-filter]")
        assert page.locator("[data-testid=would-approve]").inner_text() == "7"
        assert page.locator("[data-testid=skipped-drift]").inner_text() == "1"
        shots(page, "approve-by-filter")
        page.fill("input[name=note]", "steady support answers")
        page.click("[data-testid=confirm-approve]")
        page.wait_for_selector("[data-testid=done]")
        with open_store(url) as store:
            support = {
                s.trace_id: s.review_status
                for s in store.iter_sessions()
                if s.learning_key == "support"
            }
        assert support.pop(found.ids["drift"]) == "pending"
        assert set(support.values()) == {"approved"}

        # --- selected rows: tick two, quarantine them (the page asks first) ------------------
        page.goto(base + "/sessions?key=arithmetic&status=pending&limit=25")
        picked = _rows(page)[:2]
        bulk_buttons = page.locator("[data-bulk]")
        assert bulk_buttons.first.is_disabled()
        for trace_id in picked:
            page.check(f"input[name=ids][value='{trace_id}']")
        assert bulk_buttons.first.is_enabled()
        page.fill(".bulk-bar input[name=note]", "duplicates")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[value=quarantined][data-bulk]")
        page.wait_for_selector("[data-testid=done]")
        assert {_session(url, t).review_status for t in picked} == {"quarantined"}
        assert _session(url, picked[0]).review_note == "duplicates"

        # --- the activity log names who did what -----------------------------------------------
        page.goto(base + "/activity")
        activity = page.locator("[data-testid=activity] tbody tr").all_inner_texts()
        assert len(activity) == 5  # approve, quarantine, undo, bulk approve, selected
        assert all("reviewer-1" in row for row in activity)
        assert "duplicates" in activity[0] and "steady support answers" in activity[1]
        shots(page, "activity")

        # --- learning: charts, lessons, the training run's and the eval's plots -------------
        page.goto(base + "/learning")
        shots(page, "learning")
        page.click("a:text-is('arithmetic')")
        page.wait_for_selector("[data-testid=reward-chart] svg.chart")
        assert page.locator("[data-testid=lane-chart] rect").count() > 0
        assert page.locator("[data-testid=lessons] tbody tr").count() == 2
        curves = page.locator("[data-testid=runs] img")
        curves.first.scroll_into_view_if_needed()
        assert curves.first.evaluate("img => img.complete && img.naturalWidth > 0")
        shots(page, "learning-key")
        page.goto(base + f"/learning/key?key=eval:{EVAL_RUN}")
        report = page.locator(f"img[alt='atlas eval report eval-{EVAL_RUN}.png']")
        report.scroll_into_view_if_needed()
        assert report.evaluate("img => img.complete && img.naturalWidth > 0")

        # --- export: the download is `atlas export` of the same filter ------------------------
        page.goto(base + "/sessions?key=support")
        with page.expect_download() as wait:
            page.click("[data-testid=export]")
        download = tmp_path / "download.jsonl"
        wait.value.save_as(download)
        cli = atlas_cli("export", "--store", url, "--learning-key", "support", "-o", "-")
        assert download.read_text() == cli.stdout
        exported = [json.loads(line) for line in download.read_text().splitlines()]
        assert len(exported) == 7 and all(x["review_status"] == "approved" for x in exported)

        assert errors == []
        context.close()
    assert sorted(p.name for p in shots.folder.iterdir()) == sorted(
        f"{n}.png"
        for n in (
            "sessions",
            "session",
            "session-reviewed",
            "approve-by-filter",
            "activity",
            "learning",
            "learning-key",
        )
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_token_protected_page_signs_in_once(browser, seeded):
    url, found = seeded
    with atlas_ui("--store", url, "--token", "correct horse") as base:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(base + f"/sessions/{found.all_ids[0]}")
        assert "/login" in page.url
        page.fill("input[name=token]", "wrong")
        page.click("button:text('Sign in')")
        assert page.locator(".flash.error").inner_text() == "Wrong token."
        page.fill("input[name=token]", "correct horse")
        page.click("button:text('Sign in')")
        page.wait_for_url(f"**/sessions/{found.all_ids[0]}")
        assert page.locator("[data-testid=task]").is_visible()
        cookies = {c["name"]: c for c in context.cookies()}
        auth = next(c for name, c in cookies.items() if name.startswith("atlas_auth_"))
        assert auth["httpOnly"] and auth["sameSite"] == "Strict"
        assert "correct horse" not in page.content()
        context.close()
