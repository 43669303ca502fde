"""Log lines in the formats ``ollama serve`` writes.

- stderr: Go slog text lines, ``time=… level=INFO source=routes.go:1310 msg="…" key=value``;
- stderr, before slog is set up: Go's default logger, ``2025/02/03 21:25:38 WARN msg k=v``;
- stdout: gin's request log, ``[GIN] 2025/02/03 - 21:25:38 | 200 |  2.09ms | 127.0.0.1 | GET …``.

A write to a closed stdout or stderr pipe ends the process with SIGPIPE, as it does for a Go
program that does not handle that signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, TextIO

from .gofmt import go_duration, go_quote, slog_time

_lock = threading.Lock()


def _needs_quoting(text: str) -> bool:
    if not text:
        return True
    return any(ch in ' ="\\' or not ch.isprintable() for ch in text)


def _slog_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return go_quote(text) if _needs_quoting(text) else text


def write_line(stream: TextIO, line: str) -> None:
    """Write one line and flush; die of SIGPIPE if the reader is gone."""
    with _lock:
        try:
            stream.write(line + "\n")
            stream.flush()
        except BrokenPipeError:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGPIPE)


def slog(level: str, source: str, msg: str, **attrs: Any) -> None:
    """Write one slog text line to stderr, e.g. ``slog("INFO", "routes.go:1310", "…")``."""
    parts = [
        f"time={slog_time(time.time_ns())}",
        f"level={level}",
        f"source={source}",
        f"msg={_slog_value(msg)}",
    ]
    parts += [f"{key}={_slog_value(value)}" for key, value in attrs.items()]
    write_line(sys.stderr, " ".join(parts))


def default_log(level: str, msg: str, **attrs: Any) -> None:
    """Write a line the way Go's default slog logger does before ``slog.SetDefault``."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    extra = "".join(f" {key}={_slog_value(value)}" for key, value in attrs.items())
    write_line(sys.stderr, f"{stamp} {level} {msg}{extra}")


def gin_line(status: int, latency_ns: int, client_ip: str, method: str, path: str) -> None:
    """Write gin's access log line for one finished request to stdout."""
    stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
    line = (
        f"[GIN] {stamp} | {status:3d} | {go_duration(latency_ns):>13} | {client_ip:>15} |"
        f" {method:<7}  {go_quote(path)}"
    )
    write_line(sys.stdout, line)


def go_panic(message: str, frames: list[tuple[str, str]]) -> int:
    """Print a Go panic with a goroutine trace to stderr; returns Go's exit status 2.

    ``frames`` are (function, ``file.go:line``) pairs, innermost first; ``main.main`` is added.
    """
    lines = [f"panic: {message}", "", "goroutine 1 [running]:"]
    for function, where in [*frames, ("main.main()", "main.go:12")]:
        lines += [function, f"\t/go/src/github.com/ollama/ollama/{where} +0x13"]
    write_line(sys.stderr, "\n".join(lines))
    return 2
