"""OTLP/gRPC receiver (``opentelemetry.proto.collector.trace.v1.TraceService/Export``).

Errors use the codes OTLP clients retry on: UNAVAILABLE when the collector is busy or the store
is down (retryable without RetryInfo), INVALID_ARGUMENT for data no retry will fix.
"""

from __future__ import annotations

import grpc
from atlas_middleware.otel_exporters.collector.auth import TokenCheck
from atlas_middleware.otel_exporters.collector.ingest import Ingestor, Overloaded, StoreDown
from atlas_middleware.otel_exporters.otlp import DecodeError, decode_protobuf, response_message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from atlas_middleware.storage import StoreError, StoreUnavailable

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class TraceService:
    def __init__(self, ingestor: Ingestor, check_token: TokenCheck) -> None:
        self.ingestor = ingestor
        self.check_token = check_token

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        metadata = dict(context.invocation_metadata() or ())
        if not self.check_token(metadata.get("authorization")):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            async with self.ingestor.slot():
                decoded = await self.ingestor.ingest(lambda: decode_protobuf(request))
        except Overloaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "collector busy, retry later")
        except (StoreDown, StoreUnavailable):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "store unavailable, retry later")
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"store error: {exc}")
        return response_message(decoded)


def build_server(
    ingestor: Ingestor,
    check_token: TokenCheck,
    address: str,
    max_body_bytes: int,
    *,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_body_bytes),
            # Off unless several collector processes share the port: a second collector on the
            # same port by mistake must fail to start, not silently split the traffic.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    service = TraceService(ingestor, check_token)
    # Registered by hand rather than with the generated add_TraceServiceServicer_to_server, so
    # grpc passes the request bytes through instead of parsing them into typed messages.
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
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
