"""Checked by mypy with the package (scripts/typecheck.py, tests/architecture/test_types.py), never
run: ``@atlas.supervise`` keeps the decorated function's signature for type checkers. Each
``assert_type`` must hold, and each ``# type: ignore[...]`` marks a call mypy must reject (strict
mode reports an ignore that is no longer needed)."""

from __future__ import annotations

from typing_extensions import assert_type

import atlas_middleware as atlas
from atlas_middleware.plugins import SessionEnd


@atlas.supervise
def solve(task: str, attempts: int = 1) -> str:
    return task


@atlas.supervise(agent="calc", lane="auto")
async def solve_async(task: str) -> int:
    return len(task)


class Agent:
    @atlas.supervise(agent="method")
    def answer(self, task: str) -> float:
        return 1.0


async def uses() -> None:
    assert_type(solve("2 + 3"), str)
    assert_type(solve("2 + 3", attempts=2), str)
    assert_type(solve.options(lane="coach", reference="5")("2 + 3"), str)
    assert_type(await solve_async("2 + 3"), int)
    assert_type(await solve_async.options(lane="paired")("2 + 3"), int)
    assert_type(Agent().answer("2 + 3"), float)
    solve(5)  # type: ignore[arg-type]
    solve("2 + 3", tries=2)  # type: ignore[call-arg]
    await solve_async()  # type: ignore[call-arg]
    Agent().answer(b"2 + 3")  # type: ignore[arg-type]


def on_session_end(session: SessionEnd) -> None:
    assert_type(session.lane, str)
    assert_type(session.retries, int)
    assert_type(session.failures, tuple[str, ...])
    assert_type(session["answer"], object)
