"""The HTTP side of ``atlas ui``: requests, responses, routing, and the security rules.

Security, in one place:
- **Bind**: 127.0.0.1 by default. Any other address needs a token, the collector's rule
  (``otel_exporters.collector.auth``): clients send ``Authorization: Bearer <token>`` (scripts) or
  sign in once on ``/login`` (browsers; an HttpOnly, SameSite=Strict cookie follows).
- **Host check**: without a token, only requests addressed to a loopback name are answered, so a
  web page cannot reach the server through DNS rebinding.
- **CSRF**: every write is a POST carrying a token bound to an HttpOnly cookie (HMAC with a
  per-process secret); cross-site requests (``Sec-Fetch-Site``, ``Origin``) are refused too.
- **Escaping**: pages are Jinja2 templates with autoescaping; a Content-Security-Policy allows
  only this server's own script and styles, so even a missed escape could not run a script.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import importlib.resources
import logging
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

from atlas_middleware.otel_exporters.collector.auth import is_loopback, token_check
from atlas_middleware.storage import Store, StoreError, StoreUnavailable
from atlas_middleware.storage.records import safe_url

log = logging.getLogger("atlas.ui")

MAX_FORM_BYTES = 1 << 20
TOKEN_ENV = "ATLAS_UI_TOKEN"
CSRF_COOKIE = "atlas_csrf"
REVIEWER_COOKIE = "atlas_reviewer"
_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


class ConfigError(ValueError):
    """A setting of ``atlas ui`` is wrong; the message names it and says what to do."""


@dataclass
class UISettings:
    store_url: str
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    reviewer: str | None = None  # who the review log names, unless the page sets a name
    reports: list[Path] = field(default_factory=list)  # folders of `atlas eval` reports
    certfile: str | None = None  # HTTPS when given (with keyfile)
    keyfile: str | None = None

    def validate(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"--host {self.host} is not loopback: set --token (or ${TOKEN_ENV}) so only "
                "people with the token can read and review sessions"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--certfile and --keyfile go together")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def redirect(location: str) -> Response:
    return Response(303, b"", headers=[("Location", location)])


def safe_next(value: str | None, default: str = "/sessions") -> str:
    """A same-site path to go back to: a path on this server, never another host."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


class Request:
    def __init__(
        self,
        method: str,
        target: str,
        headers: Any,
        body: bytes = b"",
        *,
        client: str = "",
    ) -> None:
        parts = urllib.parse.urlsplit(target)
        self.method = method
        self.path = urllib.parse.unquote(parts.path) or "/"
        self.target = target
        self.query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        self.headers = headers
        self.client = client
        self.form: dict[str, list[str]] = {}
        if method == "POST" and body:
            self.form = urllib.parse.parse_qs(
                body.decode("utf-8", "replace"), keep_blank_values=True
            )
        self.cookies: dict[str, str] = {}
        raw = headers.get("Cookie")
        if raw:
            try:
                jar = SimpleCookie()
                jar.load(raw)
                self.cookies = {k: v.value for k, v in jar.items()}
            except CookieError:
                pass
        self.set_cookies: list[str] = []
        self.bearer = False  # authenticated by an Authorization header (a script, not a browser)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0].strip() if values else default

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[0].strip() if values else default

    def fields(self, name: str) -> list[str]:
        return [v.strip() for v in self.form.get(name, []) if v.strip()]


Handler = Callable[..., Response]


