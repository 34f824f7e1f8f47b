"""``atlas serve-model`` answers ``stream: true`` with OpenAI chunk events, read here by the
official OpenAI client (the one agent frameworks use)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import AsyncOpenAI

from atlas_middleware.cli.serve_model import create_app
from atlas_middleware.models import ModelUnavailable, ScriptedModel
from atlas_middleware.models.base import CallPolicy
from tests.models.servers import serve

USER = [{"role": "user", "content": "Name a city."}]
REPLY = "Paris is the  capital\nof France. "


async def _stream(url: str, **options):
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="scripted", messages=USER, stream=True, **options
        )
        return [chunk async for chunk in stream]
    finally:
        await client.close()


def test_streamed_reply_joins_back_to_the_text_and_ends_with_usage():
    scripted = ScriptedModel(replies=[REPLY])

    async def run():
        async with serve(create_app(scripted)) as url:
            return await _stream(url, stream_options={"include_usage": True}, max_tokens=16)

    chunks = asyncio.run(run())
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == "scripted" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes[:-1] == [None] * (len(finishes) - 1)
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0
    assert all(c.usage is None for c in body)
    assert scripted.calls == [USER]


def test_without_include_usage_no_usage_chunk_is_sent():
    async def run():
        async with serve(create_app(ScriptedModel(replies=["ok"]))) as url:
            return await _stream(url)

    chunks = asyncio.run(run())
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok"


def test_an_empty_reply_still_streams_role_and_finish():
    async def run():
        async with serve(create_app(ScriptedModel(replies=[""]))) as url:
            return await _stream(url)

    chunks = asyncio.run(run())
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


def test_failures_before_the_reply_are_plain_http_errors_not_broken_streams():
    backend = ScriptedModel(replies=[ModelUnavailable("upstream down")])
    backend.policy = CallPolicy(retries=0)

    async def run():
        async with serve(create_app(backend)) as url, httpx.AsyncClient() as http:
            body = {"messages": USER, "stream": True}
            failed = await http.post(f"{url}/chat/completions", json=body)
            wrong = await http.post(f"{url}/chat/completions", json={**body, "model": "gpt-4o"})
            return failed, wrong

    failed, wrong = asyncio.run(run())
    assert failed.status_code == 503 and "upstream down" in failed.json()["error"]["message"]
    assert wrong.status_code == 404


@pytest.mark.model
def test_the_embedded_model_streams_over_http(model_server: str):
    async def run():
        name = httpx.get(f"{model_server}/v1/models").json()["data"][0]["id"]
        client = AsyncOpenAI(base_url=f"{model_server}/v1", api_key="none", max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "What is 2 + 2?"}],
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]
        finally:
            await client.close()

    chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 8
