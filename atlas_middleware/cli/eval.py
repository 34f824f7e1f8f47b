"""``atlas eval``: the student alone vs with the teacher (and a trained teacher) on a task file,
and ``atlas eval rewards``: RIM's pairwise accuracy on a preference file."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from atlas_middleware.cli.common import (
    CLIError,
    UsageError,
    add_store_argument,
    console,
    parse_positive_int,
    store_url,
)

LANES = ("probe", "auto", "paired", "coach")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure the teacher: student alone vs + teacher vs + trained teacher "
        "('atlas eval rewards FILE': the reward system's pairwise accuracy)",
        description="atlas eval TASKS: run every task as the student alone, with the teacher "
        "and (with --trained-teacher) with a trained teacher; print accuracy with 95% "
        "intervals, completion, non-degradation and tokens, and write them as markdown + PNG. "
        "TASKS is a JSONL task file or the bundled set 'arithmetic'. "
        "atlas eval rewards PREFS: score each (prompt, chosen, rejected) pair with RIM and "
        "report how often chosen wins (PREFS: a JSONL file or the bundled 'arithmetic'; "
        "--no-reference: the judge models decide without the references).",
    )
    parser.add_argument("target", metavar="TASKS", help="task file, 'arithmetic', or 'rewards'")
    parser.add_argument("preferences", nargs="?", metavar="PREFS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--limit", type=parse_positive_int, help="only the first N tasks / pairs (default: all)"
    )
    parser.add_argument("--student", metavar="SPEC", help="student model (default: config)")
    parser.add_argument(
        "--teacher",
        metavar="SPEC",
        help="teacher model (default: the config's; embedded: the shipped trained teacher, "
        "embedded-base: the same model untrained)",
    )
    parser.add_argument(
        "--trained-teacher",
        metavar="SPEC",
        help="a trained teacher to compare, e.g. hf:./atlas-runs/grpo/final",
    )
    parser.add_argument(
        "--lane",
        choices=LANES,
        default="coach",
        help="lane of the teacher conditions: coach (guidance on every task, the default), "
        "paired, auto, or probe (the teacher's probe decides, as in production)",
    )
    parser.add_argument(
        "--max-tokens",
        type=parse_positive_int,
        default=96,
        help="student reply budget (default 96)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "vllm", "transformers"),
        default="auto",
        help="how local models (embedded, hf: folders) generate: vllm (a vLLM engine per model, "
        "from .venv-vllm on CPU: about twice as fast), transformers (batched in this process), "
        "or auto (vllm when it is installed; the default)",
    )
    parser.add_argument(
        "--concurrency",
        type=parse_positive_int,
        help="tasks run at once per condition; a local model batches their calls (default: 32 "
        "with transformers, 128 with vllm)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="per teacher step (probe, guidance, validation); default: the supervision options' "
        "(30 s, probe 10 s). Timed-out and failed-open tasks are counted in the table",
    )
    parser.add_argument(
        "--hints",
        action="store_true",
        help="add a condition 'student + hint': the task's metadata.hint (from 'atlas tasks "
        "generate') as the guidance, a reference for what a good teacher could do",
    )
    parser.add_argument(
        "--judge", metavar="SPEC", help="rewards: the judge model (default: config rim/teacher)"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="rewards: withhold the pairs' references, so RIM's judge models decide accuracy too",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("atlas-eval"),
        help="folder for the markdown table and PNG (default ./atlas-eval)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_store_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atlas_middleware.tasks import TaskFileError

    try:
        if args.target == "rewards":
            if not args.preferences:
                raise UsageError("atlas eval rewards needs a preference file (or 'arithmetic')")
            return _rewards(args)
        if args.preferences:
            raise UsageError(f"unexpected argument {args.preferences!r}")
        return _tasks(args)
    except TaskFileError as exc:
        raise UsageError(str(exc)) from None


class Models:
    """Models by spec, built once: student and teacher on the same spec share one instance
    (one copy of the embedded weights in memory)."""

    def __init__(self, *, timeout_s: float | None = None, engine: str = "transformers") -> None:
        from atlas_middleware.config import AtlasConfig

        self.config = AtlasConfig.load()
        self.timeout_s = timeout_s  # overrides the sections' per-call timeout
        # "vllm": local models (embedded, hf: folders) run in vLLM engines, batched there.
        self.engine = engine
        self._built: dict[str, Any] = {}

    def get(self, spec: str | None, section: str = "teacher", *, judge: bool = False) -> Any:
        """The model of ``spec`` (default: the section's) with the section's call policy;
        ``judge``: for RIM's judges, which take the raw model where the teacher would take the
        trained one."""
        from atlas_middleware.models import model_from_settings, shared_spec

        settings = getattr(self.config, section)
        if self.timeout_s is not None:
            settings = settings.model_copy(update={"timeout_s": self.timeout_s})
        spec = spec or settings.model
        teacher = section == "teacher" and not judge
        key = shared_spec(spec, teacher=teacher)
        if key not in self._built:
            try:
                built = None
                if self.engine == "vllm":
                    from atlas_middleware.models import CallPolicy
                    from atlas_middleware.models.vllm_engine import engine_model

                    policy = CallPolicy(settings.timeout_s, settings.retries)
                    built = engine_model(key, teacher=teacher, policy=policy)
                # the section's timeout and retries
                self._built[key] = built or model_from_settings(settings, key, teacher=teacher)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            except ImportError as exc:
                raise CLIError(str(exc)) from None
        return self._built[key]

    def load(self, out: Any) -> None:
        """Load local weights now, with a spinner, rather than inside the first task (and
        without transformers' own progress bars, which would tear the spinner and the table)."""
        for model in self._built.values():
            load = getattr(model, "load", None)
            if load is not None:
                quiet_model_loading()
                with out.status(f"loading {model.name} ..."):
                    load()

    async def close(self) -> None:
        for model in self._built.values():
            await model.aclose()


def _tasks(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from atlas_middleware.evaluate import (
        STUDENT_ALONE,
        WITH_HINT,
        WITH_TEACHER,
        WITH_TRAINED,
        Condition,
        run_eval,
    )
    from atlas_middleware.tasks import load_tasks

    tasks = load_tasks(args.target, limit=args.limit)
    out = console(stderr=True)
    engine = args.engine
    if engine != "transformers":
        from atlas_middleware.models.vllm_engine import vllm_available

        if not vllm_available():
            if engine == "vllm":
                raise UsageError(
                    "--engine vllm: no vLLM here; run scripts/bootstrap.sh vllm (CPU) or "
                    "pip install vllm (GPU), or use --engine transformers"
                )
            engine = "transformers"
        else:
            engine = "vllm"
    models = Models(engine=engine)
    student = models.get(args.student, "student")
    lane = None if args.lane == "probe" else args.lane
    conditions = [
        Condition(STUDENT_ALONE),
        Condition(WITH_TEACHER, models.get(args.teacher), lane),
    ]
    if args.trained_teacher:
        conditions.append(Condition(WITH_TRAINED, models.get(args.trained_teacher), lane))
    if args.hints:
        conditions.append(Condition(WITH_HINT))
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    models.load(out)

    async def main() -> Any:
        try:
            with Progress(console=out, transient=True) as bar:
                job = bar.add_task("evaluating", total=len(tasks) * len(conditions))
                return await run_eval(
                    tasks,
                    student=student,
                    conditions=conditions,
                    store_url=store_url(args),
                    max_tokens=args.max_tokens,
                    concurrency=args.concurrency or (128 if engine == "vllm" else 32),
                    teacher_timeout_s=args.timeout,
                    on_outcome=lambda o: bar.update(
                        job, advance=1, description=f"{o.condition}: {o.task_id}"
                    ),
                )
        finally:
            await models.close()

    started = time.perf_counter()
    report = asyncio.run(main())
    return _write(args, report, "eval", time.perf_counter() - started)


def _write(args: argparse.Namespace, report: Any, kind: str, seconds: float) -> int:
    import orjson
    from rich.markdown import Markdown

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{kind}-{getattr(report, 'run_id', time.strftime('%Y%m%d-%H%M%S'))}"
    markdown = report.markdown()
    stem.with_suffix(".md").write_text(markdown)
    written = [stem.with_suffix(".md")]
    if hasattr(report, "plot"):
        written.append(report.plot(stem.with_suffix(".png")))
    if args.json:
        from dataclasses import asdict

        data = report.to_dict() if hasattr(report, "to_dict") else asdict(report)
        print(orjson.dumps(data, default=str).decode())
    else:
        out = console()
        out.print(Markdown(markdown))
        out.print(
            f"[dim]{seconds:.0f} s · written: {', '.join(str(p) for p in written)}"
            f"{' · sessions in ' + store_url(args) if kind == 'eval' else ''}[/dim]"
        )
    return 0


def _rewards(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from atlas_middleware.evaluate import load_preferences, run_reward_eval
    from atlas_middleware.rim import RIMReward

    prefs = load_preferences(args.preferences, limit=args.limit)
    out = console(stderr=True)
    models = Models()
    rim_settings = models.config.rim
    judge = models.get(args.judge or rim_settings.small_model, judge=True)
    large = models.get(rim_settings.large_model, judge=True) if rim_settings.large_model else None
    reward = RIMReward.from_settings(rim_settings, judge, large)
    models.load(out)

    async def main() -> Any:
        try:
            with Progress(console=out, transient=True) as bar:
                job = bar.add_task("judging pairs", total=len(prefs))
                return await run_reward_eval(
                    prefs,
                    reward,
                    use_references=not args.no_reference,
                    on_pair=lambda p: bar.update(job, advance=1),
                )
        finally:
            await models.close()

    started = time.perf_counter()
    report = asyncio.run(main())
    return _write(args, report, "rewards", time.perf_counter() - started)


def quiet_model_loading() -> None:
    """No third-party progress bars (transformers' "Loading weights", the hub's downloads) in
    atlas's own output; our spinner says what is loading."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import warnings

    # peft's merge asks transformers about gradient checkpointing, whose rename warns each load.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
