"""Shared pieces of ``tools/bench``: throwaway users, the competitors' installs, statistics.

The helpers of ``tools/bench_lifecycle.py`` (probes, ``wait_all``, ``kill_trial``, the janus
config) are imported from there, not copied: ``tools/`` is put on ``sys.path`` here.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the emulator's "#!/usr/bin/env python3" finds on the PATH a tenant is given.
EMULATOR_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
TOOLS = REPO / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("JANUS_BENCH_CACHE", "/tmp/janus-bench-cache"))
SUPERVISOR_SPEC = os.environ.get("JANUS_BENCH_SUPERVISOR", "supervisor==4.3.0")


class Unavailable(Exception):
    """A competitor (supervisord, nginx) cannot be installed on this machine."""


# ---- installs -----------------------------------------------------------------------------


def ensure_supervisord() -> Path:
    """PyPI ``supervisor`` in a venv of its own under CACHE; returns that venv's bin/."""
    venv = CACHE / "supervisord-venv"
    bin_dir = venv / "bin"
    if (bin_dir / "supervisord").exists() and (bin_dir / "supervisorctl").exists():
        return bin_dir
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(venv, ignore_errors=True)
    # This Python's venv module first (a venv's python makes one from its base interpreter),
    # the system's as a fallback (Debian's python3 needs python3-venv for it).
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True,
                              check=False)
        if made.returncode == 0:
            break
        shutil.rmtree(venv, ignore_errors=True)
    else:
        raise Unavailable(f"supervisord: python3 -m venv failed: {made.stderr.strip()[-500:]}")
    for cmd in ([str(bin_dir / "pip"), "install", "-q", SUPERVISOR_SPEC],):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"supervisord: {' '.join(cmd)}: {exc}") from exc
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise Unavailable(f"supervisord: {' '.join(cmd)} exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
    return bin_dir


def ensure_nginx() -> str:
    """Path of Debian's nginx, installed with apt-get (update once first) when missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found:
        return found
    if not shutil.which("apt-get"):
        raise Unavailable("nginx: not installed and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"nginx: {' '.join(cmd)}: {exc}") from exc
        if done.returncode != 0:
            raise Unavailable(f"nginx: {' '.join(cmd)} exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip()[-500:]}")
    # Debian's package may start its own nginx on port 80 where an init system exists; this
    # benchmark runs its own instance and leaves the system's alone.
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(found):
        raise Unavailable("nginx: apt-get install succeeded but no nginx binary")
    return found


# ---- users and scratch directories --------------------------------------------------------


@contextmanager
def throwaway_users(count: int) -> Iterator[list[str]]:
    """``count`` system users (and groups), removed with every process they own on exit."""
    tag = secrets.token_hex(2)
    users: list[str] = []
    try:
        for i in range(count):
            user = f"jb{tag}{i:02d}"
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user],
                           check=True, capture_output=True)
            users.append(user)
        yield users
    finally:
        remove_users(users)


def remove_users(users: list[str]) -> None:
    for user in users:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
    for user in users:
        subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh world-traversable directory under /tmp, removed on exit."""
    root = Path(f"/tmp/{prefix}-{secrets.token_hex(3)}")
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def copy_emulator(root: Path) -> Path:
    """The emulator copied where every tenant user can run it; returns the entry script."""
    emulator = root / "ollama-emulator"
    shutil.copy2(REPO / "tools" / "ollama-emulator", emulator)
    shutil.copytree(REPO / "tools" / "ollama_emulator", root / "ollama_emulator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Compiled ahead, as an installed package would be: the tenants cannot write a cache here,
    # so without it every emulator start would compile its modules again.
    precompile(root / "ollama_emulator", EMULATOR_PYTHON)
    for p in [emulator, root / "ollama_emulator", *(root / "ollama_emulator").rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() or p == emulator else 0o644)
    return emulator


def precompile(folder: Path, python: str = sys.executable) -> None:
    """Byte-compile ``folder`` with ``python`` (writes ``__pycache__``, as pip does on install).

    Without it, a shell with PYTHONDONTWRITEBYTECODE=1 makes every start compile again.
    """
    subprocess.run([python, "-m", "compileall", "-q", str(folder)], check=True,
                   stdout=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL, a child this benchmark started (by its pid only)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- statistics ---------------------------------------------------------------------------


def med_range(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median (min–max)`` of ``values`` times ``scale``."""
    if not values:
        return "-"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"
