"""The dashboard's HTTP server: a fixed set of GET routes on the standard library's threading server.

Safe by default: it listens on loopback unless told otherwise, and any other address needs a token
(``--dashboard-token`` or :data:`TOKEN_ENV`), which every request must then carry: ``Authorization: Bearer
TOKEN``, ``?token=TOKEN``, or the cookie that the page sets when opened with ``?token=`` (so its own requests carry
it). Tokens are compared in constant time (:func:`hmac.compare_digest`). No file path comes from a request: the
page's three assets are read into memory at start, rejects are addressed by number. A request head over
:data:`MAX_HEAD_BYTES` gets 431, a body 413, a method other than GET 405, an unknown path 404; at most
:data:`MAX_CONNECTIONS` requests are served at once (more are closed unanswered) and :data:`MAX_VIEWERS` live
views. A browser that reads slowly holds only its own thread: it gets the newest frame when it is ready for one,
and a socket stalled for :data:`SOCKET_TIMEOUT_S` is dropped.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

from runtime.errors import DiadError

if TYPE_CHECKING:
    from runtime.dashboard.live import LiveView
    from runtime.dashboard.state import DashboardState

log = logging.getLogger("runtime.dashboard")

TOKEN_ENV = "DIAD_DASHBOARD_TOKEN"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_CONNECTIONS = 32
MAX_VIEWERS = 8  # browsers receiving live frames at once
SOCKET_TIMEOUT_S = 10.0
KEEPALIVE_S = 5.0  # a live view without a new frame gets a comment this often (finds vanished browsers)
COOKIE = "diad_dashboard"
ASSETS = {"/": ("page.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
REJECT_ROUTE = re.compile(r"/rejects/(\d{1,12})(\.thumb)?\.jpg")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
}


class DashboardError(DiadError):
    """The dashboard cannot start: a bad address, a public address without a token, or the port is taken."""


@dataclass(frozen=True)
class Address:
    """Where the dashboard listens, and the token its requests need (None: none needed)."""

    host: str
    port: int
    token: str | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) means this machine only: every address it resolves to is
    loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in found)


def dashboard_address(text: str, token: str | None = None) -> Address:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: any free port) and check that a non-loopback host
    has a token (``token``, else :data:`TOKEN_ENV`). Raises :class:`DashboardError` saying what is wrong."""
    token = token or os.environ.get(TOKEN_ENV) or None
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text.strip())
    if match is None:
        raise DashboardError(f"--dashboard {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise DashboardError(f"--dashboard {text!r}: port {port} is over 65535")
    if not is_loopback(host) and token is None:
        raise DashboardError(
            f"--dashboard {text!r}: {host} is reachable from other machines, so the page needs a token: give "
            f"--dashboard-token TOKEN or set {TOKEN_ENV} (or listen on 127.0.0.1)")
    return Address(host, port, token)


def session_cookie(token: str) -> str:
    """The cookie value the page gets for ``token``: derived from it, so the cookie alone is not the token."""
    return hmac.new(token.encode(), b"diad-dashboard session", hashlib.sha256).hexdigest()


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's assets (package data), by route: bytes and content type."""
    folder = resources.files("runtime.dashboard") / "static"
    return {route: ((folder / name).read_bytes(), kind) for route, (name, kind) in ASSETS.items()}


class Served(Protocol):
    """What the server uses of the dashboard it serves (:class:`runtime.dashboard.app.Dashboard`)."""

    state: DashboardState
    live: LiveView
    viewers: threading.BoundedSemaphore  # live views at once, at most MAX_VIEWERS
    closing: threading.Event
    metrics_type: str

    def state_json(self) -> bytes: ...

    def metrics(self) -> bytes: ...


class _HeadLimit:
    """A connection's input, of which at most ``budget`` bytes are read (no request here has a body)."""

    def __init__(self, raw: IO[bytes], budget: int) -> None:
        self.raw, self.budget, self.exceeded = raw, budget, False

    def readline(self, size: int = -1) -> bytes:
        if self.budget <= 0:
            self.exceeded = True
            return b""
        line = self.raw.readline(self.budget if size < 0 else min(size, self.budget))
        self.budget -= len(line)
        if self.budget <= 0 and not line.endswith(b"\n"):
            self.exceeded = True
        return line

    def close(self) -> None:
        self.raw.close()


class DashboardHTTPServer(ThreadingHTTPServer):
    """Serves one :class:`~runtime.dashboard.app.Dashboard` (``app``) at ``address`` from daemon threads."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Address, app: Served) -> None:
        self.app, self.token = app, address.token
        self.assets = load_assets()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((address.host, address.port), DashboardHandler)
        except OSError as exc:
            raise DashboardError(f"--dashboard {address.host}:{address.port}: cannot listen there ({exc})") from None

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        log.debug("dashboard: request from %s failed (%r)", client_address, sys.exc_info()[1])


class DashboardHandler(BaseHTTPRequestHandler):
    """The routes: the page (``/``, ``/app.js``, ``/style.css``), ``/api/state`` (JSON), ``/api/events`` (live
    frames as Server-Sent Events), ``/frame.jpg``, ``/rejects/<id>.jpg`` and ``/rejects/<id>.thumb.jpg``, and
    ``/metrics`` (Prometheus)."""

    server: DashboardHTTPServer
    rfile: _HeadLimit  # type: ignore[assignment]
    timeout = SOCKET_TIMEOUT_S
    default_request_version = "HTTP/1.0"  # never HTTP/0.9: every answer, errors included, has a status line

    def version_string(self) -> str:
        return "diad-dashboard"

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadLimit(self.rfile, MAX_HEAD_BYTES)  # type: ignore[assignment]

    def parse_request(self) -> bool:
        """The base class's parsing, then the limits: a head cut off at :data:`MAX_HEAD_BYTES` (414 or 431) and
        any method but GET (405) are answered here."""
        if not self.raw_requestline.endswith(b"\n"):  # cut off by the head limit
            self.requestline, self.request_version, self.command = "", "", ""
            self._text(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line over {MAX_HEAD_BYTES} bytes")
            return False
        if not super().parse_request():
            return False
        if self.rfile.exceeded:
            self._text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head over {MAX_HEAD_BYTES} bytes")
            return False
        if self.command != "GET":
            self._text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is served here", {"Allow": "GET"})
            return False
        return True

    def do_GET(self) -> None:
        if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
            return self._text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "requests here carry no body")
        url = urlsplit(self.path)
        query = parse_qs(url.query, max_num_fields=8)
        if not self._authorised(query):
            return self._text(HTTPStatus.UNAUTHORIZED, "a token is needed: Authorization: Bearer TOKEN or ?token=",
                              {"WWW-Authenticate": 'Bearer realm="diad dashboard"'})
        self._route(url.path, "token" in query)

    def _route(self, path: str, token_in_query: bool) -> None:
        app = self.server.app
        if path in self.server.assets:
            body, kind = self.server.assets[path]
            cookie = {}
            if path == "/" and token_in_query and self.server.token is not None:
                cookie = {"Set-Cookie": f"{COOKIE}={session_cookie(self.server.token)}; HttpOnly; SameSite=Strict; "
                                        "Path=/"}
            return self._send(HTTPStatus.OK, body, kind, cookie)
        if path == "/api/state":
            return self._send(HTTPStatus.OK, app.state_json(), "application/json")
        if path == "/api/events":
            return self._events()
        if path == "/metrics":
            return self._send(HTTPStatus.OK, app.metrics(), app.metrics_type)
        if path == "/frame.jpg":
            picture = app.live.latest_jpeg()
            if picture is None:
                return self._text(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
            return self._send(HTTPStatus.OK, picture, "image/jpeg")
        if (match := REJECT_ROUTE.fullmatch(path)) is not None:
            reject = app.state.reject(int(match.group(1)))
            if reject is None:
                return self._text(HTTPStatus.NOT_FOUND, "no such reject among the last ones")
            return self._send(HTTPStatus.OK, app.live.reject_jpeg(reject, bool(match.group(2))), "image/jpeg")
        self._text(HTTPStatus.NOT_FOUND, "no such page")

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        offered = list(query.get("token", []))
        header = self.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            offered.append(header[7:].strip())
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            cookie = None
        matches = [hmac.compare_digest(value.encode(), token.encode()) for value in offered]
        if cookie is not None:
            matches.append(hmac.compare_digest(cookie.value.encode(), session_cookie(token).encode()))
        return any(matches)

    def _events(self) -> None:
        app = self.server.app
        if not app.viewers.acquire(blocking=False):
            return self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {MAX_VIEWERS} live views at once")
        try:
            self.send_response(HTTPStatus.OK)
            self._headers({"Content-Type": "text/event-stream"})
            self.wfile.write(b"retry: 1000\n\n")
            seq = 0
            with app.live.watching():
                while not app.closing.is_set():
                    live = app.live.next_after(seq, KEEPALIVE_S)
                    if live is None:
                        self.wfile.write(b": waiting for frames\n\n")
                        continue
                    self.wfile.write(live.event)
                    seq = live.seq
        except OSError:  # the browser went away, or stalled past the socket timeout
            pass
        finally:
            app.viewers.release()

    def _headers(self, headers: dict[str, str]) -> None:
        for name, value in {**SECURITY_HEADERS, **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self._headers({"Content-Type": kind, "Content-Length": str(len(body)), **(headers or {})})
        self.wfile.write(body)

    def _text(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self._send(status, f"{status.value} {status.phrase}: {message}\n".encode(), "text/plain; charset=utf-8",
                   headers)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)
