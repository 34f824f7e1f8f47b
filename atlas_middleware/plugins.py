"""Plugins (pluggy, project and entry-point group ``atlas_middleware``).

A plugin is any object or module with functions marked ``@hookimpl``. Third-party packages
declare it in their pyproject::

    [project.entry-points.atlas_middleware]
    my_plugin = "my_package.atlas_plugin"

and atlas loads it the first time :func:`get_plugin_manager` runs. Code can also
:func:`register` one directly (tests, notebooks). atlas's own defaults (the four RIM judges, the
secret redactor, the guidance wording) live in :mod:`atlas_middleware.builtins`, registered
through the same entry point, and are marked ``trylast`` so any other plugin's answer wins.

Hooks whose spec says *firstresult* stop at the first plugin returning something other than
None; the others collect every plugin's list.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

    from atlas_middleware.config import LaneSettings
    from atlas_middleware.redaction import Redactor
    from atlas_middleware.rim.judges import Judge, Verifier
    from atlas_middleware.telemetry import ExportOptions

PROJECT = "atlas_middleware"
ENTRY_POINT_GROUP = PROJECT
BUILTINS_NAME = "builtins"
BUILTINS_MODULE = "atlas_middleware.builtins"
# atlas's own plugins, by entry-point name (pyproject's [project.entry-points.atlas_middleware]).
BUILTIN_PLUGINS = {
    BUILTINS_NAME: BUILTINS_MODULE,
    "exporters": "atlas_middleware.otel_exporters.pipeline",
}

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class SessionEnd:
    """What ``atlas_session_end`` receives: one finished supervised session. Fields are read as
    attributes (``session.lane``) or, as in earlier versions, by key (``session["lane"]``)."""

    session_id: str
    trace_id: str  # 32 hex digits, as the store and OTel backends show it
    agent: str
    learning_key: str
    lane: str  # the lane that ran
    task: str
    answer: str
    guidance: str | None
    retries: int
    failures: tuple[str, ...]  # atlas's own failures in this session (it failed open)

    def __getitem__(self, key: str) -> object:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: object = None) -> object:
        return self[key] if key in self.__dataclass_fields__ else default


class AtlasHookSpecs:
    """The hooks a plugin may implement (implement any subset; argument names must match)."""

    @hookspec(firstresult=True)
    def atlas_probe(self, task: str, context: Mapping[str, Any]) -> float | None:
        """Capability confidence in [0, 1] for the student on ``task``, or None to let the
        next plugin (ultimately the teacher-model probe) decide."""

    @hookspec(firstresult=True)
    def atlas_choose_lane(
        self, confidence: float | None, task: str, context: Mapping[str, Any]
    ) -> str | None:
        """``"auto"``, ``"paired"`` or ``"coach"``, or None to use the configured thresholds."""

    @hookspec(firstresult=True)
    def atlas_render_guidance(self, guidance: str, task: str | None) -> str | None:
        """The text injected into the student's prompt for the teacher's ``guidance``."""

    @hookspec
    def atlas_judges(self) -> list[Judge]:
        """RIM judges this plugin provides. A judge named like an earlier one replaces it."""
        raise NotImplementedError  # a specification: pluggy calls the plugins' implementations

    @hookspec
    def atlas_verifiers(self) -> list[Verifier]:
        """Programmatic verifiers; each abstains (returns None) on tasks it does not know."""
        raise NotImplementedError

    @hookspec
    def atlas_redactors(self) -> list[Redactor]:
        """Functions run on every span record before export (in place)."""
        raise NotImplementedError

    @hookspec(firstresult=True)
    def atlas_span_processor(
        self, options: ExportOptions
    ) -> tuple[SpanProcessor | None, Any] | None:
        """The span processor delivering atlas's spans for ``telemetry.configure()``'s options
        (and the retrying exporter inside it, or None), or None when ``options.exporter`` names
        an exporter this plugin does not provide. atlas's own (store, JSONL, OTLP, console, none)
        come from :mod:`atlas_middleware.otel_exporters.pipeline`."""

    @hookspec
    def atlas_session_end(self, session: SessionEnd) -> None:
        """Called once a supervised session has finished (its reward may still be pending)."""


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager; entry points are loaded on the first call only."""
    global _manager
    manager = _manager
    if manager is not None:
        return manager
    with _lock:
        if _manager is None:
            _manager = _build_manager()
        return _manager


