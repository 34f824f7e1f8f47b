"""Chat models: one async interface (:class:`ChatModel`) over litellm, OpenAI-compatible
endpoints, local Hugging Face models and the embedded SmolLM2.

The backends are imported on first access (module ``__getattr__``), and each imports its heavy
library (litellm, httpx, torch, transformers) only when used, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from atlas_middleware.models.base import (
    CallPolicy,
    ChatMessage,
    ChatModel,
    ChatResult,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    ScriptedModel,
    Usage,
)

if TYPE_CHECKING:
    from atlas_middleware.models._deps import MissingDependency
    from atlas_middleware.models.embedded import (
        EmbeddedModel,
        EmbeddedTeacher,
        embedded_model_dir,
        trained_teacher_model_dir,
    )
    from atlas_middleware.models.litellm_backend import LiteLLMModel
    from atlas_middleware.models.local import LocalHFModel
    from atlas_middleware.models.openai_compat import OpenAICompatibleModel

__all__ = [
    "MODEL_SPECS",
    "CallPolicy",
    "ChatMessage",
    "ChatModel",
    "ChatResult",
    "EmbeddedModel",
    "EmbeddedTeacher",
    "LiteLLMModel",
    "LocalHFModel",
    "MissingDependency",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "OpenAICompatibleModel",
    "ScriptedModel",
    "Usage",
    "build_model",
    "embedded_model_dir",
    "model_from_settings",
    "shared_spec",
    "trained_teacher_model_dir",
]

_LAZY = {
    "EmbeddedModel": "embedded",
    "EmbeddedTeacher": "embedded",
    "embedded_model_dir": "embedded",
    "trained_teacher_model_dir": "embedded",
    "LiteLLMModel": "litellm_backend",
    "LocalHFModel": "local",
    "OpenAICompatibleModel": "openai_compat",
    "MissingDependency": "_deps",
}

EMBEDDED = "embedded"
EMBEDDED_BASE = "embedded-base"  # the raw embedded model, also where "embedded" means the teacher
HF_PREFIX = "hf:"
OPENAI_COMPATIBLE_PREFIX = "openai-compatible:"
MODEL_SPECS = (
    "'embedded', 'embedded-base', 'hf:/path/to/model_dir', 'openai-compatible:http://host:port/v1|model' "
    "or a litellm model string such as 'openai/gpt-4o-mini'"
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def build_model(spec: str, *, teacher: bool = False, **options: Any) -> ChatModel:
    """Make a model from a one-string spec (config files, CLI flags, environment variables).

    - ``embedded``: SmolLM2-135M-Instruct in-process (:class:`EmbeddedModel`); with
      ``teacher=True`` (the spec names a teacher) the trained teacher shipped in the package,
      that model plus the LoRA adapter ``atlas learn`` trained (:class:`EmbeddedTeacher`);
    - ``embedded-base``: the raw SmolLM2-135M-Instruct in any role (the untrained teacher);
    - ``hf:/path/to/dir``: a local Hugging Face folder or ``.gguf`` file (:class:`LocalHFModel`);
    - ``openai-compatible:http://host:port/v1|model``: a vLLM/TGI/... endpoint
      (:class:`OpenAICompatibleModel`); ``openai-compatible:model`` with ``base_url=`` works too;
    - anything else goes to litellm as its model string (``openai/gpt-4o-mini``,
      ``anthropic/claude-sonnet-4-5``, ``hosted_vllm/my-model`` ...) (:class:`LiteLLMModel`).

    ``options`` go to the backend's constructor (``policy=``, ``api_key=``, ``dtype=`` ...).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty model spec: use {MODEL_SPECS}")
    spec = spec.strip()
    if spec in (EMBEDDED, EMBEDDED_BASE):
        kind = "EmbeddedTeacher" if teacher and spec == EMBEDDED else "EmbeddedModel"
        embedded: ChatModel = __getattr__(kind)(**options)
        return embedded
    if spec.startswith(HF_PREFIX):
        path = spec[len(HF_PREFIX) :].strip()
        if not path:
            raise ValueError(f"model spec {spec!r} names no folder: use 'hf:/path/to/model_dir'")
        local: ChatModel = __getattr__("LocalHFModel")(path, **options)
        return local
    if spec.startswith(OPENAI_COMPATIBLE_PREFIX):
        return _openai_compatible(spec, options)
    if "://" in spec or any(c.isspace() for c in spec):
        raise ValueError(f"unknown model spec {spec!r}: use {MODEL_SPECS}")
    litellm: ChatModel = __getattr__("LiteLLMModel")(spec, **options)
    return litellm


def shared_spec(spec: str, *, teacher: bool = False) -> str:
    """The spec that names the same model instance in this role: ``embedded`` is the raw model
    (``embedded-base``) except as a teacher, so a student, a judge and an untrained teacher on
    the embedded model can share one copy of its weights."""
    return EMBEDDED_BASE if spec == EMBEDDED and not teacher else spec


def _openai_compatible(spec: str, options: dict[str, Any]) -> ChatModel:
    rest = spec[len(OPENAI_COMPATIBLE_PREFIX) :].strip()
    base_url = options.pop("base_url", None)
    model = options.pop("model", None)
    if "|" in rest or "://" in rest:
        url, _, name = rest.partition("|")
        base_url, model = url.strip(), name.strip() or model
        if "://" not in base_url:
            raise ValueError(
                f"model spec {spec!r}: the endpoint must be an http(s) URL, as in "
                "'openai-compatible:http://host:port/v1|model'"
            )
    elif rest:
        model = rest
    if not base_url or not model:
        raise ValueError(
            f"model spec {spec!r} needs an endpoint and a model name: use "
            "'openai-compatible:http://host:port/v1|model' (or base_url= and model=)"
        )
    compatible: ChatModel = __getattr__("OpenAICompatibleModel")(base_url, model, **options)
    return compatible


def model_from_settings(
    settings: Any, spec: str | None = None, *, teacher: bool = False
) -> ChatModel:
    """A model from a config ``ModelSettings`` section (its spec, or ``spec`` with the section's
    call policy, endpoint and key); ``teacher``: the spec names a teacher (see
    :func:`build_model`). Building is cheap: backends load weights or open clients on their
    first call."""
    spec = spec or settings.model
    kwargs: dict[str, Any] = {"policy": CallPolicy(settings.timeout_s, settings.retries)}
    remote = spec not in (EMBEDDED, EMBEDDED_BASE) and not spec.startswith("hf:")
    if remote and settings.api_base:
        key = "base_url" if spec.startswith("openai-compatible:") else "api_base"
        kwargs[key] = settings.api_base
    if remote and settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    return build_model(spec, teacher=teacher, **kwargs)
