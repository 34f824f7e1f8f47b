"""The embedded SmolLM2 in-process: the one-time conversion, generation, stop strings,
concurrency and cancellation. Tokens are few (HF generate is ~8 tokens/s on 2 cores)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from atlas_middleware.models import (
    EmbeddedModel,
    LocalHFModel,
    ModelError,
    ModelTimeout,
    build_model,
    embedded_model_dir,
)
from atlas_middleware.models.embedded import EMBEDDED_NAME, MARKER

pytestmark = pytest.mark.model

STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_conversion_happens_once_and_is_reused(embedded_cache: Path):
    folder = embedded_cache / EMBEDDED_NAME
    marker = folder / MARKER
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    before = (marker.stat().st_mtime_ns, folder.stat().st_mtime_ns)
    started = time.perf_counter()
    assert embedded_model_dir(embedded_cache) == folder
    assert time.perf_counter() - started < 1.0  # a marker check, not a conversion
    assert (marker.stat().st_mtime_ns, folder.stat().st_mtime_ns) == before
    leftovers = [p.name for p in embedded_cache.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []  # no half-written temp folders


def test_cache_dir_follows_the_environment(monkeypatch, embedded_cache: Path):
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(embedded_cache))
    assert embedded_model_dir() == embedded_cache / EMBEDDED_NAME


def test_greedy_answer_with_real_token_counts(embedded: EmbeddedModel):
    result = asyncio.run(embedded.chat(QUESTION, max_tokens=8, temperature=0))
    assert result.text.strip()
    assert result.model == EMBEDDED_NAME
    prompt = embedded._tokenizer.apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True
    )
    assert result.input_tokens == len(
        embedded._tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    assert 0 < result.output_tokens <= 8
    assert result.finish_reason in ("stop", "length")


def test_stop_strings_truncate_the_output(embedded: EmbeddedModel):
    full = asyncio.run(embedded.chat(STORY, max_tokens=8, temperature=0))
    assert full.finish_reason == "length" and len(full.text) > 8
    middle = len(full.text) // 2
    stop = full.text[middle : middle + 3]
    cut = full.text.find(stop)
    assert cut > 0
    short = asyncio.run(embedded.chat(STORY, max_tokens=8, temperature=0, stop=[stop, "@@@"]))
    assert short.text == full.text[:cut]  # greedy: the same tokens, cut before the stop string
    assert short.finish_reason == "stop"
    assert short.output_tokens <= full.output_tokens


def test_concurrent_callers_share_one_model(embedded: EmbeddedModel):
    async def both():
        return await asyncio.gather(
            embedded.chat(QUESTION, max_tokens=4, temperature=0),
            embedded.chat(QUESTION, max_tokens=4, temperature=0),
        )

    first, second = asyncio.run(both())
    assert first.text == second.text and first.text.strip()


def test_sampling_when_temperature_is_positive(embedded: EmbeddedModel):
    result = asyncio.run(embedded.chat(QUESTION, max_tokens=4, temperature=0.8))
    assert result.output_tokens > 0


def test_a_timed_out_generation_stops_and_frees_the_model(embedded: EmbeddedModel):
    with pytest.raises(ModelTimeout):
        asyncio.run(embedded.chat(STORY, max_tokens=400, timeout_s=0.5))
    # Were the long generation still running, this call would queue behind it for ~30 s.
    started = time.perf_counter()
    result = asyncio.run(embedded.chat(QUESTION, max_tokens=2, temperature=0))
    assert result.output_tokens > 0
    assert time.perf_counter() - started < 5


def test_hf_spec_loads_a_local_folder(embedded_cache: Path):
    model = build_model(f"hf:{embedded_cache / EMBEDDED_NAME}", dtype="float32")
    assert isinstance(model, LocalHFModel) and model.name == EMBEDDED_NAME
    result = asyncio.run(model.chat(QUESTION, max_tokens=2, temperature=0))
    asyncio.run(model.aclose())
    assert result.text.strip() and result.output_tokens > 0


def test_a_folder_that_is_not_a_model_fails_the_call_with_a_model_error(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    model = build_model(f"hf:{tmp_path}")
    with pytest.raises(ModelError, match=f"cannot load the local model from {tmp_path}") as caught:
        asyncio.run(model.chat(QUESTION, max_tokens=2))
    assert "\n" not in str(caught.value)
