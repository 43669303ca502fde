"""Directories the daemon makes for tenants: stores, homes, the state and log directories.

Acting as root on paths a tenant may write, the daemon never follows a symbolic link: the final
component is created with ``mkdir`` and checked with ``lstat``, and ownership is only ever set on
a directory the daemon has just created itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from supervisor.errors import SpawnError


def ensure_dir(path: Path, *, uid: int, gid: int, mode: int) -> bool:
    """Make sure ``path`` is a real directory; create it owned by ``uid:gid`` with ``mode``.

    Missing parents are created owned by the daemon with mode 0755. An existing directory is
    left as it is (its owner and mode are the operator's business). Returns True when the
    directory was created. Raises ``SpawnError`` when ``path`` is a symlink or not a directory.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise SpawnError(f"{path} is a symbolic link; refusing to follow it. Replace it with "
                             "a real directory or point the config at the link's target")
        if not stat.S_ISDIR(st.st_mode):
            raise SpawnError(f"{path} exists but is not a directory; move it away")
        return False
    os.makedirs(path.parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return ensure_dir(path, uid=uid, gid=gid, mode=mode)
    except OSError as exc:
        raise SpawnError(f"cannot create {path}: {exc.strerror}") from exc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def owned_by(path: Path, uid: int) -> bool:
    """True when ``path`` is a real directory (not a link) owned by ``uid``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid
