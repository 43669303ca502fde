"""Network namespaces: give a server one of its own, and reach into it from the daemon.

A tenant with ``network: isolated`` runs ``ollama serve`` in a fresh network namespace that has
nothing but loopback, so its ``127.0.0.1:11434`` is reachable by no process outside it. The
server's process makes the namespace itself before it execs the server, while it still has
root's capabilities (``supervisor.launch``). The daemon then keeps a file descriptor of the server's
namespace (``Namespace.of_process``) and creates each backend connection's socket inside it
(``Namespace.socket``): a socket stays in the namespace it was created in, whatever thread
later uses it, so only the ``socket()`` call itself needs the switch.

The system calls themselves live in ``supervisor.launch``, which runs in that child.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from pathlib import Path

from supervisor.launch import CLONE_NEWNET, bring_loopback_up, setns, unshare

log = logging.getLogger(__name__)

_home_fd: int | None = None


def enter_new_netns() -> None:
    """Move the calling thread into a new network namespace with only loopback, up.

    Raises ``OSError`` (EPERM without CAP_SYS_ADMIN).
    """
    unshare(CLONE_NEWNET)
    bring_loopback_up()


def unshare_problem() -> str | None:
    """Why this daemon cannot make network namespaces (say, a restricted container), or None.

    Tried in a throwaway thread: a namespace change affects the calling thread only.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            enter_new_netns()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=attempt, name="netns-probe")
    thread.start()
    thread.join()
    return outcome[0] if outcome else "the probe thread failed"


def netns_inode(pid: int | str = "self") -> int:
    """Inode number identifying the network namespace of process ``pid``."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _home() -> int:
    """Descriptor of the daemon's own namespace, opened once before any switch."""
    global _home_fd
    if _home_fd is None:
        _home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return _home_fd


class Namespace:
    """A network namespace held open by a descriptor (it lives at least as long as this)."""

    def __init__(self, fd: int, pid: int) -> None:
        self.pid = pid
        self.inode = os.fstat(fd).st_ino
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def of_process(cls, pid: int) -> Namespace:
        """Open the network namespace of process ``pid``.

        Raises ``OSError`` when the process is gone, and ``PermissionError`` when it shares
        the daemon's own namespace (so it is not isolated, or ``pid`` is not the child that
        was meant).
        """
        fd = os.open(Path("/proc") / str(pid) / "ns" / "net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_ino == os.fstat(_home()).st_ino:
                raise PermissionError(
                    f"process {pid} shares the daemon's network namespace; it is not isolated"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, pid)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Release the descriptor; the namespace ends once no process is left in it."""
        self._fd = None
        self._finalizer()

    def socket(self, family: int = socket.AF_INET,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        """Create a socket inside this namespace, from the calling thread.

        The thread enters the namespace for the ``socket()`` call only and returns at once.
        Raises ``OSError`` when the namespace is closed or cannot be entered.
        """
        if self._fd is None:
            raise OSError(f"network namespace of pid {self.pid} is closed")
        home = _home()
        setns(self._fd, CLONE_NEWNET)
        try:
            return socket.socket(family, kind | socket.SOCK_CLOEXEC)
        finally:
            _return_home(home)


def _return_home(home: int) -> None:
    try:
        setns(home, CLONE_NEWNET)
    except OSError as exc:
        # Every later socket of this thread would open inside a tenant's namespace, where a
        # host-mode backend or another tenant's port could be impersonated. Fail closed:
        # tenants' servers die with the daemon (death signal).
        log.critical("janus-supervisord: cannot return to the host network namespace (%s); "
                     "aborting", exc)
        os.abort()
