"""The learning recipe at CI scale, on the embedded SmolLM2: a LoRA adapter trained on a few
train tasks' operation hints loads as a teacher, helps the frozen student on those tasks, and
its guidance never states an answer. A few minutes on 2 cores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from atlas_middleware import learning
from atlas_middleware.models import EmbeddedModel, LocalHFModel
from atlas_middleware.tasks import word_problems

pytestmark = pytest.mark.model


def test_a_tiny_trained_adapter_loads_helps_on_its_train_tasks_and_does_not_leak(
    embedded: EmbeddedModel, embedded_cache: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(embedded_cache))
    pool = word_problems("train", 48, seed=7, kinds=["add_sub"])

    async def select():
        alone = await learning.student_answers(embedded, pool, [None] * len(pool))
        hinted = await learning.student_answers(embedded, pool, [t.metadata["hint"] for t in pool])
        return [
            (t, a, h)
            for t, a, h in zip(pool, alone, hinted, strict=True)
            if not t.is_correct(a) and t.is_correct(h)
        ]

    # The tasks a good teacher can fix: wrong alone, right with the generator's hint.
    fixable = asyncio.run(select())
    assert len(fixable) >= 2, "the student should be fixable by a hint on some add/sub tasks"
    tasks = [t for t, _, _ in fixable[:8]]
    wrong = [a for _, a, _ in fixable[:8]]
    right = [h for _, _, h in fixable[:8]]
    adapter = learning.sft_lora(
        embedded._model_dir(),
        learning.hint_examples(tasks),
        tmp_path / "adapter",
        learning.SFTSettings(epochs=6, batch_size=4, learning_rate=1e-3),
    )
    assert (adapter / "adapter_model.safetensors").stat().st_size < 10_000_000  # a few MB

    trained = LocalHFModel(adapter, name="trained")

    async def teach():
        base = await learning.teacher_guidances(embedded, tasks, temperature=0.0)
        guided = await learning.teacher_guidances(trained, tasks, temperature=0.0)
        base_answers = await learning.student_answers(embedded, tasks, base)
        answers = await learning.student_answers(embedded, tasks, guided)
        # Compute validation: the trained teacher's plan, computed, judges a wrong and a right
        # answer to each task.
        verdicts = await learning.teacher_verdicts(
            trained, tasks + tasks, wrong + right, validation="compute"
        )
        await trained.aclose()
        return base, guided, base_answers, answers, verdicts

    base, guided, base_answers, answers, verdicts = asyncio.run(teach())
    truth = [False] * len(tasks) + [True] * len(tasks)
    agree = sum(v == t for v, t in zip(verdicts, truth, strict=True))
    assert agree >= 0.75 * len(truth), (verdicts, guided)
    assert guided != base  # the adapter changed the teacher
    for task, text in zip(tasks, guided, strict=True):
        assert not learning.leaks(text, task.reference, task.task), text
    fixed = sum(t.is_correct(a) for t, a in zip(tasks, answers, strict=True))
    base_fixed = sum(t.is_correct(a) for t, a in zip(tasks, base_answers, strict=True))
    # Alone the student got none of these right; the trained teacher fixes most of them, and
    # more than the base teacher does.
    assert fixed >= max(1, len(tasks) // 2) and fixed > base_fixed, (guided, answers)
