"""Small real HTTP servers for model tests, run on the test's own event loop."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.helpers import free_port


@dataclass
class StatusServer:
    """Answers every chat completion with ``status`` and an OpenAI-style error body."""

    status: int
    message: str = "scripted failure"
    hits: int = 0
    bodies: list[dict] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.bodies.append(await request.json())
        body = {"error": {"message": self.message, "type": "test", "code": self.status}}
        return web.Response(
            status=self.status, text=json.dumps(body), content_type="application/json"
        )


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL (with ``/v1``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def status_server(status: int, message: str = "scripted failure") -> AsyncIterator[tuple]:
    server = StatusServer(status, message)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    async with serve(app) as url:
        yield server, url
