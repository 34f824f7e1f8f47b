"""Fixtures for the runtime parts: config isolation and scripted judge models."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from atlas_middleware.config import AtlasConfig
from atlas_middleware.models.base import CallPolicy, ChatMessage, ChatResult, ScriptedModel
from atlas_middleware.rim.prompts import JUDGE_LINE


@pytest.fixture(autouse=True)
def _no_atlas_settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's own ATLAS_<SECTION>__* variables must not leak into these tests."""
    prefixes = tuple(f"ATLAS_{section.upper()}__" for section in AtlasConfig.SECTIONS)
    for key in list(os.environ):
        if key.upper().startswith(prefixes) or key.upper() == "ATLAS_CONFIG_FILE":
            monkeypatch.delenv(key)
    yield


def verdict(
    score: Any,
    uncertainty: float | None = 0.1,
    rationale: str = "looks right",
    principles: Sequence[Any] = (
        {"name": "correct result", "weight": 0.7},
        {"name": "clear steps", "weight": 0.3},
    ),
) -> str:
    data: dict[str, Any] = {"principles": list(principles), "score": score, "rationale": rationale}
    if uncertainty is not None:
        data["uncertainty"] = uncertainty
    return json.dumps(data)


def group_verdict(scores: Sequence[float], uncertainty: float = 0.1) -> str:
    return json.dumps(
        {
            "principles": [{"name": "correctness", "weight": 1.0}],
            "scores": [
                {"answer": i + 1, "score": s, "rationale": f"answer {i + 1}"}
                for i, s in enumerate(scores)
            ],
            "uncertainty": uncertainty,
        }
    )


def judge_of(messages: Sequence[ChatMessage]) -> str:
    first = messages[0]["content"].splitlines()[0]
    assert first.startswith(JUDGE_LINE), first
    return first[len(JUDGE_LINE) :]


Reply = str | BaseException


@dataclass
class JudgeScript:
    """Replies per judge, in call order (the last one repeats); ``default`` for other judges."""

    per_judge: Mapping[str, Sequence[Reply]] = field(default_factory=dict)
    default: Reply = field(default_factory=lambda: verdict(0.8))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __call__(self, messages: Sequence[ChatMessage]) -> Reply:
        judge = judge_of(messages)
        replies = self.per_judge.get(judge)
        if not replies:
            return self.default
        index = self.counts[judge]
        self.counts[judge] += 1
        return replies[min(index, len(replies) - 1)]


@dataclass
class RecordingModel(ScriptedModel):
    """A ScriptedModel that also records each call's temperature and judge."""

    temperatures: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        # Failures must show up at once, not after the default retry back-off.
        self.policy = CallPolicy(timeout_s=10.0, retries=0)

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        self.temperatures.append((judge_of(messages), temperature))
        return await super()._complete(
            messages, max_tokens=max_tokens, temperature=temperature, stop=stop
        )

    def judges_called(self) -> list[str]:
        return [judge_of(m) for m in self.calls]


def scripted(
    script: JudgeScript | Callable[[Sequence[ChatMessage]], Reply] | None = None,
    *,
    name: str = "small",
    delay_s: float = 0.0,
) -> RecordingModel:
    return RecordingModel(respond=script or JudgeScript(), name=name, delay_s=delay_s)


def user_text(messages: Sequence[ChatMessage]) -> str:
    return messages[-1]["content"]


def section(text: str, tag: str) -> str:
    found = re.search(f"<{tag}>\n(.*)\n</{tag}>", text, re.S)
    assert found, f"no <{tag}> section"
    return found.group(1)


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    """Runtime tests never touch ./.atlas: every test gets its own embedded store and config."""
    url = f"sqlite:///{tmp_path / 'atlas.db'}"
    monkeypatch.setenv("ATLAS_STORE_URL", url)
    monkeypatch.delenv("ATLAS_CONFIG_FILE", raising=False)
    return url
