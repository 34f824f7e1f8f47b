"""Trainer fixtures: tiny random chat models built locally (no hub), shared per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen3 (hidden 64) with a locally trained BPE tokenizer and chat template."""
    from atlas_middleware.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3", arch="qwen3", seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, larger random model (Llama, 3 layers, hidden 96): the 'larger teacher' for GKD."""
    from atlas_middleware.trainer.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "llama", arch="llama", hidden_size=96, layers=3, seed=1
    )


@pytest.fixture(scope="session")
def servable_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Qwen3 vLLM can serve on CPU: its CPU attention needs head_dim 64 (or larger),
    so hidden 128 over 2 heads."""
    from atlas_middleware.trainer.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "qwen3-servable", hidden_size=128, heads=2, seed=0
    )
