"""A small agent behind an HTTP endpoint, for the remote-agent example: ``POST /solve`` with
``{"question": ..., "hint": ...}`` answers ``{"output": {"answer": ...}}``. Any language or
framework could stand here; this one asks an atlas model (the embedded SmolLM2 by default)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from atlas_middleware.models import ChatModel

SYSTEM = "Solve the problem. End with the final number."


def make_app(model: ChatModel, max_tokens: int = 48) -> web.Application:
    async def solve(request: web.Request) -> web.Response:
        body = await request.json()
        question = body.get("question")
        if not isinstance(question, str) or not question.strip():
            return web.json_response({"error": "'question' must be a string"}, status=400)
        system = SYSTEM
        if body.get("hint"):  # the teacher's guidance, when the supervisor sends some
            system += "\n\n" + body["hint"]
        reply = await model.chat(
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=max_tokens,
        )
        return web.json_response({"output": {"answer": reply.text}})

    app = web.Application()
    app.router.add_post("/solve", solve)
    return app


class Server:
    """The agent on 127.0.0.1:``port`` in a background thread (``with Server(...) as url:``)."""

    def __init__(self, model: ChatModel, port: int, max_tokens: int = 48) -> None:
        self.app = make_app(model, max_tokens)
        self.port = port
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> str:
        ready = threading.Event()

        async def start() -> None:
            self.runner = web.AppRunner(self.app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="example-agent", daemon=True)
        self.thread.start()
        ready.wait(30)
        return f"http://127.0.0.1:{self.port}/solve"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
