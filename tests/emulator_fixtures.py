"""Helpers to run ``tools/ollama-emulator`` as a real child process in tests.

``start_emulator`` starts it in its own session with a clean environment (temp HOME and
OLLAMA_MODELS, ``OLLAMA_HOST=127.0.0.1:0``), parses the real port from the "Listening on"
line and waits for ``GET /`` under a deadline. ``EmulatorProcess.close`` kills the whole
process group and any runner that left it, so no test leaves processes behind.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EMULATOR = REPO / "tools" / "ollama-emulator"
DEMO_GGUF = REPO / "conf" / "demo" / "janus-pro-7b-demo.gguf"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LISTENING = re.compile(r"Listening on (\S+) \(version ([^)]+)\)")


@dataclass
class Response:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class Output:
    """Lines read from one pipe by a background thread."""

    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


def _pump(stream: Any, out: Output) -> None:
    for raw in iter(stream.readline, b""):
        with out.cond:
            out.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            out.cond.notify_all()
    with out.cond:
        out.closed = True
        out.cond.notify_all()


class EmulatorProcess:
    """A running emulator child with its output and an HTTP helper."""

    def __init__(self, proc: subprocess.Popen[bytes], home: Path, models: Path) -> None:
        self.proc, self.home, self.models = proc, home, models
        self.stdout, self.stderr = Output(), Output()
        self.port = 0
        self.address = ""
        self.extra_pids: set[int] = set()
        self._threads = [
            threading.Thread(target=_pump, args=(proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(
        self, pattern: str, timeout: float = 10.0, stream: str = "stderr"
    ) -> re.Match[str]:
        """The first line of stderr (or stdout) matching ``pattern``; fails at the deadline."""
        out = self.stderr if stream == "stderr" else self.stdout
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        with out.cond:
            while True:
                for line in out.lines:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (out.closed and self.proc.poll() is not None):
                    raise AssertionError(
                        f"no line matching {pattern!r} in {stream}:\n" + "\n".join(out.lines)
                    )
                out.cond.wait(min(left, 0.1))

    def wait_listening(self, timeout: float = 10.0) -> str:
        """Parse the bound address from the "Listening on" line."""
        match = self.wait_for(LISTENING.pattern, timeout)
        self.address = match.group(1)
        self.port = int(self.address.rsplit(":", 1)[1])
        return self.address

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll ``GET /`` until it answers 200, under a deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/", timeout=0.5).status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"emulator exited {self.proc.returncode}:\n{self.stderr.text()}"
                )
            time.sleep(0.02)
        raise AssertionError("emulator did not answer GET / in time")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One request on a fresh connection; ``body`` may be bytes, a dict or an iterable."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            chunked = payload is not None and not isinstance(payload, (bytes, str))
            conn.request(method, path, body=payload, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def post(self, path: str, body: Any, **kwargs: Any) -> Response:
        return self.request("POST", path, body, **kwargs)

    def upload_blob(self, path: Path) -> str:
        """Upload a file as a blob; returns its ``sha256:<hex>`` digest."""
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert self.post(f"/api/blobs/{digest}", data).status in (200, 201)
        return digest

    def create_demo_base(self, name: str = "janus-base") -> list[Any]:
        """Create ``name`` from the demo GGUF via blobs + files; returns the progress lines."""
        digest = self.upload_blob(DEMO_GGUF)
        resp = self.post("/api/create", {"model": name, "files": {DEMO_GGUF.name: digest}})
        assert resp.status == 200, resp.body
        return resp.lines()

    def runner_pids(self) -> list[int]:
        """Live children of the server (the runners)."""
        pids = children_of(self.pid)
        self.extra_pids.update(pids)
        return pids

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill everything the test started and release pipes."""
        self.extra_pids.update(children_of(self.pid))
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scans /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def unprivileged_kwargs() -> dict[str, Any]:
    """Popen arguments that drop to ``nobody`` when the tests run as root, else nothing."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def base_env(
    home: Path | None, models: Path | None, host: str | None = "127.0.0.1:0", **extra: str
) -> dict[str, str]:
    """A clean environment like the daemon builds; None leaves a variable out."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "JANUS_EMU_STARTUP_DELAY_S": "0.01"}
    if home is not None:
        env["HOME"] = str(home)
    if models is not None:
        env["OLLAMA_MODELS"] = str(models)
    if host is not None:
        env["OLLAMA_HOST"] = host
    env.update(extra)
    return env


def spawn(
    env: dict[str, str], args: Iterable[str] = ("serve",), **popen: Any
) -> subprocess.Popen[bytes]:
    """Start the emulator in a new session with ``env``."""
    popen.setdefault("umask", 0o022)
    return subprocess.Popen(
        [str(EMULATOR), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,
    )


def start_emulator(tmp: Path, ready: bool = True, **extra_env: str) -> EmulatorProcess:
    """Start ``serve`` with a temp HOME and store; wait for readiness unless ``ready`` False."""
    home, models = tmp / "home", tmp / "models"
    home.mkdir(parents=True, exist_ok=True)
    env = base_env(home, models, **extra_env)
    emu = EmulatorProcess(spawn(env), home, models)
    try:
        emu.wait_listening()
        if ready:
            emu.wait_ready()
    except BaseException:
        emu.close()
        raise
    return emu