def _build_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(AtlasHookSpecs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name, module in BUILTIN_PLUGINS.items():
        if manager.get_plugin(name) is None and not manager.is_blocked(name):
            # Only when running from a source tree that was never pip-installed: without the
            # built-ins RIM would have no judges and spans no exporter, so register them
            # directly and say why.
            import importlib

            warnings.warn(
                f"atlas_middleware's '{name}' entry point is not installed; registering "
                f"{module} directly (run `pip install -e .` to fix the metadata)",
                RuntimeWarning,
                stacklevel=3,
            )
            manager.register(importlib.import_module(module), name=name)
    return manager


def register(plugin: object, name: str | None = None) -> str:
    """Register ``plugin`` (module, class or instance with ``@hookimpl`` functions); returns
    the name it is registered under. Later registrations are asked first."""
    registered = get_plugin_manager().register(plugin, name=name)
    if registered is None:
        raise ValueError(f"plugin {name or plugin!r} is blocked; unblock it or use another name")
    return registered


def unregister(plugin: object | None = None, name: str | None = None) -> None:
    """Remove a plugin registered with :func:`register` (by object or name)."""
    get_plugin_manager().unregister(plugin, name=name)


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """``with registered(MyPlugin()):`` — the plugin is active inside the block only."""
    plugin_name = register(plugin, name)
    try:
        yield plugin_name
    finally:
        unregister(name=plugin_name)


def hook() -> Any:
    """``get_plugin_manager().hook``: call hooks by keyword, e.g. ``hook().atlas_probe(...)``."""
    return get_plugin_manager().hook


# --- typed helpers the runtime calls ------------------------------------------------------------
def probe(task: str, context: Mapping[str, Any] | None = None) -> float | None:
    """A plugin's confidence for ``task``, or None when no plugin answers."""
    confidence: float | None = hook().atlas_probe(task=task, context=context or {})
    return confidence


def plugin_lane(confidence: float | None, task: str, context: Mapping[str, Any]) -> str | None:
    """The first plugin's lane for this call, or None when every plugin abstains. A lane that
    is not one raises ValueError (supervision records it and goes by the thresholds)."""
    from atlas_middleware.config import LANES

    choice = hook().atlas_choose_lane(confidence=confidence, task=task, context=context)
    if choice is not None and choice not in LANES:
        raise ValueError(
            f"a plugin's atlas_choose_lane returned {choice!r}; return one of "
            f"{', '.join(LANES)} or None"
        )
    return choice  # type: ignore[no-any-return]


def choose_lane(
    confidence: float | None,
    task: str,
    context: Mapping[str, Any] | None = None,
    lanes: LaneSettings | None = None,
) -> str:
    """The lane for this call as supervision picks it: a forced lane if configured, else the
    first plugin's choice (:func:`plugin_lane`), else the configured thresholds (``lanes``,
    defaults when None)."""
    from atlas_middleware.config import LaneSettings

    settings = lanes or LaneSettings()
    if settings.forced_lane is not None:
        return settings.forced_lane
    choice = plugin_lane(confidence, task, context or {})
    return choice if choice is not None else settings.lane_for(confidence)


def render_guidance(guidance: str, task: str | None = None) -> str:
    """The guidance text as the student will read it (``atlas_render_guidance``)."""
    rendered: str | None = hook().atlas_render_guidance(guidance=guidance, task=task)
    # The built-in always answers; this fallback only matters if someone blocked it.
    return rendered if rendered is not None else guidance


def judges() -> dict[str, Judge]:
    """Every judge the plugins provide, by name; a later-registered plugin's judge replaces an
    earlier one of the same name (so a plugin can redefine ``accuracy``)."""
    found: dict[str, Judge] = {}
    # pluggy returns results newest-first (the trylast built-ins come last): walk them oldest
    # first so newer definitions overwrite older ones while built-ins keep their order.
    for result in reversed(hook().atlas_judges()):
        for judge in result or ():
            found[judge.name] = judge
    return found


def verifiers() -> list[Verifier]:
    """Every verifier the plugins provide, newest plugin first."""
    return [v for result in hook().atlas_verifiers() for v in result or ()]


def redactors() -> list[Redactor]:
    """Every redactor the plugins provide (the built-in secret redactor runs last)."""
    return [r for result in hook().atlas_redactors() for r in result or ()]


def has_session_end() -> bool:
    """Whether any plugin implements ``atlas_session_end`` (the runtime skips building the
    session summary otherwise: it is on every call's path)."""
    return bool(hook().atlas_session_end.get_hookimpls())


def session_end(session: SessionEnd) -> None:
    hook().atlas_session_end(session=session)
