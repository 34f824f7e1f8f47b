"""OTLP trace payloads (protobuf and JSON) → :class:`SpanRecord`.

Decoding is split in two failure modes, as the OTLP spec wants: a body that is not an OTLP
request at all raises :class:`DecodeError` (HTTP 400, nothing stored); a well-formed request with
some invalid spans returns the valid ones plus a rejected count (HTTP 200 + partial_success).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from atlas_middleware.redaction import EncodedBytes
from atlas_middleware.storage.records import SpanEvent, SpanRecord

KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
MAX_DEPTH = 16  # nested array/kvlist values deeper than this reject the span
MAX_INT64 = 2**63 - 1


class DecodeError(ValueError):
    """The body is not a decodable OTLP trace export request."""


class InvalidSpan(ValueError):
    pass


@dataclass(slots=True)
class Decoded:
    spans: list[SpanRecord] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < 5:  # enough to diagnose, bounded for hostile input
            self.errors.append(reason)

    @property
    def error_message(self) -> str:
        return "; ".join(self.errors)


def _text(value: str) -> str:
    # Postgres TEXT/JSONB cannot hold NUL; keep the rest of the string rather than the span.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _hex_id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or not any(raw):
        raise InvalidSpan(f"{what} must be {size} non-zero bytes")
    return raw.hex()


def _time(value: Any, what: str) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise InvalidSpan(f"{what} is not an integer") from None
    if not 0 <= result <= MAX_INT64:
        raise InvalidSpan(f"{what} is out of range")
    return result


# --- protobuf --------------------------------------------------------------------------------
def _pb_value(value: Any, depth: int = 0) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return _text(value.string_value)
    if kind == "int_value" or kind == "double_value" or kind == "bool_value":
        return getattr(value, kind)
    if kind is None:
        return None
    if depth >= MAX_DEPTH:
        raise InvalidSpan("attribute value nested too deeply")
    if kind == "array_value":
        return [_pb_value(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {_text(kv.key): _pb_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return EncodedBytes(value.bytes_value)
    raise InvalidSpan(f"unknown attribute value kind {kind}")


_SCALAR_KINDS = frozenset({"int_value", "double_value", "bool_value"})


def _pb_attributes(kvs: Any) -> dict[str, Any]:
    # The hot loop of the collector: strings and scalars are inlined (no helper calls), since
    # attribute access through upb costs more than everything else per span.
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            converted: Any = value.string_value
            if "\x00" in converted:
                converted = _text(converted)
        elif kind in _SCALAR_KINDS:
            converted = getattr(value, kind)
        else:
            converted = _pb_value(value)
        key = kv.key
        out[_text(key) if "\x00" in key else key] = converted
    return out


def _pb_span(span: Any, resource: dict[str, Any], scope: str | None) -> SpanRecord:
    status = span.status
    return SpanRecord(
        trace_id=_hex_id(span.trace_id, 16, "trace_id"),
        span_id=_hex_id(span.span_id, 8, "span_id"),
        parent_span_id=_hex_id(span.parent_span_id, 8, "parent_span_id")
        if span.parent_span_id
        else None,
        name=_text(span.name),
        kind=KINDS[span.kind] if 0 <= span.kind < len(KINDS) else "UNSPECIFIED",
        start_ns=_time(span.start_time_unix_nano, "start time"),
        end_ns=_time(span.end_time_unix_nano, "end time"),
        status_code=STATUS_CODES[status.code] if 0 <= status.code < 3 else "UNSET",
        status_message=_text(status.message) or None,
        attributes=_pb_attributes(span.attributes),
        events=[
            SpanEvent(
                _text(e.name), _time(e.time_unix_nano, "event time"), _pb_attributes(e.attributes)
            )
            for e in span.events
        ],
        resource=resource,
        scope=_text(scope) if scope else None,
    )


def decode_protobuf(body: bytes | bytearray) -> Decoded:
    """An OTLP ``ExportTraceServiceRequest`` (HTTP body or gRPC message) → spans."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    return decode_request(request)


