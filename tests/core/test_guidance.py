"""Guidance context: isolation across asyncio tasks and threads, message helpers."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from atlas_middleware.guidance import (
    guidance,
    guided_system_prompt,
    rendered_guidance,
    use_guidance,
    with_guidance,
)

HEADER = "Guidance from your teacher:\n"


def test_set_and_reset() -> None:
    assert guidance() is None
    with use_guidance("check units") as text:
        assert text == "check units"
        assert guidance() == "check units"
        with use_guidance("inner"):
            assert guidance() == "inner"
        with use_guidance(None):  # e.g. an auto-lane call nested in a guided one
            assert guidance() is None
        assert guidance() == "check units"
    assert guidance() is None


def test_reset_on_exception() -> None:
    with pytest.raises(RuntimeError), use_guidance("g"):
        raise RuntimeError("agent failed")
    assert guidance() is None


def test_one_instance_per_block() -> None:
    block = use_guidance("g")
    with block, pytest.raises(RuntimeError, match="already active"), block:
        pass


def test_async_with_and_task_isolation() -> None:
    async def session(name: str, delay: float) -> list[str | None]:
        seen = []
        async with use_guidance("guidance for " + name):
            for _ in range(3):
                await asyncio.sleep(delay)
                seen.append(guidance())
        seen.append(guidance())
        return seen

    async def main() -> list[list[str | None]]:
        return await asyncio.gather(session("a", 0.002), session("b", 0.001), session("c", 0))

    results = asyncio.run(main())
    for name, seen in zip("abc", results, strict=True):
        assert seen == ["guidance for " + name] * 3 + [None]


def test_child_tasks_inherit_but_do_not_leak_back() -> None:
    async def child() -> str | None:
        inherited = guidance()
        with use_guidance("child's own"):
            await asyncio.sleep(0)
        return inherited

    async def main() -> tuple[str | None, str | None]:
        with use_guidance("parent"):
            inherited = await asyncio.create_task(child())
            return inherited, guidance()

    assert asyncio.run(main()) == ("parent", "parent")


def test_thread_isolation() -> None:
    barrier = threading.Barrier(4)

    def worker(name: str) -> tuple[str | None, str | None]:
        before = guidance()  # a new thread starts with an empty context
        with use_guidance(name):
            barrier.wait()  # all four are inside their blocks at once
            inside = guidance()
            barrier.wait()
        return before, inside

    with use_guidance("main thread"), ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, ["w0", "w1", "w2", "w3"]))
        assert guidance() == "main thread"
    assert results == [(None, f"w{i}") for i in range(4)]


def test_guidance_follows_copied_contexts_into_threads() -> None:
    async def main() -> tuple[str | None, str | None]:
        with use_guidance("carried"):
            via_to_thread = await asyncio.to_thread(guidance)
            context = contextvars.copy_context()
        with ThreadPoolExecutor(1) as pool:
            via_copy = pool.submit(context.run, guidance).result()
        return via_to_thread, via_copy

    assert asyncio.run(main()) == ("carried", "carried")


def test_with_guidance_prepends_a_system_message() -> None:
    messages = [{"role": "user", "content": "2+2?"}]
    with use_guidance("answer with a number"):
        result = with_guidance(messages)
    assert result == [
        {"role": "system", "content": HEADER + "answer with a number"},
        {"role": "user", "content": "2+2?"},
    ]
    assert messages == [{"role": "user", "content": "2+2?"}]  # input untouched


def test_with_guidance_merges_into_the_system_message() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]
    with use_guidance('say {hello} in JSON: {"a": 1}'):
        result = with_guidance(messages)
    assert result[0] == {
        "role": "system",
        "content": "You are terse.\n\n" + HEADER + 'say {hello} in JSON: {"a": 1}',
    }
    assert result[1] == messages[1] and result[1] is not messages[1]
    assert messages[0]["content"] == "You are terse."


def test_with_guidance_multipart_and_no_guidance() -> None:
    parts = [{"type": "text", "text": "be kind"}]
    messages = [{"role": "system", "content": parts}, {"role": "user", "content": "x"}]
    with use_guidance("g"):
        result = with_guidance(messages)
    assert result[0]["content"] == [*parts, {"type": "text", "text": HEADER + "g"}]
    assert len(parts) == 1
    assert with_guidance(messages) == messages
    assert with_guidance(messages) is not messages


def test_guided_system_prompt() -> None:
    assert guided_system_prompt("base") == "base"
    assert guided_system_prompt(None) is None
    with use_guidance("g"):
        assert rendered_guidance() == HEADER + "g"
        assert guided_system_prompt("base\n") == "base\n\n" + HEADER + "g"
        assert guided_system_prompt(None) == HEADER + "g"
        assert guided_system_prompt("") == HEADER + "g"
