"""An installed wheel carries every template and static file of the page, and every other data
file of the package (migrations, bundled tasks, recipes), built without setuptools' "Package
would be ignored" warnings (the package list and the package data agree)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = {
    "atlas_middleware": ROOT / "atlas_middleware",
    "atlas_middleware/trainer": ROOT / "trainer",
}
SUFFIXES = {".html", ".css", ".js", ".svg", ".sql", ".jsonl", ".yaml", ".json", ".safetensors"}


def test_the_wheel_carries_every_data_file_and_builds_quietly(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    assert "would be ignored" not in built.stdout + built.stderr
    [wheel] = tmp_path.glob("atlas_middleware-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for prefix, folder in DATA.items()
        for path in folder.rglob("*")
        if path.suffix in SUFFIXES and "__pycache__" not in path.parts
    }
    ui = {name for name in expected if name.startswith("atlas_middleware/ui/")}
    assert any(n.endswith(".html") for n in ui) and any(n.endswith(".css") for n in ui)
    # The trained teacher (teacher="embedded") ships with its provenance card.
    assert {
        "atlas_middleware/data/teacher/adapter_model.safetensors",
        "atlas_middleware/data/teacher/adapter_config.json",
        "atlas_middleware/data/teacher/atlas-teacher.json",
    } <= expected
    assert sorted(expected - names) == []
