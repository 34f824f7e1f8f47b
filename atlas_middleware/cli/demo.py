"""``atlas demo``: the whole ingest path on one machine, offline.

Starts atlas-collector on the embedded store, sends it agent sessions through the official
OpenTelemetry OTLP exporters (HTTP/protobuf and gRPC), and shows what landed.
"""

from __future__ import annotations

import argparse
import random
import time

from atlas_middleware.cli.common import CLIError, add_store_argument, console, store_url


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="send demo agent traces through atlas-collector into the store and show them",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--sessions", type=int, default=6, help="sessions to send (default 6)")
    parser.add_argument("--seed", type=int, default=7, help="random seed for the demo rewards")
    add_store_argument(parser)
    parser.set_defaults(func=run)


def _send(exporter, sessions: int, rng: random.Random, transport: str) -> int:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from atlas_middleware.telemetry import schema

    provider = TracerProvider(resource=Resource.create({"service.name": f"demo-{transport}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("atlas.demo")
    for i in range(sessions):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        task = f"A shop sells {a} apples in the morning and {b} in the afternoon. How many in all?"
        lane = rng.choice(["auto", "paired", "coach"])
        answer = a + b if rng.random() < 0.7 else a + b - rng.randint(1, 9)
        with schema.session_span(
            tracer,
            agent="demo-calculator",
            session_id=f"demo-{transport}-{i}-{time.time_ns()}",
            task=task,
            learning_key="arithmetic",
            model="demo-model",
            provider="local",
        ) as root:
            root.set_attribute(schema.ATLAS_LANE, lane)
            with tracer.start_as_current_span(schema.chat_span_name("demo-model")) as chat:
                chat.set_attribute(schema.GEN_AI_OPERATION_NAME, schema.OP_CHAT)
                schema.set_usage(chat, 40 + i, 12)
            with tracer.start_as_current_span(schema.tool_span_name("add")) as tool:
                tool.set_attribute(schema.GEN_AI_OPERATION_NAME, schema.OP_EXECUTE_TOOL)
                tool.set_attribute(schema.GEN_AI_TOOL_NAME, "add")
            schema.set_usage(root, 40 + i, 12)
            schema.set_final_answer(root, str(answer))
            session = root.get_span_context()
        correct = answer == a + b
        schema.record_evaluation(
            tracer,
            session,
            name=schema.PRIMARY_EVALUATION,
            score=0.9 if correct else 0.1,
            label="correct" if correct else "wrong",
            explanation=f"expected {a + b}, got {answer}",
        )
    provider.shutdown()  # flushes through the exporter; raises nothing on failure
    return sessions


def run(args: argparse.Namespace) -> int:
    import asyncio
    import threading

    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        from atlas_middleware.otel_exporters.collector.server import CollectorSettings, serve
    except ImportError as exc:
        raise CLIError(
            f"the demo needs the collector and OTLP extras ({exc.name} is missing): "
            "pip install 'atlas-middleware[collector,otlp]'"
        ) from None
    from atlas_middleware.storage import open_store

    if args.sessions < 1:
        raise CLIError("--sessions must be at least 1")
    out = console()
    url = store_url(args)
    settings = CollectorSettings(store=url, http="127.0.0.1:0", grpc="127.0.0.1:0")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started: asyncio.Future = loop.create_future()
    failure: list[BaseException] = []

    def collector() -> None:
        try:
            loop.run_until_complete(serve(settings, stop=stop, started=started))
        except BaseException as exc:  # reported below, the demo must not hang
            failure.append(exc)
            if not started.done():
                started.set_exception(exc)

    thread = threading.Thread(target=collector, name="atlas-collector", daemon=True)
    thread.start()
    ports = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(started), 60), loop)
    try:
        running = ports.result(90)
    except BaseException as exc:
        raise CLIError(f"atlas-collector did not start: {exc}") from None
    out.print(
        f"[bold]atlas-collector[/] on OTLP/HTTP 127.0.0.1:{running.http_port} and "
        f"OTLP/gRPC 127.0.0.1:{running.grpc_port}, store {url}"
    )
    with open_store(url) as store:
        before_spans = store.count_spans()
    rng = random.Random(args.seed)
    half = max(1, args.sessions // 2)
    sent = _send(
        HttpExporter(endpoint=f"http://127.0.0.1:{running.http_port}/v1/traces"), half, rng, "http"
    )
    if args.sessions > half:
        sent += _send(
            GrpcExporter(endpoint=f"127.0.0.1:{running.grpc_port}", insecure=True),
            args.sessions - half,
            rng,
            "grpc",
        )
    loop.call_soon_threadsafe(stop.set)
    thread.join(60)
    if failure:
        raise CLIError(f"atlas-collector failed: {failure[0]}")
    with open_store(url) as store:
        landed = store.count_spans() - before_spans
        recent = list(store.iter_sessions(newest_first=True, limit=sent))
    out.print(f"sent {sent} sessions over OTLP; {landed} spans landed in the store\n")
    from atlas_middleware.cli.sessions import print_table

    print_table(recent, sent)
    out.print(
        "\nNext: [bold]atlas sessions show[/] ID · [bold]atlas sessions approve --all-pending "
        "--min-reward 0.5[/] · [bold]atlas export -o traces.jsonl[/]"
    )
    return 0 if landed > 0 else 1
