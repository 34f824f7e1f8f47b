"""Bearer-token check shared by the HTTP and gRPC receivers."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

TokenCheck = Callable[[str | None], bool]


def token_check(token: str | None) -> TokenCheck:
    """``Authorization: Bearer <token>`` compared in constant time; no token: everyone passes."""
    if not token:
        return lambda header: True
    expected = f"Bearer {token}".encode()

    def check(header: str | None) -> bool:
        return hmac.compare_digest((header or "").strip().encode(), expected)

    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
