"""A Hugging Face causal LM running in this process, loaded from a local folder (never the hub).

torch and transformers are imported when the model loads, not when this module is imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
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

__all__ = ["TEACHER_CARD", "LocalHFModel", "teacher_card"]

DTYPES = ("float32", "bfloat16", "float16", "auto")
# Written by `atlas learn` beside the adapter it trains: recipe, data seed, commit, held-out
# results, and how the teacher validates ("compute").
TEACHER_CARD = "atlas-teacher.json"


def teacher_card(folder: Path) -> dict[str, Any]:
    """The provenance card of a teacher ``atlas learn`` trained; {} for any other model folder."""
    import json

    try:
        card = json.loads((folder / TEACHER_CARD).read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def local_policy() -> CallPolicy:
    # A timed-out local generation is not a transient network fault: retrying re-runs the same
    # compute on the same busy CPU, so local models do not retry by default. CPU generation is
    # slow (~8 tokens/s for a 135M model on 2 cores), hence the longer timeout.
    return CallPolicy(timeout_s=300.0, retries=0)


THREADS_ENV = "ATLAS_TORCH_THREADS"


def torch_threads() -> int:
    """How many threads torch should compute with in this process.

    ``$ATLAS_TORCH_THREADS``, else ``$OMP_NUM_THREADS`` (the user's word for every OpenMP
    program), else the cores this process may run on that other processes are not running on now:
    torch's default of one thread per core made processes sharing two cores oversubscribe them,
    and 64 tokens of the embedded model took 51.5 s instead of 4.0 s (docs/benchmarks.md).
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, cores - _busy_elsewhere()))


def _busy_elsewhere() -> int:
    """Processes running or runnable right now, besides this one (``/proc/loadavg``'s
    instantaneous count; the load averages lag by a minute and would count our own past work)."""
    try:
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].split("/")[0])
        return max(0, running - 1)
    except (OSError, ValueError, IndexError):
        try:
            return int(os.getloadavg()[0] + 0.5)
        except OSError:
            return 0


