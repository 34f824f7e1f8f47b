"""Any provider litellm knows (``openai/…``, ``anthropic/…``, ``gemini/…``, ``hosted_vllm/…``).
litellm is imported on the first call: it takes seconds to import."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from atlas_middleware.errors import one_line
from atlas_middleware.models.base import (
    CallPolicy,
    ChatMessage,
    ChatModel,
    ChatResult,
    ModelError,
    ModelUnavailable,
    approx_tokens,
)

__all__ = ["LiteLLMModel"]

# Bare model names litellm routes without a prefix, so spans still name their provider.
_BARE_PREFIXES = {
    "gpt-": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "chatgpt-": "openai",
    "claude-": "anthropic",
    "gemini-": "gemini",
    "mistral-": "mistral",
    "command-": "cohere",
}


def provider_of(model: str) -> str:
    if "/" in model:
        return model.split("/", 1)[0]
    for prefix, provider in _BARE_PREFIXES.items():
        if model.startswith(prefix):
            return provider
    return "litellm"


def import_litellm() -> Any:
    # Without this litellm fetches its model price list from the internet at import time (a 5 s
    # wait on machines without access); the copy bundled with litellm is enough for routing.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # its "Give Feedback / Get Help" banner on every error
    return litellm


class LiteLLMModel(ChatModel):
    """``litellm.acompletion`` with litellm's own retries off: :meth:`chat` owns the policy."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        policy: CallPolicy | None = None,
        **params: Any,
    ) -> None:
        super().__init__(policy=policy)
        if not model or not model.strip() or any(c.isspace() for c in model):
            raise ValueError(
                f"invalid litellm model {model!r}: use a provider string such as 'openai/gpt-4o-mini'"
            )
        self.name = model
        self.provider = provider_of(model)
        self.api_base = api_base
        self.api_key = api_key
        self.params = params  # passed to every acompletion call (top_p, extra_headers, ...)

    @property
    def endpoint(self) -> str:
        if self.api_base:
            from atlas_middleware.storage.records import safe_url

            return f"{safe_url(self.api_base)}|{self.name}"
        return f"litellm:{self.name}"  # the provider's own endpoint for this model

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        litellm = import_litellm()
        kwargs: dict[str, Any] = {
            **self.params,
            "model": self.name,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "timeout": self.policy.timeout_s,
            "num_retries": 0,
            "max_retries": 0,
        }
        if stop:
            kwargs["stop"] = list(stop)
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as exc:
            raise _map_error(self.name, exc, litellm) from exc
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
        except (AttributeError, IndexError) as exc:
            raise ModelError(f"{self.name}: the response held no choice") from exc
        usage = getattr(response, "usage", None)
        prompt = " ".join(m["content"] for m in messages)
        return ChatResult(
            text,
            getattr(response, "model", None) or self.name,
            int(getattr(usage, "prompt_tokens", 0) or 0) or approx_tokens(prompt),
            int(getattr(usage, "completion_tokens", 0) or 0) or approx_tokens(text),
            getattr(choice, "finish_reason", None),
        )


def _map_error(name: str, exc: Exception, litellm: Any) -> Exception:
    """litellm's exceptions → transient (:class:`ModelUnavailable`) or not (:class:`ModelError`)."""
    message = f"{name}: {type(exc).__name__}: {one_line(exc, 500)}"
    transient = (
        litellm.Timeout,
        litellm.RateLimitError,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )
    permanent = (
        litellm.AuthenticationError,
        litellm.PermissionDeniedError,
        litellm.BadRequestError,  # includes ContextWindowExceeded, UnsupportedParams, ...
        litellm.NotFoundError,
        litellm.UnprocessableEntityError,
    )
    if isinstance(exc, transient):
        return ModelUnavailable(message)
    if isinstance(exc, permanent):
        return ModelError(message)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and (status >= 500 or status in (408, 409, 429)):
        return ModelUnavailable(message)
    return ModelError(message)
