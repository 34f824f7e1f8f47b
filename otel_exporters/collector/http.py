"""OTLP/HTTP receiver: ``POST /v1/traces`` (protobuf and JSON, optionally gzip) and ``GET /health``.

Status codes follow the OTLP/HTTP spec: 200 (with ``partial_success`` when some spans were
rejected), 400 with a ``google.rpc.Status`` body for undecodable data or data the store refuses
for good (nothing stored), 413 over the size limit, 415 for an unsupported content type or
encoding, 429 / 503 with ``Retry-After`` when the collector or its database cannot take the data
now, a redaction plugin raised or the store failed otherwise (the client keeps it and retries).
Never a 500: OTLP clients drop a batch answered 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from atlas_middleware.otel_exporters.collector.auth import TokenCheck
from atlas_middleware.otel_exporters.collector.ingest import (
    IngestFailed,
    Ingestor,
    Overloaded,
    StoreDown,
)
from atlas_middleware.otel_exporters.otlp import (
    Decoded,
    DecodeError,
    decode_json,
    decode_protobuf,
    response_json,
    response_protobuf,
    status_protobuf,
)

from atlas_middleware.storage import StoreDataError, StoreError, StoreUnavailable
from atlas_middleware.storage.records import safe_url

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ENCODINGS = {"", "identity", "gzip", "deflate"}

# google.rpc.Code values used in error bodies
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
UNAUTHENTICATED = 16


def _error(status: int, code: int, message: str, as_json: bool, **headers: str) -> web.Response:
    if as_json:
        body = orjson.dumps({"code": code, "message": message})
        content_type = JSON
    else:
        body = status_protobuf(code, message)
        content_type = PROTOBUF
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


def build_app(ingestor: Ingestor, check_token: TokenCheck, max_body_bytes: int) -> web.Application:
    retry = {"Retry-After": ingestor.retry_after_header}

    async def traces(request: web.Request) -> web.Response:
        as_json = request.content_type == JSON
        if not check_token(request.headers.get("Authorization")):
            return _error(401, UNAUTHENTICATED, "missing or wrong bearer token", as_json)
        if request.content_type not in (PROTOBUF, JSON):
            return _error(
                415,
                INVALID_ARGUMENT,
                f"Content-Type must be {PROTOBUF} or {JSON}, got {request.content_type!r}",
                as_json,
            )
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ENCODINGS:
            return _error(
                415, INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding!r}", as_json
            )
        try:
            async with ingestor.slot():
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    return _error(
                        413,
                        INVALID_ARGUMENT,
                        f"request body over the {max_body_bytes}-byte limit; send smaller batches",
                        as_json,
                    )
                except RequestPayloadError as exc:
                    return _error(400, INVALID_ARGUMENT, f"unreadable body: {exc}", as_json)
                decode: Callable[[], Decoded] = (
                    (lambda: decode_json(body)) if as_json else (lambda: decode_protobuf(body))
                )
                decoded = await ingestor.ingest(decode)
        except Overloaded:
            return _error(429, RESOURCE_EXHAUSTED, "collector busy, retry later", as_json, **retry)
        except (StoreDown, StoreUnavailable):
            return _error(503, UNAVAILABLE, "store unavailable, retry later", as_json, **retry)
        except DecodeError as exc:
            ingestor.stats.bad_requests += 1
            return _error(400, INVALID_ARGUMENT, str(exc), as_json)
        except StoreDataError as exc:  # counted and logged (in full) by the ingestor
            return _error(
                400, INVALID_ARGUMENT, f"the store refused this data: {exc.reason}", as_json
            )
        except IngestFailed as exc:
            # Never a 500: OTLP clients drop a batch answered 500, they retry a 503.
            return _error(503, UNAVAILABLE, f"{exc}; retry later", as_json, **retry)
        if as_json:
            return web.Response(body=response_json(decoded), content_type=JSON)
        return web.Response(body=response_protobuf(decoded), content_type=PROTOBUF)

    async def health(request: web.Request) -> web.Response:
        if not check_token(request.headers.get("Authorization")):
            # Liveness only: the store's address and the counters are for the token's holders.
            return web.json_response({"status": "ok"})
        counts = {"inflight": ingestor.inflight, **vars(ingestor.stats)}
        try:
            await asyncio.get_running_loop().run_in_executor(None, ingestor.store.health)
        except StoreError as exc:
            return web.json_response(
                {"status": "unavailable", "error": str(exc), **counts}, status=503
            )
        return web.json_response({"status": "ok", "store": safe_url(ingestor.store.url), **counts})

    # aiohttp applies the limit to the decompressed body, which also stops gzip bombs.
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/health", health)
    return app
