"""``atlas optimize``: evolve the teacher's prompts (probe, guidance, validation) and the
student's playbook with GEPA against RIM rewards of supervised runs, with a held-out split
deciding adoption. See docs/optimize.md.

    from atlas_middleware.optimize import OptimizeSettings, optimize, read_tasks

    result = optimize(read_tasks("tasks.jsonl"), OptimizeSettings(out=Path("prompts")),
                      student=student, teacher=teacher, reflection=reflection)

GEPA (the ``gepa`` package, extra ``[optimize]``) is imported when a run starts.
"""

from atlas_middleware.optimize.adapter import RolloutSettings
from atlas_middleware.optimize.ledger import BudgetExhausted, Ledger
from atlas_middleware.optimize.runner import (
    OptimizeError,
    OptimizeResult,
    OptimizeSettings,
    optimize,
)
from atlas_middleware.optimize.tasks import (
    OptimizeTask,
    TaskError,
    read_tasks,
    split_tasks,
    tasks_from_store,
)

__all__ = [
    "BudgetExhausted",
    "Ledger",
    "OptimizeError",
    "OptimizeResult",
    "OptimizeSettings",
    "OptimizeTask",
    "RolloutSettings",
    "TaskError",
    "optimize",
    "read_tasks",
    "split_tasks",
    "tasks_from_store",
]
