"""atlas optimize end to end on the real embedded SmolLM2 (student, teacher and reflection):
the CLI runs to its call budget, writes versioned prompts, and supervise loads them; and the
held-out split refuses a candidate the real model produced when the reward says it is worse."""

from __future__ import annotations

import orjson
import pytest

import atlas_middleware as atlas
from atlas_middleware.cli import main
from atlas_middleware.models import ScriptedModel
from atlas_middleware.models.base import ChatModel, ChatResult
from atlas_middleware.optimize import (
    OptimizeSettings,
    OptimizeTask,
    RolloutSettings,
    optimize,
    split_tasks,
)
from atlas_middleware.optimize.adapter import candidate_key
from atlas_middleware.plugins import hookimpl, registered
from atlas_middleware.prompts import DEFAULT_PROMPTS, load_prompts
from atlas_middleware.rim import Verifier

# Generation on 2 shared CPU cores is slow; the run itself is bounded by its call budget.
pytestmark = [pytest.mark.model, pytest.mark.timeout(1200)]

# Beyond a 135M model, so no minibatch is perfect and GEPA always has something to reflect on.
TASKS = [
    ("a1", "What is 487 * 36? Answer with a number.", "17532"),
    ("a2", "What is 913 * 58? Answer with a number.", "52954"),
    ("a3", "What is 7341 - 2968 * 3? Answer with a number.", "-1563"),
    ("a4", "What is 659 * 74? Answer with a number.", "48766"),
]


def test_optimize_cli_with_the_embedded_model(tmp_path, embedded_cache, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(embedded_cache))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            orjson.dumps({"id": i, "task": t, "reference": r}).decode() + "\n" for i, t, r in TASKS
        )
    )
    out = tmp_path / "prompts"
    # Tiny on purpose (2 shared cores): coach lane (guidance + validation, no probe), short
    # replies, one task per minibatch, accuracy judged by the reference (no judge model call).
    code = main(
        [
            "optimize", "--tasks", str(tasks), "--out", str(out), "--max-calls", "20",
            "--minibatch", "1", "--lane", "coach", "--judges", "accuracy",
            "--max-tokens", "8", "--teacher-max-tokens", "16", "--reflection-max-tokens", "32",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    usage = summary["usage"]
    assert 0 < usage["total"]["calls"] <= 20  # the budget holds, counted over every role
    assert usage["roles"]["student"]["calls"] and usage["roles"]["teacher"]["calls"]
    assert usage["roles"]["teacher"]["input_tokens"] > 0
    assert summary["baseline_heldout"] is not None
    rows = [
        orjson.loads(line) for line in (out / "run" / "iterations.jsonl").read_bytes().splitlines()
    ]
    # The budget pays for the held-out baseline, the seed's validation and one iteration, whose
    # imperfect minibatch makes the real model rewrite a prompt: every rewrite is a paid (and
    # cached) reflection call.
    rewrites = [row for row in rows if row.get("components")]
    reflections = (out / "run" / "reflections.jsonl").read_bytes().splitlines()
    assert rewrites and usage["roles"]["reflection"]["calls"] >= len(rewrites)
    assert usage["roles"]["reflection"]["calls"] == len(reflections)
    for name in ("active.yaml", "trajectory.md", "trajectory.png", "summary.json"):
        assert (out / name).exists()

    # Whatever became active, supervise loads it and the teacher is sent its guidance prompt.
    active = load_prompts(out)
    teacher = ScriptedModel(replies=["Add the numbers."], name="teacher")

    @atlas.supervise(agent="calc", teacher=teacher, reward=False, lane="coach", prompts=out)
    def solve(task: str) -> str:
        return "42"

    solve("What is 12 + 30?")
    assert teacher.calls[0][0]["content"] == active.guidance


class ShowsGuidance(ChatModel):
    """The embedded student, whose reply ends with the guidance it read: the answer then
    depends on the candidate's guidance prompt, which the rewards below look at."""

    def __init__(self, inner: ChatModel) -> None:
        super().__init__(policy=inner.policy)
        self.inner, self.name, self.provider = inner, "student", inner.provider

    async def _complete(self, messages, *, max_tokens, temperature, stop):  # pragma: no cover
        raise NotImplementedError

    async def chat(self, messages, **kwargs):
        result = await self.inner.chat(messages, **kwargs)
        guidance = " ".join(m["content"] for m in messages[:-1] if "Guidance" in m["content"])
        return ChatResult(
            result.text + "\n[" + guidance + "]",
            result.model,
            result.input_tokens,
            result.output_tokens,
            result.finish_reason,
            result.latency_s,
        )


class FirstAnswerRewards:
    """Verifiers that make any change from the active prompts look good on train/validation
    and bad on the held-out split: each compares an answer with the first answer seen for its
    task (the active prompts' answer: the held-out baseline and GEPA's seed run first)."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def _same(self, task: str, answer: str) -> bool:
        return self.first.setdefault(task, answer) == answer

    @hookimpl
    def atlas_verifiers(self):
        return [
            Verifier("changed", lambda task, answer, ref: not self._same(task, answer)),
            Verifier("unchanged", lambda task, answer, ref: self._same(task, answer)),
        ]


def test_heldout_refuses_a_real_candidate_the_reward_makes_worse(tmp_path, embedded):
    held = {t.id for t in split_tasks([OptimizeTask(i, t, r) for i, t, r in TASKS]).heldout}
    tasks = [
        OptimizeTask(i, t, r, verifier="unchanged" if i in held else "changed") for i, t, r in TASKS
    ]
    rewards = FirstAnswerRewards()
    with registered(rewards, "first-answer-rewards"):
        result = optimize(
            tasks,
            OptimizeSettings(
                out=tmp_path,
                judges=["accuracy"],  # decided by the verifiers: no judge model call
                max_calls=24,  # the baselines, one iteration and the held-out check
                minibatch=1,
                reflection_max_tokens=48,
                rollout=RolloutSettings(lane="coach", student_max_tokens=8, guidance_max_tokens=24),
            ),
            student=ShowsGuidance(embedded),
            teacher=embedded,
            reflection=embedded,
        )

    # GEPA found a candidate the validation reward prefers (it changed the student's answer) ...
    assert result.seed_val == 0.0 and result.best_val == 1.0, result.reason
    assert result.baseline_heldout == 1.0
    # ... the held-out split scored it too, no better than the active prompts: refused.
    # Recomputed from the stored rollouts: the candidate scores where its answers match the
    # active prompts' answers on the held-out tasks.
    refused = load_prompts(tmp_path / "candidate-v1.yaml")
    rollouts = {}
    for line in (tmp_path / "run" / "evals.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        rollouts[row["key"]] = row["value"]["answer"]
    new, old = candidate_key(refused.components()), candidate_key(DEFAULT_PROMPTS.components())
    same = [rollouts[f"{new}:{i}"] == rollouts[f"{old}:{i}"] for i in sorted(held)]
    assert result.candidate_heldout == pytest.approx(sum(same) / len(same))
    assert not result.adopted
    assert f"{result.candidate_heldout:.3f} vs 1.000" in result.reason
    assert load_prompts(tmp_path).same_texts(DEFAULT_PROMPTS)  # the active config stays
    assert not (tmp_path / "prompts-v1.yaml").exists()
    assert not refused.same_texts(DEFAULT_PROMPTS)
    assert refused.metadata.model_extra["adopted"] is False
    assert result.ledger.calls <= 24 and result.ledger.roles["reflection"].calls >= 1
