"""RIM rewards: several judges, each sampling a small model, escalating to a large one when unsure.

For every judge the small model is asked ``samples`` times, concurrently, at the configured
temperatures, for 2–3 weighted principles, a score in [0, 1], a rationale and an uncertainty.
When the samples disagree (population std > ``variance_threshold``), any sample reports an
uncertainty above ``uncertainty_threshold``, or no sample was usable, the large model arbitrates
with the small model's verdicts in view. Judges run concurrently too.

A programmatic verifier, when one applies, decides the accuracy judge outright (no model call).
Scores are combined by a weighted mean (accuracy dominates by default) after consistency caps:
with a grounded accuracy (reference or verifier), process may not exceed accuracy + 0.1 and
helpfulness accuracy + 0.2, so a wrong answer cannot score well on style.

Nothing here raises for a model failure or an unreadable reply: failures are recorded in the
audit, the judge degrades (fewer samples, or excluded with its weight redistributed), and a
reward nobody could score has ``score=None`` and an ``error`` saying why.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from atlas_middleware.models.base import ChatMessage, ChatModel, ModelError
from atlas_middleware.rim import parsing, prompts
from atlas_middleware.rim.judges import ACCURACY, Judge, Verifier, VerifierCheck, as_verifier
from atlas_middleware.rim.result import AuditEntry, JudgeResult, Reward

if TYPE_CHECKING:
    from atlas_middleware.config import RimSettings


_RATIONALE_PER_JUDGE = 240
# Thresholds are "strictly above"; float noise (std of 0.6 and 0.9 is 0.15000000000000002) must
# not turn a tie into an escalation.
_EPS = 1e-9


@dataclass(slots=True)
class _Call:
    """One parsed model call."""

    parsed: parsing.ParsedJudgement
    entry: AuditEntry


@dataclass(slots=True)
class _Context:
    prompt: str
    responses: list[str]
    reference: Any
    trajectory: Any
    relative: bool
    verdicts: list[float | None]  # per answer: the deciding verifier's score, if any
    verifier_names: list[str | None]  # per answer: which verifier decided
    audit: list[AuditEntry] = field(default_factory=list)


class RIMReward:
    """Judge answers with RIM. Use alone or from the supervision runtime.

    - ``small_model``: samples every judge; ``large_model``: arbitrates when they disagree or
      are unsure (None: no escalation; the reason is still recorded).
    - ``judges``: :class:`Judge` objects or names of plugin judges (None: every plugin judge,
      by default the built-in accuracy, process, helpfulness and efficiency).
    - ``weights``: per-judge weights overriding each judge's default.
    - ``verifiers``: tried in order on every answer when ``evaluate(verifier=...)`` is not given;
      the first verdict that is not None decides accuracy (None: the plugins' verifiers).
    - ``max_tokens`` / ``timeout_s``: per judge call; ``max_input_chars``: each of task, answer,
      reference and trajectory is cut to this many characters in judge prompts;
      ``concurrency``: at most this many model calls in flight (None: unbounded).
    """

    def __init__(
        self,
        small_model: ChatModel,
        large_model: ChatModel | None = None,
        *,
        judges: Sequence[Judge | str] | None = None,
        weights: Mapping[str, float] | None = None,
        verifiers: Sequence[Verifier | VerifierCheck] | None = None,
        samples: int = 3,
        temperatures: Sequence[float] = (0.2, 0.5, 0.8),
        variance_threshold: float = 0.15,
        uncertainty_threshold: float = 0.3,
        max_tokens: int = 512,
        timeout_s: float | None = None,
        max_input_chars: int = 12_000,
        audit_chars: int = 2_000,
        concurrency: int | None = None,
    ) -> None:
        if samples < 1:
            raise ValueError(f"samples must be 1 or more (got {samples})")
        if not temperatures:
            raise ValueError("temperatures must hold at least one temperature")
        self.small_model = small_model
        self.large_model = large_model
        self.judges: list[Judge] = _resolve_judges(judges)
        self.weights: dict[str, float] = {j.name: j.weight for j in self.judges}
        for name, weight in (weights or {}).items():
            if name not in self.weights:
                raise ValueError(
                    f"weights name judge {name!r}, which is not used; judges: "
                    f"{', '.join(self.weights)}"
                )
            if not weight >= 0:
                raise ValueError(f"weight of judge {name!r} must be 0 or more (got {weight})")
            self.weights[name] = float(weight)
        if verifiers is None:
            from atlas_middleware import plugins

            self.verifiers: list[Verifier] = plugins.verifiers()
        else:
            self.verifiers = [as_verifier(v) for v in verifiers]
        self.samples = samples
        # Cycled when there are more samples than temperatures.
        self.temperatures = [temperatures[i % len(temperatures)] for i in range(samples)]
        self.variance_threshold = variance_threshold
        self.uncertainty_threshold = uncertainty_threshold
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_input_chars = max_input_chars
        self.audit_chars = audit_chars
        self._limit = asyncio.Semaphore(concurrency) if concurrency else None

    @classmethod
    def from_settings(
        cls,
        settings: RimSettings,
        small_model: ChatModel,
        large_model: ChatModel | None = None,
        **options: Any,
    ) -> RIMReward:
        """Build from the ``rim`` config section; the models are built by the caller from
        ``settings.small_model`` / ``large_model``."""
        return cls(
            small_model,
            large_model,
            judges=settings.judges,
            weights=settings.weights,
            samples=settings.samples,
            temperatures=settings.temperatures,
            variance_threshold=settings.variance_threshold,
            uncertainty_threshold=settings.uncertainty_threshold,
            **options,
        )

    # --- public API ------------------------------------------------------------------------------
    async def evaluate(
        self,
        prompt: str,
        response: str,
        reference: Any = None,
        *,
        verifier: Verifier | VerifierCheck | None = None,
        trajectory: Any = None,
    ) -> Reward:
        """Score one response to ``prompt``. Never raises for model failures."""
        rewards = await self._run(prompt, [response], reference, verifier, trajectory, False)
        return rewards[0]

    async def evaluate_group(
        self,
        prompt: str,
        responses: Sequence[str],
        reference: Any = None,
        *,
        verifier: Verifier | VerifierCheck | None = None,
    ) -> list[Reward]:
        """Score several answers to one task relative to each other (what GRPO needs): each
        judge sees the whole group in one call per sample. One Reward per answer, in order;
        they share one audit."""
        responses = list(responses)
        if not responses:
            return []
        return await self._run(prompt, responses, reference, verifier, None, len(responses) > 1)

    def evaluate_sync(
        self,
        prompt: str,
        response: str,
        reference: Any = None,
        *,
        verifier: Verifier | VerifierCheck | None = None,
        trajectory: Any = None,
    ) -> Reward:
        """:meth:`evaluate` for synchronous code (also works inside a running event loop)."""
        from atlas_middleware.portal import get_portal

        return get_portal().call(
            lambda: self.evaluate(
                prompt, response, reference, verifier=verifier, trajectory=trajectory
            )
        )

    # --- one evaluation --------------------------------------------------------------------------
    async def _run(
        self,
        prompt: str,
        responses: list[str],
        reference: Any,
        verifier: Verifier | VerifierCheck | None,
        trajectory: Any,
        relative: bool,
    ) -> list[Reward]:
        prompt = _as_str(prompt)
        responses = [_as_str(r) for r in responses]
        n = len(responses)
        ctx = _Context(prompt, responses, reference, trajectory, relative, [None] * n, [None] * n)
        await self._verify(ctx, verifier)
        per_judge = await asyncio.gather(*(self._judge(judge, ctx) for judge in self.judges))
        return [
            self._aggregate(
                ctx,
                index,
                {
                    judge.name: results[index]
                    for judge, results in zip(self.judges, per_judge, strict=True)
                },
            )
            for index in range(len(responses))
        ]

    async def _verify(self, ctx: _Context, explicit: Verifier | VerifierCheck | None) -> None:
        candidates = [as_verifier(explicit)] if explicit is not None else self.verifiers
        if not candidates:
            return

        async def one(index: int, answer: str) -> None:
            for candidate in candidates:
                started = time.perf_counter()
                try:
                    verdict = await candidate.run(ctx.prompt, answer, ctx.reference)
                except Exception as exc:  # a broken verifier abstains; the judges still run
                    ctx.audit.append(
                        AuditEntry(
                            ACCURACY,
                            candidate.name,
                            "verifier",
                            "error",
                            latency_s=time.perf_counter() - started,
                            error=_error_text(exc),
                        )
                    )
                    continue
                if verdict is None:
                    continue
                ctx.verdicts[index] = verdict
                ctx.verifier_names[index] = candidate.name
                ctx.audit.append(
                    AuditEntry(
                        ACCURACY,
                        candidate.name,
                        "verifier",
                        "ok",
                        latency_s=time.perf_counter() - started,
                        note=_verdict_word(verdict) + " (answer " + str(index + 1) + ")"
                        if ctx.relative
                        else _verdict_word(verdict),
                    )
                )
                return

        await asyncio.gather(*(one(i, answer) for i, answer in enumerate(ctx.responses)))

    async def _judge(self, judge: Judge, ctx: _Context) -> list[JudgeResult]:
        weight = self.weights[judge.name]
        n = len(ctx.responses)
        verified = judge.decided_by_verifier and all(v is not None for v in ctx.verdicts)
        if verified:
            return [self._verifier_result(judge, weight, ctx, i) for i in range(n)]

        calls = await asyncio.gather(
            *(self._call(judge, self.small_model, ctx, t, "sample") for t in self.temperatures)
        )
        usable = [c for c in calls if c.parsed.usable]
        # Answers a verifier already decided cannot make this judge escalate.
        open_answers = [
            i for i in range(n) if not (judge.decided_by_verifier and ctx.verdicts[i] is not None)
        ]
        reason = self._escalation_reason(usable, open_answers)
        large: _Call | None = None
        large_failure: str | None = None
        if reason is not None:
            if self.large_model is None:
                ctx.audit.append(
                    AuditEntry(
                        judge.name,
                        "-",
                        "escalation_skipped",
                        "no_large_model",
                        note=reason + "; no large model configured, kept the small model's verdict",
                    )
                )
            else:
                earlier = [_verdict_line(c.parsed, n) for c in usable]
                large = await self._call(
                    judge, self.large_model, ctx, min(self.temperatures), "escalation", earlier
                )
                large.entry.note = reason
                if not large.parsed.usable:
                    large_failure = "large model: " + (large.entry.error or large.entry.status)
                    large = None

        results: list[JudgeResult] = []
        for i in range(n):
            if judge.decided_by_verifier and ctx.verdicts[i] is not None:
                # Relative mode with some answers verified: the verifier wins for those.
                results.append(self._verifier_result(judge, weight, ctx, i))
                continue
            results.append(
                self._model_result(judge, weight, calls, usable, large, large_failure, reason, i)
            )
        return results

    def _escalation_reason(self, usable: list[_Call], answers: Sequence[int]) -> str | None:
        if not usable:
            return "no usable sample from the small model"
        reasons = []
        spread = 0.0
        for i in answers:
            scores = [s for c in usable if (s := c.parsed.scores[i]) is not None]
            if len(scores) >= 2:
                spread = max(spread, _pstdev(scores))
        if spread > self.variance_threshold + _EPS:
            reasons.append(f"score std {spread:.3f} > {self.variance_threshold:g}")
        uncertainties = [c.parsed.uncertainty for c in usable if c.parsed.uncertainty is not None]
        if uncertainties and max(uncertainties) > self.uncertainty_threshold + _EPS:
            reasons.append(f"uncertainty {max(uncertainties):.2f} > {self.uncertainty_threshold:g}")
        return "; ".join(reasons) or None

    def _verifier_result(self, judge: Judge, weight: float, ctx: _Context, i: int) -> JudgeResult:
        verdict = ctx.verdicts[i]
        assert verdict is not None
        return JudgeResult(
            judge.name,
            verdict,
            weight,
            rationale="verifier " + str(ctx.verifier_names[i]) + ": " + _verdict_word(verdict),
            uncertainty=0.0,
            samples=[verdict],
            source="verifier",
        )

    def _model_result(
        self,
        judge: Judge,
        weight: float,
        calls: Sequence[_Call],
        usable: Sequence[_Call],
        large: _Call | None,
        large_failure: str | None,
        reason: str | None,
        i: int,
    ) -> JudgeResult:
        scored = [c for c in usable if c.parsed.scores[i] is not None]
        samples = [c.parsed.scores[i] for c in scored]
        small_scores = [s for s in samples if s is not None]
        if large is not None and large.parsed.scores[i] is not None:
            chosen = large
            score = large.parsed.scores[i]
            uncertainty = large.parsed.uncertainty
            source = "large_model"
        elif small_scores:
            score = _round(math.fsum(small_scores) / len(small_scores))
            # The sample closest to the mean speaks for the judge.
            chosen = min(scored, key=lambda c: abs((c.parsed.scores[i] or 0.0) - score))
            reported = [c.parsed.uncertainty for c in scored if c.parsed.uncertainty is not None]
            # Disagreement between samples is uncertainty too, whatever each sample claimed.
            spread = _pstdev(small_scores) if len(small_scores) > 1 else 0.0
            uncertainty = _round(
                max(math.fsum(reported) / len(reported) if reported else 0.0, spread)
            )
            source = "small_model"
        else:
            failures = sorted({c.entry.error or c.entry.status for c in calls})
            if large_failure is not None:
                failures.append(large_failure)
            elif self.large_model is None:
                failures.append("no large model to fall back on")
            return JudgeResult(
                judge.name,
                None,
                weight,
                samples=[],
                escalation_reason=reason,
                source="failed",
                error="no usable judgement (" + "; ".join(failures) + ")",
            )
        assert score is not None
        return JudgeResult(
            judge.name,
            score,
            weight,
            rationale=chosen.parsed.rationales[i],
            uncertainty=uncertainty,
            principles=list(chosen.parsed.principles),
            samples=small_scores,
            escalated=source == "large_model",
            escalation_reason=reason,
            source=source,  # type: ignore[arg-type]
        )

    async def _call(
        self,
        judge: Judge,
        model: ChatModel,
        ctx: _Context,
        temperature: float,
        role: str,
        earlier: list[str] | None = None,
    ) -> _Call:
        messages = self._messages(judge, ctx, earlier)
        entry = AuditEntry(judge.name, model.name, role, "pending", temperature)  # type: ignore[arg-type]
        ctx.audit.append(entry)
        started = time.perf_counter()
        failed = parsing.ParsedJudgement(
            "model_error", [None] * len(ctx.responses), [""] * len(ctx.responses), [], None
        )
        try:
            result = await self._chat(model, messages, temperature)
        except ModelError as exc:
            entry.status, entry.error = "model_error", _error_text(exc)
            entry.latency_s = time.perf_counter() - started
            return _Call(failed, entry)
        except Exception as exc:  # a backend bug must not take the reward down with it
            entry.status, entry.error = "error", _error_text(exc)
            entry.latency_s = time.perf_counter() - started
            failed.status = "error"
            return _Call(failed, entry)
        entry.latency_s = result.latency_s or (time.perf_counter() - started)
        entry.input_tokens, entry.output_tokens = result.input_tokens, result.output_tokens
        entry.reply = _truncate(result.text, self.audit_chars)
        n = len(ctx.responses)
        parsed = (
            parsing.parse_group_judgement(result.text, n)
            if ctx.relative
            else parsing.parse_judgement(result.text)
        )
        entry.status = parsed.status
        if parsed.clamped:
            entry.note = "score clamped to [0, 1]"
        return _Call(parsed, entry)

    async def _chat(self, model: ChatModel, messages: list[ChatMessage], temperature: float) -> Any:
        call = model.chat(
            messages,
            max_tokens=self.max_tokens,
            temperature=temperature,
            timeout_s=self.timeout_s,
        )
        if self._limit is None:
            return await call
        async with self._limit:
            return await call

    def _messages(
        self, judge: Judge, ctx: _Context, earlier: list[str] | None
    ) -> list[ChatMessage]:
        if ctx.relative:
            return prompts.group_messages(
                judge,
                ctx.prompt,
                ctx.responses,
                reference=ctx.reference,
                trajectory=ctx.trajectory,
                earlier=earlier,
                limit=self.max_input_chars,
            )
        return prompts.judge_messages(
            judge,
            ctx.prompt,
            ctx.responses[0],
            reference=ctx.reference,
            trajectory=ctx.trajectory,
            earlier=earlier,
            limit=self.max_input_chars,
        )

    # --- aggregation -----------------------------------------------------------------------------
    def _aggregate(self, ctx: _Context, i: int, results: dict[str, JudgeResult]) -> Reward:
        accuracy = results.get(ACCURACY)
        grounded = (
            accuracy is not None
            and accuracy.score is not None
            and (ctx.verdicts[i] is not None or ctx.reference is not None)
        )
        notes: list[str] = []
        if grounded:
            assert accuracy is not None and accuracy.score is not None
            for judge in self.judges:
                result = results[judge.name]
                cap = judge.cap_above_accuracy
                if cap is None or result.score is None or judge.name == ACCURACY:
                    continue
                limit = _round(min(1.0, accuracy.score + cap))
                if result.score > limit:
                    result.uncapped_score, result.score = result.score, limit

        scored = [r for r in results.values() if r.score is not None]
        failed = [r for r in results.values() if r.score is None]
        for r in failed:
            notes.append(f"{r.name} excluded ({r.error}); its weight was redistributed")
        for r in results.values():
            if r.escalation_reason and not r.escalated and r.source != "verifier":
                why = (
                    "no large model configured"
                    if self.large_model is None
                    else "large model failed"
                )
                notes.append(f"{r.name}: escalation wanted ({r.escalation_reason}) but {why}")
        verifier = (
            {"name": ctx.verifier_names[i], "score": ctx.verdicts[i]}
            if ctx.verdicts[i] is not None
            else None
        )
        mode: Literal["absolute", "relative"] = "relative" if ctx.relative else "absolute"
        if not scored:
            error = "no judge produced a score: " + "; ".join(
                f"{r.name}: {r.error}" for r in failed
            )
            return Reward(
                None, error, None, results, ctx.audit, mode, False, verifier, notes, error
            )

        total = math.fsum(r.weight for r in scored)
        # All-zero weights would divide by zero; fall back to an equal say for each judge.
        weights = {r.name: (r.weight / total if total > 0 else 1.0 / len(scored)) for r in scored}
        score = math.fsum(weights[r.name] * (r.score or 0.0) for r in scored)
        with_u = [r for r in scored if r.uncertainty is not None]
        u_total = math.fsum(weights[r.name] for r in with_u)
        uncertainty = (
            math.fsum(weights[r.name] * (r.uncertainty or 0.0) for r in with_u) / u_total
            if with_u and u_total > 0
            else None
        )
        rationale = "; ".join(_judge_summary(r) for r in results.values())
        return Reward(
            _round(min(1.0, max(0.0, score))),
            rationale,
            _round(uncertainty) if uncertainty is not None else None,
            results,
            ctx.audit,
            mode,
            grounded,
            verifier,
            notes,
        )


# --- helpers ----------------------------------------------------------------------------------------
def _resolve_judges(judges: Sequence[Judge | str] | None) -> list[Judge]:
    if judges is not None and all(isinstance(j, Judge) for j in judges):
        resolved: list[Judge] = [j for j in judges if isinstance(j, Judge)]
    else:
        from atlas_middleware import plugins

        available = plugins.judges()
        if judges is None:
            resolved = list(available.values())
        else:
            resolved = []
            for judge in judges:
                if isinstance(judge, Judge):
                    resolved.append(judge)
                elif judge in available:
                    resolved.append(available[judge])
                else:
                    raise ValueError(
                        f"unknown judge {judge!r}: available judges are "
                        f"{', '.join(available) or 'none'} (plugins add more via atlas_judges)"
                    )
    if not resolved:
        raise ValueError(
            "no RIM judges: pass judges=[...] or install atlas_middleware so its built-in "
            "judges are registered"
        )
    names = [j.name for j in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"judge names must be unique, got {names}")
    return resolved


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else prompts.as_text(value)


def _round(value: float) -> float:
    # Means of a few floats pick up noise in the last bits (0.8000000000000002); six decimals
    # keep payloads readable and are far finer than any judge's resolution.
    return round(value, 6)


def _pstdev(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…[" + str(len(text) - limit) + " more]"


def _error_text(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return type(exc).__name__ + (": " + message[:300] if message else "")


def _verdict_word(verdict: float) -> str:
    if verdict >= 1.0:
        return "correct"
    if verdict <= 0.0:
        return "incorrect"
    return f"partially correct ({verdict:.2f})"


def _verdict_line(parsed: parsing.ParsedJudgement, answers: int) -> str:
    if answers == 1:
        head = f"score {parsed.scores[0]:.2f}" if parsed.scores[0] is not None else "no score"
    else:
        head = "scores " + ", ".join(
            f"answer {i + 1}: {s:.2f}" if s is not None else f"answer {i + 1}: -"
            for i, s in enumerate(parsed.scores)
        )
    u = f", uncertainty {parsed.uncertainty:.2f}" if parsed.uncertainty is not None else ""
    reason = next((r for r in parsed.rationales if r), "")
    return "- " + head + u + (": " + reason if reason else "")


def _judge_summary(result: JudgeResult) -> str:
    if result.score is None:
        return result.name + " failed (" + (result.error or "no score") + ")"
    head = result.name + " " + f"{result.score:.2f}"
    if result.uncapped_score is not None:
        head += " (capped from " + f"{result.uncapped_score:.2f}" + ")"
    text = result.rationale
    if len(text) > _RATIONALE_PER_JUDGE:
        text = text[: _RATIONALE_PER_JUDGE - 1] + "…"
    return head + (": " + text if text else "")
