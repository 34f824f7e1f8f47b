"""Task files and the bundled arithmetic set."""

from __future__ import annotations

from importlib import resources

import orjson
import pytest

from atlas_middleware.tasks import (
    Task,
    TaskFileError,
    _calc,
    arithmetic_preferences,
    arithmetic_tasks,
    load_tasks,
)


def test_the_bundled_set_is_what_the_generator_makes():
    shipped = load_tasks("arithmetic")
    assert [t.to_json() for t in shipped] == [t.to_json() for t in arithmetic_tasks(len(shipped))]
    assert len(shipped) == 200 and len({t.id for t in shipped}) == 200
    assert len({t.metadata["kind"] for t in shipped}) == 5  # every problem shape is present


def test_every_reference_is_the_value_of_its_plan():
    for task in arithmetic_tasks(200):
        numbers = [int(x) for x in task.metadata["plan"].split()[::2]]
        assert all(str(n) in task.task for n in numbers), task
        assert int(task.reference) == _calc(task.metadata["plan"]) >= 0


def test_calc_follows_precedence():
    assert _calc("3 * 4 + 5") == 17
    assert _calc("20 - 3 * 4") == 8
    assert _calc("7 - 2 - 1") == 4


def test_verifier_reads_the_last_number():
    task = Task(task="2 + 3?", reference="5")
    assert task.is_correct("2 + 3 = 5. Answer: 5")
    assert not task.is_correct("Answer: 6")
    assert not task.is_correct(None)
    assert Task(task="say hi").is_correct("hi") is None  # no reference: no verdict
    assert Task(task="x", reference="Paris", verifier="exact_match").is_correct("paris.")


def test_unknown_verifier_names_the_choices():
    with pytest.raises(TaskFileError, match=r"verifier .nope.*reference_match"):
        Task(task="x", reference="1", verifier="nope").is_correct("1")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task": "a"}\nnot json\n', "line 2: not JSON"),
        ('{"reference": "1"}\n', "line 1: 'task' must be a non-empty string"),
        ('["task"]\n', "line 1: expected a JSON object, got list"),
        ('{"task": "a", "reference": [1]}\n', "'reference' must be a string or a number"),
        ('{"task": "a", "id": 3}\n', "'id' must be a string"),
        ("\n\n", "holds no tasks"),
    ],
)
def test_bad_task_files_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError, match=message) as info:
        load_tasks(path)
    assert "\n" not in str(info.value)


def test_missing_file_suggests_the_bundled_set(tmp_path):
    with pytest.raises(TaskFileError, match=r"does not exist.*arithmetic"):
        load_tasks(tmp_path / "nope.jsonl")


def test_numbers_become_string_references_and_limit_applies(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task": "a", "reference": 4}\n{"task": "b"}\n{"task": "c"}\n')
    tasks = load_tasks(path, limit=2)
    assert [(t.id, t.reference) for t in tasks] == [("task-1", "4"), ("task-2", None)]


def test_bundled_preferences_pair_a_right_and_a_wrong_answer():
    data = resources.files("atlas_middleware") / "data" / "arithmetic-preferences.jsonl"
    shipped = [orjson.loads(line) for line in data.read_text().splitlines()]
    assert shipped == arithmetic_preferences(len(shipped))
    for pair in shipped:
        task = Task(task=pair["prompt"], reference=pair["reference"])
        assert task.is_correct(pair["chosen"]) and not task.is_correct(pair["rejected"])