def set_torch_threads() -> int:
    """Apply :func:`torch_threads` to torch (process-wide); returns the count."""
    import torch

    count = torch_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def adapter_base(name: str, adapter: Path) -> Path:
    """The base model folder of a LoRA adapter: the embedded model when the adapter was trained
    on it (its ``base_model_name_or_path`` is ``embedded`` or the model's name), else the path
    it names (relative to the adapter folder when not absolute)."""
    from atlas_middleware.models.embedded import EMBEDDED_NAME, embedded_model_dir

    if name in ("embedded", EMBEDDED_NAME) or Path(name).name == EMBEDDED_NAME:
        return embedded_model_dir()
    base = Path(name).expanduser()
    if not base.is_absolute():
        base = adapter / base
    if not base.exists():
        raise ModelError(f"the adapter in {adapter} names base model {name!r}, not found locally")
    return base


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
    runs_locally = True

    def __init__(
        self,
        path_or_dir: str | Path | None,
        *,
        name: str | None = None,
        dtype: str = "bfloat16",
        max_new_tokens: int = 512,
        policy: CallPolicy | None = None,
        max_batch: int = 32,
    ) -> None:
        super().__init__(policy=policy or local_policy())
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
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
            if self._path.is_dir():
                validation = teacher_card(self._path).get("validation")
                if validation in ("verdict", "compute"):
                    self.validation = validation
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
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []
        self.max_batch = max_batch
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
        adapter = path / "adapter_config.json" if path.is_dir() else None
        if adapter is not None and adapter.is_file():
            # A LoRA adapter folder (peft's save_pretrained): its base model, then the adapter
            # merged in, so generation costs what the base model's does.
            self._load_adapter(path)
            return
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
        self._ready(model, tokenizer, path)

    def _load_adapter(self, path: Path) -> None:
        import json

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ModelError(f"{path} is a LoRA adapter: loading it needs peft ({exc})") from exc
        try:
            base_name = json.loads((path / "adapter_config.json").read_text())[
                "base_model_name_or_path"
            ]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"unreadable adapter_config.json in {path}: {one_line(exc, 300)}"
            ) from exc
        base = adapter_base(base_name, path)
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(base), local_files_only=True, dtype=dtype
            )
            model = PeftModel.from_pretrained(model, str(path), local_files_only=True)
            model = model.merge_and_unload()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the adapter in {path}: {one_line(exc, 300)}") from exc
        self._ready(model, tokenizer, path)

    def _ready(self, model: Any, tokenizer: Any, path: Path) -> None:
        if not tokenizer.chat_template:
            raise ModelError(
                f"the tokenizer in {path} has no chat template: LocalHFModel needs an instruct model"
            )
        model.eval()
        set_torch_threads()
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self._eos_ids = sorted(i for i in eos if i is not None)
        if tokenizer.pad_token_id is None and self._eos_ids:
            tokenizer.pad_token_id = self._eos_ids[0]  # batches need one; masked out anyway
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
        request = _Request(
            list(messages),
            min(max_tokens, self.max_new_tokens),
            temperature,
            [s for s in stop or () if s],
        )
        with self._queue_lock:
            self._queue.append(request)
        # One drain job per request: each takes every waiting request it can batch, so a job may
        # find the queue already empty (its request rode along in an earlier batch).
        self._worker().submit(self._drain)
        try:
            return await asyncio.wrap_future(request.future)
        except asyncio.CancelledError:
            # Timeout or caller gone: a queued call never starts, a running one stops at its
            # next token (its row of the batch is finished), so nobody waits behind it.
            request.cancel.set()
            raise

    def _drain(self) -> None:
        with self._queue_lock:
            if not self._queue:
                return
            first = self._queue[0]
            batch = [r for r in self._queue if r.temperature == first.temperature]
            batch = batch[: self.max_batch]
            taken = {id(r) for r in batch}
            self._queue = [r for r in self._queue if id(r) not in taken]
        live = []
        for request in batch:
            if request.cancel.is_set() or request.future.cancelled():
                if not request.future.done():
                    request.future.set_exception(ModelError("cancelled before it started"))
            else:
                live.append(request)
        if not live:
            return
        try:
            results = self._generate_batch(live)
        except BaseException as exc:
            for request in live:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        for request, result in zip(live, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def _generate(
        self,
        messages: list[ChatMessage],
        max_new_tokens: int,
        temperature: float,
        stop: list[str],
        cancel: threading.Event,
    ) -> ChatResult:
        """One generation, outside the batching queue (kept for direct callers)."""
        request = _Request(messages, max_new_tokens, temperature, stop, cancel)
        result = self._generate_batch([request])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _generate_batch(self, requests: list[_Request]) -> list[ChatResult | BaseException]:
        """Generate for several requests in one padded ``generate`` (same temperature).

        Left padding with an attention mask keeps each row's continuation its own; a row stops
        at its own end-of-sequence, stop string, token budget or cancellation, and the batch
        ends when every row has.
        """
        self.load()
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        tokenizer, model = self._tokenizer, self._model
        if model is None:
            raise ModelError(f"{self.name}: closed while this call was waiting")
        results: list[ChatResult | BaseException | None] = [None] * len(requests)
        prompts: list[str] = []
        rows: list[int] = []
        context = getattr(model.config, "max_position_embeddings", None)
        for index, request in enumerate(requests):
            try:
                prompt = tokenizer.apply_chat_template(
                    [{"role": m["role"], "content": m["content"]} for m in request.messages],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except Exception as exc:  # jinja errors, e.g. a template that rejects a role order
                results[index] = ModelError(
                    f"{self.name}: chat template failed: {one_line(exc, 300)}"
                )
                continue
            length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if context is not None and length >= context:
                results[index] = ModelError(
                    f"{self.name}: the prompt has {length} tokens, the context window {context}"
                )
                continue
            request.prompt_len = length
            if context is not None:
                request.max_new_tokens = min(request.max_new_tokens, context - length)
            prompts.append(prompt)
            rows.append(index)
        if not rows:
            return [r for r in results if r is not None]
        live = [requests[i] for i in rows]
        pad = tokenizer.pad_token_id
        if pad is None and self._eos_ids:
            pad = self._eos_ids[0]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = tokenizer(
                prompts, return_tensors="pt", add_special_tokens=False, padding=len(prompts) > 1
            )
        finally:
            tokenizer.padding_side = side
        width = int(inputs["input_ids"].shape[1])
        budget = max(r.max_new_tokens for r in live)
        temperature = live[0].temperature
        sampling = temperature > 0
        config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped upstream
            max_new_tokens=budget,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            eos_token_id=self._eos_ids or None,
            pad_token_id=pad,
        )
        criteria = StoppingCriteriaList([_StopCriteria(tokenizer, width, live)])
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, stopping_criteria=criteria)
        for row, (index, request) in enumerate(zip(rows, live, strict=True)):
            if request.cancel.is_set():
                results[index] = ModelError("cancelled")  # nobody awaits this result any more
                continue
            generated = _trim(output[row, width:].tolist(), self._eos_ids, pad)
            generated = generated[: request.max_new_tokens]
            text = tokenizer.decode(generated, skip_special_tokens=True)
            cut = _cut_at_stop(text, request.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            elif generated and generated[-1] in self._eos_ids:
                finish = "stop"
            else:
                finish = "length" if len(generated) >= request.max_new_tokens else "stop"
            results[index] = ChatResult(text, self.name, request.prompt_len, len(generated), finish)
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        """Drop the weights and the worker thread; a later call loads them again."""
        with self._worker_lock:
            executor, self._executor = self._executor, None
        self._model = self._tokenizer = None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    """One queued call: what to generate, and where its result goes."""

    messages: list[ChatMessage]
    max_new_tokens: int
    temperature: float
    stop: list[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    prompt_len: int = 0


class _StopCriteria:
    """Finishes each row of a batch at its stop string, its token budget, or when its caller
    gave up.

    Decoding the generated tail each step costs far less than the forward pass that produced
    the token, and unlike token-level matching it also catches stop strings split across tokens.
    """

    def __init__(self, tokenizer: Any, width: int, requests: list[_Request]):
        self.tokenizer = tokenizer
        self.width = width
        self.requests = requests

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.width
        done = []
        for row, request in enumerate(self.requests):
            finished = request.cancel.is_set() or generated >= request.max_new_tokens
            if not finished and request.stop:
                text = self.tokenizer.decode(
                    input_ids[row, self.width :].tolist(), skip_special_tokens=True
                )
                finished = _cut_at_stop(text, request.stop) is not None
            done.append(finished)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _trim(tokens: list[int], eos: list[int], pad: int | None) -> list[int]:
    """A row's generated tokens up to and including its first end-of-sequence token (what
    follows is padding, added while other rows of the batch kept generating)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
        if token == pad:  # a row finished by a stop string or its budget: padding follows
            return tokens[:i]
    return tokens


def _cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
