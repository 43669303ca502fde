"""The deadlines of one relayed client connection: for each request head, and for idleness.

Once the first byte of a request head has arrived, the head must be complete within
``HEAD_TIMEOUT_S`` (else 408). A connection with nothing in progress (no head being received, no
body, no response outstanding) that receives nothing for ``IDLE_TIMEOUT_S`` is closed. Neither
runs while a response is outstanding or a request body is on its way, so a long streaming
response or upload is never cut.

Both deadlines share one timer per connection, re-armed lazily when it fires: a request whose
head comes in one read costs no timer call, only a clock read when it arrives and when its
response is complete.
"""

from __future__ import annotations

import asyncio
import math
from time import monotonic
from typing import Protocol

HEAD_TIMEOUT_S = 10.0  # from a head's first byte to its end
IDLE_TIMEOUT_S = 300.0  # with no request in progress and nothing received


class Watched(Protocol):
    def busy(self) -> bool:
        """A request body is being received or a response is outstanding."""

    def head_timed_out(self) -> None: ...

    def idle_timed_out(self) -> None: ...


class Deadlines:
    """The head and idle deadlines of one client connection, on one timer."""

    __slots__ = ("_conn", "_due", "_handle", "_head_due", "active_at", "head")

    def __init__(self, conn: Watched) -> None:
        self._conn = conn
        self._handle: asyncio.TimerHandle | None = None
        self._due = math.inf  # when the timer fires; -inf once stopped
        self.active_at = monotonic()  # the client's last bytes, or the end of a response
        self.head: object | None = None  # the request head being received, if any
        self._head_due = 0.0

    def start(self) -> None:
        self._arm(self.active_at + IDLE_TIMEOUT_S)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = -math.inf

    def receiving(self, head: object | None) -> None:
        """``head`` is now the head being received (None: none is)."""
        self.head = head
        if head is not None:
            self._head_due = due = monotonic() + HEAD_TIMEOUT_S
            if due < self._due:
                self._arm(due)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._due = when
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, when - monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle, self._due = None, math.inf
        now, conn = monotonic(), self._conn
        if conn.busy():
            # A head now waits for the response before it (pipelining): it gets a fresh term.
            if self.head is not None:
                self._head_due = now + HEAD_TIMEOUT_S
            self._arm(now + (HEAD_TIMEOUT_S if self.head is not None else IDLE_TIMEOUT_S))
            return
        due = self._head_due if self.head is not None else self.active_at + IDLE_TIMEOUT_S
        if now < due:
            self._arm(due)
        elif self.head is not None:
            conn.head_timed_out()
        else:
            conn.idle_timed_out()
