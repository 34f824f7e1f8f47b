"""Chat models: one async interface (:class:`ChatModel`) over litellm, OpenAI-compatible
endpoints, local Hugging Face models and the embedded SmolLM2."""

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

__all__ = [
    "CallPolicy",
    "ChatMessage",
    "ChatModel",
    "ChatResult",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "ScriptedModel",
    "Usage",
]
