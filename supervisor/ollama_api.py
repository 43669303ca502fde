"""A small client for the Ollama HTTP API, used for probes and provisioning.

HTTP framing is done by ``h11``; each request uses its own connection (``Connection: close``)
opened through a connector, so the caller decides how the backend is reached. Requests carry
``Host: localhost`` because a loopback-bound Ollama refuses other host names with 403.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import h11

from supervisor.errors import ProbeError

Connector = Callable[[], Awaitable[anyio.abc.ByteStream]]

_CHUNK = 1 << 20
_OK_TEXT = b"Ollama is running"
_PROBE_HEADERS = [("Host", "localhost"), ("User-Agent", "janus-supervisor")]


async def _discard(stream: anyio.abc.ByteStream) -> None:
    """Close a stream even from inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        await stream.aclose()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    lines: list[dict[str, Any]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def error_text(self) -> str:
        """The ``error`` field of an Ollama JSON error, else the raw body."""
        try:
            data = self.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
        return self.body.decode("utf-8", "replace").strip() or f"HTTP {self.status}"


class _Exchange:
    """One HTTP request/response on a fresh connection."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        try:
            data = self.conn.send(event)
            if data:
                await self.stream.send(data)
        except (h11.ProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError) as exc:
            raise ProbeError(f"connection to the server broke while sending ({exc})") from exc

    async def next_event(self) -> h11.Event:
        """The next HTTP event from the server; ``ProbeError`` when the exchange breaks."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.ProtocolError as exc:
                raise ProbeError(f"the server closed or broke the connection ({exc})") from exc
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            self.conn.receive_data(data)


class OllamaAPI:
    """Requests to one tenant's server through ``connect``."""

    def __init__(self, connect: Connector) -> None:
        self._connect = connect
        self._probe: _Exchange | None = None

    async def _open(self, method: str, path: str, headers: list[tuple[str, str]]) -> _Exchange:
        exchange = _Exchange(await self._connect_or_raise())
        base = [("Host", "localhost"), ("Connection", "close"), ("User-Agent", "janus-supervisor")]
        await exchange.send(h11.Request(method=method, target=path, headers=base + headers))
        return exchange

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """Send a request with an optional JSON body and read the whole response."""
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [("Content-Length", str(len(payload)))]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        exchange = await self._open(method, path, headers)
        async with exchange.stream:
            if payload:
                await exchange.send(h11.Data(data=payload))
            await exchange.send(h11.EndOfMessage())
            return await _read_response(exchange)

    async def stream_json(self, path: str, body: Any) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` and yield each NDJSON object of a streamed answer as it arrives.

        A non-200 answer yields one ``{"error": ...}`` object.
        """
        payload = json.dumps(body).encode()
        headers = [("Content-Length", str(len(payload))), ("Content-Type", "application/json")]
        exchange = await self._open("POST", path, headers)
        async with exchange.stream:
            await exchange.send(h11.Data(data=payload))
            await exchange.send(h11.EndOfMessage())
            event = await exchange.next_event()
            if not isinstance(event, h11.Response):
                raise ProbeError(f"unexpected answer to POST {path}: {event!r}")
            if event.status_code != 200:
                rest = await _read_body(exchange)
                yield {"error": Response(event.status_code, {}, rest).error_text()}
                return
            pending = b""
            while True:
                event = await exchange.next_event()
                if isinstance(event, h11.Data):
                    pending += bytes(event.data)
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if pending.strip():
                yield json.loads(pending)

    async def upload_file(self, path: str, file: Path,
                          on_progress: Callable[[int], None]) -> Response:
        """POST the bytes of ``file`` to ``path`` in 1 MiB chunks, never holding it whole."""
        size = file.stat().st_size
        exchange = await self._open("POST", path, [("Content-Length", str(size))])
        async with exchange.stream, await anyio.open_file(file, "rb") as f:
            sent = 0
            while chunk := await f.read(_CHUNK):
                await exchange.send(h11.Data(data=chunk))
                sent += len(chunk)
                on_progress(sent)
            await exchange.send(h11.EndOfMessage())
            return await _read_response(exchange)

    async def is_running(self) -> bool:
        """``GET /`` answers 200 ``Ollama is running``: the server is up and serving HTTP.

        Probes reuse one keep-alive connection; any failure or cancellation drops it, so the
        next probe starts from a fresh connection.
        """
        probe, self._probe = self._probe, None
        try:
            if probe is None:
                probe = _Exchange(await self._connect_or_raise())
            else:
                probe.conn.start_next_cycle()
            await probe.send(h11.Request(method="GET", target="/", headers=_PROBE_HEADERS))
            await probe.send(h11.EndOfMessage())
            response = await _read_response(probe)
        except BaseException:
            if probe is not None:
                await _discard(probe.stream)
            raise
        if probe.conn.our_state is h11.DONE and probe.conn.their_state is h11.DONE:
            self._probe = probe
        else:
            await _discard(probe.stream)
        return response.status == 200 and response.body.startswith(_OK_TEXT)

    async def _connect_or_raise(self) -> anyio.abc.ByteStream:
        try:
            return await self._connect()
        except OSError as exc:
            raise ProbeError(f"cannot connect: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        """Drop the kept-alive probe connection."""
        if self._probe is not None:
            await _discard(self._probe.stream)
            self._probe = None

    async def show(self, model: str) -> dict[str, Any] | None:
        """The ``/api/show`` document of ``model``, or None when the server does not have it."""
        response = await self.request("POST", "/api/show", {"model": model})
        if response.status == 404:
            return None
        if response.status != 200:
            raise ProbeError(f"show {model}: {response.error_text()}")
        data = response.json()
        return data if isinstance(data, dict) else None

    async def has_blob(self, digest: str) -> bool:
        response = await self.request("HEAD", f"/api/blobs/{digest}")
        return response.status == 200


async def _read_body(exchange: _Exchange) -> bytes:
    chunks = []
    while True:
        event = await exchange.next_event()
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return b"".join(chunks)


async def _read_response(exchange: _Exchange) -> Response:
    event = await exchange.next_event()
    if not isinstance(event, h11.Response):
        raise ProbeError(f"unexpected answer from the server: {event!r}")
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
    return Response(event.status_code, headers, await _read_body(exchange))
