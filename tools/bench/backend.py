#!/usr/bin/env python3
"""Tiny HTTP/1.1 keep-alive backend for the relay benchmark (standard library asyncio only).

Started as a tenant's "ollama binary" (``backend.py serve``, address from ``OLLAMA_HOST``,
like ``ollama serve``) so janus-supervisord runs it and relays to it; direct TCP and nginx
reach the same process on the same port.

- ``GET /bench/small``: 100-byte body;
- ``GET /bench/big``: 1 MiB body;
- anything else (the daemon's ``GET /`` probe): ``Ollama is running``.

Requests must not carry a body (the benchmark sends none). Responses are prebuilt bytes.
"""

from __future__ import annotations

import asyncio
import os
import sys


def _response(body: bytes, ctype: bytes = b"application/octet-stream") -> tuple[bytes, bytes]:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    return head, head + body


SMALL = _response(b"s" * 100)
BIG = _response(b"b" * (1 << 20))
ROOT = _response(b"Ollama is running", b"text/plain; charset=utf-8")


class Conn(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            line = buf[:buf.find(b"\r\n")]
            buf = buf[end + 4:]
            parts = line.split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            if path.startswith(b"/bench/small"):
                head, whole = SMALL
            elif path.startswith(b"/bench/big"):
                head, whole = BIG
            else:
                head, whole = ROOT
            self.transport.write(head if parts[0] == b"HEAD" else whole)
        self.buf = buf


def address() -> tuple[str, int]:
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    host = host.split("://", 1)[-1].rstrip("/")
    name, _, port = host.rpartition(":")
    return (name or "127.0.0.1"), int(port or 11434)


async def serve() -> None:
    host, port = address()
    server = await asyncio.get_running_loop().create_server(Conn, host, port, backlog=512)
    print(f"Listening on {host}:{server.sockets[0].getsockname()[1]}", file=sys.stderr,
          flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
