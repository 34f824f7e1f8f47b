"""Shared by the benchmarks: machine facts, a rich table, and a section of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is rewritten by its script; rerun with the command shown.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, {platform.system()}"


def load_average() -> str:
    """The 1/5/15-minute load averages (``uptime``), e.g. ``"1.2, 0.9, 0.7"``."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def postgres_version(url: str) -> str:
    try:
        out = subprocess.run(
            ["psql", url, "-Atc", "SHOW server_version"], capture_output=True, text=True, timeout=10
        )
        return (
            f"PostgreSQL {out.stdout.strip().split()[0]}" if out.returncode == 0 else "PostgreSQL"
        )
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "PostgreSQL"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=max(Console().width, 160)).print(table)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


GOALS = Path(__file__).resolve().parent.parent / ".atlas" / "bench-goals"


def record_goals(name: str, lines: list[str]) -> None:
    """Keep a benchmark's goal verdicts where ``make bench`` prints them all at the end."""
    GOALS.mkdir(parents=True, exist_ok=True)
    (GOALS / f"{name}.txt").write_text("".join(f"{name}: {line}\n" for line in lines))


def write_section(name: str, body: str, doc: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``
    of ``doc`` (docs/benchmarks.md by default)."""
    doc = doc or DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else HEADER
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- {name}:start -->\n{body.strip()}\n\n_Run {stamp} on {machine()}._\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    doc.write_text(text)
