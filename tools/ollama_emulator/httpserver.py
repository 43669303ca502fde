"""HTTP/1.1 front end: keep-alive connections, gin-style logging, CORS and Host checks,
routing with 404/405 text bodies, NDJSON streaming and streamed request bodies.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .api import ApiError
from .gofmt import go_json
from .middleware import ALLOW_HEADERS, ALLOW_METHODS, host_allowed, origin_allowed
from .slogtext import gin_line
from .state import ServerState

_DRAIN_LIMIT = 256 << 10
_CHUNK = 1 << 20
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

Route = Callable[["Handler"], None]


class EmulatorServer(ThreadingHTTPServer):
    """A threading HTTP server on an already bound socket that can drop all connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        sock: socket.socket,
        state: ServerState,
        routes: dict[str, dict[str, Route]],
        local_ips: set[str],
    ) -> None:
        socketserver.TCPServer.__init__(
            self, sock.getsockname()[:2], Handler, bind_and_activate=False
        )
        self.socket.close()
        self.socket = sock
        self.state, self.routes, self.local_ips = state, routes, local_ips
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection at once, as Go's ``http.Server.Close`` does."""
        with self._conn_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Handler(BaseHTTPRequestHandler):
    """One connection; every method goes through ``dispatch``."""

    protocol_version = "HTTP/1.1"
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib access log; gin lines are written instead."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date only: Go sends no ``Server`` header."""
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def send_response_only(self, code: int, message: str | None = None) -> None:
        """Answer an HTTP/1.0 request with an HTTP/1.0 status line, as Go does."""
        if self.request_version == "HTTP/1.0":
            phrase = message or self.responses.get(code, ("",))[0]
            self._headers_buffer = [f"HTTP/1.0 {code} {phrase}\r\n".encode("latin-1")]
            return
        super().send_response_only(code, message)

    def dispatch(self) -> None:
        """Run the middleware chain and the route, then write the gin log line."""
        started = time.monotonic_ns()
        self.status = 0
        self.cors_headers: dict[str, str] = {}
        self.body_left = self._declared_body_length()
        self.path_only, _, self.query = self.path.partition("?")
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True
        if self.status:
            self._finish_body()
            shown = self.path_only + ("?" + self.query if self.query else "")
            gin_line(
                self.status, time.monotonic_ns() - started, self._client_ip(), self.command, shown
            )

    do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = dispatch
    do_TRACE = do_CONNECT = dispatch

    def _handle(self) -> None:
        state = self.server.state
        if self.request_version == "HTTP/1.1" and "Host" not in self.headers:
            self.close_connection = True
            self.send_bytes(400, b"400 Bad Request: missing required Host header", TEXT_TYPE)
            return
        if state.knobs.hung() or (state.knobs.wedged() and not self._is_root_probe()):
            self._hang()
            return
        if not self._cors_passes() or not self._host_passes():
            return
        self._route()

    def _is_root_probe(self) -> bool:
        return self.path_only == "/" and self.command in ("GET", "HEAD")

    def _hang(self) -> None:
        # A wedged server: the request is read, then never answered until shutdown.
        self.server.state.stopping.wait()
        self.close_connection = True

    def _cors_passes(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        state, host = self.server.state, self.headers.get("Host", "")
        if origin in (f"http://{host}", f"https://{host}"):
            return True  # same origin: not a CORS request
        if not origin_allowed(origin, host, state.origins):
            self.send_bytes(403, b"", None)
            return False
        self.cors_headers = {
            "Access-Control-Allow-Origin": "*" if "*" in state.origins else origin,
            "Vary": "Origin",
        }
        if self.command == "OPTIONS":
            self.send_bytes(
                204,
                b"",
                None,
                {
                    **self.cors_headers,
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": "43200",
                },
            )
            return False
        return True

    def _host_passes(self) -> bool:
        if not self.server.state.loopback_only:
            return True
        accepted, by_name = host_allowed(self.headers.get("Host", ""), self.server.local_ips)
        if not accepted:
            self.send_bytes(403, b"", None)
            return False
        if by_name and self.command == "OPTIONS":
            self.send_bytes(204, b"", None)
            return False
        return True

    def _route(self) -> None:
        path = urllib.parse.unquote(self.path_only)
        routes = self.server.routes
        key = "/api/blobs/:digest" if _is_blob_path(path) else path
        methods = routes.get(key)
        if methods is None:
            if path.endswith("/") and path.rstrip("/") in routes:
                self._redirect(path.rstrip("/"))
                return
            self.send_bytes(404, b"404 page not found", "text/plain")
            return
        route = methods.get(self.command)
        if route is None:
            self.send_bytes(405, b"405 method not allowed", "text/plain")
            return
        self.digest_param = path.rsplit("/", 1)[-1]
        try:
            route(self)
        except ApiError as exc:
            self.send_json(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise
        except Exception as exc:
            # An unexpected failure is a 500 with the error text, as Go handlers answer.
            if self.status:
                raise
            self.send_json(500, {"error": str(exc)})

    def _redirect(self, target: str) -> None:
        code = 301 if self.command == "GET" else 307
        self.send_bytes(code, b"", None, {"Location": target})

    def _client_ip(self) -> str:
        forwarded = self.headers.get("X-Forwarded-For", "") if self.headers else ""
        if forwarded.split(",")[0].strip():
            return forwarded.split(",")[0].strip()
        real = self.headers.get("X-Real-IP", "") if self.headers else ""
        return real.strip() or str(self.client_address[0])

    # -- request bodies -------------------------------------------------------------------

    def body_chunks(self) -> Iterator[bytes]:
        """The request body in pieces of at most 1 MiB (Content-Length or chunked)."""
        if self.body_left is None:
            yield from self._chunked_body()
            self.body_left = 0
            return
        remaining = self.body_left
        while remaining > 0:
            data = self.rfile.read(min(_CHUNK, remaining))
            if not data:
                raise ConnectionResetError("request body ended early")
            remaining -= len(data)
            self.body_left = remaining
            yield data

    def _declared_body_length(self) -> int | None:
        """Unread body bytes; None for a chunked body of unknown length."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return None
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            while size > 0:
                data = self.rfile.read(min(_CHUNK, size))
                if not data:
                    raise ConnectionResetError("request body ended early")
                size -= len(data)
                yield data
            self.rfile.readline(16)

    def read_body(self) -> bytes:
        """The whole request body."""
        return b"".join(self.body_chunks())

    def _body_too_big_to_drain(self) -> bool:
        return self.body_left is None or self.body_left > _DRAIN_LIMIT

    def _finish_body(self) -> None:
        # Like Go: discard a small unread body to keep the connection, else close it.
        if self._body_too_big_to_drain():
            self.close_connection = True
        elif self.body_left:
            for _ in self.body_chunks():
                pass

    # -- responses ----------------------------------------------------------------------

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """A complete response with Content-Length (no body for HEAD)."""
        self.status = status
        if self._body_too_big_to_drain():
            self.close_connection = True
        self.send_response(status)
        for name, value in {**self.cors_headers, **(headers or {})}.items():
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, value: Any, content_type: str = JSON_TYPE) -> None:
        """A JSON response encoded as Go does."""
        self.send_bytes(status, go_json(value).encode(), content_type)

    def send_stream(self, items: Iterator[dict[str, Any]]) -> None:
        """NDJSON lines; an error before the first line becomes a normal error answer."""
        try:
            first = next(items, None)
        except ApiError as exc:
            self.send_json(exc.status, {"error": exc.message}, "application/json")
            return
        except Exception as exc:  # noqa: BLE001 - any failure is answered as Ollama's error JSON
            self.send_json(500, {"error": str(exc)}, "application/json")
            return
        self._start_chunked()
        try:
            item = first
            while item is not None:
                self._write_chunk((go_json(item) + "\n").encode())
                item = next(items, None)
        except ApiError as exc:
            self._write_chunk((go_json({"error": exc.message}) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is answered as Ollama's error JSON
            self._write_chunk((go_json({"error": str(exc)}) + "\n").encode())
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_last(self, items: Iterator[dict[str, Any]]) -> None:
        """``stream: false``: the last progress object, or the error with its status."""
        last: dict[str, Any] = {}
        try:
            for item in items:
                last = item
        except ApiError as exc:
            self.send_json(exc.status, {"error": exc.message}, "application/json")
            return
        except Exception as exc:  # noqa: BLE001 - any failure is answered as Ollama's error JSON
            self.send_json(500, {"error": str(exc)}, "application/json")
            return
        self.send_json(200, last, "application/json")

    def _start_chunked(self) -> None:
        self.status = 200
        self.send_response(200)
        for name, value in self.cors_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _is_blob_path(path: str) -> bool:
    prefix = "/api/blobs/"
    return path.startswith(prefix) and "/" not in path[len(prefix) :] and len(path) > len(prefix)
