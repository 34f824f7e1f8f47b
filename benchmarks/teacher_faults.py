"""Latency a broken teacher adds to each supervised call: dead (connection refused), hung
(accepts, never answers) and 500-ing teachers behind the real OpenAI-compatible backend, with
the default configuration (teacher timeout 60 s with 2 retries, probe timeout 10 s, teacher
budget 8 s, breaker 3 failures / 30 s), before and after the breaker opens; and, for
comparison, without budget and breaker (the behaviour before them).

    .venv/bin/python benchmarks/teacher_faults.py                 # ~4 minutes
    .venv/bin/python benchmarks/teacher_faults.py --no-unprotected  # ~1 minute

Writes the table to docs/benchmarks.md and docs/reliability.md (section teacher-faults).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from rich.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import atlas_middleware as atlas  # noqa: E402
from atlas_middleware import breaker as breakers  # noqa: E402
from atlas_middleware import telemetry  # noqa: E402
from atlas_middleware.config import AtlasConfig  # noqa: E402
from atlas_middleware.models import model_from_settings  # noqa: E402
from benchmarks._report import markdown_table, print_table, write_section  # noqa: E402
from tests.helpers import FaultyTeacher  # noqa: E402

RELIABILITY = ROOT / "docs" / "reliability.md"
FAULTS = ("dead", "hung", "500")


def agent(task: str) -> str:
    return "42"


def bare_ms(n: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        agent("t")
    return (time.perf_counter() - start) / n * 1000


def timed_calls(solve, n: int) -> list[tuple[float, str]]:
    """(ms, breaker state after the call) per call."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        solve(f"task {i}")
        ms = (time.perf_counter() - start) * 1000
        states = breakers.breakers()
        out.append((ms, states[0].state if states else "none"))
    return out


def run_fault(
    fault: str, calls: int, cooldown_s: float, protected: bool, progress: Progress
) -> dict:
    breakers.reset()
    config = AtlasConfig()  # the defaults (no ATLAS_* variables are read by this script)
    with FaultyTeacher(fault) as server:
        config.teacher.model = f"openai-compatible:{server.base_url}|teacher"
        teacher = model_from_settings(
            config.teacher
        )  # timeout 60 s, 2 retries: the config's defaults
        options = {} if protected else {"teacher_budget_s": None, "breaker_failures": 0}
        solve = atlas.supervise(
            agent, agent=f"bench-{fault}", teacher=teacher, reward=False, config=config, **options
        )
        task = progress.add_task(
            f"{fault} teacher, {'protected' if protected else 'unprotected'}", total=calls
        )
        results = []
        for _ in range(calls):
            results += timed_calls(solve, 1)
            progress.advance(task)
        trial = None
        if protected:
            # The cool-down, shortened for the benchmark; then one trial call, still failing.
            endpoint = breakers.breakers()[0].endpoint
            breakers._breakers[endpoint].cooldown_s = cooldown_s
            while breakers._breakers[endpoint].retry_in() > 0:
                time.sleep(0.05)
            trial = timed_calls(solve, 1)[0][0]
        hits = server.hits
    return {"calls": results, "trial_ms": trial, "hits": hits}


def fmt(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 1:
        return f"{ms:.1f} ms"
    if ms >= 0.001:
        return f"{ms * 1000:.0f} µs"
    return f"{ms * 1e6:.0f} ns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=12, help="calls per protected run (12)")
    parser.add_argument("--unprotected-calls", type=int, default=1)
    parser.add_argument("--no-unprotected", action="store_true", help="skip the old behaviour")
    parser.add_argument(
        "--cooldown",
        type=float,
        default=3.0,
        help="breaker cool-down before the trial call (s; default config: 30)",
    )
    args = parser.parse_args()
    telemetry.configure(exporter="none", set_global=False)  # latency of supervision, not export
    base = bare_ms()
    rows = []
    with Progress() as progress:
        for fault in FAULTS:
            result = run_fault(fault, args.calls, args.cooldown, True, progress)
            calls = result["calls"]
            opened_at = next((i for i, (_, st) in enumerate(calls) if st == "open"), None)
            before = [ms - base for ms, _ in calls[: (opened_at or len(calls) - 1) + 1]]
            after = [ms - base for ms, _ in calls[(opened_at or len(calls)) + 1 :]]
            rows.append(
                [
                    f"{fault}",
                    "budget 8 s + breaker (defaults)",
                    fmt(before[0]),
                    f"{len(before)} ({', '.join(fmt(x) for x in before)})",
                    fmt(statistics.median(after)) if after else "-",
                    fmt(max(after)) if after else "-",
                    fmt(result["trial_ms"] - base),
                    str(result["hits"]),
                ]
            )
            if not args.no_unprotected:
                old = run_fault(fault, args.unprotected_calls, args.cooldown, False, progress)
                each = [ms - base for ms, _ in old["calls"]]
                rows.append(
                    [
                        f"{fault}",
                        "none (before: no budget, no breaker)",
                        fmt(each[0]),
                        "never opens",
                        fmt(statistics.median(each)),
                        fmt(max(each)),
                        "-",
                        str(old["hits"]),
                    ]
                )
    columns = [
        "teacher",
        "protections",
        "1st call adds",
        "calls until the breaker opened (each adds)",
        "after: median added",
        "after: max added",
        "trial after cool-down adds",
        "requests to the teacher",
    ]
    print_table("Added latency per supervised call with a broken teacher", columns, rows)
    body = (
        "Added latency per supervised call (a trivial agent, `reward=False`, spans not exported) "
        f"with a broken OpenAI-compatible teacher on loopback; {args.calls} sequential calls per "
        "protected run. Defaults: probe timeout 10 s, teacher timeout 60 s with 2 retries "
        "(backoff 0.5 s, 1 s), teacher budget 8 s, breaker 3 failures / 30 s (shortened to "
        f"{args.cooldown:g} s before the trial call). An undecorated call takes {fmt(base)}.\n\n"
        + markdown_table(columns, rows)
        + "\n\nRerun: `.venv/bin/python benchmarks/teacher_faults.py` (`--no-unprotected` skips "
        "the minutes-long runs without protections)."
    )
    write_section("teacher-faults", body)
    write_section("teacher-faults", body, RELIABILITY)


if __name__ == "__main__":
    main()
