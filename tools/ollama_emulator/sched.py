"""Loaded models and their runner processes (``server/sched.go``).

Each loaded model is one runner child, started as ``<python> <emulator> runner --model
<blob> --port N`` in the server's own process group and session (no setsid, no death
signal), like ``ollama runner`` up to v0.29. A runner lives until its keep-alive expires,
a request unloads it (``keep_alive: 0``) or the server shuts down; it is stopped with
SIGKILL and reaped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .api import ApiError
from .envconfig import FOREVER_NS
from .gofmt import go_time
from .runner import RUNNER_ORDINAL
from .slogtext import slog

_LOAD_TIMEOUT_S = 30.0


@dataclass
class Runner:
    """One loaded model and its runner process."""

    key: str
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    info: dict[str, Any]
    expires_ns: int = FOREVER_NS
    refs: int = 0
    started_ns: int = field(default_factory=time.time_ns)


class Scheduler:
    """Starts, tracks and stops runners; a background thread expires idle ones."""

    def __init__(self, runner_argv: list[str]) -> None:
        self._argv = runner_argv
        self._runners: dict[str, Runner] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = False
        self._started = 0  # runners started so far: the next one's ordinal (fault knobs)
        threading.Thread(target=self._expire_loop, name="sched-expire", daemon=True).start()

    def acquire(self, key: str, name: str, model_path: str, info: dict[str, Any]) -> Runner:
        """The runner for ``key``, started if needed; raises ApiError when it cannot start."""
        with self._lock:
            runner = self._runners.get(key)
            if runner is not None and runner.proc.poll() is not None:
                self._reap(runner)
                runner = None
            if runner is None:
                runner = self._start(key, name, model_path, info)
                self._runners[key] = runner
            runner.refs += 1
            return runner

    def release(self, runner: Runner, keep_alive_ns: int) -> None:
        """End one use of ``runner``; it expires ``keep_alive_ns`` from now (0: at once)."""
        with self._lock:
            runner.refs = max(0, runner.refs - 1)
            if keep_alive_ns >= FOREVER_NS - time.time_ns():
                runner.expires_ns = FOREVER_NS
            else:
                runner.expires_ns = time.time_ns() + keep_alive_ns
            if keep_alive_ns == 0 and runner.refs == 0:
                self._unload(runner.key)
        self._wake.set()

    def unload(self, key: str) -> None:
        """Stop the runner of ``key`` if one is loaded."""
        with self._lock:
            self._unload(key)

    def unload_all(self) -> None:
        """SIGKILL and reap every runner; no new loads afterwards."""
        with self._lock:
            self._closed = True
            for key in list(self._runners):
                self._unload(key)
        self._wake.set()

    def pids(self) -> list[int]:
        """Process ids of the live runners."""
        with self._lock:
            return [r.proc.pid for r in self._runners.values()]

    def ps(self) -> list[dict[str, Any]]:
        """``/api/ps`` entries, the longest remaining time first."""
        with self._lock:
            runners = sorted(self._runners.values(), key=lambda r: r.expires_ns, reverse=True)
            return [{**r.info, "expires_at": go_time(_shown_expiry(r.expires_ns))} for r in runners]

    def _start(self, key: str, name: str, model_path: str, info: dict[str, Any]) -> Runner:
        if self._closed:
            raise ApiError(500, "server is shutting down")
        port = _free_port()
        argv = [*self._argv, "runner", "--model", model_path, "--port", str(port)]
        slog("INFO", "server.go:438", "starting llama server", cmd=" ".join(argv))
        begin = time.monotonic()
        # The runner's stdout and stderr both end up on the server's stderr. Its ordinal lets
        # the runner fault knobs pick some runners only.
        env = {**os.environ, RUNNER_ORDINAL: str(self._started)}
        self._started += 1
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                env=env)
        runner = Runner(key, name, proc, port, info)
        _wait_until_listening(runner)
        slog(
            "INFO",
            "server.go:608",
            f"llama runner started in {time.monotonic() - begin:.2f} seconds",
        )
        return runner

    def _unload(self, key: str) -> None:
        runner = self._runners.pop(key, None)
        if runner is not None:
            self._reap(runner)

    @staticmethod
    def _reap(runner: Runner) -> None:
        if runner.proc.poll() is None:
            runner.proc.kill()
        runner.proc.wait()

    def _expire_loop(self) -> None:
        while True:
            self._wake.wait(timeout=0.25)
            self._wake.clear()
            now = time.time_ns()
            with self._lock:
                expired = [
                    k for k, r in self._runners.items() if r.refs == 0 and r.expires_ns <= now
                ]
                for key in expired:
                    self._unload(key)


def _shown_expiry(expires_ns: int) -> int:
    # Go shows "forever" as now + MaxInt64 ns, a date in the year 2318.
    return time.time_ns() + FOREVER_NS if expires_ns == FOREVER_NS else expires_ns


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(runner: Runner) -> None:
    deadline = time.monotonic() + _LOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        code = runner.proc.poll()
        if code is not None:
            runner.proc.wait()
            reason = f"exit status {code}" if code >= 0 else f"signal: {_signal_name(-code)}"
            raise ApiError(500, f"llama runner process has terminated: {reason}")
        try:
            with socket.create_connection(("127.0.0.1", runner.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    runner.proc.kill()
    runner.proc.wait()
    raise ApiError(500, "timed out waiting for llama runner to start")


def _signal_name(number: int) -> str:
    names = {9: "killed", 15: "terminated", 6: "aborted", 11: "segmentation fault"}
    return names.get(number, f"signal {number}")
