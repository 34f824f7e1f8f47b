"""Parsers for command-line values that ``atlas`` and ``atlas-train`` share (argparse ``type=``
functions: a bad value raises ``ArgumentTypeError`` naming what was expected)."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import time

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float | None:
    """Seconds in ``90s``, ``30m``, ``2h``, ``1d``, ``2w``; None when ``text`` is not one."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def parse_point_in_time(text: str, *, now_ns: int | None = None) -> int:
    """Unix nanoseconds for ``2h`` / ``1d`` (that long ago) or an ISO date/time (local time
    unless it carries an offset). argparse ``type=``: raises ArgumentTypeError."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    seconds = parse_duration(text)
    if seconds is not None:
        return now_ns - int(seconds * 1e9)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 1d, 2w) nor an ISO date "
            "(2026-01-31 or 2026-01-31T14:00)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive: the local time zone, as the tables show times
    return int(when.timestamp() * 1e9)


def parse_reward(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.7, got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value
