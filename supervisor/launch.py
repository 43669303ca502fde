"""The first program of every tenant server's process: drop to the tenant, check, exec.

The daemon does not run Python between fork and exec (a ``preexec_fn`` forks the whole daemon
and makes it wait while the copy runs). It starts this file instead, with ``python -S -I`` and
a plain vfork, and this process turns itself into the server:

1. as root: RLIMIT_NOFILE, and with ``netns`` a network namespace of its own with only
   loopback, up (both need root, so they come before the drop);
2. the tenant's groups, gid and uid (root only), then ``PR_SET_NO_NEW_PRIVS`` and the death
   signal (a credential change clears it, so it comes after), a check that the daemon is
   still its parent, and the umask;
3. the preflight: each access check answered by the kernel, as the tenant's user;
4. ``execve`` of the server with exactly the environment the daemon built.

The daemon reads the outcome from the report pipe: end of file alone means the server was
exec'd; ``C`` and one digit per check means a check failed; ``E`` and a message means a step
failed. This module is run as a script and imports nothing from ``supervisor``, so it starts
in a few milliseconds; keep its imports to builtin modules.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

TYPE_CHECKING = False  # typing itself would cost more than the rest of this program
if TYPE_CHECKING:
    from typing import Any

SPEC_VAR = "JANUS_LAUNCH"
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
CHECK_FAILED = b"C"
STEP_FAILED = b"E"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int) -> None:
    """``prctl(option, arg)``; raises ``OSError``."""
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def unshare(flags: int) -> None:
    """``unshare(flags)`` (``os.unshare`` from Python 3.12 on); raises ``OSError``."""
    if hasattr(os, "unshare"):
        os.unshare(flags)
    else:
        _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    """``setns(fd, nstype)`` (``os.setns`` from Python 3.12 on); raises ``OSError``."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
    else:
        _check(_libc.setns(fd, nstype), "setns")


def bring_loopback_up() -> None:
    """Set ``lo`` up in the calling thread's network namespace (needs CAP_NET_ADMIN there).

    A new namespace has ``lo`` with 127.0.0.1 and ::1 already assigned but down; setting the
    flag is all ``ip link set lo up`` does.
    """
    import fcntl
    import socket
    import struct

    ifreq = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _, flags = ifreq.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq.pack(b"lo", 0)))
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq.pack(b"lo", flags | IFF_UP))


def _set_nofile(soft: int, hard: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(soft, hard)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: as much as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))


def _become_tenant(spec: dict[str, Any]) -> None:
    """Steps 1 and 2 of the module docstring; raises ``OSError``.

    Everything this program imports must be imported before the drop: the tenant's user may
    not be able to read the interpreter's library (say, under /root).
    """
    _set_nofile(spec["nofile"], resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if spec["netns"]:
        unshare(CLONE_NEWNET)
        bring_loopback_up()
    if spec["uid"] is not None:
        os.setgroups(spec["groups"])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, spec["death_signal"])
    # The daemon may have died before the death signal was set; it would then never come.
    if os.getppid() != spec["parent"]:
        os._exit(1)
    os.umask(spec["umask"])


def may(kind: str, path: str) -> bool:
    """Whether the calling user may ``kind`` ``path``, as the kernel answers.

    Kinds: ``x`` a directory it can enter, ``w`` a directory it can write and enter, ``r`` a
    file it can read, ``e`` a file it can execute, ``h`` a home: a directory it can write
    and enter, or one holding a readable ``.ollama/id_ed25519``.
    """
    if kind == "h":
        return may("w", path) or may("r", os.path.join(path, ".ollama", "id_ed25519"))
    want = {"x": os.X_OK, "w": os.W_OK | os.X_OK, "r": os.R_OK, "e": os.X_OK}[kind]
    is_dir = os.path.isdir(path)
    return (is_dir if kind in "xw" else os.path.isfile(path)) and os.access(path, want)


def run(spec: dict[str, Any]) -> int:
    """Become the tenant's server as ``spec`` says; returns an exit status on failure."""
    report = spec["report_fd"]
    try:
        _become_tenant(spec)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the daemon must hear of it
        os.write(report, STEP_FAILED + str(exc).encode())
        return 126
    answers = [may(kind, path) for kind, path in spec["checks"]]
    if not all(answers):
        os.write(report, CHECK_FAILED + bytes(ord("0") + ok for ok in answers))
        return 125
    os.set_inheritable(report, False)  # closed by the exec: end of file tells "started"
    # Whatever the daemon's spawn left open beyond the standard streams, the server must not
    # inherit (an event loop may open /dev/null for stdin without close-on-exec).
    os.closerange(3, report)
    os.closerange(report + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    binary = spec["argv"][0]
    try:
        os.execve(binary, spec["argv"], spec["env"])
    except OSError as exc:
        os.write(report, STEP_FAILED + f"{exc.strerror}: {binary!r}".encode())
    return 127


def main() -> int:
    import marshal

    spec = marshal.loads(bytes.fromhex(os.environ[SPEC_VAR]))
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
