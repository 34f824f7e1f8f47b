"""The ``atlas`` command line.

Adding a command group: write ``atlas_middleware/cli/<name>.py`` with
``add_parser(subparsers)``, which adds its parser(s) with ``subparsers.add_parser(...)`` and sets
``func=<handler(args) -> int | None>`` on each runnable one (``parser.set_defaults(func=...)``);
then add ``<name>`` to :data:`COMMANDS`. Use :func:`common.add_store_argument` for ``--store`` and
:func:`common.open_cli_store` to open it; raise :class:`common.CLIError` /
:class:`common.UsageError` for errors the user can fix. Import heavy libraries inside handlers,
never at module level: every module listed here is imported to build the parser, so ``atlas --help``
stays fast and ``import atlas_middleware.cli`` pulls in nothing beyond argparse.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from atlas_middleware.cli.common import (
    CONNECTION_ERRORS,
    ArgumentParser,
    CLIError,
    one_line,
    store_hint,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# Command groups, in the order ``atlas --help`` lists them: module names in this package.
COMMANDS: list[str] = [
    "demo",
    "collector",
    "sessions",
    "export",
    "ui",
    "db",
    "serve_model",
    "eval",
    "run",
    "optimize",
    "quickstart",
    "tasks",
    "learn",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atlas-middleware")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"atlas {_version()}")
        parser.exit()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="atlas",
        description="atlas-middleware: run the collector, serve models, and inspect, review and "
        "export the sessions Atlas recorded.",
        epilog="Every command takes --store URL (default: $ATLAS_STORE_URL, else "
        "sqlite:///.atlas/atlas.db). Run 'atlas COMMAND --help' for details.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show library log messages on stderr"
    )
    parser.set_defaults(help_parser=parser)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # Errors reach the user as one line from main(); library warnings (pool reconnects, ...)
        # would only repeat them, so they are swallowed unless --verbose.
        root.addHandler(logging.NullHandler())
    pool_logger = logging.getLogger("psycopg.pool")
    if CONNECTION_ERRORS not in pool_logger.handlers:
        pool_logger.addHandler(CONNECTION_ERRORS)


def _fail(message: str, code: int) -> int:
    print(f"atlas: error: {one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:  # a group without its subcommand, or bare ``atlas``: show what exists
        args.help_parser.print_help()
        return 0
    try:
        return func(args) or 0
    except CLIError as exc:
        return _fail(exc.message, exc.code)
    except KeyboardInterrupt:
        print("atlas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``atlas export -o - | head``): not an error worth a message.
        # Point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        from atlas_middleware.storage import StoreError, StoreUnavailable

        if isinstance(exc, StoreUnavailable):
            return _fail(f"{exc}{CONNECTION_ERRORS.reason()}; {store_hint(args)}", 1)
        if isinstance(exc, StoreError):
            return _fail(str(exc), 1)
        if isinstance(exc, ValueError):
            return _fail(str(exc), 2)
        if isinstance(exc, OSError):
            where = f" {exc.filename}" if exc.filename else ""
            return _fail(f"cannot access{where}: {exc.strerror or exc}", 1)
        raise
