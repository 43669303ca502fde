"""File-system calls with Go's error texts (``mkdir /x: permission denied``)."""

from __future__ import annotations

import errno
import os
import stat

from .gofmt import errno_text


class PathError(OSError):
    """An ``*fs.PathError``: ``str()`` gives ``<op> <path>: <errno text>``."""

    def __init__(self, op: str, path: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.op, self.path, self.cause = op, path, cause

    def __str__(self) -> str:
        return f"{self.op} {self.path}: {errno_text(self.cause)}"


def mkdir_all(path: str, mode: int) -> None:
    """Go's ``os.MkdirAll``: the error names the first directory that could not be made."""
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            return
        raise PathError("mkdir", path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path:
        mkdir_all(parent, mode)
    try:
        os.mkdir(path, mode)
    except OSError as exc:
        if os.path.isdir(path):
            return
        raise PathError("mkdir", path, exc) from exc


def write_file(path: str, data: bytes, mode: int) -> None:
    """Go's ``os.WriteFile``: create or truncate with ``mode`` less the umask."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise PathError("open", path, exc) from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