def decode_request(request: ExportTraceServiceRequest) -> Decoded:
    out = Decoded()
    for resource_spans in request.resource_spans:
        try:
            resource = _pb_attributes(resource_spans.resource.attributes)
        except InvalidSpan as exc:
            for scope_spans in resource_spans.scope_spans:
                for _ in scope_spans.spans:
                    out.reject(f"resource: {exc}")
            continue
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name or None
            for span in scope_spans.spans:
                try:
                    out.spans.append(_pb_span(span, resource, scope))
                except InvalidSpan as exc:
                    out.reject(f"span {span.name[:60]!r}: {exc}")
    return out


# --- JSON (OTLP/HTTP JSON: hex ids, int64 as strings, lowerCamelCase) -------------------------
def _get(obj: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake, default)
    return default if value is None else value


def _json_hex_id(value: Any, size: int, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidSpan(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InvalidSpan(f"{what} is not hex") from None
    return _hex_id(raw, size, what)


def _json_value(value: Any, depth: int = 0) -> Any:
    if not isinstance(value, dict):
        raise InvalidSpan("attribute value must be an AnyValue object")
    if not value:
        return None
    for key, convert in _JSON_SCALARS:
        if key in value:
            return convert(value[key])
    if depth >= MAX_DEPTH:
        raise InvalidSpan("attribute value nested too deeply")
    array = _get(value, "arrayValue", "array_value")
    if array is not None:
        values = _object(array, "arrayValue").get("values")
        return [_json_value(v, depth + 1) for v in _list(values, "array values")]
    kvlist = _get(value, "kvlistValue", "kvlist_value")
    if kvlist is not None:
        return _json_attributes(_object(kvlist, "kvlistValue").get("values"), depth + 1)
    bytes_value = _get(value, "bytesValue", "bytes_value")
    if bytes_value is not None:
        text = _str(bytes_value, "bytesValue")
        try:
            return EncodedBytes(base64.b64decode(text, validate=True), text)
        except ValueError:
            return text  # not base64 after all: kept as sent (redaction sees it as text)
    raise InvalidSpan(f"unknown attribute value kind {sorted(value)[:3]}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSpan(f"{what} must be an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidSpan(f"{what} must be a string")
    return _text(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidSpan("intValue must be an integer or a decimal string")
    try:
        result = int(value)
    except ValueError:
        raise InvalidSpan("intValue is not an integer") from None
    if not -(2**63) <= result <= MAX_INT64:
        raise InvalidSpan("intValue is out of int64 range")
    return result


def _double(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSpan("doubleValue must be a number")
    try:
        return float(value)
    except ValueError:
        raise InvalidSpan("doubleValue is not a number") from None


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpan("boolValue must be true or false")
    return value


_JSON_SCALARS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("stringValue", lambda v: _str(v, "stringValue")),
    ("string_value", lambda v: _str(v, "string_value")),
    ("intValue", _int),
    ("int_value", _int),
    ("doubleValue", _double),
    ("double_value", _double),
    ("boolValue", _bool),
    ("bool_value", _bool),
)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpan(f"{what} must be a list")
    return value


def _json_attributes(kvs: Any, depth: int = 0) -> dict[str, Any]:
    result = {}
    for kv in _list(kvs, "attributes"):
        if not isinstance(kv, dict):
            raise InvalidSpan("attribute must be an object")
        result[_str(kv.get("key"), "attribute key")] = _json_value(kv.get("value") or {}, depth)
    return result


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.startswith(prefix) and value[len(prefix) :] in names:
        return value[len(prefix) :]
    if value in (None, 0):
        return names[0]
    raise InvalidSpan(f"unknown enum value {str(value)[:40]!r}")


def _json_span(span: Any, resource: dict[str, Any], scope: str | None) -> SpanRecord:
    if not isinstance(span, dict):
        raise InvalidSpan("span must be an object")
    parent = _get(span, "parentSpanId", "parent_span_id", "")
    status = _get(span, "status", "status", {})
    if not isinstance(status, dict):
        raise InvalidSpan("status must be an object")
    events = []
    for event in _list(span.get("events"), "events"):
        if not isinstance(event, dict):
            raise InvalidSpan("event must be an object")
        events.append(
            SpanEvent(
                _str(event.get("name", ""), "event name"),
                _time(_get(event, "timeUnixNano", "time_unix_nano", 0), "event time"),
                _json_attributes(event.get("attributes")),
            )
        )
    kind = _enum(span.get("kind"), KINDS, "SPAN_KIND_")
    message = status.get("message")
    return SpanRecord(
        trace_id=_json_hex_id(_get(span, "traceId", "trace_id"), 16, "traceId"),
        span_id=_json_hex_id(_get(span, "spanId", "span_id"), 8, "spanId"),
        parent_span_id=_json_hex_id(parent, 8, "parentSpanId") if parent else None,
        name=_str(span.get("name", ""), "name"),
        kind=kind,
        start_ns=_time(_get(span, "startTimeUnixNano", "start_time_unix_nano", 0), "start time"),
        end_ns=_time(_get(span, "endTimeUnixNano", "end_time_unix_nano", 0), "end time"),
        status_code=_enum(status.get("code"), STATUS_CODES, "STATUS_CODE_"),
        status_message=_str(message, "status message") or None if message else None,
        attributes=_json_attributes(span.get("attributes")),
        events=events,
        resource=resource,
        scope=scope,
    )


def decode_json(body: bytes | bytearray) -> Decoded:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise DecodeError("an OTLP JSON request must be an object")
    resource_spans_list = _get(request, "resourceSpans", "resource_spans", [])
    if not isinstance(resource_spans_list, list):
        raise DecodeError("resourceSpans must be a list")
    out = Decoded()
    for resource_spans in resource_spans_list:
        if not isinstance(resource_spans, dict):
            raise DecodeError("each resourceSpans entry must be an object")
        scope_spans_list = _get(resource_spans, "scopeSpans", "scope_spans", [])
        if not isinstance(scope_spans_list, list) or not all(
            isinstance(x, dict) and isinstance(x.get("spans", []), list) for x in scope_spans_list
        ):
            raise DecodeError("scopeSpans must be a list of objects with a list of spans")
        try:
            resource_obj = resource_spans.get("resource") or {}
            if not isinstance(resource_obj, dict):
                raise InvalidSpan("resource must be an object")
            resource = _json_attributes(resource_obj.get("attributes"))
        except InvalidSpan as exc:
            for scope_spans in scope_spans_list:
                for _ in scope_spans.get("spans") or []:
                    out.reject(f"resource: {exc}")
            continue
        for scope_spans in scope_spans_list:
            scope_obj = scope_spans.get("scope") or {}
            name = scope_obj.get("name") if isinstance(scope_obj, dict) else None
            scope = _text(name) if isinstance(name, str) and name else None
            for span in scope_spans.get("spans") or []:
                try:
                    out.spans.append(_json_span(span, resource, scope))
                except InvalidSpan as exc:
                    label = span.get("name") if isinstance(span, dict) else None
                    out.reject(f"span {str(label)[:60]!r}: {exc}")
    return out


# --- responses -------------------------------------------------------------------------------
def response_message(decoded: Decoded) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if decoded.rejected:
        response.partial_success.rejected_spans = decoded.rejected
        response.partial_success.error_message = decoded.error_message
    return response


def response_protobuf(decoded: Decoded) -> bytes:
    return response_message(decoded).SerializeToString()


def response_json(decoded: Decoded) -> bytes:
    if not decoded.rejected:
        return b"{}"
    return orjson.dumps(
        {
            "partialSuccess": {
                "rejectedSpans": str(decoded.rejected),
                "errorMessage": decoded.error_message,
            }
        }
    )


def status_protobuf(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code = field 1, message = field 2), encoded by hand so the
    collector needs no googleapis dependency for its error bodies."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
