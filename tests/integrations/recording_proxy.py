"""A recording proxy on loopback in front of an OpenAI-compatible server (``atlas serve-model``):
every chat-completions request body is kept, so a test can assert what the model really
received, whichever framework client sent it.

It runs on a thread of its own with its own event loop, like :mod:`scripted_openai`, so sync
clients (``litellm.completion``, ``ChatOpenAI.invoke``) and async ones on any loop can use it.
Responses, streamed or not, are passed back unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from tests.helpers import free_port


class RecordingProxy:
    def __init__(self, target: str) -> None:
        """``target``: the server's base URL, without ``/v1``."""
        self.target = target.rstrip("/")
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        assert self._client is not None
        async with self._client.post(f"{self.target}/v1/chat/completions", json=body) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _models(self, request: web.Request) -> web.Response:
        assert self._client is not None
        async with self._client.get(f"{self.target}/v1/models") as upstream:
            return web.Response(
                status=upstream.status, body=await upstream.read(), content_type="application/json"
            )

    async def _start(self) -> None:
        # A CPU model on a loaded 2-core machine may take minutes for one reply.
        self._client = ClientSession(timeout=ClientTimeout(total=600))
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._forward)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def system_texts(body: dict[str, Any]) -> list[str]:
    """The system (or developer) messages' text of one request, in order."""
    out = []
    for message in body["messages"]:
        if message["role"] not in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append(content or "")
    return out
