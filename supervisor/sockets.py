"""Listening unix sockets that a root daemon can create safely.

The daemon binds its control socket and every tenant endpoint with ``bind_unix_socket`` and keeps
them for its whole life. A socket appears at its path already carrying its final owner and mode:
it is bound under a temporary name in the same directory, fixed up there, and only then linked to
the final name. Nothing here follows a symbolic link that another user could have planted, and
nothing removes a file that is not a dead socket.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import ControlError

# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107
PROBE_TIMEOUT_S = 1.0
_DIR_MODE = 0o755
_UCRED = struct.Struct("3i")


@dataclass
class BoundSocket:
    """A listening unix socket and the path it was published at.

    ``dev`` and ``ino`` identify the file the daemon created, so that ``close`` removes the path
    only while it still is that socket, never a file some other process put there since.
    """

    sock: socket.socket
    path: Path
    dev: int
    ino: int

    def is_published(self) -> bool:
        """Whether ``path`` still names the socket bound here."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def close(self) -> None:
        """Close the socket and remove its path if it is still ours. Safe to call twice."""
        self.sock.close()
        remove_unix_socket(self)


def bind_unix_socket(
    path: Path, *, mode: int, uid: int, gid: int, backlog: int = 512
) -> BoundSocket:
    """Bind and listen on a unix stream socket at ``path`` with the given owner and mode.

    The parent directory is created when missing (mode 0755, owned by the daemon). It and every
    directory above it must belong to root or to the daemon's user and must not be writable by
    others (sticky directories such as /tmp are allowed above it); symbolic links are refused,
    except root's or the daemon's own links above the parent (such as ``/var/run -> /run``).

    A dead socket at ``path`` (connect refused) is replaced; a live one, a symbolic link or any
    other kind of file makes this raise ``ControlError`` and is left untouched. The returned
    socket is non-blocking and close-on-exec.

    Raises ``ControlError`` with the path, the cause and what to do.
    """
    if mode & ~0o777:
        raise ValueError(f"socket mode {mode:#o} has bits outside 0o777")
    path = Path(os.path.abspath(path))
    _check_length(path)
    dir_fd = _open_socket_dir(path.parent)
    try:
        stale = _inspect_existing(dir_fd, path)
        sock, tmp_name = _bind_temporary(dir_fd, path, mode=mode, uid=uid, gid=gid)
        try:
            st = os.stat(tmp_name, dir_fd=dir_fd, follow_symlinks=False)
            sock.listen(backlog)
            _publish(dir_fd, path, tmp_name, stale)
        except BaseException:
            sock.close()
            raise
        finally:
            _unlink_quietly(tmp_name, dir_fd)
    finally:
        os.close(dir_fd)
    sock.setblocking(False)
    return BoundSocket(sock=sock, path=path, dev=st.st_dev, ino=st.st_ino)


