"""Bad input gives one ``atlas: error:`` line and a non-zero exit, never a traceback; plus the
pure helpers behind argument parsing, and the import weight of the package."""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys

import pytest

from atlas_middleware.cli.common import parse_point_in_time, redact_url
from tests.helpers import atlas_cli, free_port


def _assert_one_line_error(proc, code: int, *fragments: str) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("atlas: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["sessions", "list", "--status", "bogus"], 2, ["--status", "bogus", "approved"]),
        (["sessions", "list", "--since", "yesterday"], 2, ["--since", "'yesterday'", "2h"]),
        (["sessions", "list", "--min-reward", "high"], 2, ["--min-reward", "'high'"]),
        (["sessions", "show", "ffffffff"], 1, ["no session matches 'ffffffff'"]),
        (["sessions", "approve"], 2, ["--all-pending"]),
        (
            ["sessions", "approve", "abc", "--min-reward", "0.5"],
            2,
            ["--min-reward", "--all-pending"],
        ),
        (["export", "--status", "all"], 2, ["--status", "'all'"]),
        (["db", "prune"], 2, ["--older-than"]),
    ],
)
def test_bad_input(sqlite_seed, args, code, fragments):
    sqlite_seed(1)
    _assert_one_line_error(sqlite_seed.cli(*args, check=False), code, *fragments)


def test_unknown_id_changes_nothing(sqlite_seed):
    [known] = sqlite_seed(1)
    proc = sqlite_seed.cli("sessions", "approve", known, "0000dead", check=False)
    _assert_one_line_error(proc, 1, "'0000dead'")
    assert sqlite_seed.store.get_session(known).review_status == "pending"


def test_unusable_store_urls(tmp_path):
    proc = atlas_cli("sessions", "list", "--store", "mysql://me:hunter2@db/x", check=False)
    line = _assert_one_line_error(proc, 2, "unsupported store URL", "postgresql://")
    assert "hunter2" not in line

    missing = tmp_path / "nowhere" / "atlas.db"
    proc = atlas_cli("sessions", "list", "--store", f"sqlite:///{missing}", check=False)
    _assert_one_line_error(proc, 1, "no Atlas store", str(missing), "--store")
    assert not missing.parent.exists()  # reading never creates a store

    # No --store, no $ATLAS_STORE_URL, no ./.atlas/atlas.db: say which knobs exist.
    proc = atlas_cli("db", "status", env={"ATLAS_STORE_URL": ""}, cwd=tmp_path, check=False)
    _assert_one_line_error(proc, 1, ".atlas/atlas.db", "ATLAS_STORE_URL")


def test_unreachable_postgres():
    pytest.importorskip("psycopg")
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/atlas"
    proc = atlas_cli("sessions", "list", env={"ATLAS_STORE_URL": url}, check=False)
    line = _assert_one_line_error(proc, 1, "unavailable", "ATLAS_STORE_URL")
    assert "hunter2" not in line


def test_store_from_environment(sqlite_seed, tmp_path):
    [trace_id] = sqlite_seed(1)
    proc = atlas_cli(
        "sessions", "list", "--json", env={"ATLAS_STORE_URL": sqlite_seed.url}, cwd=tmp_path
    )
    assert trace_id in proc.stdout


def test_import_is_light_and_help_lists_commands():
    code = (
        "import sys, atlas_middleware.cli as cli\n"
        "cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'litellm', 'aiohttp', 'psycopg', 'rich') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = atlas_cli("--help").stdout
    for command in ("sessions", "export", "db"):
        assert command in out


def test_parse_point_in_time():
    now = 1_800_000_000 * 10**9
    assert parse_point_in_time("2h", now_ns=now) == now - 2 * 3600 * 10**9
    assert parse_point_in_time("1d", now_ns=now) == now - 86400 * 10**9
    assert parse_point_in_time("90s", now_ns=now) == now - 90 * 10**9
    utc = dt.datetime(2026, 1, 31, 14, 0, tzinfo=dt.timezone.utc)
    assert parse_point_in_time("2026-01-31T14:00:00Z") == int(utc.timestamp() * 1e9)
    assert parse_point_in_time("2026-01-31T15:00+01:00") == int(utc.timestamp() * 1e9)
    local = dt.datetime(2026, 1, 31).astimezone()
    assert parse_point_in_time("2026-01-31") == int(local.timestamp() * 1e9)
    for bad in ("yesterday", "-2h", "2 fortnights", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_point_in_time(bad)


def test_redact_url():
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_url("postgresql://u@h/db?sslmode=require&password=pw") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert redact_url("sqlite:///tmp/a.db") == "sqlite:///tmp/a.db"
