"""``atlas serve-model``: any model atlas can build, behind the OpenAI chat-completions API.

For machines without vLLM: the embedded SmolLM2 (or any ``hf:`` folder, or a litellm model)
becomes an endpoint that OpenAI clients, litellm, agent frameworks and
:class:`~atlas_middleware.models.OpenAICompatibleModel` talk to. ``stream: true`` is answered with
server-sent events in OpenAI's chunk format; the reply is generated whole first (atlas models are
not token streams), then sent as a few chunks, so streaming clients work but gain no latency.

Tool calling works as OpenAI's: ``tools`` (and ``tool_choice``) are offered to the model in its
tool-calling format, its calls come back as ``tool_calls`` (streamed too, finish reason
``tool_calls``), and ``role: tool`` results are accepted; see
:mod:`atlas_middleware.models.tool_calls`. A reply that is not a valid call stays text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from atlas_middleware.models.tool_calls import (
    Tool,
    ToolCall,
    ToolRequestError,
    parse_reply,
    parse_tools,
    render,
    tool_choice_allows,
)

if TYPE_CHECKING:
    from aiohttp import web

    from atlas_middleware.models import ChatMessage, ChatModel

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
DEFAULT_MAX_TOKENS = 256


@contextlib.contextmanager
def serving(port: int, *, model: str = "embedded", start_timeout: float = 300.0) -> Iterator[str]:
    """Run ``atlas serve-model`` for ``model`` on loopback ``port`` as a subprocess and yield its
    OpenAI base URL (``http://127.0.0.1:PORT/v1``); stopped on exit. For examples and scripts
    that want an offline OpenAI-compatible endpoint without a second terminal."""
    import httpx

    command = [
        sys.executable, "-m", "atlas_middleware.cli", "serve-model",
        "--port", str(port), "--model", model,
    ]  # fmt: skip
    server = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout  # the first start converts the model once
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"atlas serve-model exited with {server.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"atlas serve-model did not come up within {start_timeout:.0f} s"
                )
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve-model",
        help="serve a model over the OpenAI chat-completions API (default: the embedded model)",
        description="Serve a model as an OpenAI-compatible endpoint: POST /v1/chat/completions "
        "(stream=true answers with server-sent events once the reply is complete; tools, "
        "tool_calls and role 'tool' messages as OpenAI's), "
        "GET /v1/models, GET /health. The port opens once the model is loaded.",
    )
    parser.add_argument(
        "--model",
        default="embedded",
        help="model spec: 'embedded' (default), 'hf:/path/to/model_dir', "
        "'openai-compatible:http://host:port/v1|model' or a litellm model string",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model id clients send and /v1/models lists (default: the model's own name)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 requests (default: no auth)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest one completion may take (default 300)",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=64,
        metavar="N",
        help="requests admitted at once; more are answered 429 (default 64)",
    )
    parser.set_defaults(func=_run, help_parser=parser)


def _run(args: argparse.Namespace) -> int:
    from atlas_middleware.cli.common import CLIError, UsageError

    try:
        from aiohttp import web
    except ImportError:
        raise CLIError(
            "serve-model needs aiohttp: pip install 'atlas-middleware[collector]'"
        ) from None
    from atlas_middleware.models import ModelError, build_model

    if args.max_pending < 1:
        raise UsageError("--max-pending must be at least 1")
    try:
        model = build_model(args.model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except (ImportError, OSError) as exc:
        raise CLIError(str(exc)) from None
    load = getattr(model, "load", None)
    if load is not None:
        # Load before the port opens, so "port open" means "ready" for clients and health checks.
        print(f"atlas serve-model: loading {model.name} ...", file=sys.stderr, flush=True)
        try:
            load()
        except (ModelError, ImportError) as exc:
            raise CLIError(str(exc)) from None
    app = create_app(
        model,
        served_name=args.served_model_name,
        api_key=args.api_key,
        timeout_s=args.timeout,
        max_pending=args.max_pending,
    )
    name = args.served_model_name or model.name
    print(
        f"atlas serve-model: serving {name} at http://{args.host}:{args.port}/v1",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


def create_app(
    model: ChatModel,
    *,
    served_name: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
    max_pending: int = 64,
) -> web.Application:
    """The aiohttp application behind ``atlas serve-model`` (usable on its own, e.g. in tests)."""
    from aiohttp import web

    server = _Server(model, served_name or model.name, api_key, timeout_s, max_pending)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/health", server.health)
    app.on_cleanup.append(server.close)
    return app


class _RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class _Server:
    def __init__(
        self,
        model: ChatModel,
        name: str,
        api_key: str | None,
        timeout_s: float | None,
        max_pending: int,
    ) -> None:
        self.model = model
        self.name = name
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.pending = 0
        self.created = int(time.time())

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        from atlas_middleware.models import ModelError, ModelTimeout, ModelUnavailable

        try:
            self._authorize(request)
            body = await _json_body(request)
            messages, options, tools = self._parse(body)
            stream, include_usage = _stream_options(body)
            if self.pending >= self.max_pending:
                raise _RequestError(429, "server busy: too many pending requests", "rate_limit")
            self.pending += 1
            try:
                result = await self.model.chat(messages, timeout_s=self.timeout_s, **options)
            finally:
                self.pending -= 1
        except _RequestError as exc:
            return _error(exc.status, exc.message, exc.kind)
        except ModelTimeout as exc:
            return _error(504, str(exc), "timeout")
        except ModelUnavailable as exc:
            return _error(503, str(exc), "service_unavailable")
        except ModelError as exc:
            # The model could not take this request (prompt too long, template rejected it, the
            # upstream provider refused it): the client's to fix, as OpenAI reports it.
            return _error(400, str(exc), "invalid_request_error")
        text, calls = parse_reply(result.text, tools)
        finish = "tool_calls" if calls else (result.finish_reason or "stop")
        if stream:
            return await self._stream(request, result, include_usage, text, calls, finish)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [call.to_openai() for call in calls]
        return _json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": result.input_tokens,
                    "completion_tokens": result.output_tokens,
                    "total_tokens": result.input_tokens + result.output_tokens,
                },
            }
        )

    async def _stream(
        self,
        request: web.Request,
        result: Any,
        include_usage: bool,
        text: str | None,
        calls: list[ToolCall],
        finish: str,
    ) -> web.StreamResponse:
        """The finished reply as OpenAI ``chat.completion.chunk`` events: the role, the text in
        word-sized pieces, each tool call (its name, then its arguments), the finish reason, the
        usage chunk when asked for, then ``[DONE]``."""
        from aiohttp import web

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.name,
                "choices": choices,
            }
            if include_usage:  # OpenAI sends usage: null on every chunk but the last
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "finish_reason": finish}]

        events = [chunk(delta({"role": "assistant", "content": ""}))]
        events += [chunk(delta({"content": piece})) for piece in _pieces(text or "")]
        for i, call in enumerate(calls):
            opening = {"index": i, "id": call.id, "type": "function"}
            events.append(
                chunk(
                    delta(
                        {
                            "tool_calls": [
                                {**opening, "function": {"name": call.name, "arguments": ""}}
                            ]
                        }
                    )
                )
            )
            arguments = call.to_openai()["function"]["arguments"]
            events.append(
                chunk(delta({"tool_calls": [{"index": i, "function": {"arguments": arguments}}]}))
            )
        events.append(chunk(delta({}, finish)))
        if include_usage:
            usage = {
                "prompt_tokens": result.input_tokens,
                "completion_tokens": result.output_tokens,
                "total_tokens": result.input_tokens + result.output_tokens,
            }
            events.append(chunk([], usage))
        events.append(b"data: [DONE]\n\n")
        try:
            for event in events:
                await response.write(event)
            await response.write_eof()
        except ConnectionResetError:  # the client went away; the reply is simply dropped
            pass
        return response

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except _RequestError as exc:
            return _error(exc.status, exc.message, exc.kind)
        entry = {"id": self.name, "object": "model", "created": self.created, "owned_by": "atlas"}
        return _json({"object": "list", "data": [entry]})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "model": self.name, "pending": self.pending})

    async def close(self, app: web.Application) -> None:
        await self.model.aclose()

    def _authorize(self, request: web.Request) -> None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise _RequestError(401, "missing or wrong API key", "authentication_error")

    def _parse(self, body: Any) -> tuple[list[ChatMessage], dict[str, Any], list[Tool]]:
        if not isinstance(body, dict):
            raise _RequestError(400, "the body must be a JSON object")
        requested = body.get("model")
        if requested is not None and requested != self.name:
            raise _RequestError(
                404, f"the model {requested!r} does not exist (serving {self.name!r})", "not_found"
            )
        if body.get("n", 1) != 1:
            raise _RequestError(400, "only n=1 is supported")
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise _RequestError(400, "'messages' must be a non-empty list")
        parsed = [_message(m, i) for i, m in enumerate(raw)]
        try:
            tools = parse_tools(body.get("tools"))
            if not tool_choice_allows(body.get("tool_choice")):
                tools = []
        except ToolRequestError as exc:
            raise _RequestError(400, str(exc)) from None
        # Tool turns (assistant calls, tool results) and offered tools become plain turns in the
        # model's tool-calling format; a plain conversation passes as it is.
        messages: list[ChatMessage] = render(parsed, tools)  # type: ignore[assignment]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _RequestError(400, "'max_tokens' must be a positive integer")
        # OpenAI's default temperature is 1 (sampling); clients wanting greedy send 0.
        temperature = body.get("temperature", 1.0)
        if temperature is None:
            temperature = 1.0
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise _RequestError(400, "'temperature' must be a number between 0 and 2")
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (
            not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
        ):
            raise _RequestError(400, "'stop' must be a string or a list of strings")
        options = {
            "max_tokens": max_tokens,
            "temperature": float(temperature),
            "stop": stop or None,
        }
        return messages, options, tools


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _RequestError(400, "'stream' must be true or false")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _RequestError(400, "'stream_options' must be an object")
    if not stream:
        raise _RequestError(400, "'stream_options' is only allowed with stream=true")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _RequestError(400, "'stream_options.include_usage' must be true or false")
    return stream, include_usage


def _pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to exactly ``text`` (whitespace stays with its word)."""
    return re.findall(r"\s*\S+|\s+$", text)


def _message(raw: Any, index: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _RequestError(400, f"messages[{index}] must be an object")
    role = ROLES.get(raw.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise _RequestError(
            400,
            f"messages[{index}].role {raw.get('role')!r} is not supported "
            "(system, developer, user, assistant, tool)",
        )
    content = raw.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        if len(texts) != len(content):
            raise _RequestError(400, f"messages[{index}]: only text content parts are supported")
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _RequestError(400, f"messages[{index}].content must be a string or text parts")
    message: dict[str, Any] = {"role": role, "content": content}
    calls = raw.get("tool_calls")
    if role == "assistant" and calls:
        if not isinstance(calls, list) or not all(
            isinstance(c, dict)
            and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str)
            for c in calls
        ):
            raise _RequestError(
                400, f"messages[{index}].tool_calls must be a list of function calls"
            )
        message["tool_calls"] = calls
    if role == "tool":
        message["tool_call_id"] = raw.get("tool_call_id")
    return message


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise _RequestError(400, "the body is not valid JSON") from None


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    from aiohttp import web

    return web.json_response(payload, status=status)


def _error(status: int, message: str, kind: str) -> web.Response:
    response = _json({"error": {"message": message, "type": kind, "code": status}}, status=status)
    if status == 429:
        response.headers["Retry-After"] = "1"
    return response
