"""What a run shows: the score trajectory per iteration (a rich table, markdown and a PNG) and
the summary figures (``summary.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from rich.table import Table

    from atlas_middleware.optimize.runner import OptimizeResult

COLUMNS = (
    ("iteration", "iter"),
    ("parent", "parent"),
    ("components", "changed"),
    ("minibatch_before", "mb before"),
    ("minibatch_after", "mb after"),
    ("accepted", "accepted"),
    ("val", "val"),
    ("best_val", "best val"),
    ("calls", "calls"),
    ("tokens", "tokens"),
    ("cost_usd", "cost $"),
    ("elapsed_s", "time s"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "components":
        return ",".join(value) or "-"
    if key == "accepted":
        return "yes" if value else "no"
    if isinstance(value, float):
        digits = {"cost_usd": 4, "elapsed_s": 1}.get(key, 3)
        return f"{value:.{digits}f}"
    return str(value)


def rows(result: OptimizeResult) -> list[list[str]]:
    seed = {"iteration": 0, "val": result.seed_val, "best_val": result.seed_val}
    out = [[_cell(k, seed.get(k)) for k, _ in COLUMNS]] if result.seed_val is not None else []
    for row in result.iterations:
        out.append([_cell(k, row.get(k)) for k, _ in COLUMNS])
    return out


def table(result: OptimizeResult) -> Table:
    from rich.table import Table

    grid = Table(title="atlas optimize: score per iteration (val = mean RIM reward)")
    for _, title in COLUMNS:
        grid.add_column(title, justify="right" if title not in ("changed",) else "left")
    for row in rows(result):
        grid.add_row(*row)
    return grid


def usage_table(result: OptimizeResult) -> Table:
    from rich.table import Table

    grid = Table(title="model calls")
    for title in ("role", "calls", "failures", "input tokens", "output tokens", "cost $", "s"):
        grid.add_column(title, justify="left" if title == "role" else "right")
    for role, u in result.ledger.roles.items():
        grid.add_row(
            role,
            str(u.calls),
            str(u.failures),
            str(u.input_tokens),
            str(u.output_tokens),
            f"{u.cost_usd:.4f}",
            f"{u.seconds:.1f}",
        )
    ledger = result.ledger
    grid.add_row(
        "total", str(ledger.calls), "", "", str(ledger.tokens), f"{ledger.cost_usd:.4f}", ""
    )
    return grid


def markdown(result: OptimizeResult) -> str:
    lines = ["# atlas optimize", ""]
    verdict = "adopted" if result.adopted else "not adopted"
    lines += [
        f"- outcome: **{verdict}**: {result.reason}",
        f"- stopped: {result.stop_reason}",
        f"- active prompts: version {result.active.version}"
        + (f" ({result.active_path.name})" if result.active_path else ""),
        f"- held-out reward: active {_num(result.baseline_heldout)}, "
        f"candidate {_num(result.candidate_heldout)}",
        f"- validation reward: seed {_num(result.seed_val)}, best {_num(result.best_val)} "
        f"({result.candidates} candidates)",
        f"- model calls {result.ledger.calls}, tokens {result.ledger.tokens}, "
        f"cost ${result.ledger.cost_usd:.4f}, rollouts {result.ledger.rollouts} "
        f"(+{result.ledger.cached_rollouts} from cache"
        + (
            f", {result.ledger.unscored_rollouts} unscored by RIM, counted as 0"
            if result.ledger.unscored_rollouts
            else ""
        )
        + f"), {result.elapsed_s:.0f} s",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(result)]
    lines += ["", "![score per iteration](trajectory.png)", ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(result: OptimizeResult, path: Path) -> Path | None:
    """The validation score per iteration (best so far and each accepted candidate); None
    when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [0] + [r["iteration"] for r in result.iterations]
    best = [result.seed_val] + [r.get("best_val") for r in result.iterations]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    pairs = [(x, y) for x, y in zip(xs, best, strict=True) if y is not None]
    if pairs:
        ax.step(*zip(*pairs, strict=True), where="post", label="best validation reward")
    accepted = [(r["iteration"], r["val"]) for r in result.iterations if r.get("val") is not None]
    if accepted:
        ax.scatter(*zip(*accepted, strict=True), color="tab:green", label="accepted candidate")
    for name, value, style in (
        ("held-out: active", result.baseline_heldout, ":"),
        ("held-out: candidate", result.candidate_heldout, "--"),
    ):
        if value is not None:
            ax.axhline(value, linestyle=style, color="grey", linewidth=1, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean RIM reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("atlas optimize")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(result: OptimizeResult) -> None:
    out = result.out
    (out / "trajectory.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "trajectory.png")
    (out / "summary.json").write_bytes(
        orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2, default=str)
    )
