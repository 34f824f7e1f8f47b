"""--granularity step: LangGraph runs whose nodes call atlas.reward() land in the store with their
steps, leave through `atlas export` with them, and become per-step examples (the guidance before
the step, the step's reward) for atlas-train sft (trained on a tiny model) and grpo."""

from __future__ import annotations

import json

import pytest
from atlas_middleware.integrations import langchain as lc
from atlas_middleware.integrations.langgraph import supervise_graph
from atlas_middleware.trainer.cli import main
from atlas_middleware.trainer.data import DataFilter, DataStats, iter_step_examples
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage

from atlas_middleware import telemetry
from atlas_middleware.models import ScriptedModel
from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli, scripted_teacher
from tests.integrations.test_langgraph_steps import judge, step_graph

GUIDANCE = "Plan first, then act; retry a flaky backend once."


def teacher() -> ScriptedModel:
    return scripted_teacher(probe="0.2", validate="VALID", guidance=GUIDANCE)


@pytest.fixture
def stored_runs(store_url, tmp_path, monkeypatch):
    """Two guided LangGraph sessions with rewarded steps (one failing node each), approved."""
    monkeypatch.setenv("ATLAS_STORE_URL", store_url)
    telemetry.configure(exporter="atlas", store=store_url, batch=False, set_global=False)
    try:
        for task in ("What is 12 + 30?", "What is 7 + 5?"):
            llm = FakeMessagesListChatModel(responses=[AIMessage("add them")])
            graph, _ = step_graph(llm)
            app = supervise_graph(
                graph,
                agent="calc",
                lane="coach",
                teacher=teacher(),
                reward=judge(0.9),
                reward_inline=True,
            )
            app.invoke({"messages": [HumanMessage(task)]})
    finally:
        telemetry.shutdown()
        lc.uninstrument()
    with open_store(store_url) as store:
        ids = [x.trace_id for x in store.iter_sessions()]
        store.set_review(ids, "approved")
    export = tmp_path / "traces.jsonl"
    atlas_cli("export", "-o", str(export), "--store", store_url)
    return store_url, export


def test_export_carries_steps_and_both_sources_give_the_same_step_examples(stored_runs):
    store_url, export = stored_runs
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert [(x["name"], x["status"]) for x in row["steps"]].count(("act", "error")) == 1
        assert any(x["evaluations"].get("plan_quality") for x in row["steps"])

    from_store = list(iter_step_examples(store_url))
    stats = DataStats()
    from_file = list(iter_step_examples(str(export), stats=stats))
    assert [e.to_json() for e in from_file] == [e.to_json() for e in from_store]
    # Per session: plan, the failed act, the retried act (tools' rewards went to their nodes).
    assert len(from_file) == 6 and stats.used == 6
    assert stats.skipped["step without reward"] == 4  # the two lookup tool calls per session
    first = from_file[0]
    assert first.step == "plan" and first.reward == pytest.approx(0.8)
    assert first.guidance == GUIDANCE and first.session_reward == pytest.approx(0.9)
    failed = next(e for e in from_file if e.error)
    assert failed.step == "act" and "flaky backend" in failed.error
    assert failed.reward == pytest.approx(0.05)  # act_ok 0.1, tool_ok 0.0
    assert "Steps so far:\n- plan: " in failed.task and failed.task.startswith("What is")
    high = list(iter_step_examples(str(export), DataFilter(min_reward=0.5)))
    assert {(e.step, e.reward) for e in high} == {("plan", 0.8), ("act", 0.5)}


@pytest.mark.model
def test_atlas_train_sft_and_grpo_read_steps(stored_runs, tiny_model, tmp_path):
    store_url, export = stored_runs
    out = tmp_path / "sft"
    code = main(
        [
            "sft",
            "--from",
            str(export),
            "--granularity",
            "step",
            "--model",
            str(tiny_model),
            "--output",
            str(out),
            "--min-reward",
            "0.5",
            "--store",
            store_url,
            "--set",
            "trl.per_device_train_batch_size=2",
            "-q",
        ]
    )
    assert code == 0
    used = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(used) == 4 and all(e["guidance"] == GUIDANCE for e in used)
    assert all(e["span_id"] and e["step"] in ("plan", "act") for e in used)
    assert json.loads((out / "run.json").read_text())["global_step"] == 2
    with open_store(store_url) as store:
        [run] = store.training_runs()
    assert run["sessions"] == 2

    # GRPO on the step prompts: one real step against a scripted OpenAI-compatible student.
    from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI, system_text

    grpo = tmp_path / "grpo"
    with ScriptedOpenAI(system_text) as served:
        code = main(
            [
                "grpo",
                "--from",
                str(export),
                "--granularity",
                "step",
                "--model",
                str(tiny_model),
                "--student",
                f"{served.url}|{MODEL}",
                "--output",
                str(grpo),
                "--max-steps",
                "1",
                "--set",
                "reward.verifier=tests.trainer.test_train:even_length",
                "--set",
                "trl.num_generations=2",
                "--set",
                "trl.per_device_train_batch_size=2",
                "--set",
                "trl.max_completion_length=8",
                "--set",
                "student_options.max_tokens=8",
                "-q",
            ]
        )
    assert code == 0
    prompts = [json.loads(line) for line in (grpo / "examples.jsonl").read_text().splitlines()]
    # One prompt per distinct step prompt: the two sessions' steps differ by task.
    assert len(prompts) == 6 and len({p["task"] for p in prompts}) == 6
    assert all("Next step: " in p["task"] for p in prompts)
    assert json.loads((grpo / "run.json").read_text())["global_step"] == 1
