"""The tenant endpoint: a unix socket the daemon owns, relayed to the tenant's backend.

Stock Ollama cannot listen on a unix socket, and when bound to loopback it answers 403 to any
``Host`` that is not local-looking (``curl --unix-socket`` sends ``localhost``, but httpx and
``http+unix://`` clients send other names). So each client connection gets its own backend
connection; requests from the client are parsed with ``httptools`` and re-sent with
``Host: localhost``, bodies streamed chunk by chunk; responses are copied back byte for byte.
While the tenant is not ready a new connection waits a bounded time, then gets a 503 with an
Ollama-style JSON error.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc
import httptools

log = logging.getLogger(__name__)

_READ = 65536
_HEAD_TIMEOUT_S = 10.0


class ReadinessGate(Protocol):
    """What the relay needs from a tenant."""

    name: str

    async def wait_ready(self, timeout_s: float) -> bool: ...

    def describe_state(self) -> str: ...


class _RequestRewriter:
    """Parses the client's byte stream into requests and re-encodes them for the backend."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.head_done = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False

    # httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        version = self.parser.get_http_version().encode()
        lines = [method + b" " + self._url + b" HTTP/" + version]
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"host":
                continue
            if lower == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            lines.append(name + b": " + value)
        lines.append(b"Host: localhost")
        self.out.append(b"\r\n".join(lines) + b"\r\n\r\n")
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self._chunked:
            self.out.append(b"0\r\n\r\n")

    # ----------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Parse ``data`` and return the bytes to send upstream. Raises ``HttpParserError``."""
        self.parser.feed_data(data)
        out = b"".join(self.out)
        self.out.clear()
        return out


def error_response(status: int, reason: str, message: str) -> bytes:
    """An Ollama-style JSON error response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Relay:
    """Accepts clients on a tenant's socket and relays them to its backend."""

    def __init__(
        self,
        gate: ReadinessGate,
        connect_backend: Callable[[], Awaitable[anyio.abc.SocketStream]],
        connect_wait_s: Callable[[], float],
    ) -> None:
        self._gate = gate
        self._connect_backend = connect_backend
        self._connect_wait_s = connect_wait_s

    async def serve(self, sock: socket.socket) -> None:
        """Serve clients on the listening ``sock`` until cancelled; the socket stays open."""
        listener = await anyio.abc.SocketListener.from_socket(sock)
        async with anyio.create_task_group() as tg:
            while True:
                client = await listener.accept()
                tg.start_soon(self._handle, client)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            rewriter = _RequestRewriter()
            if not await self._gate.wait_ready(self._connect_wait_s()):
                await self._refuse(client, rewriter)
                return
            try:
                upstream = await self._connect_backend()
            except OSError as exc:
                message = f"tenant {self._gate.name}: backend unreachable ({exc.strerror or exc})"
                await self._refuse(client, rewriter, message)
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pump_responses, upstream, client, tg.cancel_scope)
                await self._pump_requests(client, upstream, rewriter)
                # The client has sent all it will; let the response finish, bounded by the
                # backend closing or the client going away.

    async def _pump_requests(self, client: anyio.abc.SocketStream,
                             upstream: anyio.abc.SocketStream,
                             rewriter: _RequestRewriter) -> None:
        while True:
            try:
                data = await client.receive(_READ)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            try:
                out = rewriter.feed(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                log.warning("tenant %s: bad request from a client (%s); closing it",
                            self._gate.name, exc, extra={"tenant": self._gate.name})
                await _send_quietly(client, error_response(400, "Bad Request", f"bad request: {exc}"))
                await upstream.aclose()
                return
            if out:
                try:
                    await upstream.send(out)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
        try:
            await upstream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    @staticmethod
    async def _pump_responses(upstream: anyio.abc.SocketStream, client: anyio.abc.SocketStream,
                              scope: anyio.CancelScope) -> None:
        try:
            while True:
                data = await upstream.receive(_READ)
                await client.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            scope.cancel()

    async def _refuse(self, client: anyio.abc.SocketStream, rewriter: _RequestRewriter,
                      message: str | None = None) -> None:
        """Read the request head (briefly) so the client sees the answer, then send 503."""
        with anyio.move_on_after(_HEAD_TIMEOUT_S):
            while not rewriter.head_done:
                try:
                    rewriter.feed(await client.receive(_READ))
                except (anyio.EndOfStream, anyio.BrokenResourceError, httptools.HttpParserError,
                        httptools.HttpParserUpgrade):
                    break
        text = message or f"tenant {self._gate.name} is not ready (state {self._gate.describe_state()})"
        await _send_quietly(client, error_response(503, "Service Unavailable", text))


async def _send_quietly(stream: anyio.abc.SocketStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
