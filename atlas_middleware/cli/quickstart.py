"""``atlas quickstart``: the whole loop on your machine, offline, in a few minutes.

A small LangGraph agent (solve → extract) answers the bundled arithmetic word problems with the
embedded SmolLM2 as its student; the trained teacher shipped in the package (the same model plus
the LoRA adapter ``atlas learn`` trained, docs/learning.md) probes every task, coaches and
validates; RIM rewards every session (its judges: the base model); spans and sessions land in
the embedded store. ``--train`` continues: the sessions train the teacher further with GRPO on
the CPU, and ``atlas eval`` measures the student with the shipped and the newly trained teacher.

The teacher works as in production, with two differences that make one short run show
everything: ``--lanes rotate`` (the default) runs each task in the next lane of coach → paired →
auto after the probe has said which lane it would choose (the table marks a lane the rotation
forced), and the teacher's replies are capped at ``--teacher-max-tokens``. The reference answer
scores the reward and the table's ✓/✗; the teacher's validation never sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

from atlas_middleware.cli.common import (
    CLIError,
    add_store_argument,
    console,
    parse_positive_int,
    store_url,
)
from atlas_middleware.models.base import ChatModel

ROTATION = ("coach", "paired", "auto")
AGENT = "quickstart-calculator"
STUDENT_PROMPT = "Solve the word problem. Show the calculation briefly, then the final number."
PROBE_MAX_TOKENS = 16  # the probe's reply is one number; a short budget keeps CPU runs short


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="the whole loop offline: a LangGraph agent supervised, rewarded, traced, stored "
        "(--train: and a teacher trained and measured)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--tasks", type=parse_positive_int, default=9, help="bundled tasks to run (default 9)"
    )
    parser.add_argument("--student", metavar="SPEC", help="student model (default: embedded)")
    parser.add_argument(
        "--teacher",
        metavar="SPEC",
        help="teacher model (default: embedded, the trained teacher; embedded-base: untrained)",
    )
    parser.add_argument(
        "--lanes",
        choices=("rotate", "probe"),
        default="rotate",
        help="rotate: the teacher probes every task, then tasks cycle through coach, paired "
        "and auto so you see each lane (default); probe: the probe's lane runs, as in production",
    )
    parser.add_argument(
        "--max-tokens", type=parse_positive_int, default=48, help="student reply budget"
    )
    parser.add_argument(
        "--teacher-max-tokens",
        type=parse_positive_int,
        default=64,
        help="cap on each teacher reply: guidance, validation, lessons (default 64)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="then train the teacher further with GRPO on these sessions and evaluate it "
        "(CPU, minutes)",
    )
    parser.add_argument(
        "--train-steps",
        type=parse_positive_int,
        default=4,
        help="GRPO steps with --train (default 4)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("atlas-quickstart"),
        help="folder for the trained teacher and the eval report (default ./atlas-quickstart)",
    )
    add_store_argument(parser)
    parser.set_defaults(func=run)


def _build_graph(llm: Any) -> Any:
    from langchain_core.messages import SystemMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from opentelemetry import trace

    class State(MessagesState):
        answer: str
        trace_id: str

    def solve(state: State) -> dict:
        return {"messages": [llm.invoke([SystemMessage(STUDENT_PROMPT), *state["messages"]])]}

    def extract(state: State) -> dict:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", str(state["messages"][-1].content))
        # The session this run belongs to, for the table (the node runs inside its trace).
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        return {"answer": numbers[-1] if numbers else "", "trace_id": trace_id}

    builder = StateGraph(State)
    builder.add_node("solve", solve)
    builder.add_node("extract", extract)
    builder.add_edge(START, "solve")
    builder.add_edge("solve", "extract")
    builder.add_edge("extract", END)
    return builder.compile(name="quickstart")


class CappedModel(ChatModel):
    """A model with every reply capped at ``limit`` tokens (the quickstart's teacher: a CPU-sized
    demo). Calls, spans and usage are the wrapped model's own; closing is left to its owner."""

    def __init__(self, inner: ChatModel, limit: int) -> None:
        super().__init__(policy=inner.policy)
        self.inner, self.limit = inner, limit
        self.name, self.provider = inner.name, inner.provider
        self.validation, self.runs_locally = inner.validation, inner.runs_locally

    async def _complete(self, messages, *, max_tokens, temperature, stop):  # pragma: no cover
        raise NotImplementedError("CappedModel delegates chat() to the wrapped model")

    async def chat(self, messages, *, max_tokens=256, **kwargs):
        return await self.inner.chat(messages, max_tokens=min(max_tokens, self.limit), **kwargs)

    async def aclose(self) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    try:
        from langchain_core.messages import HumanMessage

        from atlas_middleware.integrations.langchain import AtlasChatModel
        from atlas_middleware.integrations.langgraph import supervise_graph
    except ImportError as exc:
        raise CLIError(f"{exc}") from None
    from rich.live import Live
    from rich.panel import Panel

    from atlas_middleware import telemetry
    from atlas_middleware.cli.eval import Models
    from atlas_middleware.prompts import as_prompts
    from atlas_middleware.rim import RIMReward
    from atlas_middleware.storage import open_store
    from atlas_middleware.tasks import load_tasks

    out = console()
    url = store_url(args)
    tasks = load_tasks("arithmetic", limit=args.tasks)
    # A 135M model on a busy CPU can take minutes for a long guidance: waiting beats failing
    # open here, since the point is to see the teacher at work.
    models = Models(timeout_s=600.0)
    student = models.get(args.student, "student")
    teacher = models.get(args.teacher)
    judge = models.get(args.teacher, judge=True)
    # The run's own settings: the playbook lives in the run's store, the probe is short.
    config = models.config.model_copy(
        update={
            "storage": models.config.storage.model_copy(update={"url": url}),
            "lanes": models.config.lanes.model_copy(update={"probe_max_tokens": PROBE_MAX_TOKENS}),
        }
    )
    prompts = as_prompts(config.teacher.prompts)
    out.print(
        Panel.fit(
            f"[bold]atlas quickstart[/bold]: a LangGraph agent (student [cyan]{student.name}"
            f"[/cyan]) supervised by a teacher ([cyan]{teacher.name}[/cyan]) on {len(tasks)} "
            f"arithmetic word problems.\nEvery run: probe → lane → guidance → answer → "
            f"validation (→ one guided retry) → RIM reward → spans → [cyan]{url}[/cyan]"
            + (
                "\nThe probe runs on every task; lanes then rotate coach → paired → auto so you "
                "see each ([italic]forced[/italic]: the probe would have chosen another)."
                if args.lanes == "rotate"
                else "\nThe probe's confidence picks each lane, as in production."
            ),
            border_style="blue",
        )
    )
    models.load(out)
    provider = telemetry.configure(exporter="atlas", store=url, service_name="atlas-quickstart")
    coach = CappedModel(teacher, args.teacher_max_tokens)
    app = supervise_graph(
        _build_graph(AtlasChatModel(model=student, max_tokens=args.max_tokens)),
        agent=AGENT,
        teacher=coach,
        # Two judges and one sample keep a CPU run short; accuracy comes from the reference.
        reward=RIMReward(judge, judges=["accuracy", "helpfulness"], samples=1, max_tokens=48),
        reward_inline=True,  # judged before the row is printed, so the table shows the reward
        config=config,
        learning_key="arithmetic",
        answer=lambda state: state.get("answer", ""),
        # The teacher probes even where the rotation forces the lane, and validates on its own:
        # the reference is for the reward and the table only.
        always_probe=True,
        reference_validates=False,
        # A busy CPU must not make the teacher miss its deadline and fail open every time.
        teacher_timeout_s=300.0,
        probe_timeout_s=120.0,
    )

    table = _table()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    activity = Activity(len(tasks))
    provider.add_span_processor(activity)
    with open_store(url) as store, Live(activity.view(table), console=out, refresh_per_second=4):
        for i, task in enumerate(tasks):
            lane = ROTATION[i % len(ROTATION)] if args.lanes == "rotate" else None
            activity.next_task(i + 1)
            t0 = time.perf_counter()
            state = app.options(reference=task.reference, lane=lane).invoke(
                {"messages": [HumanMessage(task.task)]}
            )
            provider.force_flush()
            session = store.get_session(state["trace_id"])
            spans = store.spans_for([state["trace_id"]]).get(state["trace_id"], [])
            row = {
                "task": task,
                "answer": state.get("answer", ""),
                "correct": bool(task.is_correct(state.get("answer", ""))),
                "session": session,
                "seconds": time.perf_counter() - t0,
                "forced": lane is not None,
                **teacher_view(spans, prompts),
            }
            row["probe_lane"] = config.lanes.lane_for(session.probe_confidence if session else None)
            rows.append(row)
            _add_row(table, i + 1, row)
        activity.done()
        lessons = _lessons(store)
    elapsed = time.perf_counter() - started
    with out.status("the student alone on the same tasks (no teacher, not stored) ..."):
        alone = student_alone(student, tasks, args.max_tokens)
    _summary(out, rows, elapsed, url, lessons, alone)
    if args.train:
        _train_and_evaluate(args, out, url, tasks, models)
    asyncio.run(models.close())
    telemetry.shutdown()
    return 0


