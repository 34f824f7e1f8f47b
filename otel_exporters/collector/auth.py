"""Bearer-token rules shared by the HTTP and gRPC receivers (and anything else atlas serves over
HTTP): which tokens are strong enough to start with, how a request's header is checked, and which
addresses are loopback (the only ones that may run without a token)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

TokenCheck = Callable[[str | None], bool]

MIN_TOKEN_LENGTH = 16
TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_token_setting(token: str) -> str:
    """``token`` if it may guard a server, else ValueError with a one-line reason (the token
    itself is never repeated: it may be a real secret that is merely short)."""
    if not token.strip():
        raise ValueError(f"the token is empty or only spaces; generate one with {TOKEN_HINT}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the token has {len(token)} characters, at least {MIN_TOKEN_LENGTH} are needed; "
            f"generate one with {TOKEN_HINT}"
        )
    return token


def bearer_credentials(header: str | None) -> str:
    """The credentials of an ``Authorization: Bearer …`` header ('' for any other scheme). The
    scheme is case-insensitive (RFC 7235): ``bearer``, ``Bearer`` and ``BEARER`` all count."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def token_check(token: str | None) -> TokenCheck:
    """``Authorization: Bearer <token>`` compared in constant time; no token: everyone passes."""
    if not token:
        return lambda header: True
    expected = token.encode()

    def check(header: str | None) -> bool:
        # Compared even when the scheme is wrong, so the time taken says nothing about why.
        offered = bearer_credentials(header).encode("utf-8", "surrogatepass")
        return hmac.compare_digest(offered, expected) and bool(offered)

    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
