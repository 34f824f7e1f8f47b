"""A global tracer provider installed before atlas (Phoenix's ``register()``, Langfuse, an APM
agent) no longer starves the store (issue 12, finding 3). Each case runs in a fresh process:
OpenTelemetry lets a process set its global provider once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s

PRELUDE = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import atlas_middleware as atlas
from atlas_middleware.models import ScriptedModel

@atlas.supervise(agent="calc", teacher=ScriptedModel(replies=["0.95"]), reward=False)
def solve(task):
    # what an OpenInference instrumentor's model call inside the agent looks like
    with trace.get_tracer("openinference.instrumentation.demo").start_as_current_span(
        "ChatOpenAI", attributes={"openinference.span.kind": "LLM"}
    ):
        pass
    return "42"
"""

SDK_FIRST = """
app = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(app))
trace.set_tracer_provider(provider)  # e.g. phoenix.otel.register()
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("GET /health"):
    pass
solve("What is 12 + 30?")
atlas.shutdown()
with tracer.start_as_current_span("GET /after"):  # the application's pipeline still runs
    pass
print(json.dumps([x.name for x in app.get_finished_spans()]))
"""

FOREIGN = """
trace.set_tracer_provider(trace.NoOpTracerProvider())  # not the SDK's: nothing can be added
solve("What is 12 + 30?")
solve("What is 12 + 31?")
atlas.shutdown()
"""


def run(body: str, store: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ATLAS_STORE_URL": store},
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_an_sdk_provider_installed_first_gets_atlas_spans_and_so_does_the_store(sqlite_url):
    proc = run(SDK_FIRST, sqlite_url)
    app_spans = json.loads(proc.stdout.strip().splitlines()[-1])
    # The application's own pipeline saw atlas's session, and kept running after shutdown.
    assert "invoke_agent calc" in app_spans and app_spans[-1] == "GET /after"
    with open_store(sqlite_url) as store:
        [session] = list(store.iter_sessions())
        spans = store.spans_for([session.trace_id])[session.trace_id]
        total = store.count_spans()
    assert session.agent_name == "calc" and session.final_answer == "42"
    by_name = {x.name: x for x in spans}
    # The other instrumentation's model call inside the session is stored, marked the student's.
    assert by_name["ChatOpenAI"].attributes[s.ATLAS_SPAN_ROLE] == s.ROLE_STUDENT
    assert total == len(spans)  # not the application's other traffic ("GET /health")


def test_a_provider_atlas_cannot_join_is_named_once_and_the_store_still_fills(sqlite_url):
    proc = run(FOREIGN, sqlite_url)
    assert proc.stderr.count("is not an OpenTelemetry SDK TracerProvider") == 1
    with open_store(sqlite_url) as store:
        assert len(list(store.iter_sessions())) == 2
