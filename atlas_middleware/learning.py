"""Teach the teacher: the toy-scale recipe behind ``atlas learn`` (docs/learning.md).

1. **Tasks**: generated word problems (:func:`atlas_middleware.tasks.word_problems`), train and
   test splits that share no template.
2. **Warm-up data** by rejection sampling on the teaching reward: the base teacher samples several
   guidances per training task; a guidance is kept when the frozen student was wrong alone and
   right with it, and the guidance does not leak (it neither contains the reference nor states
   any answer, right or wrong). The generator's own operation hints ("Compute 70 - 27.") join
   as expert demonstrations. Validation verdicts decided by the references (VALID / INVALID on
   the student's own answers) train the teacher's checking job the same way.
3. **LoRA SFT** of the teacher on that data (a few MB adapter; peft + plain torch on the CPU).
4. **Evaluation** on the held-out test split (``atlas eval``'s machinery).

Each stage writes its result into the run folder and is skipped when it is already there, so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from atlas_middleware.leaks import leaks_reference, states_an_answer
from atlas_middleware.tasks import Task
from atlas_middleware.teacher import Validation


def leaks(guidance: str, reference: str | None, task: str = "") -> bool:
    """The leak check of the recipe (and of the teaching reward): the guidance states a result,
    or contains the reference where the task does not show it."""
    return states_an_answer(guidance) or leaks_reference(guidance, reference, task)


# --- the models' jobs, batched ------------------------------------------------------------------
async def _gather(calls: Sequence[Callable[[], Any]], concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Any]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def student_answers(
    student: Any,
    tasks: Sequence[Task],
    guidances: Sequence[str | None],
    *,
    max_tokens: int = 96,
    concurrency: int = 32,
) -> list[str]:
    """The frozen student's greedy answers, each with its guidance (or none), as ``atlas eval``'s
    student reads them."""
    from atlas_middleware.evaluate import student_messages
    from atlas_middleware.guidance import use_guidance

    def call(task: Task, guidance: str | None) -> Callable[[], Any]:
        async def run() -> str:
            with use_guidance(guidance, task=task.task):
                messages = student_messages(task.task)
            reply = await student.chat(messages, max_tokens=max_tokens, temperature=0.0)
            return str(reply.text)

        return run

    return await _gather([call(t, g) for t, g in zip(tasks, guidances, strict=True)], concurrency)


async def teacher_guidances(
    teacher_model: Any,
    tasks: Sequence[Task],
    *,
    temperature: float,
    max_tokens: int = 64,
    concurrency: int = 32,
) -> list[str]:
    """One guidance per task from the teacher's own guidance prompt."""
    from atlas_middleware.teacher import Teacher

    teacher = Teacher(teacher_model, guidance_max_tokens=max_tokens, temperature=temperature)
    return await _gather([functools.partial(teacher.guidance, t.task) for t in tasks], concurrency)


async def teacher_verdicts(
    teacher_model: Any,
    tasks: Sequence[Task],
    answers: Sequence[str],
    *,
    validation: Validation = "verdict",
    concurrency: int = 32,
) -> list[bool]:
    """The teacher's VALID / INVALID on each answer, greedy: by its validation prompt
    (``verdict``) or by computing the calculation its guidance names (``compute``)."""
    from atlas_middleware.teacher import Teacher

    budget = 16 if validation == "verdict" else 64  # compute: a whole guidance
    teacher = Teacher(
        teacher_model, guidance_max_tokens=budget, temperature=0.0, validation=validation
    )
    verdicts = await _gather(
        [
            functools.partial(teacher.validate, t.task, a)
            for t, a in zip(tasks, answers, strict=True)
        ],
        concurrency,
    )
    return [v.valid for v in verdicts]


# --- warm-up data -------------------------------------------------------------------------------
@dataclass
class Example:
    """One SFT example: the teacher's prompt for a job and the target reply."""

    job: str  # guidance | validate
    task: str
    target: str
    source: str  # rejection | hint | verdict
    answer: str | None = None  # validate: the student's answer being checked

    def messages(self) -> list[dict[str, str]]:
        from atlas_middleware.prompts import DEFAULT_PROMPTS

        if self.job == "guidance":
            return [
                {"role": "system", "content": DEFAULT_PROMPTS.guidance},
                {"role": "user", "content": "Task:\n" + self.task + "\n\nGuidance:"},
                {"role": "assistant", "content": self.target},
            ]
        return [
            {"role": "system", "content": DEFAULT_PROMPTS.validate_},
            {
                "role": "user",
                "content": "Task:\n" + self.task + "\n\nStudent's answer:\n" + (self.answer or ""),
            },
            {"role": "assistant", "content": self.target},
        ]


