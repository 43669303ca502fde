"""A small HTTP/1.1 server on asyncio streams for the control routes, framed by ``h11``.

The daemon needs no more than this: requests without bodies, JSON answers and one streamed
(chunked) answer, on a unix socket or a loopback port. aiohttp's server did the same job but
its import pulls in its client too (about 150 ms and 11 MiB of the daemon's start-up and
memory); ``h11`` is already imported by the Ollama API client.

Each connection is one task serving its requests in turn (keep-alive). A client has
``request_timeout_s`` to send a request's headers (counted from accept or from the end of
the previous answer; then the connection is dropped without an answer) and as long again for
its body. A body over ``max_body_bytes`` or late is never read on: the request reaches the
dispatcher with ``body_error`` set, and the connection closes after the answer. When a client
leaves while its request is handled, the handling is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

import h11

log = logging.getLogger(__name__)

READ_SIZE = 65536
MAX_HEAD_BYTES = 16384  # request line plus headers; more is a 400 and the connection closes


@dataclass
class Request:
    """One request as the dispatcher sees it; the body (if any) has been read and dropped."""

    method: str
    raw_path: str  # still percent-encoded: safe to log
    query: dict[str, list[str]]
    sock: Any  # the connection's socket (asyncio's TransportSocket), for SO_PEERCRED
    body_error: tuple[int, str] | None = None  # (408 or 413, message) when the body was refused
    params: dict[str, str] = field(default_factory=dict)  # filled by the router

    @property
    def path(self) -> str:
        """The path, percent-decoded."""
        return unquote(self.raw_path)


@dataclass
class Response:
    """An answer: ``body`` is bytes, or chunks sent as they come (chunked encoding).

    A generator body is always closed (``aclose``), once sent or when the client leaves.
    """

    status: int
    body: bytes | AsyncGenerator[bytes, None] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after the answer


Dispatch = Callable[[Request], Awaitable[Response]]


class HTTPServer:
    """Serves ``dispatch`` on a listening socket inside the running asyncio event loop."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        request_timeout_s: float,
        shutdown_timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self._dispatch = dispatch
        self._request_timeout_s = request_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._max_body_bytes = max_body_bytes
        self._server: asyncio.AbstractServer | None = None
        self._idle: dict[asyncio.Task[None], bool] = {}  # connection task -> waiting for a request
        self._closing = False

    async def serve_unix(self, sock: socket.socket) -> None:
        """Accept connections on a bound unix socket (listening starts here)."""
        self._server = await asyncio.start_unix_server(self._connection, sock=sock)

    async def serve_tcp(self, host: str, port: int) -> None:
        """Listen on ``host:port``; raises ``OSError`` when the address cannot be bound."""
        self._server = await asyncio.start_server(self._connection, host, port)

    async def close(self) -> None:
        """Stop accepting; let running requests finish within the shutdown timeout."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, idle in list(self._idle.items()):
            if idle:
                task.cancel()
        if self._idle:
            await asyncio.wait(list(self._idle), timeout=self._shutdown_timeout_s)
        for task in list(self._idle):
            task.cancel()
        if self._idle:
            await asyncio.wait(list(self._idle))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._idle[task] = True
        try:
            while not self._closing:
                request = await self._next_request(conn, reader, writer)
                if request is None:
                    break
                self._idle[task] = False
                await self._answer_while_connected(conn, request, reader, writer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
                self._idle[task] = True
        except (OSError, h11.ProtocolError, asyncio.CancelledError):
            pass  # the client left, broke the protocol or the server is closing
        finally:
            del self._idle[task]
            writer.close()

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        """The next request with its body read, or None when the connection should end."""
        try:
            async with asyncio.timeout(self._request_timeout_s):
                event = await _next_event(conn, reader)
        except TimeoutError:
            return None  # headers not complete in time: drop without an answer
        except h11.RemoteProtocolError as exc:
            await _refuse_malformed(conn, writer, exc)
            return None
        if not isinstance(event, h11.Request):
            return None  # the client closed the connection
        if _head_size(event) > MAX_HEAD_BYTES:  # h11 only bounds a head still incomplete
            error = h11.RemoteProtocolError(f"request head over {MAX_HEAD_BYTES} bytes", 431)
            await _refuse_malformed(conn, writer, error)
            return None
        request = _request(event, writer.get_extra_info("socket"))
        request.body_error = await self._read_body(conn, reader, event)
        return request

    async def _read_body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, head: h11.Request
    ) -> tuple[int, str] | None:
        """Read and drop the body; (status, message) when it is too large or too late."""
        length = _content_length(head)
        if length is not None and length > self._max_body_bytes:
            return 413, f"request body of {length} bytes refused; no route takes one"
        size = 0
        try:
            async with asyncio.timeout(self._request_timeout_s):
                while not isinstance(event := await _next_event(conn, reader), h11.EndOfMessage):
                    if isinstance(event, h11.ConnectionClosed):
                        raise ConnectionResetError("client left in the middle of its body")
                    size += len(event.data) if isinstance(event, h11.Data) else 0
                    if size > self._max_body_bytes:
                        return 413, f"request body over {self._max_body_bytes} bytes refused"
        except TimeoutError:
            return 408, f"request body not received within {self._request_timeout_s:g} s"
        return None

    async def _answer_while_connected(
        self,
        conn: h11.Connection,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Dispatch and answer; cancelled as soon as the client closes its connection."""
        answering = asyncio.create_task(self._answer(conn, request, writer))
        watching = asyncio.create_task(_wait_for_eof(conn, reader))
        try:
            await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not answering.done():
                answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(answering, watching, return_exceptions=True)
        if answering.cancelled():
            raise ConnectionResetError("client left before its answer was complete")
        answering.result()

    async def _answer(
        self, conn: h11.Connection, request: Request, writer: asyncio.StreamWriter
    ) -> None:
        response = await self._dispatch(request)
        body = response.body
        if isinstance(body, bytes):
            await _send(conn, writer, _head(request, response, len(body)))
            if body and request.method != "HEAD":  # a HEAD answer has only the length
                await _send(conn, writer, h11.Data(data=body))
        else:
            async with contextlib.aclosing(body):
                await _send(conn, writer, _head(request, response, None))
                async for chunk in body:
                    if chunk:  # an empty one would end a chunked body
                        await _send(conn, writer, h11.Data(data=chunk))
        await _send(conn, writer, h11.EndOfMessage())


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading from the connection as needed."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(READ_SIZE))
    return event


