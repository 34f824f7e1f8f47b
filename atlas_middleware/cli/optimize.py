"""``atlas optimize``: evolve the teacher's prompts and the student playbook with GEPA against
RIM rewards; a held-out split decides what becomes active. See docs/optimize.md."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from atlas_middleware.cli.common import (
    CLIError,
    UsageError,
    console,
    parse_duration,
    parse_positive_int,
    parse_reward,
)

DEFAULT_OUT = ".atlas/prompts"


def _fraction(text: str) -> float:
    value = parse_reward(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds is None:
        try:
            seconds = float(text)
        except ValueError:
            seconds = None
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 30m or 2h (or seconds), got {text!r}"
        )
    return seconds


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "optimize",
        help="evolve the teacher's prompts and the student playbook against RIM rewards",
        description="Evolve the teacher's probe, guidance and validation prompts and the "
        "student playbook with GEPA (reflective, Pareto-based prompt evolution). Each candidate "
        "is scored by supervising the student on each task with it and judging the answer with "
        "RIM. The tasks are split into train, validation and held-out; a candidate becomes the "
        "active prompts only when its held-out reward beats the active prompts'. Interrupted "
        "runs resume from --out with the same arguments, on the same budget.",
        epilog="Point supervise at the result: ATLAS_TEACHER__PROMPTS=OUT (or teacher.prompts "
        "in the config, or supervise(prompts='OUT')).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--tasks",
        metavar="PATH",
        help='JSON Lines task file ({"task": ..., "reference": ..., "verifier": ...} per line) '
        "or a bundled set: arithmetic",
    )
    source.add_argument(
        "--from",
        dest="from_store",
        metavar="STORE_URL",
        help="take the tasks of stored sessions (with --learning-key)",
    )
    p.add_argument("--learning-key", metavar="KEY", help="with --from: whose sessions")
    p.add_argument(
        "--limit",
        type=parse_positive_int,
        default=50,
        metavar="N",
        help="at most N tasks (with --from: distinct ones, newest first) (default 50)",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where prompts, reports and the resumable run go (default {DEFAULT_OUT})",
    )
    p.add_argument(
        "--prompts", metavar="PATH", help="start from these prompts (default: OUT's active)"
    )
    models = p.add_argument_group("models (specs as in the config: embedded, openai/..., hf:...)")
    models.add_argument("--student", metavar="SPEC", help="default: the config's student model")
    models.add_argument("--teacher", metavar="SPEC", help="default: the config's teacher model")
    models.add_argument(
        "--reflection", metavar="SPEC", help="the model that rewrites prompts (default: --teacher)"
    )
    models.add_argument(
        "--judge",
        metavar="SPEC",
        help="RIM's judge (default: the config's rim.small_model, else --teacher)",
    )
    budget = p.add_argument_group("budget")
    budget.add_argument(
        "--max-calls",
        type=parse_positive_int,
        default=200,
        metavar="N",
        help="model calls of every role (student, teacher, judge, reflection), resumed runs "
        "included (default 200)",
    )
    budget.add_argument(
        "--max-time", type=_duration, metavar="DURATION", help="wall time, e.g. 30m or 2h"
    )
    search = p.add_argument_group("search")
    search.add_argument("--heldout", type=_fraction, default=0.3, metavar="F", help="default 0.3")
    search.add_argument("--val", type=_fraction, default=0.3, metavar="F", help="default 0.3")
    search.add_argument(
        "--minibatch", type=parse_positive_int, default=2, metavar="N", help="default 2"
    )
    search.add_argument("--seed", type=int, default=0, help="split and search seed (default 0)")
    search.add_argument(
        "--min-gain",
        type=parse_reward,
        default=0.0,
        metavar="X",
        help="adopt only when the held-out reward rises by more than X (default 0)",
    )
    search.add_argument(
        "--judges", metavar="A,B", help="RIM judges (default: the config's rim.judges)"
    )
    search.add_argument(
        "--rim-samples", type=parse_positive_int, default=1, metavar="N", help="default 1"
    )
    search.add_argument(
        "--max-tokens",
        type=parse_positive_int,
        default=64,
        metavar="N",
        help="the student's answer length (default 64)",
    )
    search.add_argument(
        "--teacher-max-tokens",
        type=parse_positive_int,
        default=160,
        metavar="N",
        help="the teacher's guidance and validation length (default 160)",
    )
    search.add_argument(
        "--reflection-max-tokens",
        type=parse_positive_int,
        default=400,
        metavar="N",
        help="the length of a rewritten prompt (default 400)",
    )
    search.add_argument(
        "--lane", choices=("auto", "paired", "coach"), help="force a lane (default: the probe)"
    )
    search.add_argument(
        "--concurrency", type=parse_positive_int, default=1, metavar="N", help="rollouts at once"
    )
    search.add_argument(
        "--timeout",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="per model call (default 300s: CPU models are slow)",
    )
    p.add_argument("--fresh", action="store_true", help="discard an unfinished run in OUT")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gepa  # noqa: F401
    except ImportError:
        raise CLIError(
            "atlas optimize needs GEPA: pip install 'atlas-middleware[optimize]'"
        ) from None
    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.models import CallPolicy, ModelError, build_model, shared_spec
    from atlas_middleware.optimize import (
        OptimizeSettings,
        RolloutSettings,
        optimize,
        read_tasks,
        tasks_from_store,
    )

    if args.from_store and not args.learning_key:
        raise UsageError("--from needs --learning-key (whose sessions to optimise for)")
    if args.learning_key and not args.from_store:
        raise UsageError("--learning-key goes with --from STORE_URL")
    cfg = AtlasConfig.load()
    if args.tasks:
        tasks = read_tasks(args.tasks, limit=args.limit)
    else:
        tasks = tasks_from_store(args.from_store, args.learning_key, limit=args.limit)

    specs = {
        "student": args.student or cfg.student.model,
        "teacher": args.teacher or cfg.teacher.model,
    }
    specs["reflection"] = args.reflection or specs["teacher"]
    specs["judge"] = args.judge or cfg.rim.small_model or specs["teacher"]
    built: dict[str, Any] = {}

    def model(spec: str, *, teacher: bool = False):
        # One instance per model: the student, reflection and judge often share one local model.
        key = shared_spec(spec, teacher=teacher)
        if key not in built:
            built[key] = build_model(
                key, teacher=teacher, policy=CallPolicy(args.timeout, cfg.teacher.retries)
            )
        return built[key]

    judges = [j.strip() for j in args.judges.split(",") if j.strip()] if args.judges else None
    settings = OptimizeSettings(
        out=Path(args.out),
        max_calls=args.max_calls,
        max_time_s=args.max_time,
        heldout=args.heldout,
        val=args.val,
        seed=args.seed,
        minibatch=args.minibatch,
        min_gain=args.min_gain,
        judges=judges,
        rim_samples=args.rim_samples,
        reflection_max_tokens=args.reflection_max_tokens,
        rollout=RolloutSettings(
            student_max_tokens=args.max_tokens,
            guidance_max_tokens=args.teacher_max_tokens,
            lane=args.lane,
            teacher_timeout_s=args.timeout,
            concurrency=args.concurrency,
        ),
        prompts=args.prompts,
        fresh=args.fresh,
        specs=specs,
    )
    out = console(stderr=True)
    progress = _Progress(out, settings)
    try:
        with progress:
            result = optimize(
                tasks,
                settings,
                student=model(specs["student"]),
                teacher=model(specs["teacher"], teacher=True),
                reflection=model(specs["reflection"]),
                judge=model(specs["judge"]),
                notify=progress.update,
            )
    except ModelError as exc:
        # A model that keeps failing after its retries (bad key, server down) ends the run;
        # everything paid for so far is saved.
        raise CLIError(
            f"a model call failed: {exc}; fix the model settings and run the same command to resume"
        ) from None
    except KeyboardInterrupt:
        # The state was saved as the run unwound: the same command continues it.
        out.print(f"interrupted: run the same command to resume (state in {settings.out}/run)")
        return 130
    finally:
        from atlas_middleware.portal import get_portal

        for instance in built.values():
            # Best effort: the models ran on the portal's loop; the run's files are written.
            with contextlib.suppress(Exception):
                get_portal().call(instance.aclose, timeout=30)
    _print(result, args.json)
    return 0


class _Progress:
    """A rich progress bar over the budget, with the search's state in its description."""

    def __init__(self, out: Any, settings: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.settings = settings
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} calls"),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=settings.max_calls)
        self.best: float | None = None
        self.iteration = 0
        self.heldout = ""
        self.started = False

    def __enter__(self) -> _Progress:
        return self  # drawn from the run's first event, after its input was checked

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def update(self, kind: str, data: dict[str, Any]) -> None:
        if not self.started:
            self.started = True
            self.progress.__enter__()
        if kind == "start":
            split = data["split"]
            self.progress.console.print(
                f"tasks: {len(split.train)} train, {len(split.val)} validation, "
                f"{len(split.heldout)} held-out"
                + (" (resuming the unfinished run)" if data["resumed"] else "")
            )
        elif kind == "iteration":
            self.iteration = data["iteration"]
            self.best = data.get("best_val")
        elif kind == "heldout":
            self.heldout = f" held-out {data['which']} {data['score']:.3f}"
        ledger = data.get("ledger")
        completed = ledger.calls if ledger is not None else data.get("calls")
        best = "-" if self.best is None else f"{self.best:.3f}"
        self.progress.update(
            self.task,
            completed=completed if completed is not None else None,
            description=f"iteration {self.iteration} best val {best}{self.heldout}",
        )


def _print(result: Any, as_json: bool) -> None:
    from atlas_middleware.cli.common import json_line, write_stdout
    from atlas_middleware.optimize.report import table, usage_table

    if as_json:
        write_stdout(json_line(result.summary()))
        return
    out = console()
    out.print(table(result))
    out.print(usage_table(result))
    verdict = "[green]adopted[/green]" if result.adopted else "[yellow]not adopted[/yellow]"
    out.print(f"{verdict}: {result.reason}")
    out.print(f"stopped: {result.stop_reason}")
    if result.active_path:
        out.print(f"active prompts: {result.active_path} (version {result.active.version})")
    if result.candidate_path:
        out.print(f"kept, not active: {result.candidate_path}")
    out.print(f"report: {result.out / 'trajectory.md'}, {result.out / 'trajectory.png'}")
