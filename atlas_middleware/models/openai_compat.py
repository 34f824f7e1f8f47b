"""Any server that speaks the OpenAI chat-completions API: vLLM, TGI, llama.cpp, ``atlas
serve-model``, or OpenAI itself. httpx is imported on first use."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from atlas_middleware.models.base import (
    CallPolicy,
    ChatMessage,
    ChatModel,
    ChatResult,
    ModelError,
    ModelUnavailable,
    approx_tokens,
)
from atlas_middleware.storage.records import safe_url

__all__ = ["OpenAICompatibleModel", "normalize_base_url"]

# Statuses worth another try: the request was fine, the server could not take it right now.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000``, ``.../v1`` and ``.../v1/chat/completions`` all mean ``.../v1``."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {safe_url(base_url)!r}"
        )
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    if not url.endswith("/v1"):
        url += "/v1"
    return url


class OpenAICompatibleModel(ChatModel):
    """``POST {base_url}/chat/completions`` over one pooled httpx client.

    429, 5xx and connection failures raise :class:`ModelUnavailable` (retried by ``chat()``);
    other 4xx raise :class:`ModelError` carrying the server's own message. ``api_key`` is never
    taken from ``$OPENAI_API_KEY``: that key must not reach an arbitrary endpoint unasked.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        policy: CallPolicy | None = None,
        provider: str = "openai_compatible",
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> None:
        super().__init__(policy=policy)
        if not model or not model.strip():
            raise ValueError(
                "OpenAICompatibleModel needs the served model name, e.g. model='my-model'"
            )
        self.base_url = normalize_base_url(base_url)
        self.name = model
        self.provider = provider
        self.params = params  # extra body fields (top_p, seed, ...), sent with every request
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> Any:
        # An httpx.AsyncClient's pooled connections belong to the loop that opened them; a model
        # object reused under a new loop (two asyncio.run calls) gets a fresh client.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            import httpx

            # chat() enforces the overall timeout; httpx's only guards against a silent socket.
            timeout = httpx.Timeout(self.policy.timeout_s + 5.0, connect=10.0)
            self._client = httpx.AsyncClient(timeout=timeout, headers=self._headers)
            self._client_loop = loop
        return self._client

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        import httpx

        body: dict[str, Any] = {
            **self.params,
            "model": self.name,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stop:
            body["stop"] = list(stop)
        url = f"{self.base_url}/chat/completions"
        where = safe_url(url)  # messages land in logs and spans: never the URL's password
        try:
            response = await self._http().post(url, json=body)
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(
                f"{self.name}: {where} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"{self.name}: cannot reach {where}: {_describe(exc)}") from exc
        status = response.status_code
        if status >= 400:
            message = f"{self.name}: {where} answered {status}: {_server_message(response)}"
            if status >= 500 or status in RETRYABLE_STATUSES:
                raise ModelUnavailable(message)
            raise ModelError(message)
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"{self.name}: {where} sent no chat completion: {response.text[:200]!r}"
            ) from exc
        usage = payload.get("usage") or {}
        prompt = " ".join(m["content"] for m in messages)
        return ChatResult(
            text,
            payload.get("model") or self.name,
            _int(usage.get("prompt_tokens")) or approx_tokens(prompt),
            _int(usage.get("completion_tokens")) or approx_tokens(text),
            choice.get("finish_reason"),
        )

    @property
    def endpoint(self) -> str:
        return f"{safe_url(self.base_url)}|{self.name}"

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            # RuntimeError: opened under a loop that is gone; there is nothing left to flush.
            with contextlib.suppress(RuntimeError):
                await client.aclose()


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _server_message(response: Any) -> str:
    """The error text servers put in their body: OpenAI/vLLM ``{"error": {"message"}}``,
    FastAPI ``{"detail"}``, TGI ``{"error": "..."}``, or the raw body."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    message: Any = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif error:
            message = error
        message = message or payload.get("message") or payload.get("detail")
    if not message:
        message = response.text or response.reason_phrase or "no message"
    return " ".join(str(message).split())[:500]
