"""Secrets never leave the process: a redaction pass over span attributes before any export.

In-process, the pass runs once per batch before the batch is queued, spooled to disk or handed
to any exporter (``RetryingSpanExporter`` / ``RedactingSpanExporter``, set up by
``telemetry.configure``); the collector runs it again on what it receives, since it cannot
trust its clients to have done so.

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
    r"|github_pat_[A-Za-z0-9_]{22,}"  # GitHub fine-grained tokens
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,})"
)
# PEM private keys: the whole block (or, cut off, everything after its header).
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|$)"
)
# A password inside a URL (``postgresql://user:pw@host``, ``http://admin:pw@10.0.0.5``): the
# password goes, the user and host stay. Bounded repeats: hostile text cannot make it slow.
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,20}://[^\s/@:]{0,256}:)[^\s/@]{1,256}(@)")
# A secret assigned to a secret-named key inside text: JSON ('"api_key": "…"'), env or config
# lines ('PASSWORD=…', 'aws_secret_access_key=…', 'pwd=…'), query strings ('?token=…'), HTTP
# headers ('Authorization: Basic …', 'Bearer: …'). The key stays, the value goes. The key must
# end in the secret word ('max_tokens=1024' and 'tokenizer=bpe' are not secrets).
_ASSIGNED_SECRET = re.compile(
    r"(?i)((?<![\w.-])[\"']?[\w.-]{0,40}?"
    r"(?:api[_-]?key|apikey|(?:secret|private|access)[\w.-]{0,30}?key|secret|password|passwd"
    r"|pwd|token|authorization|credentials?|bearer)"
    r"[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?"
    r"[^\s\"',;}&]{4,}"
)

# Every credential pattern above contains one of these (lowercased). Scanning a lowercased value
# for them is far cheaper than the full patterns, almost no attribute value contains any, and
# nothing shorter than _MIN_SECRET characters can hold a credential at all.
_MARKERS = re.compile(
    "sk-|akia|gh[pousr]_|github_pat|hf_|xox|aiza|bearer|api|secret|passw|pwd|token|authoriz"
    "|credential|private key|://[^\\s/@]{0,256}:[^\\s/@]{1,256}@"
)
_MIN_SECRET = 10


def _suspicious(value: str) -> bool:
    return len(value) >= _MIN_SECRET and _MARKERS.search(value.lower()) is not None


def _scrub_text(value: str) -> str:
    if "-----BEGIN" in value:
        value = _PRIVATE_KEY.sub(REDACTED, value)
    value = _URL_PASSWORD.sub(r"\1" + REDACTED + r"\2", value)
    return _ASSIGNED_SECRET.sub(r"\1" + REDACTED, _SECRET_VALUE.sub(REDACTED, value))


def scrub_text(value: str) -> str:
    """``value`` with every credential-shaped substring replaced by ``[REDACTED]`` (the built-in
    pass over one string: error messages, log lines, URLs)."""
    return _scrub_text(value) if _suspicious(value) else value


class EncodedBytes(str):
    """A bytes attribute value as the store keeps it (base64 text), with the raw bytes beside it
    so redaction can look inside: a credential hidden in base64 is still a credential."""

    raw: bytes

    def __new__(cls, raw: bytes, text: str | None = None) -> EncodedBytes:
        import base64

        self = super().__new__(cls, base64.b64encode(raw).decode() if text is None else text)
        self.raw = raw
        return self

    # copy and pickle keep the raw bytes (str's own __getnewargs__ gives only the text)
    def __getnewargs__(self) -> tuple[bytes, str]:  # type: ignore[override]
        return (self.raw, str(self))


def _secret_bytes(raw: bytes) -> bool:
    text = raw.decode("utf-8", "replace")
    return _suspicious(text) and _scrub_text(text) != text


_key_verdicts: dict[str, bool] = {}

Redactor = Callable[[SpanRecord], None]


def _secret_key(key: str) -> bool:
    verdict = _key_verdicts.get(key)
    if verdict is None:
        verdict = bool(_SECRET_KEY.search(key))
        if len(_key_verdicts) < 65536:  # attribute keys repeat; hostile input must not grow it
            _key_verdicts[key] = verdict
    return verdict


def _scrub(value: Any) -> Any:
    if isinstance(value, EncodedBytes):
        return REDACTED if _secret_bytes(value.raw) else value
    if isinstance(value, str):
        return _scrub_text(value) if _suspicious(value) else value
    if isinstance(value, bytes):
        return REDACTED if _secret_bytes(value) else value
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return _scrub_mapping(value)
    return value


def _scrub_mapping(attributes: dict[str, Any]) -> dict[str, Any]:
    """The same dict when nothing is secret (the common case: no copy), else a redacted copy."""
    changed: dict[str, Any] | None = None
    for key, value in attributes.items():
        if _secret_key(key):
            new: Any = REDACTED
        elif type(value) is str:
            if not _suspicious(value):
                continue
            new = _scrub_text(value)
        elif isinstance(value, list | dict | bytes | EncodedBytes):
            new = _scrub(value)
        else:
            continue
        if new != value:
            if changed is None:
                changed = dict(attributes)
            changed[key] = new
    return attributes if changed is None else changed


# Spans of one batch share their resource dict: remember the last one scrubbed (by identity) so a
# batch pays for its resource once, not once per span.
_last_resource: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)


def redact_secrets(record: SpanRecord) -> None:
    """The built-in redactor (in place).

    Attributes (of the span, its events and its resource) and the status message are scrubbed
    in full: values under secret-named keys are masked, credential-shaped text anywhere is
    replaced. Span and event names only lose credential-shaped substrings (a provider key, a
    bearer token, ``api_key=…``): names are identifiers by convention (``chat gpt-4o``) that
    sessions and dashboards group by, so they are never masked whole, but a careless
    instrumentation that formats a secret into one must not leak it either.
    """
    global _last_resource
    seen, scrubbed = _last_resource
    if record.resource is not seen:
        scrubbed = _scrub_mapping(record.resource)
        _last_resource = (record.resource, scrubbed)
    record.resource = scrubbed  # type: ignore[assignment]
    record.attributes = _scrub_mapping(record.attributes)
    if _suspicious(record.name):
        record.name = _scrub_text(record.name)
    for event in record.events:
        event.attributes = _scrub_mapping(event.attributes)
        if _suspicious(event.name):
            event.name = _scrub_text(event.name)
    if record.status_message:
        record.status_message = _scrub(record.status_message)
    if record.scope and _suspicious(record.scope):  # instrumentation scopes are names too
        record.scope = _scrub_text(record.scope)


def scrub_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """The built-in pass over one attribute mapping (for what a SpanRecord does not carry, such
    as span links); the same dict when nothing is secret, else a redacted copy."""
    return _scrub_mapping(attributes)


def default_redactors() -> tuple[Redactor, ...]:
    """The redactors plugins provide (``atlas_redactors`` hook; the built-in secret redactor is
    registered like any plugin). Falls back to the built-in alone if the plugin system cannot
    load, so secrets are never exported unredacted."""
    try:
        from atlas_middleware import plugins

        found = tuple(plugins.redactors())
    except Exception:
        return (redact_secrets,)
    return found or (redact_secrets,)


def redact(
    records: Iterable[SpanRecord], redactors: Iterable[Redactor] = (redact_secrets,)
) -> None:
    redactors = tuple(redactors)
    for record in records:
        for redactor in redactors:
            redactor(record)
