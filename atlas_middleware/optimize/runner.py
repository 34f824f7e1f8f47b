"""The optimisation run: split the tasks, score the active prompts on the held-out split, let
GEPA evolve the prompts on train/validation within the budget, gate the best candidate on the
held-out split, and write the versioned prompts, the trajectory and the Pareto front.

Layout of ``--out DIR``::

    active.yaml             the prompts supervise loads (point teacher.prompts at DIR)
    prompts-vN.yaml         every adopted version
    candidate-vN.yaml       a candidate the held-out split refused (never active)
    pareto.yaml             GEPA's Pareto front (validation scores per task)
    trajectory.md / .png    score per iteration
    summary.json            the figures of the last run
    run/                    resumable state: state.json, evals.jsonl, reflections.jsonl,
                            iterations.jsonl, gepa/ (GEPA's own run_dir)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from atlas_middleware.models.base import ChatModel
from atlas_middleware.optimize.adapter import (
    AtlasAdapter,
    FeedbackRoundRobin,
    JsonlCache,
    ReflectionModel,
    RolloutSettings,
    candidate_key,
    reflection_templates,
)
from atlas_middleware.optimize.ledger import Budget, BudgetExhausted, Ledger, Metered
from atlas_middleware.optimize.tasks import OptimizeTask, Split, TaskError, fingerprint, split_tasks
from atlas_middleware.prompts import (
    ACTIVE_FILE,
    COMPONENTS,
    DEFAULT_PROMPTS,
    PromptsMetadata,
    TeacherPrompts,
    load_prompts,
    now_iso,
    save_prompts,
)

STATE_VERSION = 1
IDLE_ITERATIONS = 8


class OptimizeError(ValueError):
    """A run that cannot start or continue; one line saying what to do."""


@dataclass
class OptimizeSettings:
    out: Path
    max_calls: int | None = 200  # model calls of every role, across resumed runs
    max_time_s: float | None = None  # wall time, across resumed runs
    heldout: float = 0.3
    val: float = 0.3
    seed: int = 0
    minibatch: int = 2
    min_gain: float = 0.0  # adopt only when held-out reward beats the active by more than this
    judges: Sequence[str] | None = None  # None: the config's RIM judges
    rim_samples: int = 1
    judge_max_tokens: int = 256
    reflection_max_tokens: int = 400
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    prompts: str | Path | None = None  # start from these; None: DIR/active.yaml, else defaults
    fresh: bool = False  # discard an unfinished run in DIR instead of resuming it
    specs: dict[str, str] = field(default_factory=dict)  # model specs, for the fingerprint


@dataclass
class OptimizeResult:
    adopted: bool
    reason: str
    stop_reason: str
    active: TeacherPrompts
    active_path: Path | None
    candidate_path: Path | None
    baseline_heldout: float | None
    candidate_heldout: float | None
    seed_val: float | None
    best_val: float | None
    iterations: list[dict[str, Any]]
    candidates: int
    ledger: Ledger
    elapsed_s: float
    resumed: bool
    out: Path

    def summary(self) -> dict[str, Any]:
        return {
            "adopted": self.adopted,
            "reason": self.reason,
            "stop_reason": self.stop_reason,
            "active_version": self.active.version,
            "active_path": str(self.active_path) if self.active_path else None,
            "candidate_path": str(self.candidate_path) if self.candidate_path else None,
            "baseline_heldout": self.baseline_heldout,
            "candidate_heldout": self.candidate_heldout,
            "seed_val": self.seed_val,
            "best_val": self.best_val,
            "iterations": len(self.iterations),
            "candidates": self.candidates,
            "elapsed_s": round(self.elapsed_s, 1),
            "resumed": self.resumed,
            "usage": self.ledger.to_json(),
        }


class _FileLog:
    """GEPA's log lines go to a file: its own Logger would take over stdout and stderr."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, message: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(message.rstrip() + "\n")


