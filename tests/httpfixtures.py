"""A real HTTP server on 127.0.0.1 for crawler tests: fixture pages and injected faults.

`serve(routes)` runs a ThreadingHTTPServer on a free port in a thread. A route is a
function that answers one request; the builders below make pages and faults (slow
answers, stalls, trickles, 5xx, 429 with Retry-After, redirects, huge bodies). Every
request is logged with its path and headers, so tests can count attempts exactly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[["Handler"], None]


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    log: list[Request] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # ends slow routes early

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for r in self.log if r.path == path)

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    server_state: Server

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        state = self.server_state
        state.log.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = self.routes.get(self.path, status(404))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            route(self)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def send(
        self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True
    ) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeouts, size limits) is expected here


@contextlib.contextmanager
def serve(routes: dict[str, Route]) -> Iterator[Server]:
    """Serve `routes` (path, with query, -> route) until the block ends; unknown paths get 404."""
    state = Server("")
    handler = type("H", (Handler,), {"routes": routes, "server_state": state})
    httpd = _Server(("127.0.0.1", 0), handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- routes


def html(body: str, title: str = "Page") -> str:
    return f"<html><head><title>{title}</title></head><body>{body}</body></html>"


def page(
    body: str | bytes,
    ctype: str = "text/html; charset=utf-8",
    etag: str | None = None,
    last_modified: str | None = None,
) -> Route:
    """A 200 page; with a validator it answers a matching conditional request with 304."""
    data = body.encode("utf-8") if isinstance(body, str) else body

    def route(h: Handler) -> None:
        validators = {k: v for k, v in (("ETag", etag), ("Last-Modified", last_modified)) if v}
        if (etag and h.headers.get("If-None-Match") == etag) or (
            last_modified and h.headers.get("If-Modified-Since") == last_modified
        ):
            h.send(304, headers=validators)
            return
        h.send(200, data, {**({"Content-Type": ctype} if ctype else {}), **validators})

    return route


def status(code: int, headers: dict[str, str] | None = None) -> Route:
    return lambda h: h.send(code, f"status {code}".encode(), headers)


def redirect(to: str, code: int = 302) -> Route:
    return lambda h: h.send(code, headers={"Location": to})


def sequence(*routes: Route) -> Route:
    """The n-th request gets routes[n] (the last one repeats)."""
    calls = iter(range(10**9))
    return lambda h: routes[min(next(calls), len(routes) - 1)](h)


def slow(seconds: float, then: Route) -> Route:
    """Say nothing for `seconds` (or until the server stops), then answer."""

    def route(h: Handler) -> None:
        h.server_state.stop.wait(seconds)
        then(h)

    return route


def stall_body(seconds: float) -> Route:
    """Send headers and part of the body, then go silent."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "10000")
        h.end_headers()
        h.wfile.write(b"<html><body>" + b"x" * 100)
        h.wfile.flush()
        h.server_state.stop.wait(seconds)

    return route


def trickle(interval: float, n: int) -> Route:
    """Send one byte every `interval` seconds, n times: never silent long enough for a read timeout."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        for _ in range(n):
            if h.server_state.stop.wait(interval):
                return
            h.wfile.write(b"x")
            h.wfile.flush()

    return route


def huge(n_bytes: int, with_length: bool) -> Route:
    """A large HTML body, with or without Content-Length (then streamed until closed)."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        if with_length:
            h.send_header("Content-Length", str(n_bytes))
        h.end_headers()
        chunk = b"<p>" + b"word " * 2000 + b"</p>\n"
        sent = 0
        while sent < n_bytes and not h.server_state.stop.is_set():
            h.wfile.write(chunk)
            sent += len(chunk)

    return route


def drop() -> Route:
    """Close the connection without answering."""

    def route(h: Handler) -> None:
        h.close_connection = True

    return route


def truncated(body: bytes, claimed: int) -> Route:
    """A 200 that claims `claimed` bytes, sends `body` (fewer) and closes the connection."""

    def route(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        h.send_header("Content-Length", str(claimed))
        h.end_headers()
        h.wfile.write(body)
        h.close_connection = True

    return route


def raw(data: bytes) -> Route:
    """Bytes written as they are, instead of an HTTP answer (e.g. no status line)."""

    def route(h: Handler) -> None:
        h.wfile.write(data)
        h.close_connection = True

    return route
