"""A real HTTP agent on loopback for remote-agent tests, run in a thread of its own so sync
callers, async callers and CLI subprocesses can all reach it.

Routes:
- ``POST /agent``: reads ``{"input": {"question": ..., "hint": ...}}`` (or the default
  ``{"task", "guidance"}`` body) and answers ``{"output": {"answer": ...}}``: "41" alone, "42"
  when the hint mentions the tens (a student that needs its teacher);
- ``POST /flaky``: 503 with ``Retry-After: 0`` for the first ``failures`` calls, then as /agent;
- ``POST /bad-json``: 200 with a broken JSON body;
- ``POST /refuse``: 400;
- ``POST /v1/chat/completions``: an OpenAI-compatible scripted teacher (probe, validation,
  guidance, RIM verdicts), so the CLI can use ``openai-compatible:`` as its teacher.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.helpers import free_port

GUIDANCE = "Add the tens first, then the ones."
VERDICT = json.dumps(
    {
        "principles": [{"name": "correct", "weight": 1.0}],
        "score": 0.9,
        "rationale": "checked",
        "uncertainty": 0.05,
    }
)


def student_answer(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("input"), dict):
        hint = body["input"].get("hint") or ""
    else:
        hint = (body or {}).get("guidance") or ""
    return "42" if "tens" in hint else "41"


def teacher_reply(messages: list[dict]) -> str:
    system = messages[0]["content"] if messages else ""
    if system.startswith("JUDGE: "):
        return VERDICT
    if system.startswith("You judge whether"):
        return "0.7"  # paired lane
    if system.startswith("You check"):
        return "INVALID: not 42" if "42" not in messages[-1]["content"] else "VALID"
    return GUIDANCE


@dataclass
class AgentServer:
    failures: int = 1
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    teacher_calls: int = 0
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request) -> Any:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return body

    async def agent(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response({"output": {"answer": student_answer(body)}})

    async def flaky(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="warming up", headers={"Retry-After": "0"})
        return web.json_response({"output": {"answer": student_answer(body)}})

    async def bad_json(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text='{"output": {"answer": 4', content_type="application/json")

    async def refuse(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=400, text="task too long")

    async def chat(self, request: web.Request) -> web.Response:
        self.teacher_calls += 1
        body = await request.json()
        text = teacher_reply(body["messages"])
        return web.json_response(
            {
                "model": body.get("model", "teacher"),
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5},
            }
        )

    def __enter__(self) -> AgentServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/agent", self.agent)
            app.router.add_post("/flaky", self.flaky)
            app.router.add_post("/bad-json", self.bad_json)
            app.router.add_post("/refuse", self.refuse)
            app.router.add_post("/v1/chat/completions", self.chat)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="agent-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the agent server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
