"""What a run shows and keeps: a rich progress bar, one console line per logged step, every
logged step in ``metrics.jsonl`` and the curves as ``curves.png``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["AtlasCallback", "plot_curves"]

# Shown on the console line, in this order, when a step logs them.
_CONSOLE = (
    ("loss", "loss"),
    ("reward", "reward"),
    ("teaching/accuracy_delta", "acc Δ"),
    ("teaching/non_degradation", "non-degr"),
    ("teaching/leak_rate", "leak"),
    ("teaching/unscored_rate", "unscored"),
    ("completions/mean_length", "len"),
    ("learning_rate", "lr"),
)


class AtlasCallback(TrainerCallback):
    def __init__(self, output_dir: Path, *, quiet: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = None
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.quiet:
            return
        from rich.console import Console

        self._console = Console(stderr=True)
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress(
                "[bold]training",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=state.max_steps, completed=state.global_step
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if _number(v)}}
        with (self.output_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.last.update({k: v for k, v in row.items() if k.startswith("teaching/")})
        if self._console is not None and "train_runtime" not in logs:
            parts = [f"step {state.global_step}/{state.max_steps}"]
            parts += [f"{label} {_fmt(logs[key])}" for key, label in _CONSOLE if key in logs]
            self._console.print("  ".join(parts), highlight=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def last_teaching(self) -> dict[str, float]:
        return dict(self.last)

    def plot(self) -> Path | None:
        return plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:.3f}"


def plot_curves(metrics_file: Path, png: Path) -> Path | None:
    """Reward and accuracy (GRPO) or loss (SFT, GKD) per step; None when nothing was logged.
    A resumed run's file holds the steps logged before the interruption too: the last value
    logged for a step wins."""
    if not metrics_file.exists():
        return None
    by_step: dict[int, dict[str, float]] = {}
    for line in metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "train_runtime" in row:
            continue
        by_step.setdefault(int(row.get("step", 0)), {}).update(row)
    steps = sorted(by_step)
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("reward", "reward (mean)"),
        ("teaching/accuracy_delta", "accuracy Δ (guided − baseline)"),
        ("teaching/non_degradation", "non-degradation rate"),
        ("teaching/guided_accuracy", "student accuracy with guidance"),
    ]
    if not any("reward" in by_step[s] for s in steps):
        series = [("loss", "loss")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    drawn = 0
    for key, label in series:
        xs = [s for s in steps if key in by_step[s]]
        if xs:
            ax.plot(xs, [by_step[s][key] for s in xs], marker="o", markersize=3, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("atlas-train")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