class _Iterations:
    """A GEPA callback writing one row per iteration (the score trajectory)."""

    def __init__(
        self,
        path: Path,
        ledger: Ledger,
        budget: Budget,
        notify: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.path = path
        self.ledger = ledger
        self.budget = budget
        self.notify = notify
        self.row: dict[str, Any] = {}

    def on_iteration_start(self, event: Any) -> None:
        self.row = {"iteration": event["iteration"], "accepted": False}

    def on_candidate_selected(self, event: Any) -> None:
        self.row.update(parent=event["candidate_idx"], parent_val=event["score"])

    def on_proposal_end(self, event: Any) -> None:
        self.row["components"] = sorted(event["new_instructions"])

    def on_evaluation_end(self, event: Any) -> None:
        key = "minibatch_before" if "minibatch_before" not in self.row else "minibatch_after"
        self.row[key] = round(sum(event["scores"]), 4)

    def on_candidate_accepted(self, event: Any) -> None:
        self.row.update(accepted=True, candidate=event["new_candidate_idx"])

    def on_valset_evaluated(self, event: Any) -> None:
        if event["iteration"] == 0:
            return
        self.row["val"] = round(event["average_score"], 4)

    def on_iteration_end(self, event: Any) -> None:
        state = event["state"]
        scores = state.program_full_scores_val_set
        self.row.update(
            best_val=round(max(scores), 4) if scores else None,
            candidates=len(state.program_candidates),
            calls=self.ledger.calls,
            tokens=self.ledger.tokens,
            cost_usd=round(self.ledger.cost_usd, 6),
            elapsed_s=round(self.budget.elapsed(), 1),
        )
        with self.path.open("ab") as handle:
            handle.write(orjson.dumps(self.row) + b"\n")
        self.notify("iteration", self.row)


def read_iterations(path: Path) -> list[dict[str, Any]]:
    """Rows by iteration; a replayed iteration (resume) replaces its earlier row."""
    rows: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            rows[int(row["iteration"])] = row
    return [rows[i] for i in sorted(rows)]


def rollout_bound(reward: Any) -> int:
    """The most model calls one supervised run can make: teacher 3 (probe, guidance,
    validation), student 2 (first try, guided retry), every judge sampled, each escalated."""
    judges = len(reward.judges)
    bound: int = 5 + judges * reward.samples + (judges if reward.large_model is not None else 0)
    return bound


def resolve_verifiers(tasks: Sequence[OptimizeTask]) -> dict[str, Any]:
    """Each task's verifier (by name; ``reference_match`` when it has a reference)."""
    from atlas_middleware import plugins
    from atlas_middleware.rim import as_verifier, exact_match, reference_match

    known: dict[str, Any] = {
        "reference_match": as_verifier(reference_match),
        "exact_match": as_verifier(exact_match),
    }
    out: dict[str, Any] = {}
    for task in tasks:
        name = task.verifier or ("reference_match" if task.reference is not None else None)
        if name is None:
            out[task.id] = None
            continue
        if name not in known:
            known.update({v.name: v for v in plugins.verifiers() if v.name not in known})
        if name not in known:
            raise TaskError(
                f"task {task.id!r} names verifier {name!r}, which no plugin provides; known: "
                f"{', '.join(sorted(known))}"
            )
        out[task.id] = known[name]
    return out


def optimize(
    tasks: Sequence[OptimizeTask],
    settings: OptimizeSettings,
    *,
    student: ChatModel,
    teacher: ChatModel,
    reflection: ChatModel,
    judge: ChatModel | None = None,
    large_judge: ChatModel | None = None,
    notify: Callable[[str, dict[str, Any]], None] | None = None,
) -> OptimizeResult:
    """Evolve the teacher's prompts on ``tasks`` (see the module docstring for the outputs).

    ``notify(kind, data)`` is called with ``"start"``, ``"rollout"``, ``"iteration"``,
    ``"heldout"`` and ``"done"`` events (the CLI draws its progress from them).
    """
    try:
        import gepa
        from gepa.core.state import GEPAState
    except ImportError:
        raise ImportError(
            "atlas optimize needs GEPA: pip install 'atlas-middleware[optimize]'"
        ) from None

    from atlas_middleware.config import AtlasConfig
    from atlas_middleware.rim import RIMReward

    tell = notify or (lambda kind, data: None)
    out = Path(settings.out)
    run = out / "run"
    out.mkdir(parents=True, exist_ok=True)
    verifiers = resolve_verifiers(tasks)
    split = split_tasks(tasks, heldout=settings.heldout, val=settings.val, seed=settings.seed)

    active, active_file = _active(out)
    seed_prompts = _seed(settings, active)
    if active_file is None:
        active = seed_prompts  # nothing active yet: the starting prompts are what runs today
    print_fp = _fingerprint(tasks, settings, seed_prompts, active)

    state = _read_state(run)
    resumed = False
    if state is not None and state.get("status") == "running" and not settings.fresh:
        if state.get("fingerprint") != print_fp:
            raise OptimizeError(
                f"{out} holds an unfinished run with other tasks, prompts or settings; run with "
                "the same arguments to resume it, or add --fresh to discard it"
            )
        resumed = True
    elif state is not None:
        _archive(run)
        state = None
    state = state or {"version": STATE_VERSION, "fingerprint": print_fp, "status": "running"}
    state["split"] = split.ids()

    ledger = Ledger.from_json(state.get("ledger"))
    budget = Budget(
        ledger,
        max_calls=settings.max_calls,
        max_time_s=settings.max_time_s,
        elapsed_before_s=float(state.get("elapsed_s", 0.0)),
    )

    def save_state(**changes: Any) -> None:
        state.update(changes)
        state["ledger"] = ledger.to_json()
        state["elapsed_s"] = budget.elapsed()
        _write_json(run / "state.json", state)

    def on_rollout() -> None:
        save_state()
        tell("rollout", {"ledger": ledger})

    judge_model = judge or teacher
    reward = RIMReward(
        Metered(judge_model, "judge", ledger),
        Metered(large_judge, "judge", ledger) if large_judge is not None else None,
        judges=list(settings.judges)
        if settings.judges is not None
        else AtlasConfig.load().rim.judges,
        samples=settings.rim_samples,
        max_tokens=settings.judge_max_tokens,
    )
    adapter = AtlasAdapter(
        base=seed_prompts,
        student=student,
        teacher=teacher,
        reward=reward,
        verifiers=verifiers,
        ledger=ledger,
        budget=budget,
        cache=JsonlCache(run / "evals.jsonl"),
        settings=settings.rollout,
        rollout_bound=rollout_bound(reward),
        on_rollout=on_rollout,
    )
    save_state()
    tell(
        "start",
        {
            "split": split,
            "resumed": resumed,
            "ledger": ledger,
            "max_calls": settings.max_calls,
            "max_time_s": settings.max_time_s,
        },
    )

    stop_reason = "budget"
    baseline_heldout: float | None = None
    try:
        # 1. What the active prompts score on the held-out split (the bar to beat).
        baseline_heldout = _mean(adapter.run(split.heldout, active.components()))
        tell("heldout", {"which": "active", "score": baseline_heldout})

        # 2. GEPA on train/validation, keeping enough budget back to check one candidate.
        def reserve() -> tuple[int, float]:
            n = len(split.heldout)
            return n * adapter.rollout_calls(), n * ledger.mean_rollout_seconds()

        adapter.reserve_calls, adapter.reserve_s = reserve()

        spent = {"calls": -1, "idle": 0}

        def stop(gepa_state: Any) -> bool:
            nonlocal stop_reason
            # Iterations that cost nothing (every minibatch perfect, no proposal) would spin
            # forever on a call budget alone.
            spent["idle"] = spent["idle"] + 1 if ledger.calls == spent["calls"] else 0
            spent["calls"] = ledger.calls
            if spent["idle"] >= IDLE_ITERATIONS:
                stop_reason = (
                    f"stalled: {IDLE_ITERATIONS} iterations in a row proposed nothing new "
                    "(minibatches already perfect, or no usable rewrite)"
                )
                return True
            adapter.reserve_calls, adapter.reserve_s = reserve()
            # An iteration scores the parent and the child on a minibatch and reflects once.
            need = 2 * settings.minibatch * adapter.rollout_calls() + 1
            seconds = 2 * settings.minibatch * ledger.mean_rollout_seconds()
            reason = budget.shortfall(
                need, seconds, reserve_calls=adapter.reserve_calls, reserve_s=adapter.reserve_s
            )
            if reason is not None:
                stop_reason = reason
            return reason is not None

        recorder = _Iterations(run / "iterations.jsonl", ledger, budget, tell)
        try:
            gepa.optimize(
                seed_candidate=seed_prompts.components(),
                trainset=split.train,
                valset=split.val,
                adapter=adapter,  # type: ignore[arg-type]  # gepa infers Never for its type vars
                reflection_lm=ReflectionModel(
                    reflection,
                    ledger=ledger,
                    budget=budget,
                    cache=JsonlCache(run / "reflections.jsonl"),
                    max_tokens=settings.reflection_max_tokens,
                    reserve=reserve,
                ),
                reflection_prompt_template=reflection_templates(),
                reflection_minibatch_size=min(settings.minibatch, len(split.train)),
                candidate_selection_strategy="pareto",
                # gepa's protocol is generic in its trajectories; ours are dicts
                module_selector=FeedbackRoundRobin(),  # type: ignore[arg-type]
                stop_callbacks=[stop],
                run_dir=str(run / "gepa"),
                logger=_FileLog(run / "gepa.log"),
                callbacks=[recorder],  # type: ignore[list-item]  # gepa's protocol: every hook
                seed=settings.seed,
                raise_on_exception=True,
                track_best_outputs=False,
            )
        except BudgetExhausted as exc:
            stop_reason = exc.reason
    except BudgetExhausted as exc:  # even the held-out baseline did not fit
        stop_reason = exc.reason
    finally:
        save_state()

    # 3. The best candidate by validation score; adopted only if the held-out split agrees.
    gepa_state: GEPAState[Any, Any] | None = (
        GEPAState.load(str(run / "gepa")) if (run / "gepa" / "gepa_state.bin").exists() else None
    )
    candidates = gepa_state.program_candidates if gepa_state else [seed_prompts.components()]
    val_scores = gepa_state.program_full_scores_val_set if gepa_state else [float("nan")]
    best = max(range(len(candidates)), key=lambda i: (val_scores[i], -i))
    best_prompts = adapter.prompts_for(candidates[best])
    candidate_heldout: float | None = None
    adopted, reason = False, ""
    if baseline_heldout is None:
        reason = "the budget ran out before the held-out baseline was scored"
    elif best_prompts.same_texts(active):
        reason = "no candidate scored better on validation than the active prompts"
    else:
        adapter.reserve_calls, adapter.reserve_s = 0, 0.0
        try:
            candidate_heldout = _mean(adapter.run(split.heldout, best_prompts.components()))
            tell("heldout", {"which": "candidate", "score": candidate_heldout})
        except BudgetExhausted as exc:
            reason = f"the budget ran out before the held-out check ({exc.reason})"
        if candidate_heldout is not None:
            adopted = candidate_heldout > baseline_heldout + settings.min_gain
            reason = (
                f"held-out reward {candidate_heldout:.3f} vs {baseline_heldout:.3f} "
                f"for the active prompts"
                + ("" if adopted else f" (needs more than +{settings.min_gain:g})")
            )

    # 4. Files.
    version = _next_version(out, active)
    meta = {
        "parent": active.version,
        "score": _finite(val_scores[best]),
        "heldout_score": candidate_heldout,
        "created": now_iso(),
        "baseline_heldout": baseline_heldout,
        "candidate": best,
        "run": state["fingerprint"],
    }
    active_path: Path | None = out / ACTIVE_FILE if active_file is not None else None
    candidate_path: Path | None = None
    if adopted:
        chosen = best_prompts.with_components(
            {}, version=version, metadata=PromptsMetadata.model_validate({**meta, "adopted": True})
        )
        versioned = save_prompts(chosen, out / f"prompts-v{version}.yaml")
        active = chosen.model_copy(
            update={"metadata": chosen.metadata.model_copy(update={"source": versioned.name})}
        )
        active_path = save_prompts(active, out / ACTIVE_FILE)
    else:
        if not best_prompts.same_texts(active):
            refused = best_prompts.with_components(
                {},
                version=version,
                metadata=PromptsMetadata.model_validate(
                    {**meta, "adopted": False, "reason": reason}
                ),
            )
            candidate_path = save_prompts(refused, out / f"candidate-v{version}.yaml")
        if active_file is None:
            # The out dir always holds prompts supervise can load: the ones in use today.
            first = active.with_components(
                {},
                metadata=PromptsMetadata(
                    created=now_iso(), heldout_score=baseline_heldout, source=None
                ),
            )
            save_prompts(first, out / f"prompts-v{first.version}.yaml")
            active_path = save_prompts(
                first.model_copy(
                    update={
                        "metadata": first.metadata.model_copy(
                            update={"source": f"prompts-v{first.version}.yaml"}
                        )
                    }
                ),
                out / ACTIVE_FILE,
            )
    if gepa_state is not None:
        _write_pareto(out / "pareto.yaml", gepa_state, split)
    iterations = read_iterations(run / "iterations.jsonl")
    seed_val = _finite(val_scores[0]) if gepa_state else None
    result = OptimizeResult(
        adopted=adopted,
        reason=reason,
        stop_reason=stop_reason,
        active=active,
        active_path=active_path,
        candidate_path=candidate_path,
        baseline_heldout=baseline_heldout,
        candidate_heldout=candidate_heldout,
        seed_val=seed_val,
        best_val=_finite(val_scores[best]) if gepa_state else None,
        iterations=iterations,
        candidates=len(candidates),
        ledger=ledger,
        elapsed_s=budget.elapsed(),
        resumed=resumed,
        out=out,
    )
    from atlas_middleware.optimize.report import write_reports

    write_reports(result)
    save_state(status="done", result=result.summary())
    tell("done", {"result": result})
    return result


# --- helpers -------------------------------------------------------------------------------
def _active(out: Path) -> tuple[TeacherPrompts, Path | None]:
    path = out / ACTIVE_FILE
    if path.exists():
        return load_prompts(path), path
    return DEFAULT_PROMPTS, None


def _seed(settings: OptimizeSettings, active: TeacherPrompts) -> TeacherPrompts:
    if settings.prompts is not None:
        return load_prompts(settings.prompts)
    return active


def _fingerprint(
    tasks: Sequence[OptimizeTask],
    settings: OptimizeSettings,
    seed: TeacherPrompts,
    active: TeacherPrompts,
) -> str:
    data = {
        "tasks": fingerprint(tasks),
        "seed": candidate_key(seed.components()),
        "active": candidate_key(active.components()),
        "split": [settings.heldout, settings.val, settings.seed, settings.minibatch],
        "judges": list(settings.judges) if settings.judges is not None else None,
        "samples": settings.rim_samples,
        "rollout": sorted(vars(settings.rollout).items()),
        "specs": sorted(settings.specs.items()),
    }
    return hashlib.sha256(orjson.dumps(data, default=str)).hexdigest()[:16]


def _read_state(run: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = orjson.loads((run / "state.json").read_bytes())
        return state
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        raise OptimizeError(
            f"{run / 'state.json'} is damaged; add --fresh to start a new run"
        ) from None


def _archive(run: Path) -> None:
    """A finished (or discarded) run moves aside; its caches are not reused."""
    if run.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = run.with_name(f"run-{stamp}")
        n = 1
        while target.exists():
            target = run.with_name(f"run-{stamp}-{n}")
            n += 1
        shutil.move(str(run), str(target))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str))
    os.replace(partial, path)