def remove_unix_socket(bound: BoundSocket) -> bool:
    """Unlink ``bound.path`` if it still is the socket bound there; return whether it was."""
    if not bound.is_published():
        return False
    try:
        os.unlink(bound.path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ControlError(f"cannot remove socket {bound.path}: {exc.strerror}") from exc
    return True


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """Return ``(pid, uid, gid)`` of the process at the other end of a unix socket connection.

    The kernel records them at ``connect()``; they cannot be forged by the peer.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _check_length(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ControlError(
            f"socket path {path} is {size} bytes long; unix sockets allow at most "
            f"{MAX_SOCKET_PATH_BYTES}; choose a shorter path"
        )


def _open_socket_dir(directory: Path) -> int:
    """Open ``directory`` component by component, creating missing ones; return its fd."""
    parts = directory.parts
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_dir(fd, Path("/"), is_parent=len(parts) == 1)
        for index in range(1, len(parts)):
            shown = Path(*parts[: index + 1])
            is_parent = index == len(parts) - 1
            next_fd = _open_component(fd, parts[index], shown, is_parent=is_parent)
            os.close(fd)
            fd = next_fd
            _check_dir(fd, shown, is_parent=is_parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_component(dir_fd: int, name: str, shown: Path, *, is_parent: bool) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return _make_dir(dir_fd, name, shown)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise ControlError(f"cannot open directory {shown}: {exc.strerror}") from exc

    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise ControlError(
            f"{shown} is a {_kind(st.st_mode)}, not a directory; fix the socket path"
        )
    if is_parent or st.st_uid not in _trusted_uids():
        raise ControlError(
            f"{shown} is a symbolic link (owned by uid {st.st_uid}); refusing to follow it for a "
            "socket path: use the real directory in the configuration"
        )
    # A link only root or the daemon could have made, above the socket's own directory
    # (/var/run -> /run on Debian): follow it and check the directory it leads to.
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise ControlError(f"cannot open directory {shown}: {exc.strerror}") from exc


def _make_dir(dir_fd: int, name: str, shown: Path) -> int:
    try:
        os.mkdir(name, _DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        pass  # created by someone else meanwhile; the open below checks what it is
    except OSError as exc:
        raise ControlError(f"cannot create directory {shown}: {exc.strerror}") from exc
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as exc:
        raise ControlError(f"cannot open directory {shown}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != _DIR_MODE:
        os.fchmod(fd, _DIR_MODE)  # mkdir's mode was narrowed by the umask; clients must traverse
    return fd


def _check_dir(fd: int, shown: Path, *, is_parent: bool) -> None:
    st = os.fstat(fd)
    if st.st_uid not in _trusted_uids():
        raise ControlError(
            f"{shown} is owned by uid {st.st_uid}; a socket's directory and the directories "
            f"above it must belong to root or uid {os.geteuid()}; choose another socket path"
        )
    mode = stat.S_IMODE(st.st_mode)
    group_writable = bool(mode & stat.S_IWGRP) and st.st_gid != 0
    other_writable = bool(mode & stat.S_IWOTH)
    sticky = bool(mode & stat.S_ISVTX)
    if group_writable or (other_writable and (is_parent or not sticky)):
        raise ControlError(
            f"{shown} is writable by other users (mode {mode:04o}); a socket's directory must "
            f"be writable only by its owner: chmod go-w {shown}, or choose another socket path"
        )


def _inspect_existing(dir_fd: int, path: Path) -> tuple[int, int] | None:
    """Return ``(dev, ino)`` of a dead socket at ``path``, None if nothing is there.

    Raises ``ControlError`` for a live socket, a symbolic link or any other file.
    """
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise ControlError(
            f"{path} is a symbolic link; refusing to follow or replace it (remove it if nothing "
            "uses it)"
        )
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(
            f"{path} exists and is a {_kind(st.st_mode)}, not a socket; refusing to replace it "
            "(move it away or choose another socket path)"
        )
    if _answers(path):
        raise ControlError(
            f"{path} is in use by another process; is another janus-supervisord running?"
        )
    return st.st_dev, st.st_ino


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (BlockingIOError, TimeoutError):
        return True  # listening, but its backlog is full: alive all the same
    except OSError as exc:
        raise ControlError(f"cannot check whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


def _bind_temporary(
    dir_fd: int, path: Path, *, mode: int, uid: int, gid: int
) -> tuple[socket.socket, str]:
    """Bind a socket under a fresh name beside ``path`` and give it its owner and mode."""
    tmp_name = f".{secrets.token_hex(4)}.tmp"
    tmp_path = path.parent / tmp_name
    _check_length(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(tmp_path))
        # Nobody else may write this directory, so the name bind() just created stays ours;
        # Linux has no lchmod, and chmod through our own fresh name is safe.
        os.chown(tmp_name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(tmp_name, mode, dir_fd=dir_fd)
    except OSError as exc:
        sock.close()
        _unlink_quietly(tmp_name, dir_fd)
        raise ControlError(f"cannot bind socket {path}: {exc.strerror}") from exc
    return sock, tmp_name


def _publish(dir_fd: int, path: Path, tmp_name: str, stale: tuple[int, int] | None) -> None:
    """Give the temporary socket its final name without ever replacing a live one."""
    if stale is not None:
        _unlink_if_same(dir_fd, path, stale)
    # link() fails when the name exists, unlike rename(): two daemons racing for one path
    # cannot both win, and the loser learns it here.
    try:
        os.link(tmp_name, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError as exc:
        raise ControlError(
            f"{path} appeared while it was being bound; is another janus-supervisord starting?"
        ) from exc
    except OSError as exc:
        raise ControlError(f"cannot publish socket {path}: {exc.strerror}") from exc


def _unlink_if_same(dir_fd: int, path: Path, identity: tuple[int, int]) -> None:
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ControlError(f"cannot remove stale socket {path}: {exc.strerror}") from exc


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _trusted_uids() -> set[int]:
    return {0, os.geteuid()}


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISSOCK, "socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")
