"""The private address a tenant's server listens on, and how the daemon reaches it.

Every request the daemon makes to a tenant (probes, provisioning, relayed clients) goes through
``Backend.connect``, so the way the backend is reached can change (a loopback port today, a
network namespace later) without touching the callers.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import anyio.abc
import psutil

from supervisor.errors import SpawnError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Backend:
    """A loopback TCP address of one tenant's server."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def isolated(self) -> bool:
        """True when the server must be spawned in a network namespace of its own."""
        return False

    def attach(self, pid: int) -> None:
        """Called once the server ``pid`` exists; a namespaced backend binds to its netns."""

    @property
    def ollama_host(self) -> str:
        """The ``OLLAMA_HOST`` value that makes ``ollama serve`` listen here."""
        return self.address

    async def connect(self) -> anyio.abc.SocketStream:
        """Open a TCP connection to the server. Raises ``OSError`` when nothing listens."""
        return await anyio.connect_tcp(self.host, self.port)


def port_holder(port: int) -> str | None:
    """Describe the process listening on loopback ``port``, when it can be found."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "an unknown process"
            try:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({proc.name()}, user {proc.username()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def allocate_backend(tenant: str, port: int | None, port_range: tuple[int, int],
                     taken: Iterable[int]) -> Backend:
    """Pick the loopback port for ``tenant``: its configured ``port`` or a free one in range.

    Raises ``SpawnError`` naming the holder when the configured port is busy, or when the
    range has no free port left.
    """
    if port is not None:
        if not port_is_free(port):
            holder = port_holder(port) or "another process"
            raise SpawnError(
                f"tenant {tenant}: backend port {port} is taken by {holder}; "
                "free it or choose another port"
            )
        return Backend(LOOPBACK, port)
    used = set(taken)
    low, high = port_range
    for candidate in range(low, high + 1):
        if candidate not in used and port_is_free(candidate):
            return Backend(LOOPBACK, candidate)
    raise SpawnError(
        f"tenant {tenant}: no free loopback port in ollama.port_range {low}-{high}; "
        "widen the range or free ports"
    )
