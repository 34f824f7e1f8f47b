"""The shape every integration shares, after opentelemetry-python-contrib's ``BaseInstrumentor``:
``instrument()`` and ``uninstrument()`` are idempotent (a second ``instrument()`` changes nothing,
``uninstrument()`` without ``instrument()`` is a no-op), thread-safe, and import no framework at
package import time. What instrumenting installs only observes: calls nobody supervises go to the
framework exactly as they were made.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar


class Instrumentor:
    """One per framework (a singleton per subclass). Subclasses implement ``_instrument`` and
    ``_uninstrument``; callers use :meth:`instrument` / :meth:`uninstrument`."""

    _instances: ClassVar[dict[type, Instrumentor]] = {}
    _instances_lock = threading.Lock()
    _lock: threading.RLock
    _instrumented: bool
    _installed: Any

    def __new__(cls) -> Instrumentor:
        with cls._instances_lock:
            instance = cls._instances.get(cls)
            if instance is None:
                instance = super().__new__(cls)
                instance._lock = threading.RLock()
                instance._instrumented = False
                cls._instances[cls] = instance
            return instance

    @property
    def is_instrumented(self) -> bool:
        return self._instrumented

    def instrument(self, **options: Any) -> Any:
        """Install once; later calls return what the first installed (options ignored)."""
        with self._lock:
            if not self._instrumented:
                self._installed = self._instrument(**options)
                self._instrumented = True
            return self._installed

    def uninstrument(self) -> None:
        with self._lock:
            if self._instrumented:
                self._uninstrument()
                self._instrumented = False

    # Each subclass defines ``_instrument`` with its own options; instrument(**options) passes them.
    _instrument: Callable[..., Any]

    def _uninstrument(self) -> None:
        raise NotImplementedError


# OpenInference instrumentors, by the framework they trace: (module, class).
_OPENINFERENCE = {
    "langchain": ("openinference.instrumentation.langchain", "LangChainInstrumentor"),
    "llama_index": ("openinference.instrumentation.llama_index", "LlamaIndexInstrumentor"),
    "openai_agents": ("openinference.instrumentation.openai_agents", "OpenAIAgentsInstrumentor"),
    "litellm": ("openinference.instrumentation.litellm", "LiteLLMInstrumentor"),
}


def openinference_active(framework: str) -> bool:
    """Whether OpenInference's instrumentor for ``framework`` is tracing it in this process
    (Phoenix users install them): then atlas makes no second span for the same step and only
    counts tokens and gives guidance. Never imports the instrumentor."""
    module_name, class_name = _OPENINFERENCE[framework]
    module = sys.modules.get(module_name)
    instrumentor = getattr(module, class_name, None) if module is not None else None
    if instrumentor is None:
        return False
    try:
        return bool(instrumentor().is_instrumented_by_opentelemetry)
    except Exception:  # a changed API: assume not, and trace as usual
        return False
