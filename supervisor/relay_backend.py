"""The backend's side of a relayed connection, and why the client's side is not being read.

``BackendSide`` is the protocol of the backend's transport: it passes each callback on to the
client's ``Connection``. When the backend's write buffer is full it holds the client (stops
reading it) until the buffer drains; the other reasons to hold the client are kept here too, one
bit each, so that they stay distinct.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from supervisor.relay_connection import Connection

# Why the client is not being read, one bit each; it is read again when none is left.
STARTING = 1  # the transports are being set up
BACKEND_FULL = 2  # the backend's write buffer is above its high-water mark
HELD = 4  # a request waits for the previous response to complete


class BackendSide(asyncio.Protocol):
    """Passes the backend transport's callbacks on to its ``Connection``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.backend_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._conn.response_received(data)

    def eof_received(self) -> bool:
        self._conn.backend_ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.backend_lost()

    def pause_writing(self) -> None:
        self._conn.hold_client(BACKEND_FULL)

    def resume_writing(self) -> None:
        self._conn.release_client(BACKEND_FULL)