class UIApp:
    """Routes a request to its page, after the security checks; turns errors into pages."""

    def __init__(self, settings: UISettings, store: Store) -> None:
        import jinja2

        from atlas_middleware.ui import pages

        self.settings = settings
        self.store = store
        self.store_label = safe_url(settings.store_url)
        self.secret = secrets.token_bytes(32)
        self.check_token = token_check(settings.token)
        self.logins: set[str] = set()
        self._logins_lock = threading.Lock()
        self.tls = bool(settings.certfile)
        self.port = settings.port
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("atlas_middleware.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        pages.install_filters(self.env)
        self.static = _load_static()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(f"^{pattern}$"), handler)
            for method, pattern, handler in pages.ROUTES
        ]
        self.cache: dict[str, tuple[float, Any]] = {}

    # --- cookies and tokens --------------------------------------------------------------------
    @property
    def auth_cookie(self) -> str:
        # Per port: two servers on one host must not sign each other's browsers out.
        return f"atlas_auth_{self.port}"

    def cookie(self, name: str, value: str, *, max_age: int | None = None) -> str:
        text = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"
        if max_age is not None:
            text += f"; Max-Age={max_age}"
        if self.tls:
            text += "; Secure"
        return text

    def csrf_token(self, request: Request) -> str:
        value = request.cookies.get(CSRF_COOKIE)
        if not value or not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", value):
            value = secrets.token_urlsafe(32)
            request.cookies[CSRF_COOKIE] = value
            request.set_cookies.append(self.cookie(CSRF_COOKIE, value))
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()

    def reviewer(self, request: Request) -> str:
        from atlas_middleware.review import default_actor

        name = request.cookies.get(REVIEWER_COOKIE, "")
        name = urllib.parse.unquote(name).strip()
        return name[:64] if name else (self.settings.reviewer or default_actor())

    def login(self, request: Request) -> None:
        session = secrets.token_urlsafe(32)
        with self._logins_lock:
            self.logins.add(session)
        request.set_cookies.append(self.cookie(self.auth_cookie, session))

    def logout(self, request: Request) -> None:
        with self._logins_lock:
            self.logins.discard(request.cookies.get(self.auth_cookie, ""))
        request.set_cookies.append(self.cookie(self.auth_cookie, "", max_age=0))

    # --- checks --------------------------------------------------------------------------------
    def _host_allowed(self, request: Request) -> bool:
        if self.settings.token:
            return True  # a token guards the server; Host names behind proxies vary
        host = (request.headers.get("Host") or "").strip().lower()
        if not host:
            return True  # not a browser: browsers always name the host
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not name:
            name, port = host, ""
        if port and port != str(self.port):
            return False
        return name in ("localhost", "127.0.0.1", "[::1]") or (
            is_loopback(name) and name == self.settings.host.lower()
        )

    def _authenticated(self, request: Request) -> bool:
        if not self.settings.token:
            return True
        header = request.headers.get("Authorization")
        if header is not None:
            if self.check_token(header):
                request.bearer = True
                return True
            return False
        session = request.cookies.get(self.auth_cookie)
        with self._logins_lock:
            return bool(session) and session in self.logins

    def _check_csrf(self, request: Request) -> None:
        if request.bearer:
            return  # browsers never attach an Authorization header on their own
        site = request.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise HTTPError(403, "cross-site request refused")
        origin = request.headers.get("Origin")
        if origin and origin != "null":
            expected = f"{'https' if self.tls else 'http'}://{request.headers.get('Host', '')}"
            if origin.lower() != expected.lower():
                raise HTTPError(403, "request from another origin refused")
        cookie = request.cookies.get(CSRF_COOKIE)
        sent = request.field("csrf")
        if not cookie or not sent:
            raise HTTPError(403, "missing form token: reload the page and try again")
        expected_token = hmac.new(self.secret, cookie.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sent.encode(), expected_token.encode()):
            raise HTTPError(403, "stale form token: reload the page and try again")

    # --- dispatch ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        from atlas_middleware.ui import pages

        try:
            if not self._host_allowed(request):
                raise HTTPError(421, "this server answers only requests addressed to localhost")
            if request.path.startswith("/static/"):
                return self._static(request.path[len("/static/") :])
            if request.path == "/favicon.ico":
                return self._static("favicon.svg")
            public = request.path == "/login"
            if not public and not self._authenticated(request):
                if request.method == "GET" and "Authorization" not in request.headers:
                    return redirect("/login?next=" + urllib.parse.quote(request.target, safe=""))
                raise HTTPError(401, "missing or wrong bearer token")
            if request.method == "POST":
                self._check_csrf(request)
            for method, pattern, handler in self.routes:
                match = pattern.match(request.path)
                if match and method == request.method:
                    return handler(self, request, **match.groupdict())
            if any(p.match(request.path) for _, p, _ in self.routes):
                raise HTTPError(405, f"{request.method} is not allowed here")
            raise HTTPError(404, "no such page")
        except HTTPError as exc:
            return pages.error_page(self, request, exc.status, exc.message)
        except StoreUnavailable as exc:
            return pages.error_page(self, request, 503, f"the store is unavailable: {exc}")
        except StoreError as exc:
            return pages.error_page(self, request, 500, str(exc))
        except Exception:
            log.exception("atlas ui: %s %s failed", request.method, request.path)
            return pages.error_page(
                self, request, 500, "internal error (details in the server's log)"
            )

    def _static(self, name: str) -> Response:
        found = self.static.get(name)
        if found is None:
            raise HTTPError(404, "no such file")
        body, kind = found
        return Response(200, body, kind, [("Cache-Control", "max-age=300")])

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        page = self.env.get_template(template).render(
            csrf=self.csrf_token(request),
            reviewer=self.reviewer(request),
            store_label=self.store_label,
            signed_in=bool(self.settings.token) and not request.bearer,
            request_path=request.target,
            **context,
        )
        return Response(status, page.encode(), headers=[("Cache-Control", "no-store")])

    def cached(self, key: str, seconds: float, compute: Callable[[], Any]) -> Any:
        """A value computed at most every ``seconds`` (filter choices, counted over the store)."""
        now = time.monotonic()
        hit = self.cache.get(key)
        if hit is not None and now - hit[0] < seconds:
            return hit[1]
        value = compute()
        self.cache[key] = (now, value)
        return value


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = importlib.resources.files("atlas_middleware.ui") / "static"
    found = {}
    for entry in folder.iterdir():
        kind = _STATIC_TYPES.get(Path(entry.name).suffix)
        if kind:
            found[entry.name] = (entry.read_bytes(), kind)
    return found


