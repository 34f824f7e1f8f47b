"""OTLP/gRPC receiver (``opentelemetry.proto.collector.trace.v1.TraceService/Export``).

Errors use the codes OTLP clients retry on: UNAVAILABLE when the collector is busy or the store
is down, a redaction plugin raised or the store failed otherwise (retryable without RetryInfo),
INVALID_ARGUMENT for data no retry will fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from atlas_middleware.otel_exporters.collector.auth import TokenCheck
from atlas_middleware.otel_exporters.collector.ingest import (
    IngestFailed,
    Ingestor,
    Overloaded,
    QueueFull,
    StoreDown,
)
from atlas_middleware.otel_exporters.otlp import DecodeError, decode_protobuf, response_message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from atlas_middleware.storage import StoreDataError, StoreUnavailable

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class TraceService:
    def __init__(
        self, ingestor: Ingestor, check_token: TokenCheck, *, read_timeout_s: float = 10.0
    ) -> None:
        self.ingestor = ingestor
        self.check_token = check_token
        self.read_timeout_s = read_timeout_s

    async def Export(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        # Registered as a client-streaming method (one message on the wire, as a unary call
        # sends it) so this handler runs when the call arrives, not once grpc has its whole
        # message: receiving happens here, with a deadline and without an admission slot.
        metadata = dict(context.invocation_metadata() or ())
        if not self.check_token(metadata.get("authorization")):
            return _fail(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        failure: tuple[grpc.StatusCode, str] | None = None
        try:
            self.ingestor.admit()  # refused before the message is received
            self.ingestor.receiving += 1
            try:
                request = await asyncio.wait_for(anext(requests, None), self.read_timeout_s)
            except asyncio.TimeoutError:
                self.ingestor.stats.slow_clients += 1
                return _fail(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"request not received within {self.read_timeout_s:g}s",
                )
            finally:
                self.ingestor.receiving -= 1
            if request is None:
                return _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            async with self.ingestor.slot():
                decoded = await self.ingestor.ingest(lambda: decode_protobuf(request))
        except Overloaded:
            failure = grpc.StatusCode.UNAVAILABLE, "collector busy, retry later"
        except (StoreDown, StoreUnavailable, QueueFull):
            failure = grpc.StatusCode.UNAVAILABLE, "store unavailable, retry later"
        except DecodeError as exc:
            self.ingestor.stats.bad_requests += 1
            failure = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except StoreDataError as exc:
            failure = (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the store refused this data: {exc.reason}",
            )
        except IngestFailed as exc:
            # UNAVAILABLE, which OTLP clients retry (they give up on INTERNAL).
            failure = grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later"
        if failure is not None:
            # A status, not context.abort(): abort raises, and a refused call's exception kept
            # its frame (and so the request's bytes) alive; under a flood of refused exports
            # memory grew with every call.
            return _fail(context, *failure)
        return response_message(decoded)


def _fail(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> trace_service_pb2.ExportTraceServiceResponse:
    context.set_code(code)
    context.set_details(message)
    return trace_service_pb2.ExportTraceServiceResponse()


def build_server(
    ingestor: Ingestor,
    check_token: TokenCheck,
    address: str,
    max_body_bytes: int,
    *,
    reuse_port: bool = False,
    max_receiving: int = 128,
    read_timeout_s: float = 10.0,
    max_inflight: int = 16,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        # Calls being received (each cut at the read deadline) plus calls being processed; a
        # message is buffered only while its call is received. Past the cap grpc answers
        # RESOURCE_EXHAUSTED at once, which OTLP clients retry.
        maximum_concurrent_rpcs=max_receiving + max_inflight,
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            # Off unless several collector processes share the port: a second collector on the
            # same port by mistake must fail to start, not silently split the traffic.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    service = TraceService(ingestor, check_token, read_timeout_s=read_timeout_s)
    # Registered by hand rather than with the generated add_TraceServiceServicer_to_server, so
    # grpc passes the request bytes through instead of parsing them into typed messages.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Export": grpc.stream_unary_rpc_method_handler(
                        service.Export,
                        request_deserializer=bytes,
                        response_serializer=(
                            trace_service_pb2.ExportTraceServiceResponse.SerializeToString
                        ),
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC receiver to {address}")
    return server, port
