"""A chat model served by a vLLM engine (the one ``atlas-train``'s ``vllm:`` student runs).

Concurrent calls are gathered into one engine batch: while a batch generates, new calls queue,
and the next batch takes all of them (grouped by their sampling settings). That is what makes
``atlas eval`` of hundreds of tasks fast on a CPU: vLLM schedules a batch without padding and
drops finished answers from it (docs/benchmarks.md). On CPU the engine lives in a worker process
run by ``.venv-vllm``'s Python (``scripts/bootstrap.sh vllm``); vLLM is never imported here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas_middleware.models.base import CallPolicy, ChatMessage, ChatModel, ChatResult, ModelError
from atlas_middleware.models.local import local_policy, teacher_card

__all__ = ["VLLMEngineModel", "engine_model", "vllm_available"]


def vllm_available() -> bool:
    """Whether a vLLM engine can start here: vLLM imports in this Python, or ``.venv-vllm``
    (or ``$ATLAS_VLLM_PYTHON``) has it."""
    try:
        from atlas_middleware.trainer.students import vllm_python

        vllm_python()
    except Exception:
        return False
    return True


class VLLMEngineModel(ChatModel):
    """``model_dir`` (a transformers folder) in a vLLM engine, started on the first call or on
    :meth:`load`, stopped by :meth:`aclose`. Greedy calls are deterministic per batch; the
    numerics are vLLM's, not transformers' (answers can differ in a few places)."""

    provider = "vllm"
    runs_locally = True

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        policy: CallPolicy | None = None,
        validation: str | None = None,
    ) -> None:
        super().__init__(policy=policy or local_policy())
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no model folder at {self.model_dir} for vLLM")
        self.name = name or self.model_dir.name
        self.validation = validation or teacher_card(self.model_dir).get("validation")
        self._engine: Any = None
        self._start_lock = threading.Lock()
        self._pending: list[tuple[list[ChatMessage], int, float, tuple[str, ...], Any]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> None:
        """Start the engine now (idempotent, thread-safe): ~30 s on 2 cores, eager mode."""
        if self._engine is not None:
            return
        with self._start_lock:
            if self._engine is None:
                from atlas_middleware.trainer.students import VLLMEngineStudent

                try:
                    # Eager: an eval is minutes long, and compiling costs about one more minute.
                    self._engine = VLLMEngineStudent(self.model_dir, eager=True).start()
                except Exception as exc:
                    raise ModelError(f"vLLM engine for {self.model_dir}: {exc}") from exc

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        loop = asyncio.get_running_loop()
        if self._engine is None:
            await asyncio.to_thread(self.load)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((list(messages), max_tokens, temperature, tuple(stop or ()), future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        output = await future
        return ChatResult(
            text=output["text"],
            model=self.name,
            input_tokens=int(output["prompt_tokens"]),
            output_tokens=int(output["tokens"]),
            finish_reason=output.get("finish_reason"),
        )

    async def _drain(self) -> None:
        # Let the callers that start together (asyncio.gather) all queue before the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            groups: dict[tuple[int, float, tuple[str, ...]], list[Any]] = {}
            for item in batch:
                groups.setdefault(item[1:4], []).append(item)
            for (max_tokens, temperature, stop), items in groups.items():
                live = [item for item in items if not item[4].done()]  # timed out: skipped
                if not live:
                    continue
                try:
                    outputs = await asyncio.to_thread(
                        self._engine.generate,
                        [item[0] for item in live],
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop,
                    )
                except Exception as exc:
                    for item in live:
                        if not item[4].done():
                            item[4].set_exception(ModelError(f"vLLM engine: {exc}"))
                    continue
                for item, output in zip(live, outputs, strict=True):
                    if not item[4].done():
                        item[4].set_result(output)

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)


def engine_model(
    spec: str, *, teacher: bool = False, policy: CallPolicy | None = None
) -> ChatModel | None:
    """A :class:`VLLMEngineModel` for a local model spec (``embedded``, ``embedded-base``, the
    trained teacher, ``hf:`` model folders); None for the rest (remote models, ``hf:`` LoRA
    adapter folders), which keep their own backend."""
    from atlas_middleware.models import EMBEDDED, EMBEDDED_BASE, HF_PREFIX
    from atlas_middleware.models.embedded import (
        EMBEDDED_NAME,
        TEACHER_NAME,
        embedded_model_dir,
        trained_teacher_model_dir,
    )

    if spec == EMBEDDED and teacher:
        return VLLMEngineModel(trained_teacher_model_dir(), name=TEACHER_NAME, policy=policy)
    if spec in (EMBEDDED, EMBEDDED_BASE):
        return VLLMEngineModel(embedded_model_dir(), name=EMBEDDED_NAME, policy=policy)
    if spec.startswith(HF_PREFIX):
        folder = Path(spec[len(HF_PREFIX) :].strip()).expanduser()
        if (folder / "config.json").is_file():
            return VLLMEngineModel(folder, policy=policy)
    return None
