"""``atlas-train sft|grpo|gkd``: train the teacher from supervised sessions.

    atlas-train grpo --from postgresql://atlas@db/atlas --model ./teacher --student vllm:./student \\
        --output runs/grpo-1 --set trl.max_steps=200 --deepspeed zero3

``--deepspeed NAME`` re-runs this same command under ``accelerate launch --config_file
<shipped NAME.yaml>`` (after the data snapshot is written, once, by this process).
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["build_parser", "main"]

DEEPSPEED_CONFIGS = ("zero2", "zero3", "zero3_offload")
_LAUNCHED = "ATLAS_TRAIN_LAUNCHED"
log = logging.getLogger("atlas.train")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    from atlas_middleware.arguments import parse_point_in_time, parse_positive_int, parse_reward

    parser = _Parser(
        prog="atlas-train",
        description="Train the teacher from supervised sessions: sft (warm-up on guidance that "
        "led to high rewards), grpo (the teaching reward), gkd (distil a larger teacher). "
        "Recipes are YAML (trainer/recipes/*.yaml); the trl: section is TRL's own config.",
        epilog="Run 'atlas-train RECIPE --help' for the options. Docs: docs/training.md",
    )
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", parser_class=_Parser)
    sub.required = True
    for name, text in (
        ("sft", "supervised warm-up on guidance whose session scored high"),
        ("grpo", "GRPO with the teaching reward against a frozen student"),
        ("gkd", "generalised knowledge distillation from a larger teacher"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--from",
            dest="source",
            required=True,
            metavar="SOURCE",
            help="postgresql://…, sqlite:///path/atlas.db, or a .jsonl file from 'atlas export'",
        )
        p.add_argument("--model", metavar="DIR", help="the teacher to train (transformers folder)")
        if name == "grpo":
            p.add_argument(
                "--student",
                "--student-url",
                dest="student",
                metavar="SPEC",
                help="frozen student: vllm:/path (a vLLM engine), vllm-server:/path (vLLM's "
                "OpenAI server), transformers:/path, http://host:port/v1[|model] (any "
                "OpenAI-compatible server), or an atlas model spec",
            )
        if name == "gkd":
            p.add_argument("--teacher-model", metavar="DIR", help="the larger teacher to distil")
        p.add_argument("-o", "--output", metavar="DIR", help="run folder (default runs/<recipe>)")
        p.add_argument("--config", metavar="YAML", help="a recipe file over the shipped one")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe key, e.g. trl.max_steps=50 or reward.leak_penalty=0",
        )
        p.add_argument(
            "--status",
            action="append",
            choices=("pending", "approved", "quarantined"),
            help="review status to train on; repeat for several (default: approved)",
        )
        p.add_argument("--min-reward", type=parse_reward, metavar="X")
        if name in ("sft", "grpo"):
            p.add_argument(
                "--granularity",
                choices=("session", "step"),
                help="one example per session (default) or per rewarded step: the guidance "
                "before the step and the step's reward (--min-reward then applies to steps)",
            )
        p.add_argument("--learning-key", metavar="KEY")
        p.add_argument("--since", type=parse_point_in_time, metavar="WHEN")
        p.add_argument("--until", type=parse_point_in_time, metavar="WHEN")
        p.add_argument(
            "--references", metavar="JSONL", help="task file with references (task, reference)"
        )
        p.add_argument("--max-examples", type=parse_positive_int, metavar="N")
        p.add_argument("--max-steps", type=parse_positive_int, metavar="N", help="= trl.max_steps")
        p.add_argument(
            "--resume", action="store_true", help="continue from the last checkpoint in --output"
        )
        p.add_argument(
            "--deepspeed",
            metavar="CONFIG",
            help=f"{', '.join(DEEPSPEED_CONFIGS)} or an accelerate config file: relaunch "
            "through accelerate launch with DeepSpeed",
        )
        p.add_argument(
            "--launch-arg",
            action="append",
            default=[],
            metavar="ARG",
            help="extra accelerate launch argument, e.g. --launch-arg=--num_processes=8",
        )
        p.add_argument(
            "--report-to", metavar="LIST", help="tensorboard, wandb, … (= trl.report_to)"
        )
        p.add_argument(
            "--store",
            metavar="URL",
            help="store to record the training run in (default: the --from store, if it is one)",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or metric lines")
    return parser


def _recipe(args: argparse.Namespace):
    from atlas_middleware.trainer.recipes import load_recipe

    overrides = list(args.overrides)
    data = {
        "statuses": args.status,
        "min_reward": args.min_reward,
        "learning_key": args.learning_key,
        "since": args.since,
        "until": args.until,
        "references": args.references,
        "max_examples": args.max_examples,
        "granularity": getattr(args, "granularity", None),
    }
    for key, value in data.items():
        if value is not None:
            overrides.append(f"data.{key}={_yaml(value)}")
    if args.max_steps is not None:
        overrides.append(f"trl.max_steps={args.max_steps}")
    flags = {
        "model": args.model,
        "student": getattr(args, "student", None),
        "teacher_model": getattr(args, "teacher_model", None),
    }
    return load_recipe(args.recipe, config=args.config, overrides=overrides, flags=flags)


def _yaml(value: object) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: lists and strings survive the round trip


def accelerate_config(name: str, output_dir: Path) -> Path:
    """The accelerate config to launch with. Shipped configs target GPUs; without CUDA this
    writes a copy with ``use_cpu: true`` and one process (DeepSpeed's CPU accelerator, gloo):
    accelerate's ``--cpu`` flag would switch DeepSpeed off instead."""
    import yaml

    if name in DEEPSPEED_CONFIGS:
        path = Path(
            str(
                importlib.resources.files("atlas_middleware.trainer")
                / "accelerate"
                / f"{name}.yaml"
            )
        )
    else:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"--deepspeed {name!r}: use {', '.join(DEEPSPEED_CONFIGS)} or an accelerate config file"
            )
    import torch

    if torch.cuda.is_available():
        return path
    config = yaml.safe_load(path.read_text())
    config.update(use_cpu=True, num_processes=1, num_machines=1)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"accelerate-{path.stem}-cpu.yaml"
    target.write_text(yaml.safe_dump(config, sort_keys=True))
    log.info("no CUDA: DeepSpeed on CPU, one process (%s)", target.name)
    return target


