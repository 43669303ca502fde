"""Checks of the machine a configuration needs, and ``janus-supervisord --check``.

``config`` validates the file itself; this module asks the machine: is the binary there, do
the users and groups exist, are the base model files readable, can an unprivileged daemon create
its directories. Every problem names the file, line, field path and fix like a config error.
"""

from __future__ import annotations

import contextlib
import grp
import os
from pathlib import Path
from typing import TextIO

from supervisor.config import (
    Config,
    Loc,
    TenantConfig,
    _compose,
    _dotted,
    _Found,
    _line_of,
    _user,
    load_config,
)
from supervisor.errors import ConfigError, ConfigProblem


def _group_missing(name: str | None) -> bool:
    try:
        return name is not None and not grp.getgrnam(name)
    except KeyError:
        return True


def _writable(path: Path) -> bool:
    """Whether this process can create ``path``: its nearest existing ancestor is writable."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def check_system(config: Config, *, as_root: bool) -> list[ConfigProblem]:
    """What the machine must provide for ``config``: binary, users, groups, base model files.

    Unprivileged (``as_root`` false), the directories the daemon creates must be writable too.
    Returns the problems found; an empty list means the machine is ready.
    """
    binary = config.ollama.binary
    found = _Found()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        found.add(
            ("ollama", "binary"),
            f"{str(binary)!r} is not an executable file; "
            "install ollama there or point ollama.binary at it",
        )
    for key in ("group", "admin_group", "read_group"):
        if _group_missing(group := getattr(config.control, key)):
            found.add(
                ("control", key),
                f"group {group!r} does not exist; create it "
                f"(groupadd --system {group}) or remove the setting",
            )
    for name, base in config.base_models.items():
        for key, gguf in (("gguf", base.gguf), ("projector", base.projector)):
            if gguf is not None and not (gguf.is_file() and os.access(gguf, os.R_OK)):
                found.add(
                    ("base_models", name, key),
                    f"{str(gguf)!r} is not a readable file; fix the path or its permissions",
                )
    created = {t.user for t in config.tenants.values() if t.create_user}
    for name, tenant in config.tenants.items():
        found += [(("tenants", name) + loc, msg) for loc, msg in _tenant_system(tenant, created)]
    dirs: list[tuple[Loc, Path]] = [
        (("state_dir",), config.state_dir),
        (("log_dir",), config.log_dir),
        (("control", "socket"), config.control.socket.parent),
    ]
    for name, t in config.tenants.items():
        dirs += [
            (("tenants", name, "models_dir"), t.models_dir),
            (("tenants", name, "socket", "path"), t.socket.path.parent),
        ]
    for loc, directory in dirs if not as_root else ():
        if not _writable(directory):
            found.add(
                loc,
                f"{str(directory)!r} cannot be created or written without root; run as root "
                "or choose a directory you own",
            )
    root = None
    if config.source is not None:
        # The file may have changed since it was loaded: then report without lines.
        with contextlib.suppress(OSError, ValueError, ConfigError):
            root = _compose(config.source, config.source.read_text(encoding="utf-8"))[0]
    file = str(config.source or "<config>")
    return [ConfigProblem(file, _dotted(loc), msg, _line_of(root, loc)) for loc, msg in found]


def _tenant_system(t: TenantConfig, created: set[str]) -> list[tuple[Loc, str]]:
    found = _Found()
    entry = _user(t.user)
    if entry is None and not t.create_user:
        found.add(
            ("user",),
            f"user {t.user!r} does not exist; create it (useradd --system "
            f"--shell /usr/sbin/nologin {t.user}) or set create_user: true",
        )
    elif entry is not None and entry.pw_uid == 0:
        found.add(("user",), f"user {t.user!r} has uid 0; tenants must not run as root")
    owner = t.socket.owner
    if owner is not None and owner not in created and _user(owner) is None:
        found.add(
            ("socket", "owner"), f"user {owner!r} does not exist; create it or remove socket.owner"
        )
    if _group_missing(t.socket.group):
        found.add(
            ("socket", "group"),
            f"group {t.socket.group!r} does not exist; create it "
            f"(groupadd --system {t.socket.group}) or remove socket.group",
        )
    return found


def run_check(path: Path, *, as_root: bool, out: TextIO) -> int:
    """``janus-supervisord --check``: print every problem, one per line; return 0 or 2."""
    try:
        config = load_config(path)
        problems = check_system(config, as_root=as_root)
    except ConfigError as exc:
        config, problems = None, exc.problems
    for problem in problems:
        print(problem, file=out)
    if problems or config is None:
        print(f"{path}: {len(problems)} problem(s); nothing was started", file=out)
        return 2
    names = ", ".join(config.tenants)
    print(f"{path}: configuration OK ({len(config.tenants)} tenants: {names})", file=out)
    return 0
