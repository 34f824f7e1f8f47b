"""What every integration shares: importing its framework with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str | None, *, install: str | None = None) -> ModuleType:
    """Import ``module`` or fail with one line saying what installs it: the extra
    ``atlas-middleware[extra]``, or ``install`` (a pip argument) for a core dependency."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = install or f"'atlas-middleware[{extra}]'"
        reason = " ".join(str(exc).split())
        raise ImportError(f"{module} is not installed: pip install {what} ({reason})") from None
