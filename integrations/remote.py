"""Remote agents: supervise an agent that lives behind an HTTP endpoint (JSON in, JSON out).

    from atlas_middleware.integrations.remote import RemoteAgent, supervise_remote

    agent = RemoteAgent(
        "https://agents.internal/solve",
        request_template='{"input": {"question": "{task}", "hint": "{guidance}"}}',
        result_path="output.answer",
        headers={"Authorization": "Bearer ..."},
    )
    agent("What is 12 + 30?")                      # plain call
    solve = atlas.supervise(agent, agent="solver")  # or supervise_remote(url, ...)
    solve("What is 12 + 30?")                      # one supervised session

Each call POSTs the template with ``{task}`` and ``{guidance}`` (the teacher's guidance for this
call, empty when there is none) substituted as JSON strings, so no task text can break the JSON.
Connection failures, 5xx and 429 answers are retried with exponential backoff, honouring
``Retry-After``. Each attempt is an HTTP client span under the session, and the W3C
``traceparent`` header goes along so an instrumented agent joins the session's trace.
See docs/integrations/remote-agents.md.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from atlas_middleware.guidance import guidance as current_guidance
from atlas_middleware.telemetry import get_tracer
from atlas_middleware.telemetry import schema as s

__all__ = ["RemoteAgent", "RemoteAgentError", "supervise_remote"]

PLACEHOLDERS = ("task", "guidance")
DEFAULT_TEMPLATE = '{"task": "{task}", "guidance": "{guidance}"}'
# Keys tried, in order, when no result path is given and the agent answers with an object.
ANSWER_KEYS = ("answer", "output", "result", "response", "text", "content")
MAX_RETRY_AFTER_S = 60.0


class RemoteAgentError(RuntimeError):
    """The remote agent could not give an answer; the message is one line saying why."""


# --- the request ---------------------------------------------------------------------------------
def parse_template(template: str | Mapping[str, Any] | None) -> Any:
    """The request template as JSON data. ``{task}`` / ``{guidance}`` may stand inside strings
    (``"Q: {task}"``) or alone, quoted or not (``{"q": {task}}``)."""
    if template is None:
        template = DEFAULT_TEMPLATE
    if isinstance(template, Mapping):
        data: Any = dict(template)
        text = json.dumps(data)
    else:
        text = template
        try:
            data = json.loads(_quote_bare(text))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"request template is not valid JSON ({exc.msg} at line {exc.lineno} column "
                f'{exc.colno}): write it as JSON with "{{task}}" where the task goes'
            ) from None
    if "{task}" not in text:
        raise ValueError(
            'request template has no {task} placeholder: put "{task}" where the agent reads '
            'its task, e.g. {"input": "{task}"}'
        )
    return data


def _quote_bare(text: str) -> str:
    """Quote the placeholders that stand outside JSON strings (``{"q": {task}}``)."""
    out: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        else:
            for name in PLACEHOLDERS:
                token = "{" + name + "}"
                if text.startswith(token, i):
                    out.append(f'"{token}"')
                    i += len(token)
                    break
            else:
                out.append(char)
                i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def render_template(template: Any, task: str, guidance: str | None) -> Any:
    """A copy of the parsed template with the placeholders filled in. A string that is just a
    placeholder becomes the value itself (``null`` for absent guidance); inside longer strings
    the text is spliced in. Values are data, never JSON text, so nothing needs escaping."""
    values = {"task": task, "guidance": guidance}

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            for name in PLACEHOLDERS:
                if node == "{" + name + "}":
                    return values[name]
            for name in PLACEHOLDERS:
                node = node.replace("{" + name + "}", values[name] or "")
            return node
        if isinstance(node, list):
            return [fill(item) for item in node]
        if isinstance(node, dict):
            return {fill(k) if isinstance(k, str) else k: fill(v) for k, v in node.items()}
        return node

    return fill(template)


# --- the response --------------------------------------------------------------------------------
def parse_path(path: str | None) -> list[str | int] | None:
    """``output.answer`` / ``choices.0.message.content`` → its steps (numbers index lists)."""
    if path is None or not path.strip():
        return None
    steps: list[str | int] = []
    for part in path.strip().split("."):
        if not part:
            raise ValueError(
                f"result path {path!r} has an empty step: use dots between keys, e.g. "
                "'output.answer' or 'choices.0.message.content'"
            )
        steps.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    return steps


def extract(data: Any, steps: list[str | int] | None, path: str | None = None) -> str:
    """The answer text at ``steps`` in the response data."""
    if steps is None:
        if isinstance(data, dict):
            for key in ANSWER_KEYS:
                if key in data:
                    return _text(data[key])
        return _text(data)
    node = data
    walked: list[str] = []
    for step in steps:
        where = ".".join(walked) or "the top"
        if isinstance(node, list) and isinstance(step, int):
            if not -len(node) <= step < len(node):
                raise RemoteAgentError(
                    f"result path {path!r}: index {step} is out of range at {where} "
                    f"(a list of {len(node)})"
                )
            node = node[step]
        elif isinstance(node, dict) and str(step) in node:
            node = node[str(step)]
        elif isinstance(node, dict):
            keys = ", ".join(list(node)[:10]) or "none"
            raise RemoteAgentError(
                f"result path {path!r}: no key {str(step)!r} at {where} (keys there: {keys})"
            )
        else:
            raise RemoteAgentError(
                f"result path {path!r}: cannot take {str(step)!r} at {where}, which is "
                f"{_kind(node)}"
            )
        walked.append(str(step))
    return _text(node)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return f"the {type(value).__name__} {json.dumps(value)[:40]}"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment (they may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _Retry(Exception):
    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


# --- the agent -----------------------------------------------------------------------------------
class RemoteAgent:
    """An agent behind ``url``: ``agent(task)`` (sync) or ``await agent.acall(task)`` → answer.

    - ``request_template``: JSON (text or a dict) with ``{task}`` and ``{guidance}``; default
      ``{"task": "{task}", "guidance": "{guidance}"}``.
    - ``result_path``: where the answer is in the JSON response (``output.answer``,
      ``choices.0.message.content``); default: a JSON string response itself, else the first of
      the keys ``answer``, ``output``, ``result``, ``response``, ``text``, ``content``.
    - ``timeout``: seconds per attempt; ``retries``: extra attempts after a connection failure,
      a 5xx or a 429 (``Retry-After`` honoured, up to 60 s); ``backoff_s``: the first wait.

    Bad configuration raises ValueError at once; a failed call raises :class:`RemoteAgentError`.
    """

    def __init__(
        self,
        url: str,
        *,
        request_template: str | Mapping[str, Any] | None = None,
        result_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        name: str | None = None,
    ) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"agent URL {url!r} is not an http(s) URL: use e.g. http://127.0.0.1:8000/agent"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be more than 0 seconds (got {timeout})")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more (got {retries})")
        self.url = url
        self.template = parse_template(request_template)
        self.result_path = result_path
        self._steps = parse_path(result_path)
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.name = name or (parts.hostname + (f":{parts.port}" if parts.port else ""))
        # supervise() names the agent and the session after these.
        self.__name__ = self.__qualname__ = self.name
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._aclients: dict[int, Any] = {}

    # --- one call -------------------------------------------------------------------------------
    def body(self, task: str, guidance: str | None = None) -> Any:
        """The JSON body sent for ``task`` (with this guidance)."""
        return render_template(self.template, task, guidance)

    def __call__(self, task: str) -> str:
        import httpx

        body = self.body(task, current_guidance())
        attempt = 0
        while True:
            with self._span(attempt) as span:
                try:
                    headers = self._headers()
                    response = self._sync_client().post(self.url, json=body, headers=headers)
                    return self._answer(response, span)
                except httpx.TransportError as exc:
                    failure: Exception = self._transport_error(exc, span)
                except _Retry as exc:
                    failure = exc
            attempt = self._next(attempt, failure)
            time.sleep(self._wait(attempt, failure))

    async def acall(self, task: str) -> str:
        """The async call: same request, retries and errors as calling the agent."""
        import httpx

        body = self.body(task, current_guidance())
        attempt = 0
        while True:
            with self._span(attempt) as span:
                try:
                    headers = self._headers()
                    response = await self._async_client().post(self.url, json=body, headers=headers)
                    return self._answer(response, span)
                except httpx.TransportError as exc:
                    failure: Exception = self._transport_error(exc, span)
                except _Retry as exc:
                    failure = exc
            attempt = self._next(attempt, failure)
            await asyncio.sleep(self._wait(attempt, failure))

    # --- shared parts ---------------------------------------------------------------------------
    def _span(self, attempt: int) -> Any:
        parts = urlsplit(self.url)
        attributes: dict[str, Any] = {
            s.HTTP_REQUEST_METHOD: "POST",
            s.URL_FULL: _safe_url(self.url),
            s.SERVER_ADDRESS: parts.hostname,
        }
        if attempt:
            attributes[s.HTTP_REQUEST_RESEND_COUNT] = attempt
        return get_tracer().start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def _headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        propagate.inject(headers)  # traceparent: the agent's own spans join the session
        return headers

    def _answer(self, response: Any, span: Any) -> str:
        status = response.status_code
        span.set_attribute(s.HTTP_RESPONSE_STATUS_CODE, status)
        where = _safe_url(self.url)
        if status >= 400:
            span.set_attribute(s.ERROR_TYPE, str(status))
            span.set_status(Status(StatusCode.ERROR))
            message = f"agent at {where} answered {status}: {_snippet(response.text)}"
            if status >= 500 or status == 429:
                raise _Retry(message, retry_after(response.headers.get("retry-after")))
            raise RemoteAgentError(message)
        content_type = response.headers.get("content-type", "")
        if self._steps is None and "json" not in content_type and content_type:
            return response.text  # a plain-text agent, no path to follow
        try:
            data = response.json()
        except ValueError:
            span.set_attribute(s.ERROR_TYPE, "invalid_json")
            span.set_status(Status(StatusCode.ERROR))
            raise RemoteAgentError(
                f"agent at {where} did not answer with JSON: {_snippet(response.text)}"
            ) from None
        try:
            return extract(data, self._steps, self.result_path)
        except RemoteAgentError as exc:
            span.set_attribute(s.ERROR_TYPE, "result_path")
            span.set_status(Status(StatusCode.ERROR))
            raise RemoteAgentError(f"agent at {where}: {exc}") from None

    def _transport_error(self, exc: Exception, span: Any) -> Exception:
        import httpx

        span.set_attribute(s.ERROR_TYPE, type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR))
        where = _safe_url(self.url)
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return _Retry(f"cannot reach the agent at {where}: {text}")
        if isinstance(exc, httpx.TimeoutException):
            # The agent may still be working (and acting): not retried.
            return RemoteAgentError(
                f"agent at {where} gave no answer within {self.timeout:g}s "
                "(raise timeout= / --timeout)"
            )
        return RemoteAgentError(f"agent at {where} failed: {type(exc).__name__}: {text}")

    def _next(self, attempt: int, failure: Exception) -> int:
        if not isinstance(failure, _Retry):
            raise failure
        if attempt >= self.retries:
            tries = f"{attempt + 1} attempt" + ("s" if attempt else "")
            raise RemoteAgentError(f"{failure} (gave up after {tries})") from None
        return attempt + 1

    def _wait(self, attempt: int, failure: Exception) -> float:
        wait = getattr(failure, "wait", None)
        if wait is not None:
            return wait
        return self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)

    def _sync_client(self) -> Any:
        if self._client is None:
            import httpx

            with self._client_lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self._timeout())
        return self._client

    def _async_client(self) -> Any:
        # An AsyncClient's pooled connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        client = self._aclients.get(id(loop))
        if client is None or client.is_closed:
            import httpx

            client = self._aclients[id(loop)] = httpx.AsyncClient(timeout=self._timeout())
        return client

    def _timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    def close(self) -> None:
        """Close the sync client (async clients close with their loop)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"RemoteAgent({_safe_url(self.url)!r})"


def _snippet(text: str, limit: int = 160) -> str:
    flat = " ".join((text or "").split())
    if not flat:
        return "(empty body)"
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def supervise_remote(
    url: str,
    *,
    request_template: str | Mapping[str, Any] | None = None,
    result_path: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    agent: str | None = None,
    **options: Any,
) -> Callable[[str], str]:
    """A supervised sync function calling the remote agent (``fn.acall`` is the async one);
    ``options`` are :func:`atlas_middleware.supervise`'s (teacher, reward, lane, reference, ...).
    A paired-lane retry calls the agent again: ``max_retries=0`` for agents with side effects."""
    from atlas_middleware.supervise import supervise

    remote = RemoteAgent(
        url,
        request_template=request_template,
        result_path=result_path,
        headers=headers,
        timeout=timeout,
        retries=retries,
        name=agent,
    )
    sync: Any = supervise(remote, agent=remote.name, **options)
    sync.acall = supervise(remote.acall, agent=remote.name, **options)
    sync.remote = remote
    return sync