class Activity(SpanProcessor):
    """What the run is doing right now, under the table: which task, which step (read from the
    spans as they start: the teacher's probe, the student's answer, a judge), for how long. A
    135M model on a busy CPU takes minutes per task; this says it is working, and on what."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.task = 0
        self.step = "loading"
        self.since = time.perf_counter()

    def next_task(self, number: int) -> None:
        self.task, self.step, self.since = number, "starting", time.perf_counter()

    def done(self) -> None:
        self.task = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        from atlas_middleware.telemetry import schema as s

        attributes = span.attributes or {}
        role = attributes.get(s.ATLAS_SPAN_ROLE)
        if role == s.ROLE_TEACHER:
            step = f"teacher: {attributes.get(s.ATLAS_TEACHER_STEP) or 'thinking'}"
        elif role == s.ROLE_STUDENT:
            step = "student: answering"
        elif role == s.ROLE_JUDGE:
            step = "judge: scoring the answer (RIM)"
        elif role == s.ROLE_TOOL:
            step = f"tool: {span.name}"
        else:
            return
        self.step, self.since = step, time.perf_counter()

    def view(self, table: Any) -> Any:
        activity = self

        class View:
            def __rich__(self) -> Any:
                from rich.console import Group
                from rich.text import Text

                if not activity.task:
                    return table
                line = Text(
                    f"task {activity.task}/{activity.tasks} · {activity.step} · "
                    f"{time.perf_counter() - activity.since:.0f}s",
                    style="dim",
                )
                return Group(table, line)

        return View()


def teacher_view(spans: list[Any], prompts: Any) -> dict[str, Any]:
    """What the teacher did in one stored session, read back from its spans: the probe's reply,
    the validation's verdict (None when none ran) and the guided retries."""
    import orjson

    from atlas_middleware.telemetry import schema as s
    from atlas_middleware.telemetry.genai import message_text

    def messages(span: Any, key: str) -> list[dict[str, Any]]:
        try:
            value = orjson.loads(span.attributes.get(key) or "[]")
        except orjson.JSONDecodeError:
            return []
        return value if isinstance(value, list) else []

    probe_reply = validation = None
    retries = 0
    for span in spans:
        if span.attributes.get(s.ATLAS_SPAN_ROLE) == s.ROLE_SESSION:
            retries = int(span.attributes.get(s.ATLAS_RETRIES) or 0)
            validation = span.attributes.get(s.ATLAS_VALIDATION_VALID)
        if not span.name.startswith("chat "):
            continue
        sent = messages(span, s.GEN_AI_INPUT_MESSAGES)
        if sent and message_text(sent[0]) == prompts.probe:
            probe_reply = "".join(message_text(m) for m in messages(span, s.GEN_AI_OUTPUT_MESSAGES))
    return {"probe_reply": probe_reply, "valid": validation, "retries": retries}


