"""What a RIM evaluation returns: the reward, each judge's verdict, and an audit of every call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from atlas_middleware.rim.parsing import Principle

# How a judge reached its score.
Source = Literal["small_model", "large_model", "verifier", "failed"]


@dataclass(slots=True)
class AuditEntry:
    """One model call (or verifier run) made while judging."""

    judge: str
    model: str
    role: Literal["sample", "escalation", "verifier", "escalation_skipped"]
    status: str  # ok, repaired, no_json, invalid_json, no_score, model_error, error, …
    temperature: float | None = None
    reply: str | None = None  # the raw reply, truncated
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    note: str | None = None  # e.g. why an escalation happened or could not

    def to_json(self, include_reply: bool = True) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "model": self.model,
            "role": self.role,
            "status": self.status,
            "temperature": self.temperature,
            "reply": self.reply if include_reply else None,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_s": round(self.latency_s, 6),
            "error": self.error,
            "note": self.note,
        }


@dataclass(slots=True)
class JudgeResult:
    name: str
    score: float | None  # None: the judge failed and is excluded from the aggregate
    weight: float  # the weight asked for; the aggregate renormalises over scored judges
    rationale: str = ""
    uncertainty: float | None = None
    principles: list[Principle] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # the small model's usable scores
    escalated: bool = False  # the large model's verdict was used
    escalation_reason: str | None = None  # why escalation was wanted (even if it failed)
    source: Source = "small_model"
    error: str | None = None
    uncapped_score: float | None = None  # set when a consistency cap lowered the score

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "weight": self.weight,
            "rationale": self.rationale,
            "uncertainty": self.uncertainty,
            "principles": [p.to_json() for p in self.principles],
            "samples": list(self.samples),
            "escalated": self.escalated,
            "escalation_reason": self.escalation_reason,
            "source": self.source,
            "error": self.error,
            "uncapped_score": self.uncapped_score,
        }


@dataclass(slots=True)
class Reward:
    """``score`` in [0, 1] (None when no judge could score; ``error`` says why)."""

    score: float | None
    rationale: str
    uncertainty: float | None
    judges: dict[str, JudgeResult]
    audit: list[AuditEntry] = field(default_factory=list)
    mode: Literal["absolute", "relative"] = "absolute"
    grounded: bool = False  # accuracy came from a reference or a verifier
    verifier: dict[str, Any] | None = None  # {"name": …, "score": …} when a verifier decided
    notes: list[str] = field(default_factory=list)  # degradations: excluded judges, no escalation
    error: str | None = None

    def to_payload(self, *, include_replies: bool = True) -> dict[str, Any]:
        """A JSON-able dict of everything (``include_replies=False`` drops raw model replies,
        which quote the evaluated content, for setups that do not capture content)."""
        return {
            "score": self.score,
            "rationale": self.rationale,
            "uncertainty": self.uncertainty,
            "mode": self.mode,
            "grounded": self.grounded,
            "verifier": self.verifier,
            "judges": {name: result.to_json() for name, result in self.judges.items()},
            "notes": list(self.notes),
            "error": self.error,
            "audit": [entry.to_json(include_replies) for entry in self.audit],
        }
