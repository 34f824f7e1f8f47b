"""LiteLLMModel: real litellm calls (``openai/<name>`` + ``api_base``) against local servers; no
network. Checks the error mapping and that litellm's own retries stay off."""

from __future__ import annotations

import asyncio

import pytest

from atlas_middleware.cli.serve_model import create_app
from atlas_middleware.models import (
    CallPolicy,
    LiteLLMModel,
    ModelError,
    ModelUnavailable,
    ScriptedModel,
)
from atlas_middleware.models.embedded import EMBEDDED_NAME
from tests.helpers import free_port
from tests.models.servers import serve, status_server

USER = [{"role": "user", "content": "What is the capital of France?"}]
FAST = CallPolicy(timeout_s=20.0, retries=2, backoff_s=0.01)


def model_at(url: str, name: str = "scripted", **kwargs) -> LiteLLMModel:
    # The openai SDK under litellm insists on a key even when the server wants none.
    return LiteLLMModel(f"openai/{name}", api_base=url, api_key="unused", policy=FAST, **kwargs)


def test_completion_and_usage_through_litellm():
    async def run():
        async with serve(create_app(ScriptedModel(replies=["Paris."]))) as url:
            return await model_at(url).chat(USER, max_tokens=8, stop=["\n"])

    result = asyncio.run(run())
    assert result.text == "Paris."
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.finish_reason == "stop"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_statuses_map_to_unavailable_without_hidden_retries(status):
    async def run():
        async with status_server(status, "overloaded") as (server, url):
            with pytest.raises(ModelUnavailable, match="overloaded"):
                await model_at(url).chat(USER)
            return server.hits

    # Exactly our policy's attempts: litellm's and the openai SDK's own retries are off.
    assert asyncio.run(run()) == FAST.retries + 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "BadRequestError"), (401, "AuthenticationError"), (404, "NotFoundError")],
)
def test_permanent_statuses_map_to_model_error(status, error):
    async def run():
        async with status_server(status, "no such thing") as (server, url):
            with pytest.raises(ModelError, match=error) as caught:
                await model_at(url).chat(USER)
            assert not isinstance(caught.value, ModelUnavailable)
            return server.hits

    assert asyncio.run(run()) == 1


def test_connection_refused_maps_to_unavailable():
    model = LiteLLMModel(
        "openai/x",
        api_base=f"http://127.0.0.1:{free_port()}/v1",
        api_key="unused",
        policy=CallPolicy(timeout_s=20.0, retries=0),
    )
    with pytest.raises(ModelUnavailable, match="Connection error"):
        asyncio.run(model.chat(USER))


@pytest.mark.model
def test_embedded_model_through_litellm(model_server: str):
    model = model_at(f"{model_server}/v1", EMBEDDED_NAME)
    result = asyncio.run(model.chat(USER, max_tokens=6, temperature=0))
    assert result.text.strip()
    assert result.input_tokens > 5 and 0 < result.output_tokens <= 6
    assert model.usage.calls == 1