async def rejection_sample(
    teacher_model: Any,
    student: Any,
    tasks: Sequence[Task],
    *,
    samples: int = 4,
    temperature: float = 0.8,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[list[Example], dict[str, Any]]:
    """Guidances that turned the student's wrong answer right without leaking, plus verdict
    examples on the student's own answers. Returns the examples and the counts."""
    say = on_progress or (lambda _: None)
    alone = await student_answers(student, tasks, [None] * len(tasks))
    right_alone = [bool(t.is_correct(a)) for t, a in zip(tasks, alone, strict=True)]
    say(f"student alone: {sum(right_alone)}/{len(tasks)} right")
    wrong = [t for t, ok in zip(tasks, right_alone, strict=True) if not ok]
    kept: list[Example] = []
    drawn = leaked = fixed = 0
    for round_ in range(samples):
        guidances = await teacher_guidances(teacher_model, wrong, temperature=temperature)
        answers = await student_answers(student, wrong, guidances)
        for task, guidance, answer in zip(wrong, guidances, answers, strict=True):
            drawn += 1
            if leaks(guidance, task.reference, task.task):
                leaked += 1
                continue
            if task.is_correct(answer):
                fixed += 1
                kept.append(Example("guidance", task.task, guidance, "rejection"))
        say(f"sample round {round_ + 1}/{samples}: kept {len(kept)} of {drawn} ({leaked} leaked)")
    verdicts = [
        Example(
            "validate",
            t.task,
            "VALID" if ok else "INVALID: the final number does not follow from the problem.",
            "verdict",
            answer=a,
        )
        for t, a, ok in zip(tasks, alone, right_alone, strict=True)
    ]
    stats = {
        "tasks": len(tasks),
        "student_alone_right": sum(right_alone),
        "guidances_drawn": drawn,
        "guidances_leaked": leaked,
        "guidances_kept": fixed,
    }
    return kept + verdicts, stats


def hint_examples(tasks: Sequence[Task]) -> list[Example]:
    """The generator's operation hints as expert demonstrations of guidance."""
    return [
        Example("guidance", t.task, t.metadata["hint"], "hint")
        for t in tasks
        if t.metadata.get("hint")
    ]


def balance_verdicts(examples: list[Example], seed: int = 0) -> list[Example]:
    """As many INVALID as VALID verdict examples (the student is mostly wrong: unbalanced, the
    teacher would learn to say INVALID to everything)."""
    rng = random.Random(seed)
    valid = [e for e in examples if e.job == "validate" and e.target == "VALID"]
    invalid = [e for e in examples if e.job == "validate" and e.target != "VALID"]
    rng.shuffle(invalid)
    keep = invalid[: max(len(valid), 8)]
    return [e for e in examples if e.job != "validate"] + valid + keep


# --- LoRA SFT -----------------------------------------------------------------------------------
@dataclass
class SFTSettings:
    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 5e-4
    rank: int = 8
    alpha: int = 16
    seed: int = 0
    max_length: int = 256


def sft_lora(
    base_dir: Path,
    examples: Sequence[Example],
    out_dir: Path,
    settings: SFTSettings | None = None,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[int, Path], None] | None = None,
) -> Path:
    """Train a LoRA adapter on ``examples`` (loss on the assistant reply only); save it to
    ``out_dir`` with ``base_model_name_or_path`` set to ``embedded``, so it loads anywhere the
    embedded model is installed. ``on_epoch(epoch, folder)`` gets a checkpoint after each epoch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atlas_middleware.models.local import set_torch_threads

    cfg = settings or SFTSettings()
    set_torch_threads()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base_dir), local_files_only=True, dtype=torch.float32
    )
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    rows = [_encode(tokenizer, e, cfg.max_length) for e in examples]
    rng = random.Random(cfg.seed)
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate
    )
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            batch = [rows[i] for i in order[start : start + cfg.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (tokens, target) in enumerate(batch):
                ids[row, : len(tokens)] = torch.tensor(tokens)
                labels[row, : len(target)] = torch.tensor(target)
                mask[row, : len(tokens)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            # linear decay
            for group in optimiser.param_groups:
                group["lr"] = cfg.learning_rate * max(0.0, 1 - (step + 1) / total)
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss.detach()))
        if on_epoch is not None:
            folder = out_dir.parent / f"{out_dir.name}-epoch{epoch + 1}"
            _save(model, folder)
            on_epoch(epoch + 1, folder)
    _save(model, out_dir)
    return out_dir


def _save(model: Any, folder: Path) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "embedded"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def _encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    messages = example.messages()
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = prompt + example.target + tokenizer.eos_token
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
    return ids, labels


# --- statistics ---------------------------------------------------------------------------------
def paired_difference(
    a: Sequence[bool], b: Sequence[bool], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Accuracy of ``b`` minus ``a`` on the same tasks: the difference, its 95% paired bootstrap
    interval, and McNemar's exact two-sided p-value (on the discordant pairs)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("paired_difference needs two equally long, non-empty outcome lists")
    diffs = [int(y) - int(x) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    gained = sum(1 for d in diffs if d > 0)
    lost = sum(1 for d in diffs if d < 0)
    k, m = min(gained, lost), gained + lost
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {
        "difference": sum(diffs) / n,
        "ci_low": low,
        "ci_high": high,
        "gained": gained,
        "lost": lost,
        "mcnemar_p": p,
    }


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as out:
        for row in rows:
            out.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)  # whole or absent: a resumed run never reads half a file


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"
