"""Overhead of ``@atlas.supervise`` on the caller's path (auto lane, reward off), beside a raw
OpenTelemetry SDK span and Langfuse's ``@observe()``, measured interleaved in one run.

- raw span: ``tracer.start_as_current_span`` + 8 ``set_attribute`` calls, a BatchSpanProcessor,
  an exporter that drops (the floor any OpenTelemetry-based tracer pays);
- Langfuse: ``@observe()`` (langfuse 5, keys set, host unreachable: its exporter fails in its
  own thread, as with a down Langfuse server);
- supervise: ``@atlas.supervise(lane="auto", reward=False)`` with ``telemetry.configure`` given an
  exporter that drops (atlas's redaction pass in front of it still runs, on the batch thread).

Goals (issue 15): supervise adds ≤ 2× the raw span and ≤ ¼ of Langfuse, at the median.

    .venv/bin/python benchmarks/overhead.py                 # ~30 s
    .venv/bin/python benchmarks/overhead.py --profile 20000 # cProfile of the supervise path only
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.telemetry import schema
from benchmarks._report import (
    load_average,
    markdown_table,
    print_table,
    record_goals,
    write_section,
)

TASK = "What is 12 + 30?"
GOAL_RAW = 2.0  # supervise added ≤ 2× the raw span's
GOAL_LANGFUSE = 0.25  # supervise added ≤ ¼ of Langfuse's


def agent(task: str) -> str:
    return "42"


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def raw_span_path() -> tuple[Callable[[str], str], TracerProvider]:
    """The raw SDK span: 8 attributes, BatchSpanProcessor, dropping exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-raw"}))
    provider.add_span_processor(BatchSpanProcessor(_Drop()))
    tracer = provider.get_tracer("bench")

    def call(task: str) -> str:
        with tracer.start_as_current_span("invoke_agent bench") as span:
            span.set_attribute("gen_ai.operation.name", "invoke_agent")
            span.set_attribute("gen_ai.agent.name", "bench")
            span.set_attribute("gen_ai.conversation.id", "c1")
            span.set_attribute("atlas.session.id", "s1")
            span.set_attribute("atlas.learning_key", "bench")
            span.set_attribute("atlas.task", task)
            result = agent(task)
            span.set_attribute("atlas.lane", "auto")
            span.set_attribute("atlas.final_answer", result)
        return result

    return call, provider


def session_span_path() -> tuple[Callable[[str], str], TracerProvider]:
    """The span supervise emits, made by hand (``schema.session_span`` with the same 14
    attributes: OpenInference mirrors included), on the raw span's pipeline: how much of
    supervise's cost is its span's content, and so the floor of any atlas session."""
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-session"}))
    provider.add_span_processor(BatchSpanProcessor(_Drop()))
    tracer = provider.get_tracer("bench")
    session_id = "4f1c2a7be0d94c3f8a6b5e2d1c0f9a8b"

    def call(task: str) -> str:
        with schema.session_span(
            tracer, agent="bench", session_id=session_id, task=task, learning_key="bench"
        ) as root:
            root.set_attribute(schema.ATLAS_LANE, "auto")
            result = agent(task)
            root.set_attributes(
                {schema.ATLAS_RETRIES: 0, **schema.final_answer_attributes(result, content=True)}
            )
        return result

    return call, provider