def _mean(records: Sequence[dict[str, Any]]) -> float:
    return sum(r["score"] for r in records) / len(records) if records else 0.0


def _finite(value: float | None) -> float | None:
    return (
        None
        if value is None or value != value or value in (float("inf"), float("-inf"))
        else round(float(value), 4)
    )


def _next_version(out: Path, active: TeacherPrompts) -> int:
    numbers = [active.version]
    for path in out.glob("*-v*.yaml"):
        tail = path.stem.rsplit("-v", 1)[-1]
        if tail.isdigit():
            numbers.append(int(tail))
    return max(numbers) + 1


def _write_pareto(path: Path, state: Any, split: Split) -> None:
    """GEPA's Pareto front: each candidate that is best on at least one validation task."""
    import yaml

    names = {i: t.id for i, t in enumerate(split.val)}
    front: dict[int, list[str]] = {}
    for val_id, programs in state.program_at_pareto_front_valset.items():
        for program in programs:
            front.setdefault(program, []).append(names.get(val_id, str(val_id)))
    scores = state.program_full_scores_val_set
    rows = []
    for index in sorted(front, key=lambda i: (-scores[i], i)):
        rows.append(
            {
                "candidate": index,
                "parents": [p for p in state.parent_program_for_candidate[index] if p is not None],
                "val_score": _finite(scores[index]),
                "best_on": sorted(front[index]),
                "val_scores": {
                    names.get(k, str(k)): round(v, 4)
                    for k, v in state.prog_candidate_val_subscores[index].items()
                },
                "prompts": {c: state.program_candidates[index].get(c, "") for c in COMPONENTS},
            }
        )
    text = yaml.safe_dump(
        {"candidates": len(state.program_candidates), "front": rows},
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    path.write_text(text, encoding="utf-8")
