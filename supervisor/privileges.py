"""Who a tenant's server runs as, and the steps that turn a new process into that user.

The daemon resolves a tenant's identity once (passwd and group database), builds a clean
environment for it, and describes the steps as a ``Launch``; ``supervisor.launch`` takes them
in the new process before it execs the server. Order matters there: resource limits are raised
while the process is still root, groups and ids are dropped next, and only then are
``PR_SET_NO_NEW_PRIVS`` and the death signal set, because a credential change clears the death
signal.
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import SpawnError

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


@dataclass(frozen=True)
class Identity:
    """A resolved OS user: ids, every group it belongs to, and its passwd home."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: Path


def is_root() -> bool:
    return os.geteuid() == 0


def resolve_identity(user: str) -> Identity:
    """Look ``user`` up in the passwd and group databases.

    Raises ``SpawnError`` when the user does not exist.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SpawnError(
            f"user {user!r} does not exist; create it (useradd --system {user}) "
            "or set create_user: true for its tenant"
        ) from None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, Path(entry.pw_dir))


def current_identity() -> Identity:
    """The identity the daemon itself runs as (used for every tenant when not root)."""
    entry = pwd.getpwuid(os.getuid())
    return Identity(entry.pw_name, entry.pw_uid, os.getgid(), tuple(os.getgroups()),
                    Path(entry.pw_dir))


def ensure_system_user(user: str) -> tuple[Identity, bool]:
    """Create ``user`` as a locked system user with its own group, unless it exists.

    The account gets no password, a nologin shell and ``/nonexistent`` as its passwd home (the
    daemon gives it a private HOME under its state directory, so the account is not tied to
    one installation). Returns the identity and whether it was created. Raises ``SpawnError``
    when ``useradd`` fails.
    """
    try:
        return resolve_identity(user), False
    except SpawnError:
        pass
    shell = next((s for s in NOLOGIN_SHELLS if os.path.exists(s)), "/bin/false")
    cmd = ["useradd", "--system", "--user-group", "--no-create-home",
           "--home-dir", "/nonexistent", "--shell", shell, user]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise SpawnError(f"could not create user {user!r}: {detail.strip()}") from exc
    return resolve_identity(user), True


def group_id(name: str) -> int:
    """Return the gid of group ``name``; raises ``SpawnError`` when it does not exist."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SpawnError(f"group {name!r} does not exist; create it (groupadd {name})") from None


def user_id(name: str) -> int:
    """Return the uid of user ``name``; raises ``SpawnError`` when it does not exist."""
    return resolve_identity(name).uid


def build_environment(identity: Identity, home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The server's whole environment: a fixed allowlist, then ``extra`` (tenant and ollama env).

    Nothing of the daemon's own environment is inherited.
    """
    env = {
        "PATH": SAFE_PATH,
        "LANG": DEFAULT_LANG,
        "HOME": str(home),
        "USER": identity.user,
        "LOGNAME": identity.user,
    }
    env.update(extra)
    return env


def nofile_shortfall(nofile: int) -> int | None:
    """The daemon's hard RLIMIT_NOFILE when it is below ``nofile`` (servers may get less)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY and hard < nofile else None


@dataclass(frozen=True)
class Launch:
    """What a tenant's server process becomes before its exec (done by ``supervisor.launch``).

    RLIMIT_NOFILE is raised to ``nofile`` (capped at the hard limit when it may not be
    raised); with ``new_netns`` the process moves into a network namespace of its own with
    only loopback up (this needs root, so it comes before the drop). Then, as root, it drops
    to ``identity``'s groups, gid and uid; unprivileged it keeps its ids. Last it sets
    ``PR_SET_NO_NEW_PRIVS``, the death signal and ``umask``. The new session is made by
    ``start_new_session`` in the caller.
    """

    identity: Identity
    nofile: int
    umask: int = 0o077
    death_signal: int = signal.SIGKILL
    new_netns: bool = False

    def spec(self, argv: list[str], env: Mapping[str, str], checks: list[tuple[str, str]],
             report_fd: int) -> dict[str, Any]:
        """The instructions ``supervisor.launch`` follows, in the calling daemon."""
        change_ids = os.geteuid() == 0 and self.identity.uid != 0
        return {
            "argv": argv,
            "env": dict(env),
            "nofile": self.nofile,
            "netns": self.new_netns,
            "uid": self.identity.uid if change_ids else None,
            "gid": self.identity.gid,
            "groups": list(self.identity.groups),
            "death_signal": int(self.death_signal),
            "parent": os.getpid(),
            "umask": self.umask,
            "checks": checks,
            "report_fd": report_fd,
        }
