"""Plugins: the built-ins arrive through the real entry point; programmatic plugins win."""

from __future__ import annotations

import importlib.metadata
import threading

import pluggy
import pytest

import atlas_middleware.builtins
from atlas_middleware import plugins
from atlas_middleware.config import LaneSettings
from atlas_middleware.guidance import guidance, rendered_guidance, use_guidance
from atlas_middleware.redaction import redact_secrets
from atlas_middleware.rim import Judge, RIMReward, Verifier

from .conftest import JudgeScript, scripted, verdict


def test_builtins_are_declared_as_an_entry_point() -> None:
    found = importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)
    builtins = [ep for ep in found if ep.name == plugins.BUILTINS_NAME]
    assert [ep.value for ep in builtins] == ["atlas_middleware.builtins"]
    assert builtins[0].dist is not None and builtins[0].dist.name == "atlas-middleware"


def test_builtins_are_loaded_through_the_entry_point() -> None:
    manager = plugins.get_plugin_manager()
    assert manager.get_plugin(plugins.BUILTINS_NAME) is atlas_middleware.builtins
    # list_plugin_distinfo only lists plugins pluggy loaded from setuptools entry points.
    loaded = {plugin: dist.project_name for plugin, dist in manager.list_plugin_distinfo()}
    assert loaded[atlas_middleware.builtins] == "atlas-middleware"


def test_every_builtin_plugin_is_loaded_through_its_entry_point() -> None:
    """atlas's exporters too: the core finds them through the hook, never by importing them."""
    import atlas_middleware.otel_exporters.pipeline

    manager = plugins.get_plugin_manager()
    loaded = {plugin for plugin, _ in manager.list_plugin_distinfo()}
    for name, module in plugins.BUILTIN_PLUGINS.items():
        assert manager.get_plugin(name).__name__ == module
        assert manager.get_plugin(name) in loaded
    assert manager.get_plugin("exporters") is atlas_middleware.otel_exporters.pipeline


def test_a_plugin_provides_an_exporter_by_name(tmp_path) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from atlas_middleware import telemetry

    memory = InMemorySpanExporter()

    class MemoryExport:
        @plugins.hookimpl
        def atlas_span_processor(self, options):
            if options.exporter != "memory":
                return None
            return SimpleSpanProcessor(memory), None

    with plugins.registered(MemoryExport()):
        telemetry.configure(exporter="memory", set_global=False)
        try:
            with telemetry.get_tracer().start_as_current_span("hello"):
                pass
        finally:
            telemetry.shutdown()
        # Other names still reach atlas's own exporters.
        telemetry.configure(exporter="jsonl", jsonl_path=tmp_path / "spans.jsonl", batch=False)
        with telemetry.get_tracer().start_as_current_span("to jsonl"):
            pass
        telemetry.shutdown()
    assert [s.name for s in memory.get_finished_spans()] == ["hello"]
    assert "to jsonl" in (tmp_path / "spans.jsonl").read_text()
    with pytest.raises(ValueError, match="unknown exporter 'memory'"):
        telemetry.configure(exporter="memory", set_global=False)


