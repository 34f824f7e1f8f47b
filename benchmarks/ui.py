"""atlas ui with 100,000 sessions: how long the pages take, on SQLite and on Postgres.

Fills a store of each kind with 100,000 sessions (root and evaluation spans through
``store.write_spans``, the collector's write path; 60 days, 5 agents, 10 learning keys, 3 lanes,
drift outliers, 30% reviewed with a logged action per 500), serves it with the real ``atlas ui``
server in this process, and times each page over HTTP: the session list unfiltered, with each
filter alone and all together, a deep page, one session, a learning key, the activity log.
Requests are interleaved across pages and stores' rounds, so machine noise spreads over all.

Needs the Postgres at $ATLAS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test);
a database of its own is created and dropped.

    .venv/bin/python benchmarks/ui.py [--sessions 100000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas_middleware.storage import SpanEvent, SpanRecord, open_store
from atlas_middleware.telemetry import schema as s
from benchmarks._report import (
    markdown_table,
    postgres_version,
    print_table,
    write_section,
)
from tests.ui.conftest import serving

ADMIN_URL = os.environ.get("ATLAS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
DAY_NS = 86_400 * 1_000_000_000
AGENTS = ["calc", "support", "search", "planner", "writer"]
LANES = ["auto", "paired", "coach"]
WORDS = ["apples", "train", "invoice", "refund", "route", "password", "essay", "budget", "map"]
BATCH = 1_000


def _records(i: int, start_ns: int, rng: random.Random) -> list[SpanRecord]:
    trace = f"{i:032x}"
    agent = AGENTS[i % len(AGENTS)]
    key = f"{agent}-{i % 2}"
    lane = LANES[rng.randrange(3)]
    # Rewards steady around 0.8 per key; one in 400 an outlier (a drift alert once judged).
    score = 0.02 if rng.random() < 0.0025 else min(1.0, max(0.0, rng.gauss(0.8, 0.05)))
    word = WORDS[rng.randrange(len(WORDS))]
    root = SpanRecord(
        trace_id=trace,
        span_id=trace[-16:],
        parent_span_id=None,
        name=s.session_span_name(agent),
        kind="INTERNAL",
        start_ns=start_ns,
        end_ns=start_ns + 1_500_000_000,
        status_code="OK",
        attributes={
            s.GEN_AI_OPERATION_NAME: s.OP_INVOKE_AGENT,
            s.GEN_AI_AGENT_NAME: agent,
            s.ATLAS_SESSION_ID: f"s-{i}",
            s.ATLAS_LEARNING_KEY: key,
            s.ATLAS_LANE: lane,
            s.ATLAS_PROBE_CONFIDENCE: round(rng.random(), 2),
            s.ATLAS_TASK: f"Task {i}: a question about {word} and {rng.randrange(1000)} more",
            s.ATLAS_FINAL_ANSWER: f"answer {rng.randrange(10_000)}",
            s.GEN_AI_USAGE_INPUT_TOKENS: 120,
            s.GEN_AI_USAGE_OUTPUT_TOKENS: 40,
        },
        resource={s.SERVICE_NAME: "bench"},
        scope="bench",
    )
    evaluation = SpanRecord(
        trace_id=trace,
        span_id=f"{i + 1:016x}"[::-1],
        parent_span_id=root.span_id,
        name=s.evaluation_span_name(s.PRIMARY_EVALUATION),
        kind="INTERNAL",
        start_ns=start_ns + 2_000_000_000,
        end_ns=start_ns + 2_500_000_000,
        status_code="OK",
        attributes={s.ATLAS_SPAN_ROLE: s.ROLE_EVALUATION},
        events=[
            SpanEvent(
                s.EVENT_EVALUATION_RESULT,
                start_ns + 2_400_000_000,
                {
                    s.GEN_AI_EVALUATION_NAME: s.PRIMARY_EVALUATION,
                    s.GEN_AI_EVALUATION_SCORE_VALUE: round(score, 3),
                    s.GEN_AI_EVALUATION_EXPLANATION: "bench",
                },
            )
        ],
        resource=root.resource,
        scope="bench",
    )
    return [root, evaluation]


def fill(url: str, n: int, now_ns: int, progress: Progress, label: str) -> dict[str, float]:
    rng = random.Random(42)
    step = 60 * DAY_NS // n
    started = time.perf_counter()
    task = progress.add_task(f"{label}: writing {n:,} sessions", total=n)
    with open_store(url) as store:
        for first in range(0, n, BATCH):
            records = []
            for i in range(first, min(n, first + BATCH)):
                records += _records(i, now_ns - 60 * DAY_NS + i * step, rng)
            store.write_spans(records)
            progress.advance(task, len(records) // 2)
        written = time.perf_counter() - started
        # 30% reviewed, as a reviewer would: 500-session approvals, each one logged action.
        ids = [f"{i:032x}" for i in range(n) if i % 10 < 3]
        for k in range(0, len(ids), 500):
            store.set_review(ids[k : k + 500], "approved", actor="bench", source="cli")
        alerts = len(store.drift_alerts())
    progress.remove_task(task)
    return {"write_s": written, "alerts": alerts}


def pages(n: int, now_ns: int) -> list[tuple[str, str]]:
    step = 60 * DAY_NS // n
    deep = n - 90_000 if n > 90_000 else n // 10  # the session at position 90,000 from the top
    cursor = session_cursor_text(now_ns - 60 * DAY_NS + deep * step, f"{deep:032x}")
    week = time.strftime("%Y-%m-%d", time.localtime((now_ns - 7 * DAY_NS) / 1e9))
    return [
        ("list, newest 50", "/sessions"),
        ("list, status pending", "/sessions?status=pending"),
        ("list, agent", "/sessions?agent=search"),
        ("list, learning key", "/sessions?key=planner-1"),
        ("list, lane", "/sessions?lane=coach"),
        ("list, reward 0.7–0.75", "/sessions?min=0.7&max=0.75"),
        ("list, drift alerts only", "/sessions?drift=1"),
        ("list, since a date (7 days)", f"/sessions?since={week}"),
        ("list, text search", "/sessions?q=refund"),
        (
            "list, all filters",
            f"/sessions?status=pending&agent=calc&lane=auto&min=0.5&q=apples&since={week}",
        ),
        ("list, page at 90,000 deep", f"/sessions?older={cursor}&pos=90000"),
        ("one session", f"/sessions/{n // 2:032x}"),
        ("learning key (charts)", "/learning/key?key=writer-0"),
        ("learning index", "/learning"),
        ("activity log", "/activity"),
        ("approve-by-filter preview (a key)", "/review/approve-filter?key=planner-1"),
    ]


def session_cursor_text(started_ns: int, trace_id: str) -> str:
    return f"{started_ns}.{trace_id}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    name = f"atlas_bench_ui_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(bases: dict[str, str], paths: list[tuple[str, str]], rounds: int) -> dict:
    """Median and p95 ms per (store, page); every round visits every page of every store."""
    times: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    with httpx.Client(timeout=60) as client:
        for round_ in range(rounds + 1):
            for label, path in paths:
                for store, base in bases.items():
                    started = time.perf_counter()
                    answer = client.get(base + path)
                    elapsed = time.perf_counter() - started
                    if answer.status_code != 200:
                        raise SystemExit(f"{store} {path}: HTTP {answer.status_code}")
                    rows[(store, label)] = answer.text.count('<tr data-trace="')
                    if round_:  # the first round warms caches
                        times.setdefault((store, label), []).append(elapsed * 1000)
    return {
        key: (statistics.median(v), sorted(v)[max(0, int(len(v) * 0.95) - 1)], rows[key])
        for key, v in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-write", action="store_true", help="print only, leave the docs")
    args = parser.parse_args()
    now_ns = time.time_ns()
    with (
        tempfile.TemporaryDirectory() as folder,
        postgres_database() as pg_url,
        Progress(transient=True) as progress,
    ):
        urls = {"SQLite": f"sqlite:///{Path(folder) / 'atlas.db'}", "Postgres": pg_url}
        filled = {
            name: fill(url, args.sessions, now_ns, progress, name) for name, url in urls.items()
        }
        paths = pages(args.sessions, now_ns)
        with serving(urls["SQLite"]) as sqlite_base, serving(urls["Postgres"]) as pg_base:
            bases = {"SQLite": sqlite_base, "Postgres": pg_base}
            task = progress.add_task("timing pages", total=None)
            results = measure(bases, paths, args.rounds)
            progress.remove_task(task)

    columns = [
        "page",
        "rows",
        "SQLite median ms",
        "SQLite p95 ms",
        "Postgres median ms",
        "Postgres p95 ms",
    ]
    table = []
    for label, _ in paths:
        sq, pg = results[("SQLite", label)], results[("Postgres", label)]
        shown = str(sq[2]) if label.startswith("list") else ""
        table.append([label, shown, f"{sq[0]:.0f}", f"{sq[1]:.0f}", f"{pg[0]:.0f}", f"{pg[1]:.0f}"])
    print_table(f"atlas ui, {args.sessions:,} sessions", columns, table)
    worst = max(
        (results[(store, label)][0], store, label)
        for label, _ in paths
        if label.startswith("list")
        for store in ("SQLite", "Postgres")
    )
    fills = ", ".join(
        f"{name} {f['write_s']:.0f} s ({args.sessions / f['write_s']:,.0f} sessions/s, "
        f"{f['alerts']} drift alerts)"
        for name, f in filled.items()
    )
    print(f"filled: {fills}")
    print(f"slowest list page: {worst[2]} on {worst[1]}, median {worst[0]:.0f} ms")
    if args.no_write:
        return
    body = (
        "## Review page (`benchmarks/ui.py`)\n\n"
        f"{args.sessions:,} sessions (60 days, 5 agents, 10 learning keys, 3 lanes, 30% approved "
        "in logged 500-session actions, one reward in 400 an outlier that raised a drift alert) "
        f"written through `write_spans` into each store ({fills}); the `atlas ui` server in "
        "process, each page fetched over HTTP on loopback "
        f"{args.rounds} times after a warm-up, pages and stores interleaved; "
        f"{postgres_version(ADMIN_URL)} on the same machine. Times are the whole request: query, "
        "template, transfer. The machine was shared with other work while this ran (2 cores): "
        "treat the p95 column as noisy.\n\n"
        + markdown_table(columns, table)
        + f"\n\n**Slowest list page: {worst[2]} on {worst[1]}, median {worst[0]:.0f} ms** "
        "(target: well under a second). List pages walk the newest-first indexes of migration "
        "0005 and stop after one page; filters that match few sessions (drift alerts, a rare "
        "text) read further down the index, and text search reads task and answer of the "
        "sessions it passes.\n\n"
        "Rerun: `.venv/bin/python benchmarks/ui.py` (about two minutes of filling on 2 cores)."
    )
    write_section("ui", body)


if __name__ == "__main__":
    main()
