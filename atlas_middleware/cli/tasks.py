"""``atlas tasks generate``: seeded word-problem task sets (train / dev / test) for learning."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atlas_middleware.cli.common import UsageError, parse_positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="generate word-problem task sets for learning (train/dev/test, no shared template)",
        description="atlas tasks generate --split test --n 300 --seed 0 -o tasks.jsonl: "
        "one-step add/subtract, one-step multiply/divide and two-step word problems with "
        "references, the reference_match verifier, the learning key 'word-problems' and the "
        "generator's operation hint (metadata.hint, e.g. 'Compute 70 - 27.'). The splits never "
        "share a template, so the test split measures generalisation to unseen wordings.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    generate = actions.add_parser("generate", help="write a task file")
    from atlas_middleware.tasks import KINDS, SPLITS

    generate.add_argument("--split", choices=SPLITS, required=True)
    generate.add_argument("--n", type=parse_positive_int, default=300, help="tasks (default 300)")
    generate.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    generate.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds (default {','.join(KINDS)})",
    )
    generate.add_argument(
        "-o", "--output", type=Path, help="JSONL file to write (default: standard output)"
    )
    generate.set_defaults(func=_generate)
    public = actions.add_parser(
        "import",
        help="convert a public word-problem file (SVAMP.json, MAWPS JSON) to a task file",
        description="atlas tasks import SVAMP.json --n 300 -o svamp.jsonl: problems with a "
        "whole-number answer, their equation as the hint (metadata.hint), a seeded sample of N.",
    )
    public.add_argument("file", type=Path, help="SVAMP.json or a MAWPS-style JSON list")
    public.add_argument("--n", type=parse_positive_int, help="a seeded sample of N problems")
    public.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    public.add_argument("-o", "--output", type=Path, required=True, help="JSONL file to write")
    public.set_defaults(func=_import)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _generate(args: argparse.Namespace) -> int:
    import orjson

    from atlas_middleware.tasks import KINDS, word_problems, write_tasks

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UsageError(
            f"--kinds: unknown kind {', '.join(unknown) or '(none)'}; known: {', '.join(KINDS)}"
        )
    try:
        tasks = word_problems(args.split, args.n, args.seed, kinds=kinds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output is None:
        for task in tasks:
            sys.stdout.write(orjson.dumps(task.to_json()).decode() + "\n")
    else:
        write_tasks(tasks, args.output)
        print(
            f"wrote {len(tasks)} {args.split} tasks (seed {args.seed}) to {args.output}",
            file=sys.stderr,
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from atlas_middleware.tasks import TaskFileError, public_word_problems, write_tasks

    try:
        tasks = public_word_problems(args.file, n=args.n, seed=args.seed)
    except TaskFileError as exc:
        raise UsageError(str(exc)) from None
    write_tasks(tasks, args.output)
    print(f"wrote {len(tasks)} tasks from {args.file} to {args.output}", file=sys.stderr)
    return 0
