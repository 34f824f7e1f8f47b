"""Overhead of ``@atlas.supervise`` on the caller's path, in the auto lane, beside the cost of
the bare OpenTelemetry span it emits (same provider: BatchSpanProcessor → embedded store).

    .venv/bin/python benchmarks/overhead.py            # ~30 s
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import atlas_middleware as atlas
from atlas_middleware import telemetry
from atlas_middleware.telemetry import schema
from benchmarks._report import markdown_table, print_table, write_section

TASK = "What is 12 + 30?"


def agent(task: str) -> str:
    return "42"


def timings(fn, n: int) -> list[float]:
    """Per-call wall time in µs, each call timed on its own (so p99 is meaningful)."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        fn(TASK)
        out.append((clock() - start) / 1000)
    return out


def bare_spans(tracer):
    """The span the decorator emits, made by hand with the same attributes."""

    def call(task: str) -> str:
        with schema.session_span(
            tracer, agent="bench", session_id=uuid.uuid4().hex, task=task, learning_key="bench"
        ) as root:
            root.set_attribute(schema.ATLAS_LANE, "auto")
            result = agent(task)
            root.set_attribute(schema.ATLAS_RETRIES, 0)
            schema.set_final_answer(root, result)
        return result

    return call


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        telemetry.configure(
            exporter="atlas", store=f"sqlite:///{tmp}/atlas.db", service_name="bench"
        )
        tracer = telemetry.get_tracer()
        # reward=False: rewards are judged off the call path; this measures the call path.
        supervised = atlas.supervise(
            agent="bench", lane="auto", learning_key="bench", reward=False
        )(agent)
        bare = bare_spans(tracer)
        paths = {"undecorated": agent, "bare span": bare, "supervised": supervised}
        results: dict[str, list[float]] = {name: [] for name in paths}
        gc.collect()
        with Progress(transient=True) as progress:
            task = progress.add_task("overhead", total=args.rounds * len(paths))
            for _ in range(args.rounds):  # interleaved: machine drift hits every path alike
                for name, fn in paths.items():
                    results[name].extend(timings(fn, args.calls // args.rounds))
                    progress.advance(task)
        telemetry.shutdown()

    base_median = statistics.median(results["undecorated"])
    base_p99 = p99(results["undecorated"])
    rows = []
    added = {}
    for name in ("bare span", "supervised"):
        median = statistics.median(results[name]) - base_median
        tail = p99(results[name]) - base_p99
        added[name] = (median, tail)
    ratio_median = added["supervised"][0] / added["bare span"][0]
    ratio_p99 = added["supervised"][1] / added["bare span"][1]
    rows = [
        ["undecorated call", f"{base_median:.2f}", f"{base_p99:.2f}", "", ""],
        [
            "bare OpenTelemetry session span (same attributes)",
            f"+{added['bare span'][0]:.1f}",
            f"+{added['bare span'][1]:.1f}",
            "1.00×",
            "1.00×",
        ],
        [
            "@atlas.supervise, auto lane",
            f"+{added['supervised'][0]:.1f}",
            f"+{added['supervised'][1]:.1f}",
            f"{ratio_median:.2f}×",
            f"{ratio_p99:.2f}×",
        ],
    ]
    cols = ["path", "median µs", "p99 µs", "× bare (median)", "× bare (p99)"]
    print_table(f"Per-call overhead ({args.calls:,} calls per path)", cols, rows)
    verdict = "meets" if ratio_median <= 2.0 else "misses"
    print(f"supervise / bare spans = {ratio_median:.2f}× median ({verdict} the ≤2× target)")
    if not args.no_write:
        write_section(
            "overhead",
            "## Runtime overhead (`benchmarks/overhead.py`)\n\n"
            f"Added latency per call of `@atlas.supervise` in the auto lane (no teacher call; "
            f"spans to the embedded store through a BatchSpanProcessor) over the undecorated "
            f"function, beside the cost of emitting the same session span by hand, {args.calls:,} "
            f"calls per path in {args.rounds} interleaved rounds, each call timed on its own.\n\n"
            + markdown_table(cols, rows)
            + f"\n\n**{ratio_median:.2f}× the bare spans at the median** (target ≤ 2×: {verdict}). "
            "Rewards are judged off the call path, so they do not appear here.\n\n"
            "Rerun: `.venv/bin/python benchmarks/overhead.py`.",
        )
        print("written to docs/benchmarks.md")


if __name__ == "__main__":
    main()
