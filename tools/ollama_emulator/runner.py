"""``ollama-emulator runner --model <blob> --port N``: the stand-in for a model runner.

It listens on 127.0.0.1:N and answers every HTTP request with ``{"status":"ok"}`` (the
server only waits for it to accept connections). Knobs for fault tests:
``JANUS_EMU_RUNNER_SETSID=1`` (leave the server's session and process group),
``JANUS_EMU_RUNNER_IGNORE_SIGTERM=1``, ``JANUS_EMU_RUNNER_LOCK=/path`` (hold a shared
``flock`` on that file for life, standing in for GPU memory: the GPU is "free" once an
exclusive lock can be taken). The first two apply to every runner, or, given as ``#K`` or
``#K,#L``, only to the runners the server started K-th and L-th (from 0).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys

from .envconfig import env_bool, env_var
from .slogtext import slog

RUNNER_ORDINAL = "JANUS_EMU_RUNNER_ORDINAL"  # set by the server for each runner it starts
_HEALTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n"
    b'Connection: close\r\n\r\n{"status":"ok"}'
)


def _parse_args(argv: list[str]) -> dict[str, str]:
    args, index = {}, 0
    while index < len(argv):
        if argv[index].startswith("--") and index + 1 < len(argv):
            args[argv[index][2:]] = argv[index + 1]
            index += 2
        else:
            index += 1
    return args


def run_runner(argv: list[str]) -> int:
    """Entry point of the ``runner`` sub-command; returns the exit status."""
    args = _parse_args(argv)
    if "model" not in args or "port" not in args:
        print("Error: runner needs --model and --port", file=sys.stderr)
        return 1
    # Runners of real ollama die of SIGPIPE when the server's stderr pipe is gone.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if _applies("JANUS_EMU_RUNNER_SETSID"):
        os.setsid()
    if _applies("JANUS_EMU_RUNNER_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock_path = env_var("JANUS_EMU_RUNNER_LOCK")
    lock_fd = _hold_lock(lock_path) if lock_path else None
    slog("INFO", "runner.go:815", "starting go runner")
    if not os.path.exists(args["model"]):
        slog(
            "ERROR",
            "runner.go:826",
            "failed to load model",
            error=f"open {args['model']}: no such file or directory",
        )
        return 1
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(args["port"])))
    listener.listen(16)
    slog("INFO", "runner.go:896", f"Server listening on 127.0.0.1:{args['port']}")
    _serve_health(listener)
    del lock_fd
    return 0


def _applies(knob: str) -> bool:
    """Whether a runner fault knob is on for this runner (all, or ``#K,…`` by ordinal)."""
    value = env_var(knob)
    if value.startswith("#"):
        wanted = {part.strip().lstrip("#") for part in value.split(",")}
        return env_var(RUNNER_ORDINAL) in wanted
    return env_bool(knob)


def _hold_lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _serve_health(listener: socket.socket) -> None:
    while True:
        conn, _addr = listener.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                # MSG_NOSIGNAL: a probe that hung up must not kill us with SIGPIPE.
                if conn.recv(4096):
                    conn.sendall(_HEALTH, socket.MSG_NOSIGNAL)
            except OSError:
                pass
