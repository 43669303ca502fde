"""Checks made before every start of a tenant's server, so that a start that cannot work is
never tried (case C8: under systemd such a server exits at once and restarts hundreds of times).

Two steps. As the daemon (``preflight``): the store and HOME are made when missing and must be
real directories, never symbolic links (``dirs.ensure_dir``). As the tenant's own user, in the
server's own process after it has dropped privileges and before its exec (``AccessCheck``,
answered by ``supervisor.launch``): every directory above the store, HOME and the binary can be
entered, the store and HOME are writable (or HOME holds ``.ollama/id_ed25519``, which is all
Ollama needs then), and the binary is executable. Asking the kernel as that user is the only
faithful answer: modes, ACLs, group membership, read-only mounts and network filesystems all
count; and one process per start does both the checks and the server.

A failure raises ``SpawnError`` (``PreflightError`` for a failed check, and then no server was
started) naming the path, its owner and mode, and the fix.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.dirs import ensure_dir
from supervisor.errors import SpawnError
from supervisor.netns import unshare_problem
from supervisor.privileges import Identity

KEY_FILE = Path(".ollama") / "id_ed25519"


class PreflightError(SpawnError):
    """An access check failed: the server would fail at once, so it was not started."""


@dataclass(frozen=True)
class Check:
    """One question asked as the tenant's user: may it ``kind`` the file at ``path``?

    Kinds are those of ``supervisor.launch.may``: ``x`` enter, ``w`` write a directory,
    ``e`` execute a file, ``h`` use as HOME (writable, or holding a readable key).
    """

    kind: str
    path: Path


@dataclass(frozen=True)
class AccessCheck:
    """The checks for one start, asked by the server's own process before its exec.

    ``problem`` turns the answers into the message for the operator.
    """

    identity: Identity
    home: Path
    store: Path
    binary: Path

    @property
    def checks(self) -> list[Check]:
        return [*_enter_all(self.store), Check("w", self.store), *_enter_all(self.home),
                Check("h", self.home), *_enter_all(self.binary), Check("e", self.binary)]

    def problem(self, answers: Sequence[bool]) -> str | None:
        """What is wrong, path, owner, mode and fix, given one answer per check; or None."""
        ok = dict(zip(self.checks, answers, strict=True))
        identity = self.identity
        return (_store_problem(identity, self.store, ok)
                or _home_problem(identity, self.home, ok)
                or _binary_problem(identity, self.binary, ok))

    def timeout_problem(self, timeout_s: float) -> str:
        return (f"the access check as user {self.identity.user} did not finish within "
                f"{timeout_s:g}s; a network filesystem on the store or HOME path may hang")


async def preflight(identity: Identity, *, home: Path, store: Path, binary: Path,
                    isolated: bool = False) -> AccessCheck:
    """Prepare a start of a server as ``identity`` with ``home``, ``store`` and ``binary``.

    Creates a missing store or HOME (owned by the user, 0700) without following symbolic links;
    with ``isolated``, checks that a network namespace can be made. Returns the access checks,
    which ``spawn_server`` has the new process answer as the user before the server's exec.
    Raises ``SpawnError`` with the path (or cause) and the fix.
    """
    if isolated and (why := _netns_problem()) is not None:
        raise SpawnError(f"network: isolated: cannot create a network namespace ({why}). Fix: "
                         "give the daemon CAP_SYS_ADMIN (a container may forbid it), or set "
                         "network: host for this tenant")
    _ensure("models_dir", store, identity)
    _ensure("HOME", home, identity)
    return AccessCheck(identity, home, store, binary)


@functools.cache
def _netns_problem() -> str | None:
    return unshare_problem()


def refuse_planted_links(label: str, path: Path) -> None:
    """Raise ``SpawnError`` when ``path`` or a directory above it is a link root did not make.

    ``label`` names the setting (``models_dir``). A link owned by root or the daemon's user
    above the path (``/var/run -> /run``) is fine; any other link could have been planted by
    a tenant to make the daemon create and hand over a directory elsewhere.
    """
    trusted = {0, os.geteuid()}
    for part in [*reversed(path.parents), path]:
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpawnError(f"{label}: cannot inspect {part}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode) and (part == path or st.st_uid not in trusted):
            raise SpawnError(
                f"{label}: {part} is a symbolic link (owner {_owner(st.st_uid)}); refusing to "
                f"follow it as root for {path}. Fix: replace it with a real directory, or "
                "point the config at the real path"
            )


def _ensure(label: str, path: Path, identity: Identity) -> None:
    refuse_planted_links(label, path)
    try:
        ensure_dir(path, uid=identity.uid, gid=identity.gid, mode=0o700)
    except SpawnError as exc:
        raise SpawnError(f"{label}: {exc}") from exc


def _enter_all(path: Path) -> list[Check]:
    """Every directory above ``path``, from the root down."""
    return [Check("x", parent) for parent in reversed(path.parents)]


def _store_problem(identity: Identity, store: Path, ok: dict[Check, bool]) -> str | None:
    if (blocked := _blocked_parent(store, ok)) is not None:
        return (f"models_dir {store} is out of reach for user {identity.user}: it cannot enter "
                f"{_described(blocked)}. Fix: let the user through (chmod o+x {blocked}, or "
                f"a group the user is in), or choose a models_dir outside {blocked}")
    if not ok[Check("w", store)]:
        return (f"models_dir {_described(store)} is not writable by user {identity.user}. "
                f"Fix: chown {identity.user} {store}, or choose a models_dir the user owns")
    return None


def _home_problem(identity: Identity, home: Path, ok: dict[Check, bool]) -> str | None:
    if ok[Check("h", home)]:
        return None
    if (blocked := _blocked_parent(home, ok)) is not None:
        return (f"HOME {home} is out of reach for user {identity.user}: it cannot enter "
                f"{_described(blocked)}; ollama serve would exit at once. Fix: chmod o+x "
                f"{blocked}, or set the tenant's home to a directory the user can reach")
    return (f"HOME {_described(home)} is not writable by user {identity.user} and holds no "
            f"readable {KEY_FILE}; ollama serve would exit at once. Fix: chown "
            f"{identity.user} {home}, or set the tenant's home to a writable directory")


def _binary_problem(identity: Identity, binary: Path, ok: dict[Check, bool]) -> str | None:
    if (blocked := _blocked_parent(binary, ok)) is not None:
        return (f"ollama.binary {binary} is out of reach for user {identity.user}: it cannot "
                f"enter {_described(blocked)}. Fix: chmod o+x {blocked}, or install the "
                "binary in a public directory such as /usr/local/bin")
    if not ok[Check("e", binary)]:
        return (f"ollama.binary {_described(binary)} is not an executable file for user "
                f"{identity.user}. Fix: chmod a+rx {binary}, or point ollama.binary at one")
    return None


def _blocked_parent(path: Path, ok: dict[Check, bool]) -> Path | None:
    return next((c.path for c in _enter_all(path) if not ok[c]), None)


def _described(path: Path) -> str:
    """``path (owner alice, mode 0700)``, as the daemon sees it, without following links."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path} ({exc.strerror.lower() if exc.strerror else exc})"
    kind = "symbolic link, " if stat.S_ISLNK(st.st_mode) else ""
    return f"{path} ({kind}owner {_owner(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
