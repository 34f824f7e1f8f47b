"""``atlas collector``: the same receiver as the ``atlas-collector`` command."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collector",
        help="run the OTLP receiver that lands spans in the store (= atlas-collector)",
        description="Receive OTLP traces (HTTP/protobuf, HTTP/JSON, gRPC) and store them.",
    )
    try:
        from atlas_middleware.otel_exporters.collector.__main__ import build_parser
    except ImportError:  # the [collector] extra is missing: still list the command
        parser.set_defaults(func=_missing_extra)
        return
    build_parser(parser)
    parser.set_defaults(func=_run, help_parser=parser)


def _run(args: argparse.Namespace) -> int:
    from atlas_middleware.otel_exporters.collector.__main__ import run

    return run(args)


def _missing_extra(args: argparse.Namespace) -> int:
    from atlas_middleware.cli.common import CLIError

    raise CLIError("the collector needs its extra: pip install 'atlas-middleware[collector]'")
