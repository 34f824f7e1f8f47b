"""How fast ``atlas eval`` runs on this machine: held-out word problems × three conditions.

    .venv/bin/python benchmarks/eval_speed.py                       # 300 tasks, hint as 3rd
    .venv/bin/python benchmarks/eval_speed.py --adapter atlas-learn/adapter   # trained teacher

Conditions: the student alone, + the base embedded teacher (coach lane: guidance, the student,
then validation) and + a trained teacher (``--adapter``, a LoRA folder from ``atlas learn``) or,
without one, + the generator's hint. Every task of a condition runs as a supervised session in a
throwaway SQLite store, batched as ``atlas eval`` batches them (models/local.py). Prints tasks/s
per condition and in all, with the timed-out and failed-open counts (an eval that times out
measures timeouts, not teaching), and writes the ``eval-speed`` section of docs/benchmarks.md.
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
    parser.add_argument("--adapter", type=Path, help="a trained teacher (LoRA folder)")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()

    from atlas_middleware.evaluate import (
        STUDENT_ALONE,
        WITH_HINT,
        WITH_TEACHER,
        WITH_TRAINED,
        Condition,
        run_eval,
    )
    from atlas_middleware.models import EmbeddedModel, LocalHFModel
    from atlas_middleware.models.local import torch_threads
    from atlas_middleware.tasks import word_problems

    tasks = word_problems("test", args.tasks, seed=0)
    model = EmbeddedModel()
    model.load()
    third = (
        Condition(WITH_TRAINED, LocalHFModel(args.adapter, name="trained"), "coach")
        if args.adapter
        else Condition(WITH_HINT)
    )
    conditions = [Condition(STUDENT_ALONE), Condition(WITH_TEACHER, model, "coach"), third]
    load_before = load_average()
    last: dict[str, float] = {}  # condition → when its last task finished (they run in turn)

    def on_outcome(outcome) -> None:
        last[outcome.condition] = time.perf_counter()

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        report = asyncio.run(
            run_eval(
                tasks,
                student=model,
                conditions=conditions,
                store_url=f"sqlite:///{Path(folder) / 'eval.db'}",
                agent="bench",
                teacher_timeout_s=300.0,
                teacher_max_tokens=64,
                on_outcome=on_outcome,
            )
        )
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
    print_table(f"atlas eval speed ({args.tasks} tasks)", columns, rows)
    met = total <= GOAL_SECONDS * args.tasks * 3 / 900
    verdict = (
        f"{args.tasks} tasks × 3 conditions in {total:.0f} s "
        f"(goal ≤ {GOAL_SECONDS * args.tasks * 3 / 900:.0f} s: {'MET' if met else 'NOT MET'})"
    )
    print(verdict)
    record_goals("eval-speed", [verdict])
    if not args.no_write:
        body = (
            "## `atlas eval` speed (`benchmarks/eval_speed.py`)\n\n"
            f"{args.tasks} test-split word problems per condition, the embedded SmolLM2 as "
            "student and base teacher (coach lane: guidance, the student, then validation), "
            f"batched transformers on the CPU, {torch_threads()} torch thread(s) "
            f"(`OMP_NUM_THREADS`={os.environ.get('OMP_NUM_THREADS', 'unset')}); load average "
            f"{load_before} at the start, {load_average()} at the end (2 cores: above ~2, "
            "other jobs share them).\n\n"
            + markdown_table(columns, rows)
            + f"\n\n**{verdict}.**\n\nRerun: `.venv/bin/python benchmarks/eval_speed.py` "
            "(`--adapter DIR` for a trained teacher as the third condition)."
        )
        write_section("eval-speed", body)


if __name__ == "__main__":
    main()
