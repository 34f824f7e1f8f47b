"""Secrets never leave the process: a redaction pass over span attributes before any export.

The default pass masks values under keys that name a secret (``api_key``, ``authorization``,
``token``, ``password``, ``secret``, ``cookie``) and substrings that look like credentials (provider
API keys, bearer tokens) inside any string value, including prompts that quote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from atlas_middleware.storage.records import SpanRecord

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(api[_-]?key|authorization|(^|[._-])token$|access[_-]?token|password|passwd|secret|cookie)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic style keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,})"
)

Redactor = Callable[[SpanRecord], None]


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value) if _SECRET_VALUE.search(value) else value
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return _scrub_mapping(value)
    return value


def _scrub_mapping(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if _SECRET_KEY.search(k) else _scrub(v)) for k, v in attributes.items()}


def redact_secrets(record: SpanRecord) -> None:
    """The built-in redactor (in place)."""
    record.attributes = _scrub_mapping(record.attributes)
    for event in record.events:
        event.attributes = _scrub_mapping(event.attributes)
    if record.status_message:
        record.status_message = _scrub(record.status_message)


def redact(
    records: Iterable[SpanRecord], redactors: Iterable[Redactor] = (redact_secrets,)
) -> None:
    redactors = tuple(redactors)
    for record in records:
        for redactor in redactors:
            redactor(record)
