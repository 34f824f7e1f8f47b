"""atlas-middleware: make the agent you already have learn from production.

    import atlas_middleware as atlas

    @atlas.supervise(agent="calc", teacher="embedded")
    def solve(task: str) -> str: ...

Public names are loaded on first use, so ``import atlas_middleware`` stays cheap and pulls in no
model library, agent framework or web server.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Eager, and before anything imports the submodule by name: ``atlas.guidance`` must be the
# function, and importing ``atlas_middleware.guidance`` would otherwise rebind the package
# attribute to the module. The module needs nothing beyond the standard library.
from atlas_middleware.guidance import guidance, use_guidance, with_guidance

# public name -> module that defines it
_EXPORTS = {
    "supervise": "atlas_middleware.supervise",
    "SupervisionOptions": "atlas_middleware.supervise",
    "supervision_stats": "atlas_middleware.supervise",
    "AtlasConfig": "atlas_middleware.config",
    "RIMReward": "atlas_middleware.rim",
    "configure": "atlas_middleware.telemetry",
    "open_store": "atlas_middleware.storage",
    "ChatModel": "atlas_middleware.models",
    "build_model": "atlas_middleware.models",
    "SessionHandle": "atlas_middleware.supervise",
    "current_session": "atlas_middleware.supervise",
    "last_session": "atlas_middleware.supervise",
    "feedback": "atlas_middleware.feedback",
    "reward": "atlas_middleware.steps",
    "current_step": "atlas_middleware.steps",
    "StepHandle": "atlas_middleware.steps",
}

__all__ = [*sorted(_EXPORTS), "guidance", "shutdown", "use_guidance", "with_guidance"]

if TYPE_CHECKING:  # pragma: no cover - names for type checkers and IDEs
    # (``X as X``: re-exported, as mypy's strict mode wants it said.)
    from atlas_middleware.config import AtlasConfig as AtlasConfig
    from atlas_middleware.feedback import feedback as feedback
    from atlas_middleware.models import ChatModel as ChatModel
    from atlas_middleware.models import build_model as build_model
    from atlas_middleware.rim import RIMReward as RIMReward
    from atlas_middleware.steps import StepHandle as StepHandle
    from atlas_middleware.steps import current_step as current_step
    from atlas_middleware.steps import reward as reward
    from atlas_middleware.storage import open_store as open_store
    from atlas_middleware.supervise import SessionHandle as SessionHandle
    from atlas_middleware.supervise import SupervisionOptions as SupervisionOptions
    from atlas_middleware.supervise import current_session as current_session
    from atlas_middleware.supervise import last_session as last_session
    from atlas_middleware.supervise import supervise as supervise
    from atlas_middleware.supervise import supervision_stats as supervision_stats
    from atlas_middleware.telemetry import configure as configure


class _Package(types.ModuleType):
    """``atlas.supervise`` is the decorator, though ``atlas_middleware.supervise`` is also a
    module: importing a submodule makes Python set it as an attribute of the package, which
    would replace the public function the first time anything imports the submodule. The
    module stays reachable where imports look for it (``sys.modules``), so ``from
    atlas_middleware.supervise import Supervisor`` still works."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _EXPORTS
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atlas_middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def shutdown(timeout_s: float | None = None) -> None:
    """Finish pending rewards and deliver pending spans within ``timeout_s`` in all (default:
    the config's ``telemetry.drain_s``, 10 s); also runs at exit. Rewards still running at the
    deadline are cancelled (a local model stops generating) and the log says what was dropped."""
    _shutdown(timeout_s, why="atlas.shutdown()")


def _shutdown(timeout_s: float | None, *, why: str) -> None:
    import time

    from atlas_middleware import portal, telemetry

    deadline = time.monotonic() + (portal.drain_seconds() if timeout_s is None else timeout_s)
    budget = deadline - time.monotonic()
    # Rewards first, keeping a part of the deadline for the spans they and the calls produced.
    portal.finish(max(0.0, budget - min(2.0, budget / 2)), why=why)
    telemetry.shutdown(int(max(0.5, deadline - time.monotonic()) * 1000))


def _shutdown_at_exit() -> None:
    _shutdown(None, why="at exit")


def _register_shutdown_at_exit() -> None:
    from atlas_middleware import portal

    portal.on_exit(_shutdown_at_exit)


_register_shutdown_at_exit()
