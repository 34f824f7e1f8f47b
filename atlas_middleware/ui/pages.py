"""The pages of ``atlas ui``: sessions, one session, review actions, activity, learning, export.

Review actions go through :mod:`atlas_middleware.review`, the code path of ``atlas sessions
approve`` / ``quarantine``; the export is :func:`atlas_middleware.cli.export.export_chunks`, the
code of ``atlas export``."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlas_middleware.cli.common import format_duration, format_time
from atlas_middleware.storage import SessionFilter
from atlas_middleware.storage.base import session_cursor
from atlas_middleware.storage.records import REVIEW_STATUSES
from atlas_middleware.telemetry import schema as s
from atlas_middleware.ui import charts, present
from atlas_middleware.ui.server import (
    REVIEWER_COOKIE,
    HTTPError,
    Response,
    redirect,
    safe_next,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import jinja2

    from atlas_middleware.ui.server import Request, UIApp

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
MAX_NOTE = 2000
_TRACE_ID = r"[0-9A-Za-z_.:-]{1,128}"
_CURSOR = re.compile(r"^(-?\d{1,20})\.([0-9A-Za-z_.:-]{1,128})$")
ACTION_LABELS = {
    "approved": "approved",
    "quarantined": "quarantined",
    "pending": "sent back to pending",
    "undo": "undid",
}


def install_filters(env: jinja2.Environment) -> None:
    env.filters.update(
        time=format_time,
        duration=format_duration,
        score=present.format_score,
        short=lambda trace_id: (trace_id or "")[:12],
        truncate_text=_truncate,
        thousands=lambda n: f"{n:,}" if isinstance(n, int) else n,
        pct=lambda x: f"{max(0.0, min(1.0, float(x))) * 100:.1f}",
    )
    env.globals.update(action_label=lambda a: ACTION_LABELS.get(a, a), lane_class=charts.lane_class)


def _truncate(text: str | None, width: int = 120) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- filters ---------------------------------------------------------------------------------
FILTER_FIELDS = ("status", "agent", "key", "lane", "min", "max", "drift", "since", "until", "q")


@dataclass
class Filters:
    """The session filters of a request: the form's values (shown back as typed), the store
    filter they make, and what was wrong with any of them."""

    values: dict[str, str]
    where: SessionFilter
    errors: list[str] = field(default_factory=list)

    def query(self, **overrides: str | None) -> str:
        """This filter as a query string, with ``overrides`` (None removes a field)."""
        values = {**self.values, **overrides}
        return urllib.parse.urlencode({k: v for k, v in values.items() if v})

    @property
    def status(self) -> str:
        return self.values.get("status", "")

    def describe(self) -> str:
        labels = {
            "agent": "agent",
            "key": "learning key",
            "lane": "lane",
            "min": "reward ≥",
            "max": "reward ≤",
            "since": "since",
            "until": "until",
            "q": "text",
        }
        parts = [f"{labels[k]} {v}" for k, v in self.values.items() if v and k in labels]
        if self.values.get("drift"):
            parts.append("with a drift alert")
        return ", ".join(parts) or "all sessions"


def parse_filters(source: dict[str, list[str]]) -> Filters:
    from atlas_middleware.cli.common import parse_point_in_time, parse_reward

    values = {
        name: (source.get(name) or [""])[0].strip()[:500]
        for name in FILTER_FIELDS
        if (source.get(name) or [""])[0].strip()
    }
    errors: list[str] = []
    status = values.get("status")
    if status and status not in REVIEW_STATUSES:
        errors.append(f"status must be one of {', '.join(REVIEW_STATUSES)}")
        values.pop("status")
    numbers: dict[str, float | None] = {}
    for name, label in (("min", "min reward"), ("max", "max reward")):
        numbers[name] = None
        if name in values:
            try:
                numbers[name] = parse_reward(values[name])
            except argparse.ArgumentTypeError as exc:
                errors.append(f"{label}: {exc}")
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        times[name] = None
        if name in values:
            try:
                times[name] = parse_point_in_time(values[name])
            except argparse.ArgumentTypeError as exc:
                errors.append(f"{name}: {exc}")
    where = SessionFilter(
        review_status=values.get("status") or None,
        min_reward=numbers["min"],
        max_reward=numbers["max"],
        learning_key=values.get("key") or None,
        agent_name=values.get("agent") or None,
        lane=values.get("lane") or None,
        since_ns=times["since"],
        until_ns=times["until"],
        drift_only=bool(values.get("drift")),
        text=values.get("q") or None,
    )
    if "drift" in values:
        values["drift"] = "1"
    return Filters(values, where, errors)


def _cursor(value: str) -> tuple[int, str] | None:
    match = _CURSOR.match(value)
    return (int(match.group(1)), match.group(2)) if match else None


def _cursor_text(cursor: tuple[int, str]) -> str:
    return f"{cursor[0]}.{cursor[1]}"


# --- pages -----------------------------------------------------------------------------------
def home(app: UIApp, request: Request) -> Response:
    return redirect("/sessions")


def sessions_page(app: UIApp, request: Request) -> Response:
    filters = parse_filters(request.query)
    try:
        limit = int(request.arg("limit") or DEFAULT_PAGE_SIZE)
    except ValueError:
        limit = DEFAULT_PAGE_SIZE
    limit = limit if limit in PAGE_SIZES else DEFAULT_PAGE_SIZE
    older, newer = _cursor(request.arg("older")), _cursor(request.arg("newer"))
    try:
        position = max(0, int(request.arg("pos") or 0))
    except ValueError:
        position = 0
    store = app.store
    # One row more than shown tells whether another page follows.
    if newer is not None:
        rows = store.page_sessions(filters.where, limit=limit + 1, cursor=newer, newer=True)
        has_newer = len(rows) > limit
        rows = rows[-limit:] if has_newer else rows
        has_older = True
        if not has_newer:
            position = 0
    else:
        rows = store.page_sessions(filters.where, limit=limit + 1, cursor=older)
        has_older = len(rows) > limit
        rows = rows[:limit]
        has_newer = older is not None
        if older is None:
            position = 0
    counts = store.session_counts(filters.where)
    total = counts[filters.status] if filters.status else sum(counts.values())
    facets = app.cached("facets", 30, store.session_facets)
    links = {
        "newest": "/sessions?"
        + filters.query(limit=str(limit) if limit != DEFAULT_PAGE_SIZE else None),
        "newer": None,
        "older": None,
    }
    size = str(limit) if limit != DEFAULT_PAGE_SIZE else None
    if rows and has_newer:
        links["newer"] = "/sessions?" + filters.query(
            newer=_cursor_text(session_cursor(rows[0])),
            pos=str(max(0, position - limit)),
            limit=size,
        )
    if rows and has_older:
        links["older"] = "/sessions?" + filters.query(
            older=_cursor_text(session_cursor(rows[-1])), pos=str(position + len(rows)), limit=size
        )
    tabs = [("", "All", sum(counts.values()))] + [
        (st, st.title(), counts[st]) for st in REVIEW_STATUSES
    ]
    return app.render(
        request,
        "sessions.html",
        nav="sessions",
        title="Sessions",
        filters=filters,
        sessions=rows,
        counts=counts,
        total=total,
        tabs=tabs,
        facets=facets,
        links=links,
        first=position + 1 if rows else 0,
        last=position + len(rows),
        limit=limit,
        page_sizes=PAGE_SIZES,
        done=_done(app, request),
        back=request.target,
    )


def session_page(app: UIApp, request: Request, trace_id: str) -> Response:
    store = app.store
    session = store.get_session(trace_id)
    if session is None:
        raise HTTPError(404, f"no session {trace_id}")
    if session.trace_id != trace_id:
        return redirect(f"/sessions/{urllib.parse.quote(session.trace_id)}")
    spans = store.spans_for([session.trace_id])[session.trace_id]
    root = present.session_root(session, spans)
    root_attrs = root.attributes if root is not None else {}
    rows = present.waterfall(spans)
    teacher_calls = [row for row in rows if row.job]
    validations = [
        {
            "reply": present.message_text(row.span.attributes.get(s.GEN_AI_OUTPUT_MESSAGES)),
            "row": row,
        }
        for row in teacher_calls
        if row.job == "validation"
    ]
    failures = root_attrs.get(s.ATLAS_FAILURES)
    if isinstance(failures, str):
        failures = [failures]
    history = _history(store, session.trace_id)
    steps = store.steps_for(session.trace_id)
    depth: dict[str, int] = {}
    for step in steps:
        depth[step.span_id] = depth.get(step.parent_id, -1) + 1 if step.parent_id else 0
    return app.render(
        request,
        "session.html",
        steps=[(step, depth.get(step.span_id, 0)) for step in steps],
        nav="sessions",
        title=f"Session {session.trace_id[:12]}",
        session=session,
        reference=root_attrs.get(s.ATLAS_REFERENCE),
        retries=root_attrs.get(s.ATLAS_RETRIES),
        failures=failures or [],
        validations=validations,
        teacher_calls=teacher_calls,
        rewards=present.rewards(session),
        tokens=present.token_split(session, spans),
        rows=rows,
        span_bar=charts.span_bar,
        duration=(
            session.ended_ns - session.started_ns
            if session.started_ns is not None and session.ended_ns is not None
            else None
        ),
        history=history,
        done=_done(app, request),
        back=safe_next(request.arg("back"), "/sessions"),
        self_url=request.target,
    )


def _history(store: Any, trace_id: str) -> list[dict[str, Any]]:
    """Review actions on the session and its drift alerts, newest first."""
    events: list[dict[str, Any]] = [
        {"kind": "review", "at": a.created_ns, "action": a}
        for a in store.review_log(trace_id=trace_id)
    ]
    events += [
        {"kind": "drift", "at": alert["created_ns"], "alert": alert}
        for alert in store.drift_alerts(trace_id=trace_id)
    ]
    return sorted(events, key=lambda e: e["at"], reverse=True)


def _done(app: UIApp, request: Request) -> Any:
    """The review action just made (``?done=<action id>``), for the confirmation with undo."""
    action_id = request.arg("done")
    if not action_id or not re.fullmatch(r"[0-9a-f]{32}", action_id):
        return None
    return app.store.review_action(action_id)


def _note(request: Request) -> str | None:
    note = request.field("note")
    if len(note) > MAX_NOTE:
        raise HTTPError(400, f"the note is longer than {MAX_NOTE} characters")
    return note or None


def _status(request: Request) -> str:
    status = request.field("action")
    if status not in REVIEW_STATUSES:
        raise HTTPError(400, f"action must be one of {', '.join(REVIEW_STATUSES)}")
    return status


def _with_done(url: str, action_id: str | None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "done"]
    if action_id:
        query.append(("done", action_id))
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode(query), ""))


def review_one(app: UIApp, request: Request, trace_id: str) -> Response:
    from atlas_middleware.review import review_sessions

    session = app.store.get_session(trace_id)
    if session is None or session.trace_id != trace_id:
        raise HTTPError(404, f"no session {trace_id}")
    status = _status(request)
    outcome = review_sessions(
        app.store,
        [session],
        status,
        note=_note(request),
        actor=app.reviewer(request),
        source="ui",
    )
    back = safe_next(request.field("next"), f"/sessions/{urllib.parse.quote(trace_id)}")
    return redirect(_with_done(back, outcome.action_id))


def review_selected(app: UIApp, request: Request) -> Response:
    from atlas_middleware.review import review_sessions

    ids = [t for t in request.fields("ids") if re.fullmatch(_TRACE_ID, t)]
    status = _status(request)
    back = safe_next(request.field("next"))
    if not ids:
        raise HTTPError(400, "no sessions selected: tick the sessions to review first")
    sessions = [found for t in ids if (found := app.store.get_session(t)) is not None]
    outcome = review_sessions(
        app.store,
        [x for x in sessions if x.trace_id in ids],
        status,
        note=_note(request),
        actor=app.reviewer(request),
        source="ui",
    )
    return redirect(_with_done(back, outcome.action_id))


def approve_filter_page(app: UIApp, request: Request) -> Response:
    """The dry run of a bulk approval: what it would approve and what the drift rule skips."""
    from atlas_middleware.review import review_pending

    filters = parse_filters(request.query)
    if filters.errors:
        raise HTTPError(400, "; ".join(filters.errors))
    include_drift = request.arg("include_drift") == "1"
    outcome = review_pending(
        app.store, filters.where, "approved", include_drift=include_drift, dry_run=True
    )
    return app.render(
        request,
        "approve_filter.html",
        nav="sessions",
        title="Approve by filter",
        filters=filters,
        outcome=outcome,
        include_drift=include_drift,
        back="/sessions?" + filters.query(),
    )


def approve_filter(app: UIApp, request: Request) -> Response:
    from atlas_middleware.review import review_pending

    filters = parse_filters(request.form)
    if filters.errors:
        raise HTTPError(400, "; ".join(filters.errors))
    outcome = review_pending(
        app.store,
        filters.where,
        "approved",
        include_drift=request.field("include_drift") == "1",
        note=_note(request),
        actor=app.reviewer(request),
        source="ui",
    )
    if outcome.action_id is None:
        return redirect("/sessions?" + filters.query())
    return redirect("/sessions?" + filters.query(done=outcome.action_id))


def undo(app: UIApp, request: Request, action_id: str) -> Response:
    from atlas_middleware.storage import StoreError

    back = safe_next(request.field("next"), "/activity")
    try:
        result = app.store.undo_review(action_id, actor=app.reviewer(request), source="ui")
    except StoreError as exc:
        raise HTTPError(409, str(exc)) from None
    return redirect(_with_done(back, result.action_id))


def activity_page(app: UIApp, request: Request) -> Response:
    before = _cursor(request.arg("before"))
    limit = 50
    actions = app.store.review_log(limit=limit + 1, before=before)
    more = len(actions) > limit
    actions = actions[:limit]
    older = (
        "/activity?before=" + _cursor_text((actions[-1].created_ns, actions[-1].action_id))
        if more and actions
        else None
    )
    return app.render(
        request,
        "activity.html",
        nav="activity",
        title="Activity",
        actions=actions,
        older=older,
        done=_done(app, request),
    )


def set_reviewer(app: UIApp, request: Request) -> Response:
    name = " ".join(request.field("reviewer").split())[:64]
    request.set_cookies.append(
        app.cookie(REVIEWER_COOKIE, urllib.parse.quote(name, safe=""), max_age=None if name else 0)
    )
    return redirect(safe_next(request.field("next")))


# --- learning --------------------------------------------------------------------------------
def learning_page(app: UIApp, request: Request) -> Response:
    keys = app.store.learning_keys()
    runs = app.store.training_runs()
    for run in runs:
        run["images"] = _run_images(run)
    return app.render(
        request,
        "learning.html",
        nav="learning",
        title="Learning",
        keys=keys,
        runs=runs[::-1],
        reports=_reports(app),
    )


def learning_key_page(app: UIApp, request: Request) -> Response:
    key = request.arg("key")
    if not key:
        return redirect("/learning")
    store = app.store
    width, series, lanes = store.learning_series(key)
    if not series and store.get_playbook(key) is None:
        raise HTTPError(404, f"no sessions of learning key {key!r}")
    buckets = [point["start_ns"] for point in series]
    lane_counts: dict[str, dict[int, int]] = {}
    for entry in lanes:
        lane_counts.setdefault(entry["lane"], {})[entry["start_ns"]] = entry["sessions"]
    lane_totals = {lane: sum(c.values()) for lane, c in lane_counts.items()}
    playbook = store.get_playbook(key) or {}
    lessons = sorted(
        (lesson for lesson in playbook.get("lessons") or [] if isinstance(lesson, dict)),
        key=lambda lesson: lesson.get("added_ns") or 0,
        reverse=True,
    )
    for lesson in lessons:
        uses = lesson.get("uses") or 0
        lesson["mean"] = (lesson.get("reward_sum") or 0) / uses if uses else None
    sessions = playbook.get("sessions") or 0
    runs = store.training_runs_for(key)
    for run in runs:
        run["images"] = _run_images(run)
    summary = next((k for k in store.learning_keys() if k["learning_key"] == key), None)
    reports = [r for r in _reports(app) if key.endswith(":" + r["run_id"])] if ":" in key else []
    return app.render(
        request,
        "learning_key.html",
        nav="learning",
        title=f"Learning: {key}",
        key=key,
        summary=summary,
        width_label=charts.width_label(width),
        reward_chart=charts.line_chart(
            series,
            [
                ("mean_reward", "reward", "series-reward"),
                ("accuracy", "accuracy", "series-accuracy"),
            ],
            width,
        )
        if series
        else None,
        lane_chart=charts.stacked_bars(buckets, lane_counts, width) if series else None,
        lane_totals=sorted(lane_totals.items(), key=lambda kv: -kv[1]),
        judged=sum(point["judged"] for point in series),
        lessons=lessons,
        playbook_mean=(playbook.get("reward_sum") or 0) / sessions if sessions else None,
        playbook_sessions=sessions,
        runs=runs[::-1],
        reports=reports,
        sessions_link="/sessions?" + urllib.parse.urlencode({"key": key}),
    )


_IMAGE = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.(png|md)$")


def _run_dir(run: dict[str, Any]) -> Path:
    # atlas-train records <output dir>/final as the checkpoint; curves.png sits in the output dir.
    return Path(run["checkpoint"]).parent


def _run_images(run: dict[str, Any]) -> list[str]:
    folder = _run_dir(run)
    try:
        return sorted(p.name for p in folder.glob("*.png") if p.is_file())[:10]
    except OSError:
        return []


def _reports(app: UIApp) -> list[dict[str, Any]]:
    """``atlas eval`` reports (``eval-<run id>.png`` beside ``.md``) in the report folders."""
    found = []
    for index, folder in enumerate(app.settings.reports):
        try:
            images = sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            continue
        for image in images[:50]:
            if not _IMAGE.match(image.name):
                continue
            table = image.with_suffix(".md")
            found.append(
                {
                    "folder": index,
                    "folder_path": str(folder),
                    "name": image.name,
                    "table": table.name if table.is_file() else None,
                    "run_id": image.stem.removeprefix("eval-"),
                    "modified_ns": int(image.stat().st_mtime * 1e9),
                }
            )
    return found


def run_file(app: UIApp, request: Request, run_id: str, name: str) -> Response:
    run = next((r for r in app.store.training_runs() if r["run_id"] == run_id), None)
    if run is None:
        raise HTTPError(404, "no such training run")
    return _file(_run_dir(run), name)


def report_file(app: UIApp, request: Request, index: str, name: str) -> Response:
    folders = app.settings.reports
    if not index.isdigit() or int(index) >= len(folders):
        raise HTTPError(404, "no such report folder")
    return _file(folders[int(index)], name)


def _file(folder: Path, name: str) -> Response:
    """A PNG or markdown file directly inside ``folder``; nothing else, nowhere else."""
    if not _IMAGE.match(name):
        raise HTTPError(404, "no such file")
    path = folder / name
    try:
        if path.resolve().parent != folder.resolve() or not path.is_file():
            raise HTTPError(404, "no such file")
        body = path.read_bytes()
    except OSError:
        raise HTTPError(404, "no such file") from None
    kind = "image/png" if name.endswith(".png") else "text/plain; charset=utf-8"
    return Response(200, body, kind, [("Cache-Control", "no-cache")])


# --- export ----------------------------------------------------------------------------------
def export(app: UIApp, request: Request) -> Response:
    """The current filter as ``atlas export`` writes it: approved sessions unless the filter
    names a status; quarantined ones only when it names quarantined."""
    from atlas_middleware.cli.export import export_chunks

    filters = parse_filters(request.query)
    if filters.errors:
        raise HTTPError(400, "; ".join(filters.errors))
    statuses = [filters.status or "approved"]
    where = SessionFilter(**{**_filter_dict(filters.where), "review_status": statuses})
    spans = request.arg("spans", "1") != "0"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"atlas-export-{statuses[0]}-{stamp}.jsonl"
    return Response(
        200,
        export_chunks(app.store, where, statuses, spans=spans),
        "application/x-ndjson",
        [("Content-Disposition", f'attachment; filename="{name}"'), ("Cache-Control", "no-store")],
    )


def _filter_dict(where: SessionFilter) -> dict[str, Any]:
    return {name: getattr(where, name) for name in SessionFilter.__dataclass_fields__}


# --- sign-in and errors ----------------------------------------------------------------------
def login_page(app: UIApp, request: Request) -> Response:
    if not app.settings.token:
        return redirect("/sessions")
    return app.render(
        request,
        "login.html",
        nav="",
        title="Sign in",
        next=safe_next(request.arg("next")),
        failed=False,
    )


def login(app: UIApp, request: Request) -> Response:
    if not app.settings.token:
        return redirect("/sessions")
    if app.check_token("Bearer " + request.field("token")):
        app.login(request)
        return redirect(safe_next(request.field("next")))
    time.sleep(0.5)  # slows guessing down
    return app.render(
        request,
        "login.html",
        status=401,
        nav="",
        title="Sign in",
        next=safe_next(request.field("next")),
        failed=True,
    )


def logout(app: UIApp, request: Request) -> Response:
    app.logout(request)
    return redirect("/login")


def error_page(app: UIApp, request: Request, status: int, message: str) -> Response:
    return app.render(
        request, "error.html", status, nav="", title=f"Error {status}", code=status, message=message
    )


ROUTES: list[tuple[str, str, Callable[..., Any]]] = [
    ("GET", "/", home),
    ("GET", "/sessions", sessions_page),
    ("GET", f"/sessions/(?P<trace_id>{_TRACE_ID})", session_page),
    ("POST", f"/sessions/(?P<trace_id>{_TRACE_ID})/review", review_one),
    ("POST", "/review/selected", review_selected),
    ("GET", "/review/approve-filter", approve_filter_page),
    ("POST", "/review/approve-filter", approve_filter),
    ("POST", "/review/undo/(?P<action_id>[0-9a-f]{32})", undo),
    ("GET", "/activity", activity_page),
    ("POST", "/reviewer", set_reviewer),
    ("GET", "/learning", learning_page),
    ("GET", "/learning/key", learning_key_page),
    ("GET", "/files/run/(?P<run_id>[^/]{1,200})/(?P<name>[^/]{1,200})", run_file),
    ("GET", "/files/report/(?P<index>[0-9]{1,3})/(?P<name>[^/]{1,200})", report_file),
    ("GET", "/export", export),
    ("GET", "/login", login_page),
    ("POST", "/login", login),
    ("POST", "/logout", logout),
]
