"""examples/otel_collector_pipeline: app → rotel (a real OTLP collector) → atlas-collector → store.

rotel stands in for the OpenTelemetry Collector (no otelcol-contrib binary is installable here);
it is part of the dev extra and must run: a missing or broken rotel fails this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_middleware.rim import reference_match
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
    assert all(s.agent_name == "pipeline-calculator" for s in sessions)
    # Each stored reward is the one the app computed (its agent's answer against the task's
    # reference), carried by the late evaluation span through both collectors.
    rewards = summary["rewards"]
    assert set(rewards) == set(traces)
    for session in sessions:
        assert session.reward_score == rewards[session.trace_id]
        right = reference_match(session.task, session.final_answer, _reference(session.task))
        assert rewards[session.trace_id] == (1.0 if right else 0.0)
    assert set(rewards.values()) == {0.0, 1.0}  # the naive agent is right on some tasks only
    # Both of the front collector's receivers carried traffic.
    assert {s.service_name for s in sessions} == {"pipeline-http", "pipeline-grpc"}
    # The example ends with what a user would run to look.
    assert "pipeline-calculator" in proc.stdout and "What is 17 + 25?" in proc.stdout


def _reference(question: str) -> str:
    """The reference of a task the example sent, computed here from its text."""
    a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question).groups()
    return str(int(a) + int(b) if op == "+" else int(a) - int(b))


def _otelcol(name: str) -> dict:
    """An otelcol config, checked for what the collector itself refuses at start: every
    component a pipeline names is defined, every pipeline has a receiver and an exporter."""
    import yaml

    config = yaml.safe_load((EXAMPLE / name).read_text())
    assert set(config) <= {"receivers", "processors", "exporters", "extensions", "service"}
    service = config["service"]
    assert set(service.get("extensions", [])) <= set(config.get("extensions", {}))
    for pipeline in service["pipelines"].values():
        assert pipeline["receivers"] and pipeline["exporters"]
        assert set(pipeline["receivers"]) <= set(config["receivers"])
        assert set(pipeline.get("processors", [])) <= set(config.get("processors", {}))
        assert set(pipeline["exporters"]) <= set(config["exporters"])
    # Every defined component is used (a leftover exporter would suggest it were active).
    used = {c for p in service["pipelines"].values() for k in p for c in p[k]}
    assert set(config["receivers"]) | set(config["exporters"]) <= used
    return config


def test_the_default_otelcol_config_receives_otlp_and_exports_otlphttp_to_atlas_collector():
    config = _otelcol("otelcol.yaml")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    assert pipeline["processors"] == ["memory_limiter", "batch"]  # the limiter goes first
    [exporter] = pipeline["exporters"]
    assert exporter.split("/")[0] == "otlphttp"
    settings = config["exporters"][exporter]
    assert settings["endpoint"].startswith("http://atlas-collector:4318")
    assert settings["headers"]["authorization"] == "Bearer ${env:ATLAS_COLLECTOR_TOKEN}"
    assert settings["retry_on_failure"]["enabled"] and settings["sending_queue"]["enabled"]


def test_the_loadbalancing_otelcol_config_fans_out_by_trace_id():
    config = _otelcol("otelcol-loadbalancing.yaml")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["loadbalancing"]
    lb = config["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert "otlp" in lb["protocol"] and "dns" in lb["resolver"]
    assert lb["protocol"]["otlp"]["headers"]["authorization"].startswith("Bearer ")
