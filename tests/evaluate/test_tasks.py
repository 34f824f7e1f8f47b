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


# --- generated word problems for learning ---------------------------------------------------------
def test_splits_share_no_template_and_no_task():
    from atlas_middleware.tasks import SPLITS, templates, word_problems

    # train has more wordings (its own extra templates): a larger sample uses them all
    sets = {s: word_problems(s, 600 if s == "train" else 300, seed=0) for s in SPLITS}
    used = {s: {t.metadata["template"] for t in sets[s]} for s in SPLITS}
    assert len(templates("train")) > len(templates("test")) == 12
    for a in SPLITS:
        assert used[a] == set(templates(a))  # every template of the split is used
        for b in SPLITS:
            if a < b:
                assert not used[a] & used[b]
                assert not {t.task for t in sets[a]} & {t.task for t in sets[b]}
    # Another seed of the same split is a different sample, still from the split's templates.
    other = word_problems("train", 300, seed=1)
    assert {t.metadata["template"] for t in other} <= set(templates("train"))
    assert [t.task for t in other] != [t.task for t in sets["train"]]


def test_word_problems_are_seeded_distinct_and_carry_their_hint():
    from atlas_middleware.tasks import LEARNING_KEY, hint_leaks, word_problems

    tasks = word_problems("test", 300, seed=0)
    assert [t.to_json() for t in tasks] == [t.to_json() for t in word_problems("test", 300, 0)]
    assert len({t.task for t in tasks}) == 300 and len({t.id for t in tasks}) == 300
    assert {t.metadata["kind"] for t in tasks} == {"add_sub", "mul_div", "two_step"}
    for t in tasks:
        assert t.learning_key == LEARNING_KEY and t.verifier == "reference_match"
        hint, plan = t.metadata["hint"], t.metadata["plan"]
        assert hint.startswith("Compute ") and not hint_leaks(hint, t.reference), t
        value = eval(plan.replace("/", "//"))  # the plan is plain arithmetic
        assert str(value) == t.reference and value >= 0
        assert t.is_correct(f"so it is {t.reference}") and not t.is_correct("Answer: -1")


def test_word_problem_arguments_are_checked():
    from atlas_middleware.tasks import word_problems

    with pytest.raises(ValueError, match="split must be one of train, dev, test"):
        word_problems("val", 3)
    with pytest.raises(ValueError, match="kinds must be among"):
        word_problems("dev", 3, kinds=["algebra"])


def test_atlas_tasks_generate_writes_a_loadable_file(tmp_path, capsys):
    from atlas_middleware.cli import main

    out = tmp_path / "test.jsonl"
    assert (
        main(["tasks", "generate", "--split", "test", "--n", "12", "--seed", "3", "-o", str(out)])
        == 0
    )
    loaded = load_tasks(out)
    assert len(loaded) == 12 and all(t.metadata["split"] == "test" for t in loaded)
    assert loaded[0].metadata["hint"].startswith("Compute ")
    assert main(["tasks", "generate", "--split", "dev", "--n", "2", "--kinds", "mul_div"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["metadata"]["kind"] for r in rows] == ["mul_div", "mul_div"]


# --- public word problems -------------------------------------------------------------------------
SVAMP_ROWS = [
    {
        "ID": "chal-1",
        "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
        "Question": "How much do you have to pay to buy each pack?",
        "Equation": "( 76.0 - 25.0 )",
        "Answer": 51.0,
        "Type": "Subtraction",
    },
    {
        "ID": "chal-2",
        "Body": "Paco had 26 cookies. He ate 14 and bought 5 more.",
        "Question": "How many cookies does he have?",
        "Equation": "( ( 26.0 - 14.0 ) + 5.0 )",
        "Answer": 17.0,
        "Type": "Subtraction",
    },
    {
        "ID": "chal-3",
        "Body": "A rope of 7 m is cut in 2 equal pieces.",
        "Question": "How long is each piece?",
        "Equation": "( 7.0 / 2.0 )",
        "Answer": 3.5,  # not a whole number: left out
        "Type": "Common-Division",
    },
]


def test_public_word_problems_read_svamp_and_mawps(tmp_path):
    from atlas_middleware.tasks import public_word_problems
    from atlas_middleware.teacher import plan_value

    svamp = tmp_path / "SVAMP.json"
    svamp.write_bytes(orjson.dumps(SVAMP_ROWS))
    tasks = public_word_problems(svamp)
    assert [t.id for t in tasks] == ["svamp-chal-1", "svamp-chal-2"]
    assert tasks[0].task.endswith("on each pack How much do you have to pay to buy each pack?")
    assert [t.reference for t in tasks] == ["51", "17"]
    assert [t.metadata["hint"] for t in tasks] == ["Compute 76 - 25.", "Compute (26 - 14) + 5."]
    # The hint's computation is the answer (what compute validation and the hint condition use).
    assert [plan_value(t.metadata["hint"]) for t in tasks] == [51, 17]
    assert tasks[1].is_correct("He has 17 cookies") and not tasks[1].is_correct("12")
    mawps = tmp_path / "mawps.json"
    mawps.write_bytes(
        orjson.dumps(
            [
                {
                    "iIndex": 9,
                    "sQuestion": "Tom has 3 and gets 4. How many?",
                    "lEquations": ["X=(3.0+4.0)"],
                    "lSolutions": [7.0],
                }
            ]
        )
    )
    (task,) = public_word_problems(mawps, learning_key="mawps-addsub")
    assert (task.id, task.reference, task.learning_key) == ("mawps-9", "7", "mawps-addsub")
    assert plan_value(task.metadata["hint"]) == 7


def test_public_word_problems_sample_is_seeded_and_bad_files_get_one_line_errors(tmp_path):
    from atlas_middleware.tasks import TaskFileError, public_word_problems

    rows = [
        dict(SVAMP_ROWS[0], ID=f"x-{i}", Answer=float(i), Equation=f"( {i}.0 + 0.0 )")
        for i in range(50)
    ]
    path = tmp_path / "svamp.json"
    path.write_bytes(orjson.dumps(rows))
    a = public_word_problems(path, n=10, seed=1)
    assert len(a) == 10 and [t.id for t in a] == [
        t.id for t in public_word_problems(path, n=10, seed=1)
    ]
    assert [t.id for t in a] != [t.id for t in public_word_problems(path, n=10, seed=2)]
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(TaskFileError, match="expected a JSON list of problems"):
        public_word_problems(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('[{"q": 1}]')
    with pytest.raises(TaskFileError, match="unknown problem format"):
        public_word_problems(tmp_path / "other.json")
    with pytest.raises(TaskFileError, match="not a readable JSON file"):
        public_word_problems(tmp_path / "missing.json")


def test_atlas_tasks_import_writes_a_task_file(tmp_path, capsys):
    from atlas_middleware.cli import main

    svamp = tmp_path / "SVAMP.json"
    svamp.write_bytes(orjson.dumps(SVAMP_ROWS))
    out = tmp_path / "svamp.jsonl"
    assert main(["tasks", "import", str(svamp), "-o", str(out)]) == 0
    assert [t.reference for t in load_tasks(out)] == ["51", "17"]
    assert main(["tasks", "import", str(tmp_path / "nope.json"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.json: not a readable JSON file" in err and "Traceback" not in err