def _relaunch(args: argparse.Namespace, argv: Sequence[str], output: Path) -> int:
    config = accelerate_config(args.deepspeed, output)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        *args.launch_arg,
        "-m",
        "atlas_middleware.trainer.cli",
        *argv,
    ]
    env = {**os.environ, _LAUNCHED: "1", "ATLAS_TRAIN_DATA_READY": "1"}
    log.info("launching: accelerate launch --config_file %s …", config)
    return subprocess.call(cmd, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="atlas-train: %(message)s", level=logging.INFO, force=False)
    logging.getLogger("atlas.train").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    from atlas_middleware.trainer.recipes import RecipeError

    try:
        recipe = _recipe(args)
        output = Path(args.output or recipe.output_dir or f"runs/{args.recipe}")
        if args.deepspeed and not os.environ.get(_LAUNCHED):
            from atlas_middleware.trainer.run import last_checkpoint, prepare_data

            checkpoint = last_checkpoint(output)
            if checkpoint is not None and not args.resume:
                raise RecipeError(
                    f"{output} already holds {checkpoint.name}: pass --resume to "
                    "continue it, or choose another --output"
                )
            if not (args.resume and (output / "examples.jsonl").exists()):
                stats = prepare_data(recipe, args.source, output)
                log.info("data: %s", stats.summary())
            return _relaunch(args, argv, output)
        from atlas_middleware.trainer.run import train

        result = train(
            recipe,
            source=args.source,
            output_dir=output,
            resume=args.resume,
            store_url=args.store,
            report_to=args.report_to,
            quiet=args.quiet,
            data_ready=bool(os.environ.get("ATLAS_TRAIN_DATA_READY")),
        )
    except (RecipeError, FileNotFoundError, ValueError) as exc:
        print(f"atlas-train: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atlas-train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except Exception as exc:
        from atlas_middleware.storage import StoreError

        if isinstance(exc, StoreError | ImportError | RuntimeError | TimeoutError):
            print(f"atlas-train: error: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
            return 1
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        summary = (
            f"atlas-train: {args.recipe} finished at step {result.global_step}; teacher "
            f"checkpoint: {result.checkpoint} (use it as teacher='hf:{result.checkpoint}')"
        )
        if result.recorded_in:
            summary += f"; run {result.run_id} recorded in {result.recorded_in}"
        print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
