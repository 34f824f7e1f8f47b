"""The embedded model's speed on this machine: torch threads and batched generation.

    ATLAS_CACHE_DIR=/tmp/atlas-test-cache nice -n 10 python benchmarks/local_batching.py

1. 64 tokens of one greedy generation with torch's default thread count vs one thread
   (``torch_threads()`` is what LocalHFModel applies when neither env variable is set).
2. 32 student prompts (the test split's word problems, up to 96 tokens each): one at a time vs
   batched (concurrent callers share one ``generate``), with tokens/s and prompts/s.
"""

from __future__ import annotations

import asyncio
import os
import time

import torch


def main() -> None:
    from atlas_middleware.evaluate import student_messages
    from atlas_middleware.models import EmbeddedModel
    from atlas_middleware.models.local import torch_threads
    from atlas_middleware.tasks import word_problems

    model = EmbeddedModel()
    default_threads = torch.get_num_threads()
    model.load()
    load_avg = os.getloadavg()[0]
    story = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    print(
        f"torch default threads {default_threads}, torch_threads() {torch_threads()}, load {load_avg:.2f}"
    )
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        asyncio.run(model.chat(story, max_tokens=4, temperature=0))  # warm
        started = time.perf_counter()
        r = asyncio.run(model.chat(story, max_tokens=64, temperature=0))
        print(
            f"64 tokens, {threads} thread(s): {time.perf_counter() - started:.1f} s ({r.output_tokens} tokens)"
        )
    torch.set_num_threads(torch_threads())
    tasks = word_problems("test", 32, seed=0)
    prompts = [student_messages(t.task) for t in tasks]

    async def one_by_one():
        return [await model.chat(p, max_tokens=96, temperature=0) for p in prompts]

    async def batched(size: int):
        model.max_batch = size
        return await asyncio.gather(*(model.chat(p, max_tokens=96, temperature=0) for p in prompts))

    for label, run in [
        ("batched 32", lambda: batched(32)),
        ("batched 8", lambda: batched(8)),
        ("one at a time", one_by_one),
    ]:
        started = time.perf_counter()
        results = asyncio.run(run())
        seconds = time.perf_counter() - started
        tokens = sum(r.output_tokens for r in results)
        right = sum(t.is_correct(r.text) for t, r in zip(tasks, results, strict=True))
        print(
            f"{label}: {seconds:.1f} s, {len(prompts) / seconds:.2f} prompts/s, {tokens / seconds:.0f} tokens/s, {right}/32 right"
        )


if __name__ == "__main__":
    main()
