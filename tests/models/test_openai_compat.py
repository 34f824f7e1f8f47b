"""OpenAICompatibleModel against real HTTP servers: ``atlas serve-model``'s app around a scripted
model (fast protocol checks), failing servers (error mapping), and the embedded model served by
``atlas serve-model`` in a subprocess (end to end)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from atlas_middleware.cli.serve_model import create_app
from atlas_middleware.models import (
    CallPolicy,
    ModelError,
    ModelUnavailable,
    OpenAICompatibleModel,
    ScriptedModel,
)
from atlas_middleware.models.embedded import EMBEDDED_NAME
from tests.helpers import free_port
from tests.models.servers import serve, status_server

USER = [{"role": "user", "content": "What is the capital of France?"}]
FAST = CallPolicy(timeout_s=10.0, retries=2, backoff_s=0.01)


def client(url: str, name: str = "scripted", **kwargs) -> OpenAICompatibleModel:
    return OpenAICompatibleModel(url, name, policy=kwargs.pop("policy", FAST), **kwargs)


# --- error mapping -------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses_are_retried_then_unavailable(status):
    async def run():
        async with status_server(status, "try later") as (server, url):
            model = client(url)
            with pytest.raises(ModelUnavailable, match=f"answered {status}: try later"):
                await model.chat(USER)
            await model.aclose()
            return server.hits

    assert asyncio.run(run()) == FAST.retries + 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried_and_carry_the_server_message(status):
    async def run():
        async with status_server(status, "max_tokens is too large") as (server, url):
            model = client(url)
            with pytest.raises(ModelError, match="max_tokens is too large") as caught:
                await model.chat(USER)
            await model.aclose()
            assert not isinstance(caught.value, ModelUnavailable)
            return server.hits

    assert asyncio.run(run()) == 1


def test_connection_refused_is_unavailable():
    model = client(
        f"http://127.0.0.1:{free_port()}/v1", policy=CallPolicy(retries=1, backoff_s=0.01)
    )
    with pytest.raises(ModelUnavailable, match="cannot reach"):
        asyncio.run(model.chat(USER))
    assert model.usage.failures == 2


def test_a_reply_that_is_not_a_completion_is_a_model_error():
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy login</html>")

    async def run():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", garbage)
        async with serve(app) as url:
            with pytest.raises(ModelError, match="sent no chat completion"):
                await client(url).chat(USER)

    asyncio.run(run())


def test_request_body_carries_the_call_and_the_extra_params():
    async def run():
        async with status_server(400) as (server, url):
            model = client(url, "teacher", api_key="k", seed=7)
            with pytest.raises(ModelError):
                await model.chat(USER, max_tokens=5, temperature=0.3, stop=["\n"])
            return server.bodies[0]

    body = asyncio.run(run())
    assert body == {
        "seed": 7,
        "model": "teacher",
        "messages": USER,
        "max_tokens": 5,
        "temperature": 0.3,
        "stop": ["\n"],
    }


# --- the serve-model protocol, around a scripted model ---------------------------------------------
def test_completion_text_usage_and_finish_reason():
    scripted = ScriptedModel(replies=["Paris."])

    async def run():
        async with serve(create_app(scripted)) as url:
            model = client(url.removesuffix("/v1"))  # the base URL works with or without /v1
            result = await model.chat(USER, max_tokens=8)
            await model.aclose()
            return result

    result = asyncio.run(run())
    assert result.text == "Paris."
    assert result.model == "scripted"
    assert result.finish_reason == "stop"
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert scripted.calls == [USER]


def test_api_key_is_enforced():
    async def run():
        async with serve(create_app(ScriptedModel(replies=["ok"]), api_key="sesame")) as url:
            with pytest.raises(ModelError, match="401: missing or wrong API key"):
                await client(url).chat(USER)
            with pytest.raises(ModelError, match="401"):
                await client(url, api_key="wrong").chat(USER)
            return (await client(url, api_key="sesame").chat(USER)).text

    assert asyncio.run(run()) == "ok"


def test_unknown_model_name_is_a_404_model_error():
    async def run():
        async with serve(create_app(ScriptedModel(replies=["ok"]))) as url:
            await client(url, "gpt-4o").chat(USER)

    with pytest.raises(ModelError, match="404: the model 'gpt-4o' does not exist"):
        asyncio.run(run())


def test_a_failing_model_behind_the_server_is_unavailable_to_the_client():
    backend = ScriptedModel(replies=[ModelUnavailable("upstream down")])
    backend.policy = CallPolicy(retries=0)

    async def run():
        async with serve(create_app(backend)) as url:
            model = client(url)
            with pytest.raises(ModelUnavailable, match="503: upstream down"):
                await model.chat(USER)
            return model.usage.failures

    assert asyncio.run(run()) == FAST.retries + 1


def test_server_validates_requests_and_lists_its_model():
    async def run():
        app = create_app(ScriptedModel(replies=["ok"]), served_name="student")
        async with serve(app) as url, httpx.AsyncClient() as http:
            ok = {"model": "student", "messages": USER}
            bad = [
                ({**ok, "stream": "yes"}, "'stream' must be true or false"),
                ({**ok, "stream_options": {"include_usage": True}}, "only allowed with stream"),
                ({**ok, "messages": []}, "non-empty list"),
                ({**ok, "messages": [{"role": "robot", "content": "x"}]}, "not supported"),
                ({**ok, "max_tokens": 0}, "positive integer"),
                ({**ok, "temperature": 3}, "between 0 and 2"),
                ({**ok, "stop": [1]}, "'stop'"),
                ({**ok, "n": 2}, "n=1"),
            ]
            for body, message in bad:
                response = await http.post(f"{url}/chat/completions", json=body)
                assert response.status_code == 400, body
                assert message in response.json()["error"]["message"], body
            parts = {
                **ok,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            }
            answer = (await http.post(f"{url}/chat/completions", json=parts)).json()
            models = (await http.get(f"{url}/models")).json()
            health = (await http.get(url.removesuffix("/v1") + "/health")).json()
            return answer, models, health

    answer, models, health = asyncio.run(run())
    assert answer["object"] == "chat.completion" and answer["model"] == "student"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert [m["id"] for m in models["data"]] == ["student"]
    assert health["status"] == "ok"


def test_server_sheds_load_beyond_max_pending():
    async def run():
        slow = ScriptedModel(replies=["ok"], delay_s=0.5)
        async with serve(create_app(slow, max_pending=1)) as url, httpx.AsyncClient() as http:
            body = {"messages": USER}
            responses = await asyncio.gather(
                *(http.post(f"{url}/chat/completions", json=body) for _ in range(2))
            )
            return sorted(r.status_code for r in responses), responses

    statuses, responses = asyncio.run(run())
    assert statuses == [200, 429]
    assert any(r.headers.get("Retry-After") for r in responses)


def test_one_model_object_survives_several_event_loops():
    # Each asyncio.run is a new loop; pooled connections of the old one must not be reused.
    async def session(model: OpenAICompatibleModel | None):
        async with serve(create_app(ScriptedModel(replies=["ok"]))) as url:
            model = model or client(url)
            model.base_url = url  # the second server listens on another port
            return model, (await model.chat(USER)).text

    model, first = asyncio.run(session(None))
    _, second = asyncio.run(session(model))
    assert first == second == "ok"


# --- end to end: the embedded model behind `atlas serve-model` -------------------------------------
@pytest.mark.model
def test_embedded_model_over_http(model_server: str):
    model = OpenAICompatibleModel(model_server, EMBEDDED_NAME)

    async def run():
        try:
            return await model.chat(USER, max_tokens=6, temperature=0)
        finally:
            await model.aclose()

    result = asyncio.run(run())
    assert result.text.strip()
    assert result.model == EMBEDDED_NAME
    assert result.input_tokens > 5  # the chat template's tokens, counted by the real tokenizer
    assert 0 < result.output_tokens <= 6
    assert result.finish_reason in ("stop", "length")
    listed = httpx.get(f"{model_server}/v1/models").json()
    assert [m["id"] for m in listed["data"]] == [EMBEDDED_NAME]
