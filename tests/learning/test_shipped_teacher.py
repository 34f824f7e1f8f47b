"""The trained teacher shipped in the package (``teacher="embedded"``), on the real embedded
SmolLM2: it loads, plans unseen problems without stating their results, validates by computing
its plan, and the merged model folder ``atlas quickstart --train`` continues from is the same
teacher. Tasks come from the dev split, which neither training nor the published evaluation
used."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from atlas_middleware import learning
from atlas_middleware.models import EmbeddedModel, LocalHFModel, build_model
from atlas_middleware.models.embedded import TEACHER_NAME, trained_teacher_model_dir
from atlas_middleware.tasks import word_problems
from atlas_middleware.teacher import Teacher, plan_value

pytestmark = pytest.mark.model


def test_the_shipped_teacher_plans_unseen_problems_without_leaking(
    embedded: EmbeddedModel, embedded_cache: Path, monkeypatch
):
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(embedded_cache))
    tasks = word_problems("dev", 12, seed=3)
    trained = build_model("embedded", teacher=True)
    assert trained.name == TEACHER_NAME

    async def run():
        trained_plans = await learning.teacher_guidances(trained, tasks, temperature=0.0)
        base_plans = await learning.teacher_guidances(embedded, tasks, temperature=0.0)
        verdicts = [
            await Teacher(trained).validate(t.task, f"So the answer is {int(t.reference) + 1}.")
            for t in tasks[:4]
        ]
        return trained_plans, base_plans, verdicts

    try:
        trained_plans, base_plans, verdicts = asyncio.run(run())
        # What --train continues from is the same teacher, merged into a plain model folder.
        merged = LocalHFModel(trained_teacher_model_dir(embedded_cache), name="merged")
        same = asyncio.run(learning.teacher_guidances(merged, tasks[:3], temperature=0.0))
        asyncio.run(merged.aclose())
    finally:
        asyncio.run(trained.aclose())

    leaked = [
        g
        for g, t in zip(trained_plans, tasks, strict=True)
        if learning.leaks(g, t.reference, t.task)
    ]
    assert leaked == [], leaked
    right = sum(
        plan_value(g) == float(t.reference) for g, t in zip(trained_plans, tasks, strict=True)
    )
    base_right = sum(
        plan_value(g) == float(t.reference) for g, t in zip(base_plans, tasks, strict=True)
    )
    # It names the right calculation on most problems it never saw, and more than the base model.
    assert right >= len(tasks) // 2 and right > base_right, (right, base_right, trained_plans)
    # Its own validation ("auto" follows its card): a wrong final number is caught by computing.
    assert all(v.source in ("teacher-compute", "teacher") for v in verdicts)
    assert sum(not v.valid for v in verdicts if v.source == "teacher-compute") >= 1
    assert all(not v.valid for v in verdicts if v.source == "teacher-compute")
    assert same == trained_plans[:3]
