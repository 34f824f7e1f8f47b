"""`atlas eval` and `atlas eval rewards` through the real CLI, on the embedded SmolLM2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import orjson
import pytest

from atlas_middleware.evaluate import wilson_interval
from atlas_middleware.storage import open_store
from atlas_middleware.tasks import load_tasks
from tests.helpers import atlas_cli


def run_atlas(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_middleware.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "missing.jsonl"], "task file missing.jsonl does not exist"),
        (["eval", "rewards"], "atlas eval rewards needs a preference file"),
        (["eval", "rewards", "missing.jsonl"], "cannot read preference file"),
        (["eval", "arithmetic", "extra"], "unexpected argument 'extra'"),
    ],
)
def test_bad_arguments_get_one_line_errors(tmp_path, args, message):
    proc = atlas_cli(*args, "--store", f"sqlite:///{tmp_path / 'a.db'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.model
@pytest.mark.timeout(1500)
def test_eval_on_the_embedded_model_matches_the_store(tmp_path, embedded_cache):
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    # The trained-teacher condition: a second teacher spec, the same weights through the
    # transformers backend from a folder of its own (as `atlas quickstart --train` hands its
    # checkpoint to atlas eval); its calls are the `chat trained-teacher` spans.
    folder = tmp_path / "trained-teacher"
    source = embedded_cache / "smollm2-135m-instruct"
    try:  # hard links: no 260 MB copy (a symlink would resolve to the embedded model's name)
        shutil.copytree(source, folder, copy_function=os.link)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
    trained = f"hf:{folder}"
    proc = run_atlas(
        "eval", "arithmetic", "--limit", "2", "--max-tokens", "24", "--json",
        "--engine", "transformers",
        "--trained-teacher", trained, "--store", store, "--out", str(tmp_path / "out"),
        # Generous timeouts: on a busy machine the teacher must not time out (fail open).
        env={"ATLAS_CACHE_DIR": str(embedded_cache), "ATLAS_TEACHER__TIMEOUT_S": "600"},
        timeout=1400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    conditions = ["student", "student + teacher", "student + trained teacher"]
    assert [s["condition"] for s in report["stats"]] == conditions
    run_id = report["run_id"]
    assert (tmp_path / "out" / f"eval-{run_id}.md").exists()
    assert (tmp_path / "out" / f"eval-{run_id}.png").read_bytes()[:4] == b"\x89PNG"

    # Recompute every figure of the table from the stored sessions alone.
    tasks = {t.task: t for t in load_tasks("arithmetic", limit=2)}
    with open_store(store) as s:
        sessions = [x for x in s.iter_sessions() if x.learning_key == f"eval:{run_id}"]
    assert len(sessions) == 2 * len(conditions)
    right: dict[tuple[str, str], bool] = {}
    for x in sessions:
        condition = x.agent_name.removeprefix("eval/")
        answer = x.final_answer or ""
        right[condition, tasks[x.task].id] = bool(answer.strip()) and bool(
            tasks[x.task].is_correct(answer)
        )
    assert {k[0] for k in right} == set(conditions) and len(right) == len(sessions)
    ids = sorted(t.id for t in tasks.values())
    for got in report["stats"]:
        name = got["condition"]
        mine = [x for x in sessions if x.agent_name == f"eval/{name}"]
        correct = sum(right[name, i] for i in ids)
        assert (got["tasks"], got["correct"]) == (len(ids), correct)
        assert got["accuracy"] == pytest.approx(correct / len(ids))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx(wilson_interval(correct, len(ids)))
        completed = sum(bool((x.final_answer or "").strip()) for x in mine)
        assert got["completion"] == pytest.approx(completed / len(ids))
        tokens = sum((x.input_tokens or 0) + (x.output_tokens or 0) for x in mine)
        assert got["mean_tokens"] == pytest.approx(tokens / len(ids))
        if name == "student":
            assert got["non_degradation"] is None
            assert {x.lane for x in mine} == {"auto"}
        else:
            # Not worse than the student alone: 1 - (right alone, wrong here) / n.
            broken = sum(right["student", i] and not right[name, i] for i in ids)
            assert got["non_degradation"] == pytest.approx(1 - broken / len(ids))
            assert {x.lane for x in mine} == {"coach"} and all(x.guidance for x in mine)
            assert got["mean_tokens"] > report["stats"][0]["mean_tokens"] > 0
    # Each teacher condition's guidance came from its own teacher model.
    with open_store(store) as s:
        spans = s.spans_for([x.trace_id for x in sessions])
    for x in sessions:
        names = {span.name for span in spans[x.trace_id]}
        assert ("chat trained-teacher" in names) == x.agent_name.endswith("trained teacher")


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_on_vllm_engines_batches_the_calls_and_records_them(tmp_path, embedded_cache):
    """--engine vllm: the student and the base teacher share one vLLM engine (the same model),
    its calls are stored with their real token counts, and the table agrees with the store."""
    store = f"sqlite:///{tmp_path / 'atlas.db'}"
    proc = run_atlas(
        "eval", "arithmetic", "--limit", "6", "--max-tokens", "24", "--json",
        "--engine", "vllm", "--teacher", "embedded-base", "--store", store,
        "--out", str(tmp_path / "out"),
        env={"ATLAS_CACHE_DIR": str(embedded_cache), "ATLAS_TEACHER__TIMEOUT_S": "600"},
        timeout=850,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert [s["condition"] for s in report["stats"]] == ["student", "student + teacher"]
    with open_store(store) as s:
        sessions = [x for x in s.iter_sessions() if x.learning_key == f"eval:{report['run_id']}"]
        spans = s.spans_for([x.trace_id for x in sessions])
    assert len(sessions) == 12
    tasks = {t.task: t for t in load_tasks("arithmetic", limit=6)}
    for got in report["stats"]:
        mine = [x for x in sessions if x.agent_name == f"eval/{got['condition']}"]
        correct = sum(bool(tasks[x.task].is_correct(x.final_answer or "")) for x in mine)
        assert got["correct"] == correct and got["timed_out"] == got["failed_open"] == 0
    calls = [sp for x in sessions for sp in spans[x.trace_id] if sp.name.startswith("chat ")]
    assert {sp.name for sp in calls} == {"chat smollm2-135m-instruct"}
    assert {sp.attributes["gen_ai.provider.name"] for sp in calls} == {"vllm"}
    assert all(sp.attributes["gen_ai.usage.input_tokens"] > 0 for sp in calls)
    assert all(0 < sp.attributes["gen_ai.usage.output_tokens"] <= 160 for sp in calls)
    assert all(x.guidance for x in sessions if x.agent_name.endswith("teacher"))


@pytest.mark.model
@pytest.mark.timeout(900)
def test_eval_rewards_with_the_references(tmp_path, embedded_cache):
    proc = run_atlas(
        "eval", "rewards", "arithmetic", "--limit", "2", "--json", "--out", str(tmp_path),
        env={
            "ATLAS_CACHE_DIR": str(embedded_cache),
            "ATLAS_RIM__JUDGES": '["accuracy", "helpfulness"]',
            "ATLAS_RIM__SAMPLES": "1",
        },
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    pairs = report["pairs"]
    assert len(pairs) == 2 and report["references"] is True
    # The reference decides accuracy (weighted highest), so chosen must win whatever the small
    # judge says about helpfulness.
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(p["model_calls"] == 1 for p in pairs)  # helpfulness only: accuracy was verified
    assert list(tmp_path.glob("rewards-*.md"))


@pytest.mark.model
@pytest.mark.timeout(900)
def test_eval_rewards_without_references_runs_the_judge_model(tmp_path, embedded_cache):
    proc = run_atlas(
        "eval", "rewards", "arithmetic", "--limit", "2", "--no-reference", "--json",
        "--out", str(tmp_path),
        env={
            "ATLAS_CACHE_DIR": str(embedded_cache),
            "ATLAS_RIM__JUDGES": '["accuracy"]',
            "ATLAS_RIM__SAMPLES": "1",
        },
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    pairs = report["pairs"]
    assert report["n"] == len(pairs) == 2 and report["references"] is False
    # Accuracy had no reference to lean on: the embedded judge was asked about every pair.
    assert all(p["model_calls"] == 1 for p in pairs) and report["model_calls"] == 2
    # The figures follow from the per-pair results, whatever the small judge decided.
    verdicts = [p["verdict"] for p in pairs]
    for p in pairs:
        if p["chosen_score"] is None or p["rejected_score"] is None:
            assert p["verdict"] == "unscored"
        else:
            better = p["chosen_score"] > p["rejected_score"]
            tie = p["chosen_score"] == p["rejected_score"]
            assert p["verdict"] == ("right" if better else "tie" if tie else "wrong")
    right = verdicts.count("right")
    assert report["right"] == right and report["accuracy"] == pytest.approx(right / 2)
    assert (report["ci_low"], report["ci_high"]) == pytest.approx(wilson_interval(right, 2))
    assert sum(report[v] for v in ("right", "wrong", "tie", "unscored")) == 2
    assert (
        "no references: the judge models decide" in next(tmp_path.glob("rewards-*.md")).read_text()
    )
