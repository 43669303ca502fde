"""Fixtures that run the real daemon, as root, with real users, processes and sockets.

Everything lives under a fresh world-traversable directory in /tmp (pytest's own tmp_path is
private to root, which tenant users could not enter). The emulator is copied there too, so a
checkout under a private directory still works.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = ("admin", "dev", "qa")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real users and chown)")


def deadline_loop(timeout_s: float, interval_s: float = 0.02) -> Iterator[None]:
    """Yield until ``timeout_s`` has passed; the caller breaks when its condition holds."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        yield
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")


def control_get(sock_path: Path, path: str, method: str = "GET") -> tuple[int, Any]:
    """One HTTP request on the control socket; returns (status, JSON body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock_path))
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, json.loads(body) if body else None


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def raw_http(sock_path: Path, request: bytes, timeout_s: float = 30) -> bytes:
    """Send raw bytes on a unix socket and read until the peer closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@dataclass
class Deployment:
    """A running daemon on a copy of a config, plus what the tests need to inspect it."""

    root: Path
    config_path: Path
    config: dict[str, Any]
    users: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def control(self) -> Path:
        return Path(self.config["control"]["socket"])

    def socket_of(self, role: str) -> Path:
        return Path(self.config["tenants"][role]["socket"]["path"])

    def store_of(self, role: str) -> Path:
        return Path(self.config["tenants"][role]["models_dir"])

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self) -> None:
        self.write()
        self.log_path = self.root / "daemon.log"
        env = {**os.environ, **self.extra_env}
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL, stderr=log_file, cwd=REPO, env=env,
            )
        for _ in deadline_loop(30):
            assert self.proc.poll() is None, self.log_text()[-3000:]
            if self.control.exists():
                break

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def status(self, role: str | None = None) -> Any:
        path = f"/v1/tenants/{role}" if role else "/v1/status"
        return control_get(self.control, path)[1]

    def wait_ready(self, roles: tuple[str, ...] = ROLES, timeout_s: float = 60) -> None:
        for _ in deadline_loop(timeout_s, 0.05):
            assert self.proc is not None and self.proc.poll() is None, self.log_text()[-3000:]
            if self.control.exists():
                try:
                    if all(self.status(r)["ready"] for r in roles):
                        return
                except (OSError, ValueError, KeyError):
                    pass

    def pid_of(self, role: str) -> int:
        return int(self.status(role)["pid"])

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "--socket", str(self.control), *args],
            capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
        )

    def stop(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)


def make_world_dir(prefix: str) -> Path:
    path = Path(f"/tmp/{prefix}-{secrets.token_hex(4)}")
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    return path


def install_emulator(dest: Path) -> Path:
    """Copy the emulator (script and any package beside it) where every user can run it."""
    tools = dest / "tools"
    tools.mkdir(mode=0o755)
    shutil.copy2(REPO / "tools" / "ollama-emulator", tools / "ollama-emulator")
    for entry in (REPO / "tools").iterdir():
        if entry.is_dir() and entry.name.startswith("ollama_emulator"):
            shutil.copytree(entry, tools / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
    for p in [tools, *tools.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() or p.name == "ollama-emulator" else 0o644)
    return tools / "ollama-emulator"


def create_user(name: str) -> None:
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)


def delete_user(name: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
    subprocess.run(["userdel", name], capture_output=True, check=False)
    subprocess.run(["groupdel", name], capture_output=True, check=False)


def user_processes(name: str) -> list[int]:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                st = os.stat(f"/proc/{entry.name}")
                state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if st.st_uid == uid and state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def tutorial_config(root: Path, users: dict[str, str], emulator: Path) -> dict[str, Any]:
    """conf/janus-supervisor.yaml with paths moved under ``root`` and test users swapped in."""
    config = yaml.safe_load((REPO / "conf" / "janus-supervisor.yaml").read_text())
    conf_dir = REPO / "conf"
    config["control"] = {"socket": str(root / "run" / "control.sock")}
    config["ollama"] = {"binary": str(emulator), "port_range": [23000 + secrets.randbelow(2000),
                                                                 25999]}
    config["state_dir"] = str(root / "state")
    config["log_dir"] = str(root / "log")
    config["base_models"] = {"janus-pro-7b": {"gguf": str(conf_dir / "demo" /
                                                          "janus-pro-7b-demo.gguf")}}
    for role in ROLES:
        tenant = config["tenants"][role]
        tenant["user"] = users[role]
        tenant["create_user"] = False
        tenant["models_dir"] = str(root / "stores" / f"ollama_{role}")
        tenant["socket"] = {"path": str(root / "run" / f"{role}.sock"), "mode": "0660"}
        tenant["start_timeout_s"] = 30
        tenant["probe_period_s"] = 1
        tenant["probe_timeout_s"] = 2
        tenant["stop_timeout_s"] = 3
        tenant["backoff_initial_s"] = 0.2
        for variant in tenant.get("variants", []):
            if "modelfile" in variant:
                variant["modelfile"] = str((conf_dir / variant["modelfile"]).resolve())
    return config


def tear_down(dep: Deployment) -> None:
    """Kill the daemon if it still runs, remove the test users and the directory."""
    if dep.proc is not None and dep.proc.poll() is None:
        try:
            dep.stop(timeout_s=30)
        except subprocess.TimeoutExpired:
            dep.proc.kill()
            dep.proc.wait()
    for name in dep.users.values():
        delete_user(name)
    shutil.rmtree(dep.root, ignore_errors=True)


@contextlib.contextmanager
def new_deployment(prefix: str = "janus-it", user_prefix: str = "jt") -> Iterator[Deployment]:
    """The tutorial's three tenants on the emulator, with fresh users; torn down afterwards."""
    root = make_world_dir(prefix)
    emulator = install_emulator(root)
    tag = secrets.token_hex(3)
    users = {role: f"{user_prefix}{tag}{role[0]}" for role in ROLES}
    for name in users.values():
        create_user(name)
    dep = Deployment(root, root / "janus.yaml", tutorial_config(root, users, emulator), users)
    try:
        yield dep
    finally:
        tear_down(dep)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    """The tutorial deployment for one test."""
    with new_deployment() as dep:
        yield dep
