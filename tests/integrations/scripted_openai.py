"""A scripted OpenAI chat-completions server on loopback, for framework tests that must go
through the framework's real OpenAI client code path (requests, tool calls, streaming, usage).

It runs on a thread of its own with its own event loop, so synchronous clients (``Runner.run_sync``,
``litellm.completion``) and async ones on any loop can call it. ``respond(body)`` decides each
reply from the request body: a string (the assistant's text) or a list of :func:`tool_call`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from tests.helpers import free_port

Reply = str | list[dict[str, Any]]
MODEL = "scripted-gpt"


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def system_text(body: dict[str, Any]) -> str:
    return "\n".join(
        m.get("content") or ""
        for m in body["messages"]
        if m["role"] in ("system", "developer") and isinstance(m.get("content"), str)
    )


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m.get("content") or "" for m in body["messages"] if m["role"] == "tool"]


def _tokens(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in body["messages"]) or 1


class ScriptedOpenAI:
    def __init__(self, respond: Callable[[dict[str, Any]], Reply]) -> None:
        self.respond = respond
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        reply = self.respond(body)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(reply, str):
            message["content"], finish = reply, "stop"
        else:
            message["tool_calls"], finish = reply, "tool_calls"
        usage = {
            "prompt_tokens": _tokens(body),
            "completion_tokens": 7,
            "total_tokens": _tokens(body) + 7,
        }
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(choices: list[dict[str, Any]], usage: Any = None) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices}
            if usage is not None:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        if isinstance(reply, str):
            await send([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            for word in reply.split(" "):
                await send([{"index": 0, "delta": {"content": word + " "}}])
        else:
            calls = [{"index": i, **call} for i, call in enumerate(reply)]
            await send([{"index": 0, "delta": {"role": "assistant", "tool_calls": calls}}])
        await send([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> ScriptedOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def scripted_openai(respond: Callable[[dict[str, Any]], Reply]) -> Iterator[ScriptedOpenAI]:
    """For fixtures: ``yield from scripted_openai(respond)``."""
    with ScriptedOpenAI(respond) as server:
        yield server