class _Handler(http.server.BaseHTTPRequestHandler):
    server: UIServer
    server_version = "atlas-ui"
    sys_version = ""
    timeout = 30  # a client that stops sending does not hold its thread forever

    head = False  # a HEAD request: answered as GET, without the body

    def _serve(self) -> None:
        app = self.server.app
        body = b""
        if self.command == "POST":
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_FORM_BYTES:
                self._write(Response(413, b"request too large", "text/plain; charset=utf-8"), [])
                return
            body = self.rfile.read(length)
        method = "GET" if self.head else self.command
        request = Request(method, self.path, self.headers, body, client=self.client_address[0])
        response = app.handle(request)
        self._write(response, request.set_cookies)

    def _write(self, response: Response, cookies: list[str]) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in _SECURITY_HEADERS:
            self.send_header(name, value)
        for name, value in response.headers:
            self.send_header(name, value)
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        if isinstance(response.body, bytes):
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if not self.head:
                self.wfile.write(response.body)
            return
        self.end_headers()  # streamed: HTTP/1.0, the end of the body is the end of the connection
        if self.head:
            return
        for chunk in response.body:
            self.wfile.write(chunk)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self.head = True
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True


class UIServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, app: UIApp, address: tuple[str, int]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.app = app
        app.port = self.server_address[1]

    @property
    def url(self) -> str:
        host = self.app.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.app.tls else 'http'}://{shown}:{self.server_address[1]}"


def make_server(settings: UISettings, store: Store) -> UIServer:
    """A server for ``store`` bound as ``settings`` say (port 0: any free port; see ``.url``).
    Call ``serve_forever()`` to run it and ``shutdown()`` from another thread to stop it."""
    settings.validate()
    app = UIApp(settings, store)
    server = UIServer(app, (settings.host.strip("[]"), settings.port))
    if settings.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings.certfile, settings.keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
