"""A Hugging Face causal LM running in this process, loaded from a local folder (never the hub).

torch and transformers are imported when the model loads, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas_middleware.errors import one_line
from atlas_middleware.models._deps import require
from atlas_middleware.models.base import (
    CallPolicy,
    ChatMessage,
    ChatModel,
    ChatResult,
    ModelError,
)

__all__ = ["LocalHFModel"]

DTYPES = ("float32", "bfloat16", "float16", "auto")


def local_policy() -> CallPolicy:
    # A timed-out local generation is not a transient network fault: retrying re-runs the same
    # compute on the same busy CPU, so local models do not retry by default. CPU generation is
    # slow (~8 tokens/s for a 135M model on 2 cores), hence the longer timeout.
    return CallPolicy(timeout_s=300.0, retries=0)


class LocalHFModel(ChatModel):
    """A chat model served in-process by transformers.

    ``path_or_dir`` is a folder holding ``config.json``, weights and a tokenizer with a chat
    template (what ``save_pretrained`` writes), or a ``.gguf`` file (dequantised on load, slow).
    ``dtype`` defaults to bfloat16: half the memory of float32, and on the 2-core AVX2 machines
    here it generated faster too (~14.6 vs 12 tokens/s for SmolLM2-135M). The weights load once,
    on the first call or on :meth:`load`. Generation runs on one worker
    thread per model, so concurrent callers queue instead of fighting over the CPU, and the event
    loop stays free meanwhile; a call that is cancelled or times out stops its generation at the
    next token.
    """

    provider = "local"

    def __init__(
        self,
        path_or_dir: str | Path | None,
        *,
        name: str | None = None,
        dtype: str = "bfloat16",
        max_new_tokens: int = 512,
        policy: CallPolicy | None = None,
    ) -> None:
        super().__init__(policy=policy or local_policy())
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self._path: Path | None = None
        if path_or_dir is not None:
            path = Path(path_or_dir).expanduser()
            if not path.exists():
                # Checked here because transformers would take a missing path for a hub repo id.
                raise FileNotFoundError(
                    f"no local model at {path}: give a folder written by save_pretrained "
                    "(config.json, weights, tokenizer) or a .gguf file"
                )
            self._path = path.resolve()
        self.name = name or (self._path.stem if self._path is not None else "local")
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self._load_lock = threading.Lock()
        # Separate from the load lock: the event loop takes this one, and must never wait behind
        # a load (the embedded model's first load converts GGUF for ~40 s).
        self._worker_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: list[int] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        require("torch", "transformers", what=f"local model {self.name!r}")

    # --- loading ------------------------------------------------------------------------------
    def _model_dir(self) -> Path:
        """Where the weights are; subclasses may produce the folder on demand."""
        assert self._path is not None
        return self._path

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and weights now (idempotent, thread-safe); calls do it on first use."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:  # another thread loaded it while we waited
                return
            self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self._model_dir()
        folder, extra = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, dtype=dtype, **extra
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load the local model from {path}: {one_line(exc, 300)}"
            ) from exc
        if not tokenizer.chat_template:
            raise ModelError(
                f"the tokenizer in {path} has no chat template: LocalHFModel needs an instruct model"
            )
        model.eval()  # type: ignore[no-untyped-call]  # untyped upstream
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self._eos_ids = sorted(i for i in eos if i is not None)
        self._tokenizer = tokenizer
        self._model = model  # last: `loaded` turns true only once everything is in place

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._worker_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"atlas-{self.name}"
                )
            return self._executor

    # --- generation ---------------------------------------------------------------------------
    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> ChatResult:
        if max_tokens < 1:
            raise ModelError(f"max_tokens must be at least 1, got {max_tokens}")
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._worker(),
            self._generate,
            list(messages),
            min(max_tokens, self.max_new_tokens),
            temperature,
            [s for s in stop or () if s],
            cancel,
        )
        try:
            return await future
        except asyncio.CancelledError:
            # Timeout or caller gone: a queued call never starts (the executor drops it), a
            # running one stops at its next token, so the next caller does not wait behind it.
            cancel.set()
            raise

    def _generate(
        self,
        messages: list[ChatMessage],
        max_new_tokens: int,
        temperature: float,
        stop: list[str],
        cancel: threading.Event,
    ) -> ChatResult:
        if cancel.is_set():
            raise ModelError("cancelled before it started")
        self.load()
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        tokenizer, model = self._tokenizer, self._model
        if model is None:
            raise ModelError(f"{self.name}: closed while this call was waiting")
        try:
            prompt = tokenizer.apply_chat_template(
                [{"role": m["role"], "content": m["content"]} for m in messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception as exc:  # jinja errors, e.g. a template that rejects a role order
            raise ModelError(f"{self.name}: chat template failed: {one_line(exc, 300)}") from exc
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        prompt_len = int(inputs["input_ids"].shape[1])
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None:
            if prompt_len >= context:
                raise ModelError(
                    f"{self.name}: the prompt has {prompt_len} tokens, the context window {context}"
                )
            max_new_tokens = min(max_new_tokens, context - prompt_len)
        sampling = temperature > 0
        pad = tokenizer.pad_token_id
        if pad is None and self._eos_ids:
            pad = self._eos_ids[0]  # one unpadded sequence: only silences generate's warning
        config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped in transformers
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            eos_token_id=self._eos_ids or None,
            pad_token_id=pad,
        )
        criteria = StoppingCriteriaList([_StopCriteria(tokenizer, prompt_len, stop, cancel)])
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, stopping_criteria=criteria)
        if cancel.is_set():
            raise ModelError("cancelled")  # nobody awaits this result any more
        generated = output[0, prompt_len:].tolist()
        text = tokenizer.decode(generated, skip_special_tokens=True)
        cut = _cut_at_stop(text, stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif generated and generated[-1] in self._eos_ids:
            finish = "stop"
        else:
            finish = "length" if len(generated) >= max_new_tokens else "stop"
        return ChatResult(text, self.name, prompt_len, len(generated), finish)

    async def aclose(self) -> None:
        """Drop the weights and the worker thread; a later call loads them again."""
        with self._worker_lock:
            executor, self._executor = self._executor, None
        self._model = self._tokenizer = None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class _StopCriteria:
    """Stops generation when a stop string appears or the caller gave up.

    Decoding the generated tail each step costs far less than the forward pass that produced
    the token, and unlike token-level matching it also catches stop strings split across tokens.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stop: list[str], cancel: threading.Event):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = stop
        self.cancel = cancel
        self.longest = max((len(s) for s in stop), default=0)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.cancel.is_set()
        if not done and self.stop:
            text = self.tokenizer.decode(
                input_ids[0, self.prompt_len :].tolist(), skip_special_tokens=True
            )
            done = _cut_at_stop(text, self.stop) is not None
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