def _lessons(store: Any) -> list[str]:
    from atlas_middleware.playbook import Playbook

    try:
        return Playbook(store, "arithmetic").lessons()
    except Exception:  # a store without playbooks: the summary just says nothing about them
        return []


def _table() -> Any:
    from rich.table import Table

    table = Table(title="supervised sessions", title_justify="left")
    for name, justify in [
        ("#", "right"),
        ("task", "left"),
        ("probe", "left"),
        ("lane", "left"),
        ("answer", "right"),
        ("ref", "right"),
        ("", "center"),
        ("teacher check", "left"),
        ("reward", "right"),
        ("tokens", "right"),
        ("time", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=name != "task")  # type: ignore[arg-type]
    return table


def _add_row(table: Any, number: int, row: dict[str, Any]) -> None:
    from atlas_middleware.cli.common import format_reward, truncate

    session, task = row["session"], row["task"]
    tokens = (session.input_tokens or 0) + (session.output_tokens or 0) if session else 0
    lane = session.lane if session else "?"
    confidence = session.probe_confidence if session else None
    probe = (
        f"{confidence:.2f} → {row['probe_lane']}"
        if confidence is not None
        else f"no number → {row['probe_lane']}"
    )
    if row["forced"] and lane != row["probe_lane"]:
        lane += " [italic](forced)[/italic]"
    if row["valid"] is None:
        check = ""
    elif row["valid"]:
        check = "valid"
    else:
        check = "invalid → retry ↻" if row["retries"] else "invalid"
    table.add_row(
        str(number),
        truncate(task.task, 48),
        probe,
        lane,
        row["answer"] or "-",
        task.reference or "",
        "[green]✓[/green]" if row["correct"] else "[red]✗[/red]",
        check,
        format_reward(session.reward_score if session else None),
        f"{tokens:,}",
        f"{row['seconds']:.0f}s",
    )


def student_alone(student: ChatModel, tasks: list[Any], max_tokens: int) -> list[bool]:
    """Whether the student alone (the agent's prompt, no teacher, greedy) answers each task
    right, read the way the agent's graph reads it (the reply's last number). A baseline, not a
    session: its model calls are not traced."""
    from opentelemetry import trace

    from atlas_middleware import telemetry

    async def one(task: Any) -> bool:
        reply = await student.chat(
            [{"role": "system", "content": STUDENT_PROMPT}, {"role": "user", "content": task.task}],
            max_tokens=max_tokens,
        )
        numbers = re.findall(r"-?\d+(?:\.\d+)?", reply.text)
        return bool(task.is_correct(numbers[-1] if numbers else ""))

    async def every() -> list[bool]:
        return list(await asyncio.gather(*(one(task) for task in tasks)))

    from atlas_middleware.portal import get_portal

    # On the loop the agent's calls ran on (a local model's batching lives there).
    with telemetry.pinned(trace.NoOpTracer()):
        return get_portal().call(every)


def _summary(
    out: Any,
    rows: list[dict[str, Any]],
    elapsed: float,
    url: str,
    lessons: list[str],
    alone: list[bool],
) -> None:
    from collections import Counter

    from atlas_middleware.evaluate import wilson_interval

    n = len(rows)
    right = sum(r["correct"] for r in rows)
    low, high = wilson_interval(right, n)
    sessions = [r["session"] for r in rows if r["session"] is not None]
    lanes = Counter(s.lane for s in sessions)
    rewards = [s.reward_score for s in sessions if s.reward_score is not None]
    tokens = sum((s.input_tokens or 0) + (s.output_tokens or 0) for s in sessions)
    probed = sum(r["probe_reply"] is not None for r in rows)
    confident = sum(s.probe_confidence is not None for s in sessions)
    forced = sum(
        r["forced"] and r["session"] and r["session"].lane != r["probe_lane"] for r in rows
    )
    checked = [r for r in rows if r["valid"] is not None]
    out.print(
        f"\n[bold]{right}/{n} correct[/bold] ({right / n:.0%}, 95% CI {low:.0%}–{high:.0%}) · "
        f"lanes {', '.join(f'{k} {v}' for k, v in sorted(lanes.items()))} · "
        f"mean reward {sum(rewards) / len(rewards) if rewards else float('nan'):.2f} · "
        f"{tokens:,} tokens · {elapsed:.0f} s"
    )
    out.print(
        f"teacher: probed {probed}/{n} tasks ({confident} replies held a confidence"
        + (f"; the rotation forced {forced} lanes" if forced else "")
        + f") · validated {len(checked)} answers, {sum(not r['valid'] for r in checked)} "
        f"invalid, {sum(r['retries'] for r in rows)} guided retries · "
        f"playbook 'arithmetic': {len(lessons)} lessons"
    )
    solo = sum(alone)
    delta = right - solo
    out.print(
        f"[bold]on these {n} tasks: the student alone {solo}/{n} ({solo / n:.0%}), supervised "
        f"{right}/{n} ({right / n:.0%}): {delta:+d} task{'s' if abs(delta) != 1 else ''}[/bold] "
        "[dim](a handful of tasks says little; `atlas eval` and docs/learning.md measure it "
        "on hundreds)[/dim]"
    )
    atlas = atlas_command()
    example = sessions[0].trace_id[:8] if sessions else "<id>"
    out.print(
        f"{len(sessions)} sessions with their spans are in [cyan]{url}[/cyan]. Next:\n"
        f"  {atlas} sessions list --store {url}              # what was stored\n"
        f"  {atlas} sessions show {example} --store {url}    # one session and its span tree\n"
        f"  {atlas} ui --store {url}                         # review them in a browser\n"
        f"  {atlas} quickstart --train                       # train a teacher, then measure it",
        highlight=False,
    )


def atlas_command() -> str:
    """How to run ``atlas`` from the user's shell: ``atlas`` when that is this installation's,
    else the path of this environment's script (``.venv/bin/atlas`` after ``make quickstart``,
    whose venv is not activated)."""
    import os
    import shutil
    import sys

    script = Path(sys.prefix) / "bin" / "atlas"
    found = shutil.which("atlas")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "atlas"
    if not script.exists():
        return f"{Path(sys.executable).name} -m atlas_middleware.cli"
    try:
        relative = os.path.relpath(script)
    except ValueError:  # another drive (Windows)
        return str(script)
    return relative if not relative.startswith("..") else str(script)


def _train_and_evaluate(
    args: argparse.Namespace, out: Any, url: str, tasks: list[Any], models: Any
) -> None:
    """Review → atlas-train grpo → atlas eval with the old and the new teacher."""
    import os
    import subprocess
    import sys

    from atlas_middleware.evaluate import STUDENT_ALONE, WITH_TEACHER, WITH_TRAINED, Condition
    from atlas_middleware.models import build_model, embedded_model_dir, trained_teacher_model_dir
    from atlas_middleware.models.local import TEACHER_CARD, teacher_card
    from atlas_middleware.storage import open_store
    from atlas_middleware.tasks import write_tasks

    if args.teacher or args.student:
        raise CLIError("--train trains the embedded teacher; drop --teacher/--student")
    args.out.mkdir(parents=True, exist_ok=True)
    # 1. Review: training reads approved sessions only; here we approve this run's sessions.
    with open_store(url) as store:
        ids = [s.trace_id for s in store.iter_sessions() if s.agent_name == AGENT]
        approved = store.set_review(ids, "approved", "atlas quickstart --train")
    out.print(f"\n[bold]training[/bold]: approved {approved} quickstart sessions; GRPO on CPU")
    references = args.out / "tasks.jsonl"
    write_tasks(tasks, references)
    model_dir = embedded_model_dir()
    with out.status("merging the shipped teacher's adapter into a model folder to train ..."):
        teacher_dir = trained_teacher_model_dir()
    run_dir = args.out / "teacher-grpo"
    # 2. GRPO with the teaching reward, continuing from the shipped trained teacher: it learns to
    # write guidance that makes the frozen student (the embedded model) right. Small settings
    # keep it to minutes.
    command = [
        sys.executable, "-m", "atlas_middleware.trainer.cli", "grpo",
        "--from", url, "--learning-key", "arithmetic", "--references", str(references),
        "--model", str(teacher_dir), "--student", f"transformers:{model_dir}",
        "--output", str(run_dir), "--max-steps", str(args.train_steps),
        "--set", "trl.num_generations=2", "--set", "trl.per_device_train_batch_size=2",
        "--set", "trl.max_completion_length=48", "--set", "trl.learning_rate=1e-5",
        "--set", "trl.save_steps=1000", "--set", "student_options.max_tokens=32",
    ]  # fmt: skip
    if subprocess.run(command, env=os.environ.copy(), check=False).returncode != 0:
        raise CLIError(f"atlas-train failed; rerun it to see why: {' '.join(command)}")
    # It validates as the teacher it continues from: by computing its plan.
    from atlas_middleware.models.embedded import trained_teacher_dir

    card = teacher_card(trained_teacher_dir())
    card["continued"] = {"recipe": "grpo", "steps": args.train_steps, "sessions": approved}
    (run_dir / "final" / TEACHER_CARD).write_text(json.dumps(card, indent=2) + "\n")
    trained = build_model(f"hf:{run_dir / 'final'}")
    # 3. Measure: the student alone, with the untrained and with the trained teacher.
    from rich.progress import Progress

    from atlas_middleware.evaluate import run_eval

    student = models.get(None, "student")
    lane = "coach"  # guidance on every task: the comparison isolates what the teacher says
    conditions = [
        Condition(STUDENT_ALONE),
        Condition(WITH_TEACHER, models.get(None), lane),
        Condition(WITH_TRAINED, trained, lane),
    ]

    async def evaluate() -> Any:
        with Progress(console=out, transient=True) as bar:
            job = bar.add_task("evaluating", total=len(tasks) * len(conditions))
            try:
                return await run_eval(
                    tasks,
                    student=student,
                    conditions=conditions,
                    store_url=url,
                    agent="quickstart-eval",
                    max_tokens=args.max_tokens,
                    on_outcome=lambda o: bar.update(job, advance=1),
                )
            finally:
                await trained.aclose()

    report = asyncio.run(evaluate())
    from rich.markdown import Markdown

    markdown = report.markdown()
    (args.out / "eval.md").write_text(markdown)
    report.plot(args.out / "eval.png")
    out.print(Markdown(markdown))
    out.print(
        f"[dim]trained teacher: {run_dir / 'final'} (use it: teacher='hf:{run_dir / 'final'}') · "
        f"report: {args.out / 'eval.md'}, {args.out / 'eval.png'}[/dim]"
    )
