"""OTLP/HTTP receiver: ``POST /v1/traces`` (protobuf and JSON, optionally gzip) and ``GET /health``.

Status codes follow the OTLP/HTTP spec: 200 (with ``partial_success`` when some spans were
rejected), 400 with a ``google.rpc.Status`` body for undecodable data or data the store refuses
for good (nothing stored), 413 over the size limit, 415 for an unsupported content type or
encoding, 408 for a body not received within the read deadline, 429 / 503 with ``Retry-After``
when the collector or its database cannot take the data now, a redaction plugin raised or the
store failed otherwise (the client keeps it and retries). Never a 500: OTLP clients drop a
batch answered 500.

Bodies are received chunk by chunk with a deadline and without an admission slot (a stalled
client holds its connection and the bytes it sent, nothing else), then inflated incrementally
in a worker thread up to the size limit (a compression bomb costs the limit, not its size).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from atlas_middleware.otel_exporters.collector.auth import TokenCheck
from atlas_middleware.otel_exporters.collector.ingest import (
    BodyTooLarge,
    IngestFailed,
    Ingestor,
    Overloaded,
    QueueFull,
    ReceiveBusy,
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
DEADLINE_EXCEEDED = 4


def _error(status: int, code: int, message: str, as_json: bool, **headers: str) -> web.Response:
    if as_json:
        body = orjson.dumps({"code": code, "message": message})
        content_type = JSON
    else:
        body = status_protobuf(code, message)
        content_type = PROTOBUF
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


_INFLATE_STEP = 1 << 20


def inflate(body: bytes, encoding: str, limit: int) -> bytes | bytearray:
    """``body`` decompressed (gzip, possibly several members; deflate, zlib-wrapped or raw),
    incrementally: it stops as soon as more than ``limit`` bytes come out (BodyTooLarge), so a
    bomb costs at most ``limit`` bytes and the time to inflate them. Runs in a worker thread
    (zlib releases the GIL), never on the event loop."""
    if encoding in ("", "identity"):
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    data = body

    def step() -> int:  # small steps: no transient copy of a whole limit's worth
        return min(_INFLATE_STEP, limit + 1 - len(out))

    try:
        while data:
            inflater = zlib.decompressobj(wbits)
            try:
                chunk = inflater.decompress(data, step())
            except zlib.error:
                if encoding != "deflate" or wbits < 0:
                    raise
                wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send it
                inflater = zlib.decompressobj(wbits)
                chunk = inflater.decompress(data, step())
            while True:
                out += chunk
                if len(out) > limit:
                    raise BodyTooLarge
                data = inflater.unconsumed_tail
                if inflater.eof or not data:
                    break
                chunk = inflater.decompress(data, step())
            if not inflater.eof:
                raise DecodeError(f"the {encoding} body is truncated")
            data = inflater.unused_data
            if encoding != "gzip":
                break  # deflate has one stream; what follows it is ignored, as zlib does
    except zlib.error as exc:
        raise DecodeError(f"not a valid {encoding} body: {exc}") from None
    return out  # the decoders take any bytes-like object: no copy of a large body


async def _receive(request: web.Request, limit: int, take: Callable[[int], None]) -> bytes:
    """The raw body, chunk by chunk as it arrives; BodyTooLarge past ``limit`` bytes as sent."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        take(len(chunk))
        chunks.append(chunk)


def build_app(
    ingestor: Ingestor,
    check_token: TokenCheck,
    max_body_bytes: int,
    *,
    read_timeout_s: float = 10.0,
) -> web.Application:
    retry = {"Retry-After": ingestor.retry_after_header}

    def too_large(as_json: bool) -> web.Response:
        return _error(
            413,
            RESOURCE_EXHAUSTED,
            f"request body over the {max_body_bytes}-byte limit; send smaller batches",
            as_json,
        )

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
                415,
                INVALID_ARGUMENT,
                f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none",
                as_json,
            )
        if request.content_length is not None and request.content_length > max_body_bytes:
            ingestor.stats.too_large += 1
            return too_large(as_json)
        try:
            # Refused before a byte of the body is read when it could not be processed now.
            ingestor.admit()
            # Receiving holds no admission slot: a client that sends its body slowly (or never)
            # keeps only its connection and the bytes it sent, and is cut at the deadline.
            async with ingestor.receiving_body() as take:
                try:
                    body = await asyncio.wait_for(
                        _receive(request, max_body_bytes, take), read_timeout_s
                    )
                except asyncio.TimeoutError:
                    ingestor.stats.slow_clients += 1
                    response = _error(
                        408,
                        DEADLINE_EXCEEDED,
                        f"request body not received within {read_timeout_s:g}s",
                        as_json,
                        Connection="close",
                    )
                    response.force_close()
                    return response
            async with ingestor.slot():

                def decode() -> Decoded:
                    raw = inflate(body, encoding, max_body_bytes)
                    return decode_json(raw) if as_json else decode_protobuf(raw)

                decoded = await ingestor.ingest(decode)
        except BodyTooLarge:  # as sent, or once inflated
            ingestor.stats.too_large += 1
            return too_large(as_json)
        except (Overloaded, ReceiveBusy):
            return _error(429, RESOURCE_EXHAUSTED, "collector busy, retry later", as_json, **retry)
        except (StoreDown, StoreUnavailable, QueueFull):
            return _error(503, UNAVAILABLE, "store unavailable, retry later", as_json, **retry)
        except RequestPayloadError as exc:
            return _error(400, INVALID_ARGUMENT, f"unreadable body: {exc}", as_json)
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
        # Without the token: the status alone (ok / queueing / unavailable, as the code says),
        # enough for liveness and readiness probes; the store's address and the counters are
        # for the token's holders.
        detailed = check_token(request.headers.get("Authorization"))
        body, status = await _health()
        return web.json_response(body if detailed else {"status": body["status"]}, status=status)

    async def _health() -> tuple[dict, int]:
        counts = {
            "inflight": ingestor.inflight,
            "receiving": ingestor.receiving,
            "receiving_bytes": ingestor.receiving_bytes,
            **vars(ingestor.stats),
        }
        queue = ingestor.queue
        room = True
        if queue is not None:
            waiting, spans, size = queue.waiting
            room = not queue.full
            counts.update(
                queue_dir=str(queue.dir),
                queue_requests=waiting,
                queue_spans=spans,
                queue_bytes=size,
                **vars(queue.stats),
            )
        try:
            await asyncio.get_running_loop().run_in_executor(None, ingestor.store.health)
        except StoreError as exc:
            if queue is not None and room:
                # Still accepting: what arrives waits in the queue. 200, so load balancers keep
                # sending here (every replica shares the database: none would be "ready").
                return {"status": "queueing", "error": str(exc), **counts}, 200
            return {"status": "unavailable", "error": str(exc), **counts}, 503
        return {"status": "ok", "store": safe_url(ingestor.store.url), **counts}, 200

    # Bodies are read by `traces` itself (chunk by chunk, with a deadline) and inflated in a
    # worker thread: the server must not decompress them (see serve(): auto_decompress=False).
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/health", health)
    return app