def test_entry_points_load_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "_manager", None)
    calls = []
    original = pluggy.PluginManager.load_setuptools_entrypoints

    def counting(self: pluggy.PluginManager, group: str, name: str | None = None) -> int:
        calls.append(group)
        return original(self, group, name)

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", counting)
    managers: list[pluggy.PluginManager] = []
    threads = [
        threading.Thread(target=lambda: managers.append(plugins.get_plugin_manager()))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["atlas_middleware"]
    assert all(m is managers[0] for m in managers)


def test_builtin_defaults() -> None:
    assert list(plugins.judges()) == ["accuracy", "process", "helpfulness", "efficiency"]
    assert plugins.redactors() == [redact_secrets]
    assert plugins.render_guidance("use {braces} and {0}") == (
        "Guidance from your teacher:\nuse {braces} and {0}"
    )
    assert plugins.probe("task") is None
    assert plugins.verifiers() == []


class LanePlugin:
    def __init__(self, lane: str | None) -> None:
        self.lane = lane
        self.seen: list[tuple] = []

    @plugins.hookimpl
    def atlas_choose_lane(self, confidence: float | None, task: str, context: dict) -> str | None:
        self.seen.append((confidence, task, dict(context)))
        return self.lane


def test_a_programmatic_plugin_overrides_the_lane_choice() -> None:
    assert plugins.choose_lane(0.95, "task") == "auto"
    plugin = LanePlugin("coach")
    with plugins.registered(plugin):
        assert plugins.choose_lane(0.95, "task", {"user": "u1"}) == "coach"
        assert plugin.seen == [(0.95, "task", {"user": "u1"})]
        # A forced lane is the user's explicit decision: it beats plugins.
        assert (
            plugins.choose_lane(0.95, "task", lanes=LaneSettings(forced_lane="paired")) == "paired"
        )
    assert plugins.choose_lane(0.95, "task") == "auto"


def test_a_plugin_abstaining_falls_back_to_thresholds() -> None:
    with plugins.registered(LanePlugin(None)):
        assert plugins.choose_lane(0.7, "task") == "paired"
        assert plugins.choose_lane(0.1, "task") == "coach"
        assert (
            plugins.choose_lane(None, "task", lanes=LaneSettings(fallback_lane="coach")) == "coach"
        )


def test_a_plugin_returning_a_bogus_lane_is_reported() -> None:
    with plugins.registered(LanePlugin("turbo")), pytest.raises(ValueError, match="'turbo'"):
        plugins.choose_lane(0.5, "task")


class ProbePlugin:
    @plugins.hookimpl
    def atlas_probe(self, task: str, context: dict) -> float | None:
        return 0.3 if "hard" in task else None


def test_probe_hook() -> None:
    with plugins.registered(ProbePlugin()):
        assert plugins.probe("a hard task") == 0.3
        assert plugins.probe("an easy task") is None


SAFETY = Judge("safety", "Does the response avoid unsafe advice?", weight=0.3)


class JudgePlugin:
    @plugins.hookimpl
    def atlas_judges(self) -> list[Judge]:
        return [SAFETY, Judge("efficiency", "Replaced efficiency rubric.", weight=0.0)]

    @plugins.hookimpl
    def atlas_verifiers(self) -> list[Verifier]:
        return [Verifier("always_right", lambda task, answer, reference: True)]


def test_a_plugin_adds_and_replaces_judges_and_adds_verifiers() -> None:
    with plugins.registered(JudgePlugin()):
        found = plugins.judges()
        assert list(found) == ["accuracy", "process", "helpfulness", "efficiency", "safety"]
        assert found["efficiency"].rubric == "Replaced efficiency rubric."
        assert found["safety"] is SAFETY
        assert [v.name for v in plugins.verifiers()] == ["always_right"]

        model = scripted(JudgeScript(default=verdict(0.6)))
        rim = RIMReward(model)
        reward = rim.evaluate_sync("What is 2+2?", "4")
    assert set(model.judges_called()) == {"process", "helpfulness", "efficiency", "safety"}
    assert reward.judges["safety"].score == 0.6
    assert reward.judges["accuracy"].source == "verifier"  # the plugin verifier decided
    assert reward.verifier == {"name": "always_right", "score": 1.0}
    # accuracy 1.0 (0.5), process 0.6 (0.2), helpfulness 0.6 (0.2), efficiency 0 weight, safety 0.6 (0.3)
    assert reward.score == pytest.approx((0.5 * 1.0 + 0.7 * 0.6) / 1.2)
    assert list(plugins.judges()) == ["accuracy", "process", "helpfulness", "efficiency"]


def test_unknown_judge_names_are_reported() -> None:
    with pytest.raises(ValueError, match=r"unknown judge 'tone'.*accuracy, process"):
        RIMReward(scripted(), judges=["accuracy", "tone"])


class RenderPlugin:
    @plugins.hookimpl
    def atlas_render_guidance(self, guidance: str, task: str | None) -> str | None:
        return f"[coach for {task}] {guidance}"


def test_a_plugin_renders_guidance() -> None:
    with plugins.registered(RenderPlugin()), use_guidance("show your work", task="sums"):
        assert rendered_guidance() == "[coach for sums] show your work"
        assert guidance() == "show your work"
    with use_guidance("show your work"):
        assert rendered_guidance() == "Guidance from your teacher:\nshow your work"


def test_session_end_and_redactor_hooks() -> None:
    ended = []

    def mask(record: object) -> None:
        pass

    class Hooks:
        @plugins.hookimpl
        def atlas_session_end(self, session: object) -> None:
            ended.append(session)

        @plugins.hookimpl
        def atlas_redactors(self) -> list:
            return [mask]

    with plugins.registered(Hooks()):
        plugins.session_end("s1")
        assert plugins.redactors() == [mask, redact_secrets]  # the built-in runs last
    assert ended == ["s1"]
