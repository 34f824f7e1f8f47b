"""One async chat interface for every model atlas talks to: teachers, students and judges.

A backend implements :meth:`ChatModel._complete`; the public :meth:`ChatModel.chat` adds what
every caller needs the same way: a timeout, retries with backoff on transient failures, token
accounting, and a ``chat {model}`` span with GenAI attributes.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from atlas_middleware.telemetry import genai, get_tracer
from atlas_middleware.telemetry import schema as s
from atlas_middleware.telemetry import usage as session_usage

Role = Literal["system", "user", "assistant"]


class ChatMessage(TypedDict):
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    latency_s: float = 0.0


@dataclass(slots=True)
class Usage:
    """Running totals for one model object (all its calls, retries included)."""

    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def add(self, result: ChatResult) -> None:
        self.calls += 1
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.seconds += result.latency_s


class ModelError(RuntimeError):
    """A model call failed for a reason retrying will not fix (bad request, auth, no such model)."""


class ModelUnavailable(ModelError):
    """A transient failure (timeout, rate limit, server error, connection refused): retried."""


class ModelTimeout(ModelUnavailable):
    """The call took longer than its timeout."""


@dataclass(slots=True)
class CallPolicy:
    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5  # first retry waits about this long, doubling after, with jitter


class ChatModel(abc.ABC):
    """Subclasses set ``name`` (the model id reported on spans) and ``provider``."""

    name: str
    provider: str = "unknown"
    # How this model, as a teacher, checks answers best: "compute" for a teacher trained by
    # ``atlas learn`` (its plan, computed), None for the VALID / INVALID verdict prompt. What a
    # teacher's ``validation="auto"`` follows.
    validation: str | None = None
    # Generates on this machine (in this process or a worker it owns): slow on a CPU but it
    # cannot hang on a network, so supervision gives it no remote budget or circuit breaker.
    runs_locally: bool = False

    def __init__(self, *, policy: CallPolicy | None = None) -> None:
        self.policy = policy or CallPolicy()
        self.usage = Usage()

    @abc.abstractmethod
    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        """One attempt. Raise :class:`ModelUnavailable` for transient failures."""

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> ChatResult:
        """Complete a conversation; raises :class:`ModelError` after the last failed attempt."""
        timeout = self.policy.timeout_s if timeout_s is None else timeout_s
        tracer = get_tracer()
        content = s.capture_content()
        with tracer.start_as_current_span(
            s.chat_span_name(self.name),
            attributes=genai.llm_attributes(
                model=self.name, provider=self.provider, messages=messages, content=content
            ),
        ) as span:
            attempt = 0
            result: ChatResult
            while True:
                started = time.perf_counter()
                try:
                    result = await asyncio.wait_for(
                        self._complete(
                            messages, max_tokens=max_tokens, temperature=temperature, stop=stop
                        ),
                        timeout,
                    )
                except (asyncio.TimeoutError, ModelUnavailable) as exc:
                    self.usage.failures += 1
                    if attempt >= self.policy.retries:
                        error = (
                            ModelTimeout(f"{self.name}: no answer within {timeout:g}s")
                            if isinstance(exc, asyncio.TimeoutError)
                            else exc
                        )
                        span.set_attribute(s.ERROR_TYPE, type(error).__name__)
                        # What a failed call spent is not known: its role's total is not either.
                        session_usage.count(None, None)
                        raise error from exc
                    attempt += 1
                    delay = self.policy.backoff_s * 2 ** (attempt - 1)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    continue
                except ModelError as exc:
                    self.usage.failures += 1
                    span.set_attribute(s.ERROR_TYPE, type(exc).__name__)
                    raise
                except asyncio.CancelledError:  # the caller gave up (a step's timeout)
                    session_usage.count(None, None)
                    raise
                break
            if not result.latency_s:
                result = _with_latency(result, time.perf_counter() - started)
            self.usage.add(result)
            session_usage.count(result.input_tokens, result.output_tokens, self.name)
            genai.set_llm_response(
                span,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                response_model=result.model,
                text=result.text,
                finish=result.finish_reason,
                content=content,
            )
            return result

    @property
    def endpoint(self) -> str:
        """What this model's calls go to, as a key: models with the same endpoint share its
        circuit breaker (:mod:`atlas_middleware.breaker`). Remote backends name the server and
        model (never a credential); by default each model object is an endpoint of its own."""
        return f"{type(self).__name__}:{self.name}@{id(self):x}"

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients or weights; the default has nothing to release."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _with_latency(result: ChatResult, latency: float) -> ChatResult:
    return ChatResult(
        result.text,
        result.model,
        result.input_tokens,
        result.output_tokens,
        result.finish_reason,
        latency,
    )


def approx_tokens(text: str) -> int:
    """A token estimate for backends that report none (≈4 characters a token)."""
    return max(1, len(text) // 4) if text else 0


@dataclass
class ScriptedModel(ChatModel):
    """A deterministic model for tests, examples and dry runs.

    ``replies`` are returned in order (the last one repeats); a callable gets the messages and
    returns the reply. An exception instance in ``replies`` is raised instead, so tests can
    script failures (``ModelUnavailable()`` is retried, ``ModelError()`` is not).
    """

    replies: Sequence[str | BaseException] | None = None
    respond: object = None  # Callable[[Sequence[ChatMessage]], str]
    name: str = "scripted"
    provider: str = "scripted"
    delay_s: float = 0.0
    calls: list[list[ChatMessage]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ChatModel.__init__(self)
        if self.replies is None and self.respond is None:
            raise ValueError("ScriptedModel needs replies=[...] or respond=callable")
        self._next = 0

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        self.calls.append(list(messages))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.respond is not None:
            reply: str | BaseException = self.respond(messages)  # type: ignore[operator]
        else:
            assert self.replies is not None
            reply = self.replies[min(self._next, len(self.replies) - 1)]
            self._next += 1
        if isinstance(reply, BaseException):
            raise reply
        prompt = " ".join(m["content"] for m in messages)
        return ChatResult(reply, self.name, approx_tokens(prompt), approx_tokens(reply), "stop")
