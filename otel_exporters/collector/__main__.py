"""``atlas-collector``: an OTLP receiver (HTTP 4318, gRPC 4317) that lands spans in the store."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from atlas_middleware.otel_exporters.collector.server import (
    ENV_PREFIX,
    CollectorSettings,
    ConfigError,
    serve,
    serve_processes,
)

from atlas_middleware.storage import StoreError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="atlas-collector",
        description="Receive OTLP traces (HTTP/protobuf, HTTP/JSON, gRPC) and store them.",
    )
    add = parser.add_argument
    add("--store", help="store URL (sqlite:///path or postgresql://...); env ATLAS_STORE_URL")
    add("--http", help="HOST:PORT for OTLP/HTTP, or off (default 127.0.0.1:4318)")
    add("--grpc", help="HOST:PORT for OTLP/gRPC, or off (default 127.0.0.1:4317)")
    add("--token", help=f"bearer token clients must send (env {ENV_PREFIX}TOKEN)")
    add("--token-file", help="read the bearer token from this file")
    add("--max-body-mb", type=float, help="largest accepted request, decompressed (default 20)")
    add("--max-inflight", type=int, help="requests processed at once before 429 (default 16)")
    add("--workers", type=int, help="decode/write threads = database connections (default 4)")
    add("--processes", type=int, help="collector processes sharing the ports (default 1)")
    add("--drain-seconds", type=float, help="how long SIGTERM waits for in-flight requests")
    add("--read-timeout-s", type=float, help="deadline for receiving a request body (default 10)")
    add("--max-receiving", type=int, help="gRPC calls being received at once (default 128)")
    add(
        "--queue-dir",
        help="durable receive queue for store outages (default .atlas/collector-queue; off)",
    )
    add("--queue-max-mb", type=float, help="the receive queue's size limit (default 1024)")
    add("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    return parser


def settings_from_args(args: argparse.Namespace) -> CollectorSettings:
    token = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file: {exc.strerror}") from None
    return CollectorSettings.from_env(
        store=args.store,
        http=args.http,
        grpc=args.grpc,
        token=token,
        max_body_mb=args.max_body_mb,
        max_inflight=args.max_inflight,
        workers=args.workers,
        processes=args.processes,
        drain_seconds=args.drain_seconds,
        read_timeout_s=args.read_timeout_s,
        max_receiving=args.max_receiving,
        queue_dir=args.queue_dir,
        queue_max_mb=args.queue_max_mb,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"atlas-collector: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        if settings.processes > 1:
            return serve_processes(settings)
        asyncio.run(serve(settings))
    except (StoreError, OSError) as exc:
        print(f"atlas-collector: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
