"""Stores: the embedded SQLite store (default) and Postgres, behind one interface."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atlas_middleware.review import DriftPolicy
from atlas_middleware.storage.base import (
    ReviewAction,
    Session,
    SessionFilter,
    Store,
    StoreDataError,
    StoreError,
    StoreUnavailable,
    UndoResult,
    WriteResult,
)
from atlas_middleware.storage.records import SpanEvent, SpanRecord

__all__ = [
    "ReviewAction",
    "Session",
    "SessionFilter",
    "SpanEvent",
    "SpanRecord",
    "Store",
    "StoreDataError",
    "StoreError",
    "StoreUnavailable",
    "UndoResult",
    "WriteResult",
    "default_store_url",
    "open_store",
]

STORE_URL_ENV = "ATLAS_STORE_URL"


def default_store_url() -> str:
    """``$ATLAS_STORE_URL``, else the embedded store at ``./.atlas/atlas.db``."""
    return os.environ.get(STORE_URL_ENV) or "sqlite:///.atlas/atlas.db"


def open_store(
    url: str | None = None, *, drift_policy: DriftPolicy | None = None, **options: Any
) -> Store:
    """Open (and migrate) the store at ``url``: ``sqlite:///path/to/atlas.db``, ``sqlite:///:memory:``,
    a bare file path, or ``postgresql://user@host:5432/db``."""
    url = url or default_store_url()
    if url.startswith(("postgresql://", "postgres://")):
        from atlas_middleware.storage.postgres import PostgresStore

        return PostgresStore(url, drift_policy=drift_policy, **options)
    from atlas_middleware.storage.sqlite import SQLiteStore

    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :], drift_policy=drift_policy, **options)
    if "://" in url:
        raise ValueError(
            f"unsupported store URL {url!r}: use sqlite:///path/atlas.db or postgresql://user@host/db"
        )
    return SQLiteStore(Path(url), drift_policy=drift_policy, **options)
