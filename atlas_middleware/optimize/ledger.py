"""What an optimisation run spends: every model call's tokens, cost and time by role, and the
budget (model calls, wall time) that ends the search. Persisted with the run, so a resumed run
continues the same accounting."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas_middleware.models.base import ChatMessage, ChatModel, ChatResult

ROLES = ("student", "teacher", "judge", "reflection")


@dataclass
class RoleUsage:
    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0


@dataclass
class Ledger:
    roles: dict[str, RoleUsage] = field(default_factory=lambda: {r: RoleUsage() for r in ROLES})
    rollouts: int = 0  # supervised runs actually executed (cache hits are free)
    cached_rollouts: int = 0
    unscored_rollouts: int = 0  # RIM could not score the answer (judge failures): counted as 0
    max_rollout_calls: int = 0  # the most model calls one rollout needed so far
    rollout_seconds: float = 0.0

    def add(self, role: str, result: ChatResult, cost: float) -> None:
        usage = self.roles.setdefault(role, RoleUsage())
        usage.calls += 1
        usage.input_tokens += result.input_tokens
        usage.output_tokens += result.output_tokens
        usage.cost_usd += cost
        usage.seconds += result.latency_s

    def failed(self, role: str) -> None:
        usage = self.roles.setdefault(role, RoleUsage())
        usage.calls += 1  # a failed call was still made (and may be billed)
        usage.failures += 1

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.roles.values())

    @property
    def tokens(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.roles.values())

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.roles.values())

    def mean_rollout_seconds(self) -> float:
        return self.rollout_seconds / self.rollouts if self.rollouts else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total"] = {"calls": self.calls, "tokens": self.tokens, "cost_usd": self.cost_usd}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Ledger:
        if not data:
            return cls()
        ledger = cls(
            roles={r: RoleUsage(**u) for r, u in data.get("roles", {}).items()},
            rollouts=int(data.get("rollouts", 0)),
            cached_rollouts=int(data.get("cached_rollouts", 0)),
            unscored_rollouts=int(data.get("unscored_rollouts", 0)),
            max_rollout_calls=int(data.get("max_rollout_calls", 0)),
            rollout_seconds=float(data.get("rollout_seconds", 0.0)),
        )
        for role in ROLES:
            ledger.roles.setdefault(role, RoleUsage())
        return ledger


class BudgetExhausted(BaseException):
    """The run's budget cannot pay for the next step. A BaseException on purpose: GEPA and the
    supervision runtime catch ``Exception`` to keep going, and the budget must end the search."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Budget:
    """Model calls and wall time, both counted across resumed runs."""

    ledger: Ledger
    max_calls: int | None = None
    max_time_s: float | None = None
    elapsed_before_s: float = 0.0  # wall time spent by earlier (interrupted) runs
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.elapsed_before_s + (time.monotonic() - self.started)

    def shortfall(
        self, calls: int, seconds: float, *, reserve_calls: int = 0, reserve_s: float = 0.0
    ) -> str | None:
        """Why ``calls`` more model calls taking ``seconds`` would break the budget (keeping
        the reserves untouched), or None when they fit."""
        if (
            self.max_calls is not None
            and self.ledger.calls + calls + reserve_calls > self.max_calls
        ):
            return (
                f"model-call budget: {self.ledger.calls} of {self.max_calls} used, the next step "
                f"needs up to {calls}"
                + (f" (+{reserve_calls} kept for the held-out check)" if reserve_calls else "")
            )
        if self.max_time_s is not None and self.elapsed() + seconds + reserve_s > self.max_time_s:
            return (
                f"time budget: {self.elapsed():.0f}s of {self.max_time_s:.0f}s used, the next "
                f"step needs about {seconds:.0f}s"
                + (f" (+{reserve_s:.0f}s kept for the held-out check)" if reserve_s else "")
            )
        return None

    def require(self, calls: int, seconds: float = 0.0, **reserve: Any) -> None:
        reason = self.shortfall(calls, seconds, **reserve)
        if reason is not None:
            raise BudgetExhausted(reason)


class Metered(ChatModel):
    """A model whose every call is entered in the ledger under a role (tokens, cost, time)."""

    def __init__(self, inner: ChatModel, role: str, ledger: Ledger) -> None:
        super().__init__(policy=inner.policy)
        self.inner = inner
        self.role = role
        self.ledger = ledger
        self.name = inner.name
        self.provider = inner.provider
        self.validation, self.runs_locally = inner.validation, inner.runs_locally

    async def _complete(  # pragma: no cover
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        raise NotImplementedError("Metered delegates chat() to the wrapped model")

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> ChatResult:
        try:
            result = await self.inner.chat(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stop=stop,
                timeout_s=timeout_s,
            )
        except Exception:
            self.ledger.failed(self.role)
            raise
        self.usage.add(result)
        self.ledger.add(self.role, result, call_cost(self.inner, result))
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


def call_cost(model: ChatModel, result: ChatResult) -> float:
    """USD for one call by litellm's price table; 0 for local models and unknown prices."""
    if type(model).__name__ != "LiteLLMModel":
        return 0.0
    try:
        import litellm

        prompt, completion = litellm.cost_per_token(
            model=model.name,
            prompt_tokens=result.input_tokens,
            completion_tokens=result.output_tokens,
        )
        return float(prompt) + float(completion)
    except Exception:  # no price known for this model: count tokens, not dollars
        return 0.0
