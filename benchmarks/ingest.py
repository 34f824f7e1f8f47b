"""Ingest throughput: spans/s landed in Postgres through atlas-collector (OTLP/HTTP protobuf),
beside what Postgres can take of the same rows in the same run: a raw COPY, and the dedupe
ceiling (COPY → staging table → ``INSERT … ON CONFLICT DO NOTHING``, what a store that must drop
re-sent spans can do at best). Goal (issue 15): the collector lands ≥ 80% of the dedupe ceiling.
Also: where the collector's time goes per span (decode, redaction, JSON encoding, COPY, session
work), measured stage by stage in one process, and the per-span cost of the in-process exporter.

    .venv/bin/python benchmarks/ingest.py            # ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/ingest.py --spans 20000 --no-write   # quick look

Needs the Postgres at $ATLAS_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test);
works in databases of its own and drops them.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas_middleware.otel_exporters.otlp import decode_protobuf
from atlas_middleware.otel_exporters.sdk import StoreSpanExporter, to_records

from atlas_middleware.redaction import default_redactors, redact
from atlas_middleware.storage import open_store
from atlas_middleware.storage.base import SPAN_COLUMN_LIST, span_rows
from atlas_middleware.storage.postgres import DAY_NS
from atlas_middleware.telemetry import schema
from benchmarks._report import (
    load_average,
    markdown_table,
    postgres_version,
    print_table,
    record_goals,
    write_section,
)
from tests.helpers import Collector

GOAL = 0.80  # collector ≥ 80% of the dedupe ceiling
ADMIN_URL = os.environ.get("ATLAS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _session(tracer, i: int) -> None:
    """One agent session: a root, 5 LLM/tool children and an evaluation (7 spans, ~8 attributes)."""
    with schema.session_span(
        tracer,
        agent="bench-agent",
        session_id=f"s{i}",
        task=f"What is {i} + {i}?",
        learning_key="bench",
        model="smol",
        provider="local",
        content=True,
    ) as root:
        root.set_attribute(schema.ATLAS_LANE, "paired")
        for j in range(5):
            name = schema.chat_span_name("smol") if j % 2 == 0 else schema.tool_span_name("calc")
            with tracer.start_as_current_span(name) as span:
                span.set_attributes(
                    {
                        schema.GEN_AI_OPERATION_NAME: schema.OP_CHAT
                        if j % 2 == 0
                        else schema.OP_EXECUTE_TOOL,
                        schema.GEN_AI_REQUEST_MODEL: "smol",
                        schema.GEN_AI_PROVIDER_NAME: "local",
                        schema.GEN_AI_USAGE_INPUT_TOKENS: 100 + j,
                        schema.GEN_AI_USAGE_OUTPUT_TOKENS: 20 + j,
                        schema.GEN_AI_CONVERSATION_ID: f"s{i}",
                        "server.address": "127.0.0.1",
                        "llm.step": j,
                    }
                )
        schema.set_final_answer(root, str(2 * i), content=True)
        context = root.get_span_context()
    schema.record_evaluation(
        tracer, context, name=schema.PRIMARY_EVALUATION, score=0.5 + (i % 5) / 10
    )


def make_spans(n: int) -> list[ReadableSpan]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("bench")
    i = 0
    while len(keep.spans) < n:
        _session(tracer, i)
        i += 1
    provider.shutdown()
    return keep.spans[:n]


@contextmanager
def scratch_database(tag: str) -> Iterator[str]:
    name = f"atlas_bench_{tag}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the collector's --processes)."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def _postgres_cpu() -> float:
    """CPU seconds of every ``postgres`` process on this machine (server backends and workers;
    other jobs' queries against the same server count too, so this is an upper bound)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def quiesce() -> None:
    """Flush Postgres's dirty buffers and let the machine settle before a timed path: each path
    ends by dropping its database, which forces a checkpoint that would land on the next one."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    time.sleep(1.0)


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def raw_copy(spans: list[ReadableSpan], batch: int, *, preformatted: bool) -> float:
    """Spans/s of a plain COPY into the same (partitioned) spans table, a transaction per batch.
    ``preformatted``: rows are JSON-encoded before the clock starts (the pure database ceiling)."""
    record_batches = [to_records(b) for b in _batches(spans, batch)]
    row_batches = [span_rows(b) for b in record_batches] if preformatted else None
    with scratch_database("raw") as url:
        open_store(url).close()  # schema + migrations
        with psycopg.connect(url) as conn:
            days = {r.start_ns // DAY_NS for b in record_batches for r in b}
            for day in days:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS spans_d{day} PARTITION OF spans "
                    f"FOR VALUES FROM ({day * DAY_NS}) TO ({(day + 1) * DAY_NS})"
                )
            conn.commit()
            quiesce()
            start = time.perf_counter()
            for k, records in enumerate(record_batches):
                rows = row_batches[k] if row_batches else span_rows(records)
                with conn.cursor().copy(f"COPY spans ({SPAN_COLUMN_LIST}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
            elapsed = time.perf_counter() - start
            assert conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == len(spans)
    return len(spans) / elapsed


def _prepare(url: str, record_batches: list) -> None:
    open_store(url).close()  # schema + migrations
    with psycopg.connect(url) as conn:
        for day in {r.start_ns // DAY_NS for b in record_batches for r in b}:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS spans_d{day} PARTITION OF spans "
                f"FOR VALUES FROM ({day * DAY_NS}) TO ({(day + 1) * DAY_NS})"
            )


def dedupe_ceiling(spans: list[ReadableSpan], batch: int) -> dict:
    """Spans/s of the de-duplicating write of the same rows: COPY into a staging table, then
    ``INSERT … SELECT … ON CONFLICT DO NOTHING`` into ``spans``, a transaction per batch, rows
    JSON-encoded before the clock starts. What Postgres can take from a writer that must not
    store a re-sent span twice."""
    record_batches = [to_records(b) for b in _batches(spans, batch)]
    row_batches = [span_rows(b) for b in record_batches]
    with scratch_database("dedupe") as url:
        _prepare(url, record_batches)
        with psycopg.connect(url) as conn:
            conn.execute(
                "CREATE TEMP TABLE spans_staging (LIKE spans INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS"
            )
            conn.commit()
            quiesce()
            start = time.perf_counter()
            cpu_pg = _postgres_cpu()
            for rows in row_batches:
                with conn.cursor().copy(
                    f"COPY spans_staging ({SPAN_COLUMN_LIST}) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute(
                    f"INSERT INTO spans ({SPAN_COLUMN_LIST}) SELECT {SPAN_COLUMN_LIST} "
                    "FROM spans_staging ON CONFLICT DO NOTHING"
                )
                conn.commit()
            elapsed = time.perf_counter() - start
            cpu_pg = _postgres_cpu() - cpu_pg
            assert conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == len(spans)
    return {"spans_per_s": len(spans) / elapsed, "postgres_us": 1e6 * cpu_pg / len(spans)}


def stages(spans: list[ReadableSpan], batch: int) -> dict[str, float]:
    """µs per span of each stage of the collector's path, one process, one thread: OTLP
    decoding, redaction, JSON encoding of the rows, the COPY, and the rest of
    ``PostgresStore.write_spans`` (session derivation and upserts, drift)."""
    bodies = [encode_spans(b).SerializeToString() for b in _batches(spans, batch)]
    redactors = default_redactors()
    n = len(spans)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    batches = [decode_protobuf(body).spans for body in bodies]
    out["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for records in batches:
        redact(records, redactors)
    out["redact"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    row_batches = [span_rows(records) for records in batches]
    out["encode"] = time.perf_counter() - t0
    with scratch_database("copy") as url:
        _prepare(url, batches)
        with psycopg.connect(url) as conn:
            quiesce()
            t0 = time.perf_counter()
            for rows in row_batches:
                with conn.cursor().copy(f"COPY spans ({SPAN_COLUMN_LIST}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
            out["copy"] = time.perf_counter() - t0
    with scratch_database("write") as url, open_store(url) as store:
        store.write_spans(batches[0][:1])  # connect, learn the partitions
        quiesce()
        t0 = time.perf_counter()
        for records in batches:
            store.write_spans(records)
        out["write_spans"] = time.perf_counter() - t0
    out["session"] = max(0.0, out["write_spans"] - out["encode"] - out["copy"])
    return {k: 1e6 * v / n for k, v in out.items()}


def through_collector(
    spans: list[ReadableSpan],
    batch: int,
    clients: int,
    workers: int,
    processes: int,
    profile: str | None = None,
) -> dict:
    """Spans/s landed through a real collector; ``profile``: record it with py-spy (all its
    processes, raw stacks) into that file while the clients send."""
    bodies = [encode_spans(b).SerializeToString() for b in _batches(spans, batch)]
    latencies: list[float] = []
    with scratch_database("collector") as url:
        open_store(url).close()
        with Collector(
            url,
            "--grpc",
            "off",
            "--workers",
            str(workers),
            *(["--processes", str(processes)] if processes > 1 else []),
        ) as c:
            queue = list(reversed(bodies))
            lock = threading.Lock()
            errors: list[str] = []

            def client() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=60)
                while True:
                    with lock:
                        if not queue:
                            break
                        body = queue.pop()
                    while True:
                        t0 = time.perf_counter()
                        conn.request(
                            "POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"}
                        )
                        response = conn.getresponse()
                        response.read()
                        if response.status == 200:
                            with lock:
                                latencies.append(time.perf_counter() - t0)
                            break
                        if response.status not in (429, 503):
                            errors.append(f"HTTP {response.status}")
                            return
                        time.sleep(0.05)
                conn.close()

            threads = [threading.Thread(target=client) for _ in range(clients)]
            quiesce()
            spy = None
            if profile:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "--pid",
                        str(c.proc.pid),
                        "--subprocesses",
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        profile,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(2.0)  # attached before the first request
            start = time.perf_counter()
            cpu_collector, cpu_pg, cpu_self = (
                _process_cpu(c.proc.pid),
                _postgres_cpu(),
                time.process_time(),
            )
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(timeout=60)
            cpu_collector = _process_cpu(c.proc.pid) - cpu_collector
            cpu_self = time.process_time() - cpu_self
            # What is neither the collector nor this client is, on this machine, Postgres.
            cpu_postgres = _postgres_cpu() - cpu_pg
            if errors:
                raise RuntimeError(f"collector errors: {errors[:3]}")
        with open_store(url) as store:
            landed = store.count_spans()
            sessions = sum(1 for _ in store.iter_sessions())
    assert landed == len(spans), (landed, len(spans))
    latencies.sort()
    return {
        "spans_per_s": len(spans) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "sessions": sessions,
        "collector_us": 1e6 * cpu_collector / len(spans),
        "postgres_us": 1e6 * max(cpu_postgres, 0.0) / len(spans),
    }


def per_span_cost(n: int, store_url: str) -> dict[str, float]:
    """Median µs per span on the caller's thread (8 attributes), for a bare SDK span, one with a
    BatchSpanProcessor that drops, and one with the StoreSpanExporter behind a BatchSpanProcessor."""
    attributes = {f"k{i}": i for i in range(8)}

    def measure(provider: TracerProvider) -> float:
        tracer = provider.get_tracer("bench")
        samples = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                with tracer.start_as_current_span("op", attributes=attributes):
                    pass
            samples.append((time.perf_counter_ns() - t0) / n / 1000)
        provider.force_flush()
        provider.shutdown()
        return statistics.median(samples)

    bare = TracerProvider()
    dropping = TracerProvider()
    dropping.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=n * 6))
    exporting = TracerProvider()
    exporter = StoreSpanExporter(store_url)
    exporting.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=n * 6))
    results = {
        "bare": measure(bare),
        "batch_drop": measure(dropping),
        "atlas_store": measure(exporting),
    }
    return results


def exporter_throughput(spans: list[ReadableSpan], store_url: str, batch: int) -> float:
    exporter = StoreSpanExporter(store_url)
    start = time.perf_counter()
    for b in _batches(spans, batch):
        assert exporter.export(b).name == "SUCCESS"
    elapsed = time.perf_counter() - start
    exporter.shutdown()
    return len(spans) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request / COPY")
    parser.add_argument("--clients", type=int, default=4, help="concurrent OTLP/HTTP clients")
    parser.add_argument("--workers", type=int, default=4, help="collector --workers")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[2], help="collector --processes to run"
    )
    parser.add_argument(
        "--no-extras", action="store_true", help="skip the in-process exporter and per-span rows"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="only profile the collector (py-spy raw stacks to FILE; summarise with "
        "benchmarks/_stacks.py FILE ingest) while it takes the spans once",
    )
    args = parser.parse_args()
    if args.profile:
        spans = make_spans(args.spans)
        result = through_collector(
            spans, args.batch, args.clients, args.workers, args.processes[0], args.profile
        )
        print(f"{result['spans_per_s']:,.0f} spans/s while profiled; stacks in {args.profile}")
        return

    # This shared 2-core VM swings ±30% between identical runs, so the paths run in interleaved
    # rounds and the table reports the median with the range.
    runs: dict[str, list[dict]] = {}
    labels = ["ceiling", "dedupe", *[f"collector{p}" for p in args.processes]]
    load = load_average()
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmark", total=4 + args.repeat * len(labels))
        costs = None
        if not args.no_extras:
            with tempfile.TemporaryDirectory() as tmp:
                # First, while the heap is small: a heap holding 100k spans makes every
                # allocation pay for garbage-collector passes, which would inflate these.
                costs = per_span_cost(20_000, f"sqlite:///{tmp}/cost.db")
        progress.advance(task)
        spans = make_spans(args.spans)
        gc.collect()
        gc.freeze()  # the data set is long-lived: keep it out of every later GC pass
        stage_costs = stages(spans[:20_000], args.batch)
        progress.advance(task)
        for r in range(args.repeat):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                if label == "ceiling":
                    result = {"spans_per_s": raw_copy(spans, args.batch, preformatted=True)}
                elif label == "dedupe":
                    result = dedupe_ceiling(spans, args.batch)
                else:
                    processes = int(label.removeprefix("collector"))
                    result = through_collector(
                        spans, args.batch, args.clients, args.workers, processes
                    )
                runs.setdefault(label, []).append(result)
                progress.advance(task)
        sqlite_rate = pg_rate = None
        if not args.no_extras:
            with tempfile.TemporaryDirectory() as tmp:
                sqlite_rate = exporter_throughput(
                    spans[:20_000], f"sqlite:///{tmp}/x.db", args.batch
                )
            progress.advance(task)
            with scratch_database("exporter") as url:
                pg_rate = exporter_throughput(spans[:20_000], url, args.batch)
            progress.advance(task)

    def median(label: str, key: str = "spans_per_s") -> float:
        return statistics.median(r[key] for r in runs[label])

    def spread(label: str) -> str:
        values = [r["spans_per_s"] for r in runs[label]]
        return f"{min(values):,.0f}–{max(values):,.0f}"

    ceiling = median("ceiling")
    dedupe = median("dedupe")
    collectors = {
        p: {
            "spans_per_s": median(f"collector{p}"),
            "p50_ms": median(f"collector{p}", "p50_ms"),
            "p99_ms": median(f"collector{p}", "p99_ms"),
            "range": spread(f"collector{p}"),
            "collector_us": median(f"collector{p}", "collector_us"),
            "postgres_us": median(f"collector{p}", "postgres_us"),
        }
        for p in args.processes
    }
    best = max(collectors, key=lambda p: collectors[p]["spans_per_s"])
    collector = collectors[best]
    # The machine's load drifts between rounds (other work shares its 2 cores): the goal is
    # judged on each round's collector / dedupe ratio (paths next to each other), median of rounds.
    round_ratios = [
        c["spans_per_s"] / d["spans_per_s"]
        for c, d in zip(runs[f"collector{best}"], runs["dedupe"], strict=True)
    ]
    ratio = statistics.median(round_ratios)
    rows = [
        [
            "raw COPY, rows pre-encoded",
            f"{ceiling:,.0f}",
            f"{ceiling / dedupe:.0%}",
            spread("ceiling"),
        ],
        [
            "dedupe ceiling: COPY → staging → INSERT … ON CONFLICT DO NOTHING, rows pre-encoded",
            f"{dedupe:,.0f}",
            "100%",
            f"{spread('dedupe')}; CPU per span: Postgres {median('dedupe', 'postgres_us'):.0f} µs",
        ],
        *[
            [
                f"atlas-collector --processes {p}, OTLP/HTTP protobuf ({args.clients} clients)",
                f"{c['spans_per_s']:,.0f}",
                f"{c['spans_per_s'] / dedupe:.0%}",
                f"{c['range']}; p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms "
                f"per {args.batch}-span request; CPU per span: collector "
                f"{c['collector_us']:.0f} µs, Postgres {c['postgres_us']:.0f} µs",
            ]
            for p, c in collectors.items()
        ],
    ]
    if pg_rate is not None:
        rows.append(
            [
                "StoreSpanExporter.export → Postgres (in-process, one thread)",
                f"{pg_rate:,.0f}",
                f"{pg_rate / dedupe:.0%}",
                "",
            ]
        )
        rows.append(["StoreSpanExporter.export → SQLite (embedded)", f"{sqlite_rate:,.0f}", "", ""])
    cols = [
        "path",
        f"spans/s landed (median of {args.repeat})",
        "of dedupe ceiling",
        "range, notes",
    ]
    print_table(f"Ingest: {args.spans:,} spans in {args.batch}-span batches", cols, rows)
    stage_rows = [
        [name, f"{stage_costs[key]:.1f}"]
        for name, key in (
            ("OTLP protobuf decode → SpanRecord", "decode"),
            ("redaction (built-in pass)", "redact"),
            ("JSON encoding of the rows (span_rows)", "encode"),
            ("COPY into spans (pre-encoded rows)", "copy"),
            ("session derivation + upserts, drift (write_spans − encoding − COPY)", "session"),
            ("PostgresStore.write_spans in all (encoding + COPY + sessions)", "write_spans"),
        )
    ]
    print_table(
        "Collector path, stage by stage (µs per span, one thread)", ["stage", "µs/span"], stage_rows
    )
    cost_rows = []
    if costs is not None:
        cost_rows = [
            ["bare OpenTelemetry span, no processor", f"{costs['bare']:.1f}"],
            ["+ BatchSpanProcessor (exporter drops)", f"{costs['batch_drop']:.1f}"],
            ["+ BatchSpanProcessor → StoreSpanExporter (SQLite)", f"{costs['atlas_store']:.1f}"],
        ]
        print_table(
            "Per-span cost on the caller's thread (8 attributes)",
            ["setup", "µs/span (median of 5)"],
            cost_rows,
        )
    met = ratio >= GOAL
    verdict = (
        f"collector (--processes {best}) / dedupe ceiling = {ratio:.0%}, median of rounds "
        f"({', '.join(f'{r:.0%}' for r in round_ratios)}) "
        f"(goal ≥ {GOAL:.0%}: {'MET' if met else 'NOT MET'}); / raw COPY = "
        f"{collector['spans_per_s'] / ceiling:.0%}"
    )
    print(verdict)
    record_goals("ingest", [verdict])
    print(f"load average at the start: {load}")
    if not args.no_write:
        pg = postgres_version(ADMIN_URL)
        body = (
            "## Ingest (`benchmarks/ingest.py`)\n\n"
            f"{args.spans:,} span-shaped rows (agent sessions: root, 5 chat/tool children, an "
            f"evaluation; ~8 attributes each) in {args.batch}-span batches, a transaction per "
            f"batch, into the same partitioned `spans` table; {pg} on the same machine as the "
            f"collector and the clients; paths in {args.repeat} interleaved rounds (order "
            f"rotated). Load average {load} at the start (2 cores shared with other work): "
            "only the ratios compare between runs.\n"
            "Collector figures count only acknowledged requests, and the collector acknowledges "
            "after commit; the table's row count is checked against what was sent.\n\n"
            + markdown_table(cols, rows)
            + f"\n\n**{verdict}.**\n\n"
            "Where the collector's time goes, stage by stage on 20,000 of these spans in one "
            "thread (the collector runs the same stages per request):\n\n"
            + markdown_table(["stage", "µs/span"], stage_rows)
            + (
                "\n\nPer-span cost on the instrumented thread (the exporter itself runs on the "
                "BatchSpanProcessor's thread):\n\n"
                + markdown_table(["setup", "µs/span"], cost_rows)
                if cost_rows
                else ""
            )
            + "\n\nRerun: `.venv/bin/python benchmarks/ingest.py` (or `make bench`)."
        )
        write_section("ingest", body)
        print("written to docs/benchmarks.md")


if __name__ == "__main__":
    main()
