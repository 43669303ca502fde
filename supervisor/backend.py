"""The private address a tenant's server listens on, and how the daemon reaches it.

Every request the daemon makes to a tenant (probes, provisioning, relayed clients) goes through
``Backend.connect`` (``connect_socket`` for the relay), so how the backend is reached is this
module's business alone:

- ``HostBackend`` (``network: host``): a loopback TCP port in the host's namespace, from config
  or from ``ollama.port_range``. Any local user can connect to it.
- ``NetnsBackend`` (``network: isolated``): ``127.0.0.1:11434`` inside a network namespace of
  the server's own. Only the daemon, which holds the namespace open, can connect to it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import anyio
import anyio.abc
import psutil

from supervisor.errors import SpawnError
from supervisor.netns import Namespace

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
NETNS_PORT = 11434  # Ollama's default; every isolated server has its own loopback to bind it on

Network = Literal["isolated", "host"]


def network_mode(configured: Network | None, *, root: bool) -> Network:
    """The network a tenant gets: as configured, by default ``isolated`` as root, else ``host``.

    Without root no network namespace can be made, so ``isolated`` falls back to ``host``.
    """
    if not root:
        return "host"
    return configured or "isolated"


class Backend:
    """Where one tenant's server listens, and how the daemon connects to it."""

    @property
    def address(self) -> str:
        """Where the server listens, as shown in status and logs."""
        raise NotImplementedError

    @property
    def ollama_host(self) -> str:
        """The ``OLLAMA_HOST`` value that makes ``ollama serve`` listen here."""
        raise NotImplementedError

    @property
    def host_port(self) -> int | None:
        """The loopback port taken in the host's namespace, if any."""
        return None

    @property
    def isolated(self) -> bool:
        """True when the server must be spawned in a network namespace of its own."""
        return False

    def attach(self, pid: int) -> None:
        """Called once the server ``pid`` exists; a namespaced backend binds to its netns."""

    async def connect(self) -> anyio.abc.SocketStream:
        """Open a TCP connection to the server. Raises ``OSError`` when nothing listens."""
        sock = await self.connect_socket()
        try:
            return await anyio.abc.SocketStream.from_socket(sock)
        except BaseException:
            sock.close()
            raise

    async def connect_socket(self) -> socket.socket:
        """Open a TCP connection to the server as a connected non-blocking socket (what the
        relay wraps in an asyncio transport). Raises ``OSError`` when nothing listens."""
        raise NotImplementedError


@dataclass(frozen=True)
class HostBackend(Backend):
    """A loopback TCP address in the host's network namespace (``network: host``)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ollama_host(self) -> str:
        return self.address

    @property
    def host_port(self) -> int | None:
        return self.port

    async def connect_socket(self) -> socket.socket:
        # A plain non-blocking connect: anyio.connect_tcp would resolve the literal address
        # in a worker thread first, which costs more than the whole probe.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await _connect_nonblocking(sock, (self.host, self.port))
        return sock


class NetnsBackend(Backend):
    """``127.0.0.1:11434`` inside the server's own network namespace (``network: isolated``).

    ``attach`` opens the namespace of the new server and closes the previous one, so one object
    serves a tenant across restarts without leaking descriptors. The descriptor keeps the
    namespace alive after the server dies (its runners may too); a new server always gets a
    fresh namespace, so a leftover can never hold the new server's port.
    """

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self._ns: Namespace | None = None
        self._pid: int | None = None
        self._problem: str | None = None

    @property
    def address(self) -> str:
        where = f"netns:{self._pid}" if self._pid is not None else "netns"
        return f"{where} {LOOPBACK}:{NETNS_PORT}"

    @property
    def ollama_host(self) -> str:
        return f"{LOOPBACK}:{NETNS_PORT}"

    @property
    def isolated(self) -> bool:
        return True

    def attach(self, pid: int) -> None:
        """Hold the network namespace of server ``pid``; release the previous server's.

        Never raises: when the namespace cannot be opened (the server died at once, or it is
        not isolated), ``connect`` fails with the reason and the server is reaped as usual.
        """
        self.close()
        self._pid = pid
        try:
            self._ns = Namespace.of_process(pid)
        except OSError as exc:
            self._problem = (
                f"tenant {self.tenant}: cannot open the network namespace of "
                f"server pid {pid} ({exc.strerror or exc})"
            )
            log.error("%s; its probes will fail", self._problem, extra={"tenant": self.tenant})

    def close(self) -> None:
        """Release the namespace (it ends once no process is left in it)."""
        if self._ns is not None:
            self._ns.close()
        self._ns, self._problem = None, None

    async def connect_socket(self) -> socket.socket:
        if self._ns is None:
            raise OSError(
                errno.ENOTCONN,
                self._problem
                or f"tenant {self.tenant}: no server attached to its network namespace",
            )
        sock = self._ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        await _connect_nonblocking(sock, (LOOPBACK, NETNS_PORT))
        return sock


async def _connect_nonblocking(sock: socket.socket, address: tuple[str, int]) -> None:
    """Connect ``sock`` (made non-blocking) without blocking the event loop; close it when
    that fails or is cancelled."""
    try:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"{os.strerror(err)} (connecting to {address[0]}:{address[1]})")
    except BaseException:
        sock.close()
        raise


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


def allocate_backend(
    tenant: str, port: int | None, port_range: tuple[int, int], taken: Iterable[int]
) -> HostBackend:
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
        return HostBackend(LOOPBACK, port)
    used = set(taken)
    low, high = port_range
    for candidate in range(low, high + 1):
        if candidate not in used and port_is_free(candidate):
            return HostBackend(LOOPBACK, candidate)
    raise SpawnError(
        f"tenant {tenant}: no free loopback port in ollama.port_range {low}-{high}; "
        "widen the range or free ports"
    )


def network_note(
    tenant: str, configured: Network | None, port: int | None, *, root: bool
) -> str | None:
    """A warning when a tenant's network is not what its config suggests, else None."""
    if configured == "isolated" and not root:
        return (
            f"tenant {tenant}: network: isolated needs root (network namespaces cannot be "
            "made unprivileged); running it with network: host, where any local user can "
            "reach its backend port. Run the daemon as root to isolate it"
        )
    if port is not None and network_mode(configured, root=root) == "isolated":
        return (
            f"tenant {tenant}: port {port} is not used: the tenant runs with network: "
            "isolated (the default as root); set network: host to keep a loopback port"
        )
    return None
