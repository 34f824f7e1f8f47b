"""examples/custom_judge_plugin: a third-party package found through its entry point.

The package is pip-installed (no deps, no index) into a temporary target folder, and the example
runs in a subprocess with that folder on PYTHONPATH: pluggy's real entry-point discovery (the
package's own ``.dist-info/entry_points.txt``) is what brings the judge in, and the running venv
is left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/custom_judge_plugin"

# Runs the example's run() with a scripted judge model that answers every judge the same way,
# and prints what the test needs as one JSON line.
SCRIPT = r"""
import json
from atlas_middleware.models import ScriptedModel
import main

reply = json.dumps({"principles": [{"name": "unit stated", "weight": 1.0}], "score": 0.9,
                    "rationale": "gives the unit", "uncertainty": 0.1})
model = ScriptedModel(replies=[reply])
rewards = main.run(model)
print("RESULT " + json.dumps({
    "payloads": [r.to_payload(include_replies=False) for r in rewards],
    "system_prompts": [call[0]["content"] for call in model.calls],
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package pip-installed into a private target folder."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"
    # Build from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = base / "site"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", "--target", str(target), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (next(target.glob("atlas_units_judge-*.dist-info")) / "entry_points.txt").is_file()
    return target


def _run(args: list[str], pythonpath: list[Path], cwd: Path, **env: str):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), **env},
    )


def test_the_entry_point_brings_the_judge_and_the_verifier_into_rim(installed, tmp_path):
    # The installed copy comes first; the example folder is there only so `import main` works.
    proc = _run(["-c", SCRIPT], [installed, EXAMPLE], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    payloads = result["payloads"]
    assert len(payloads) == 4
    for payload in payloads:
        # The plugin's judge took part, scored by the (scripted) judge model.
        assert payload["judges"]["units"]["source"] == "small_model"
        assert payload["judges"]["units"]["principles"][0]["name"] == "unit stated"
        # The plugin's verifier, not a model, decided accuracy.
        assert payload["verifier"]["name"] == "units"
        assert payload["judges"]["accuracy"]["source"] == "verifier"
    # 4200 m; bare 4200 (half marks); 2.25 h == 135 min; 150 g != 1500 g.
    assert [p["judges"]["accuracy"]["score"] for p in payloads] == [1.0, 0.5, 1.0, 0.0]
    # The consistency cap of the plugin's judge applies: a wrong answer's units score is capped.
    assert payloads[3]["judges"]["units"]["score"] == pytest.approx(0.2)
    assert payloads[0]["score"] > payloads[1]["score"] > payloads[3]["score"]
    # The judge model read the plugin's rubric (accuracy made no model call: the verifier decided).
    assert len(result["system_prompts"]) == 4
    assert all("JUDGE: units" in p and "1 km = 1000 m" in p for p in result["system_prompts"])


def test_without_the_package_installed_the_example_says_how_to_install_it(tmp_path):
    # The sources are importable from the example folder, but with no .dist-info there is no
    # entry point: the judge must not appear (discovery really goes through the metadata).
    proc = _run([str(EXAMPLE / "main.py")], [EXAMPLE], tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no 'units' judge is registered" in proc.stderr
    assert "pip install ./examples/custom_judge_plugin" in proc.stderr


@pytest.mark.model
def test_the_example_runs_with_the_embedded_judge(installed, embedded_cache, tmp_path):
    proc = _run(
        [str(EXAMPLE / "main.py"), "--cases", "1", "--max-tokens", "48", "--json"],
        [installed],
        tmp_path,
        ATLAS_CACHE_DIR=str(embedded_cache),
    )
    assert proc.returncode == 0, proc.stderr
    payloads = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    [payload] = payloads
    assert payload["verifier"]["name"] == "units"
    assert payload["judges"]["accuracy"]["score"] == 1.0
    # SmolLM2 may or may not produce a usable judgement; either way the judge was asked.
    assert "units" in payload["judges"]
    assert any(a["judge"] == "units" and a["role"] == "sample" for a in payload["audit"])