def langfuse_path() -> tuple[Callable[[str], str] | None, str]:
    """Langfuse ``@observe()`` with keys set and the host unreachable, or None (and why)."""
    try:
        import langfuse
        from langfuse import Langfuse, observe
    except ImportError:
        return None, "langfuse not installed (pip install -e '.[bench]')"
    os.environ.setdefault("LANGFUSE_PUBLIC_KEY", "pk-lf-bench")
    os.environ.setdefault("LANGFUSE_SECRET_KEY", "sk-lf-bench")
    os.environ.setdefault("LANGFUSE_HOST", "http://127.0.0.1:9")  # nothing listens there
    os.environ.setdefault("LANGFUSE_BASE_URL", os.environ["LANGFUSE_HOST"])
    # Its exporter's retries against the dead host would flood the output.
    for name in ("langfuse", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Its own SDK provider, so neither tool's spans go through the other's pipeline.
    Langfuse(tracer_provider=TracerProvider())
    return observe()(agent), f"langfuse {langfuse.__version__}"


def supervised_path() -> Callable[[str], str]:
    telemetry.configure(exporter=_Drop(), service_name="bench", set_global=False)
    # reward=False: rewards are judged off the call path; this measures the call path.
    return atlas.supervise(agent="bench", lane="auto", learning_key="bench", reward=False)(agent)


def timings(fn: Callable[[str], str], n: int) -> list[float]:
    """Per-call wall time in µs, each call timed on its own (so p99 is meaningful)."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        fn(TASK)
        out.append((clock() - start) / 1000)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


def profile(fn: Callable[[str], str], calls: int, top: int = 25) -> str:
    for _ in range(1000):
        fn(TASK)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn(TASK)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--profile", type=int, metavar="CALLS", help="print a cProfile of the supervise path"
    )
    args = parser.parse_args()

    observed, langfuse_note = langfuse_path()
    supervised = supervised_path()
    if args.profile:
        print(profile(supervised, args.profile))
        telemetry.shutdown()
        return
    raw, raw_provider = raw_span_path()
    by_hand, session_provider = session_span_path()
    paths: dict[str, Callable[[str], str]] = {
        "undecorated": agent,
        "raw span": raw,
        "session span": by_hand,
    }
    if observed is not None:
        paths["langfuse"] = observed
    paths["supervised"] = supervised
    for fn in paths.values():  # warm-up: first-call set-up (the supervisor is built lazily)
        timings(fn, 500)
    load = load_average()
    results: dict[str, list[float]] = {name: [] for name in paths}
    gc.collect()
    gc.freeze()
    per_round = max(1, args.calls // args.rounds)
    names = list(paths)
    for r in range(args.rounds):  # interleaved, order rotated: machine drift hits every path alike
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].extend(timings(paths[name], per_round))
        gc.collect()
    telemetry.shutdown()
    raw_provider.shutdown()
    session_provider.shutdown()

    base_median = statistics.median(results["undecorated"])
    base_p99 = p99(results["undecorated"])
    added = {
        name: (statistics.median(v) - base_median, p99(v) - base_p99)
        for name, v in results.items()
        if name != "undecorated"
    }
    sup, rawm = added["supervised"][0], added["raw span"][0]
    ratio_raw = sup / rawm
    ratio_lf = sup / added["langfuse"][0] if "langfuse" in added else None
    labels = {
        "raw span": "raw OpenTelemetry SDK span (8 attributes, BatchSpanProcessor, dropping exporter)",
        "session span": "supervise's session span made by hand (14 attributes), same pipeline",
        "langfuse": f"Langfuse `@observe()` ({langfuse_note}, host unreachable)",
        "supervised": "`@atlas.supervise`, auto lane, reward off (dropping exporter)",
    }
    rows = [["undecorated call", f"{base_median:.2f}", f"{base_p99:.2f}", "", ""]]
    for name in ("raw span", "session span", "langfuse", "supervised"):
        if name not in added:
            continue
        median, tail = added[name]
        rows.append(
            [
                labels[name],
                f"+{median:.1f}",
                f"+{tail:.1f}",
                f"{sup / median:.2f}×" if name != "supervised" else "",
                f"{median / rawm:.2f}×",
            ]
        )
    cols = ["path", "added µs (median)", "added µs (p99)", "supervise ÷ this", "÷ raw span"]
    print_table(f"Per-call overhead ({per_round * args.rounds:,} calls per path)", cols, rows)
    goal_raw = ratio_raw <= GOAL_RAW
    lines = [
        f"supervise / raw span = {ratio_raw:.2f}× (goal ≤ {GOAL_RAW:g}×: "
        f"{'MET' if goal_raw else 'NOT MET'})"
    ]
    if ratio_lf is not None:
        goal_lf = ratio_lf <= GOAL_LANGFUSE
        lines.append(
            f"supervise / Langfuse @observe = {ratio_lf:.2f}× (goal ≤ {GOAL_LANGFUSE:g}×: "
            f"{'MET' if goal_lf else 'NOT MET'})"
        )
    else:
        lines.append(f"supervise / Langfuse @observe: not measured ({langfuse_note})")
    for line in lines:
        print(line)
    record_goals("overhead", lines)
    print(f"load average at the start: {load}")
    if not args.no_write:
        write_section(
            "overhead",
            "## Runtime overhead (`benchmarks/overhead.py`)\n\n"
            "Added latency per call over the undecorated function, "
            f"{per_round * args.rounds:,} calls per path in {args.rounds} interleaved rounds "
            "(order rotated each round), each call timed on its own, one process. The machine "
            f"is shared (load average {load} at the start, 2 cores): only the ratios are "
            "comparable between runs.\n\n"
            + markdown_table(cols, rows)
            + "\n\n"
            + "\n".join(f"- **{line}**" for line in lines)
            + "\n\nRewards are judged off the call path (reward off here). atlas's "
            "spans go through its redaction pass on the batch thread before the dropping "
            "exporter; the raw span's exporter drops them as they come.\n\n"
            "Rerun: `.venv/bin/python benchmarks/overhead.py` (or `make bench`); "
            "`--profile 20000` prints a cProfile of the supervise path.",
        )
        print("written to docs/benchmarks.md")


if __name__ == "__main__":
    main()
