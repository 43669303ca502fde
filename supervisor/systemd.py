"""Tell systemd how the daemon is doing (``sd_notify``), for a ``Type=notify`` unit.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and, when the unit
sets ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Messages are newline-separated
``KEY=VALUE`` assignments in one datagram. Outside systemd there is no socket and every call
does nothing, so the daemon runs the same under ``tools/demo``.

The daemon sends ``READY=1`` once its control socket listens and every tenant has had its first
start, ``STATUS=`` with a count per state whenever a state changes, ``RELOADING=1`` with
``MONOTONIC_USEC`` before applying a reload and ``READY=1`` after it, ``STOPPING=1`` on
shutdown, and ``WATCHDOG=1`` from its main loop at half the watchdog interval.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import anyio

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes:
    # "@name" is an abstract socket: its address starts with a NUL byte instead of the "@".
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class Notifier:
    """Sends ``sd_notify`` messages to ``NOTIFY_SOCKET``; a no-op when it is not set.

    A failed send is logged once as a WARNING and never raised: systemd going away must not
    stop the daemon from supervising.
    """

    def __init__(self, notify_socket: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _address(notify_socket) if notify_socket else None
        self.watchdog_usec = watchdog_usec
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (ours, or unset)."""
        watchdog: int | None = None
        pid = environ.get("WATCHDOG_PID")
        usec = environ.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of systemd's timeout, None when unset."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keyword names are the keys); True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            # One socket per message, as sd_notify(3) does: nothing to keep open or leak.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("systemd: cannot notify %r (%s); the service manager will not see "
                            "readiness or status updates", self.address, exc.strerror or exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def reloading(self) -> bool:
        # systemd 253+ requires MONOTONIC_USEC with RELOADING=1 to tell reloads apart.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the configuration")

    def stopping(self) -> bool:
        return self.notify(STOPPING=1, STATUS="stopping every tenant")

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    async def keep_watchdog(self, interval_s: float) -> None:
        """``WATCHDOG=1`` every ``interval_s`` from the caller's event loop, until cancelled.

        Sent from the daemon's own loop, so a loop that is stuck stops the pings and systemd
        restarts the daemon.
        """
        while True:
            self.watchdog()
            await anyio.sleep(interval_s)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd gives up on the start (or stop)."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))


def state_summary(states: list[str]) -> str:
    """``3 tenants: 2 ready, 1 starting`` (states counted, most frequent first)."""
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: (-i[1], i[0])))
    noun = "tenant" if len(states) == 1 else "tenants"
    return f"{len(states)} {noun}: {parts}" if parts else "no tenants configured"
