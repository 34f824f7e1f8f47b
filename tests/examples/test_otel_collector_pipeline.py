"""examples/otel_collector_pipeline: app → rotel (a real OTLP collector) → atlas-collector → store.

rotel stands in for the OpenTelemetry Collector (no otelcol-contrib binary is installable here);
it is part of the dev extra and must run: a missing or broken rotel fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/otel_collector_pipeline"
SESSIONS = 6


def test_rotel_is_installed_and_runs():
    sys.path.insert(0, str(EXAMPLE))
    try:
        from main import PipelineError, rotel_agent
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("main", None)
    try:
        binary = rotel_agent()
    except PipelineError as exc:
        pytest.fail(f"rotel is part of the dev extra ({exc}); pip install -e '.[dev]'")
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "rotel" in proc.stdout, (
        f"rotel-agent does not run here: {proc.stdout} {proc.stderr}"
    )


def test_every_span_sent_through_the_pipeline_is_stored_once(store_url, tmp_path):
    sent_file = tmp_path / "sent.txt"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "main.py"),
            *("--store", store_url, "--sessions", str(SESSIONS), "--json"),
            *("--sent-ids", str(sent_file)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    sent = [tuple(line.split()) for line in sent_file.read_text().splitlines()]
    # Each session is a root, one chat span and the evaluation span.
    assert len(sent) == len(set(sent)) == 3 * SESSIONS == summary["sent_spans"]

    traces = sorted({trace for trace, _ in sent})
    with open_store(store_url) as store:
        stored = [
            (trace, span.span_id)
            for trace, spans in store.spans_for(traces).items()
            for span in spans
        ]
        sessions = list(store.iter_sessions())
        total = store.count_spans()
    # Every span exactly once, nothing else in the store.
    assert sorted(stored) == sorted(sent)
    assert total == len(sent)
    assert len(sessions) == SESSIONS
    assert {s.trace_id for s in sessions} == set(traces)
    assert all(s.agent_name == "pipeline-calculator" and s.reward_score == 1.0 for s in sessions)
    # Both of the front collector's receivers carried traffic.
    assert {s.service_name for s in sessions} == {"pipeline-http", "pipeline-grpc"}
    # The example ends with what a user would run to look.
    assert "pipeline-calculator" in proc.stdout and "What is 17 + 25?" in proc.stdout


def test_the_production_otelcol_config_fans_out_by_trace_id():
    import yaml

    config = yaml.safe_load((EXAMPLE / "otelcol.yaml").read_text())
    exporters = config["exporters"]
    lb = exporters["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert "otlp" in lb["protocol"] and "dns" in lb["resolver"]
    assert exporters["otlphttp/atlas"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and "batch" in pipeline["processors"]
    # Everything a pipeline names is defined.
    assert set(pipeline["exporters"]) <= set(exporters)
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