async def _wait_for_eof(conn: h11.Connection, reader: asyncio.StreamReader) -> None:
    """Return when the client closes its side; keep what it pipelines meanwhile (bounded)."""
    while data := await reader.read(READ_SIZE):
        conn.receive_data(data)
        if len(conn.trailing_data[0]) > MAX_HEAD_BYTES:
            await asyncio.Event().wait()  # read no more until this request is answered


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, event: Any) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


def _request(event: h11.Request, sock: Any) -> Request:
    target = event.target.decode("ascii", "replace")
    raw_path, _, query = target.partition("?")
    return Request(
        method=event.method.decode("ascii", "replace"),
        raw_path=raw_path,
        query=parse_qs(query, keep_blank_values=True),
        sock=sock,
    )


def _head(request: Request, response: Response, length: int | None) -> h11.Response:
    """The head of ``response``; without a length, h11 sends the body chunked."""
    headers = [("Content-Type", response.content_type), *response.headers.items()]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    if response.close or request.body_error is not None:
        headers.append(("Connection", "close"))
    return h11.Response(
        status_code=response.status, headers=headers, reason=_phrase(response.status)
    )


def _phrase(status: int) -> bytes:
    """The reason phrase of ``status`` ("Not Found"); h11 would send none."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _head_size(head: h11.Request) -> int:
    return len(head.target) + sum(len(name) + len(value) + 4 for name, value in head.headers)


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is one whole number
    return None


async def _refuse_malformed(
    conn: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
) -> None:
    """Answer a request h11 cannot parse (bad request line, headers too long) and close."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = json.dumps({"error": f"malformed HTTP request: {exc}"}).encode() + b"\n"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    status = exc.error_status_hint
    await _send(
        conn, writer, h11.Response(status_code=status, headers=headers, reason=_phrase(status))
    )
    await _send(conn, writer, h11.Data(data=body))
    await _send(conn, writer, h11.EndOfMessage())
