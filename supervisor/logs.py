"""Where a tenant's server output goes: a per-tenant file, a ring for ``logs``, and stderr.

Each line of the server's stdout/stderr is written to ``<log_dir>/<tenant>.log``, kept in an
in-memory ring (what ``janus-supervisorctl logs`` shows), handed to every ``logs -f`` follower,
and echoed to the daemon's stderr prefixed with the tenant name, so journald shows which team it
came from.

The file is created by the daemon (root) with mode 0640 in a directory of mode 0750, opened with
``O_NOFOLLOW``, and rotated by size: ``<tenant>.log`` becomes ``<tenant>.log.1`` and so on up to
``log_backups`` old files, so a crash loop printing without end holds at most
``(log_backups + 1) * log_max_bytes`` bytes on disk. ``reopen`` (SIGUSR1, or the control route)
closes the file and opens the path again, for logrotate: once the old file has been moved away,
new lines go to a new file.

An unwritable log directory costs the file only: the daemon warns once, keeps the ring and
stderr, and tries the file again after ``RETRY_S`` seconds or on ``reopen``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio

log = logging.getLogger(__name__)

RING_LINES = 2000
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
FOLLOW_BUFFER_LINES = 10_000
RETRY_S = 30.0
FILE_MODE = 0o640
DIR_MODE = 0o750


class LogFollower:
    """New lines of one tenant for one ``logs -f`` client, buffered up to a bound.

    A client that reads slower than the server prints loses the oldest buffered lines;
    ``dropped`` counts them so the stream can say so.
    """

    def __init__(self, backlog: list[str], limit: int = FOLLOW_BUFFER_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(backlog)
        self._limit = limit
        self._closed = False
        self._wakeup: anyio.Event | None = None
        self.dropped = 0

    def push(self, line: str) -> None:
        if len(self._lines) >= self._limit:
            self._lines.popleft()
            self.dropped += 1
        self._lines.append(line)
        self._wake()

    def close(self) -> None:
        """End the stream: ``next_lines`` returns what is left, then None."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def next_lines(self) -> list[str] | None:
        """Wait for lines and return every buffered one; None once closed and drained."""
        while not self._lines and not self._closed:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        lines = list(self._lines)
        self._lines.clear()
        return lines if lines or not self._closed else None


class TenantLog:
    """Collects one tenant's server output: file with size rotation, ring, followers, stderr.

    ``max_bytes`` bounds each file, ``backups`` is how many rotated files are kept. Never
    raises for file problems: they are logged as a WARNING naming the tenant, the path, the
    cause and how to recover.
    """

    def __init__(
        self,
        tenant: str,
        log_dir: Path,
        *,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        echo: bool = True,
    ) -> None:
        self.tenant = tenant
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self.rotations = 0
        self._log_dir = log_dir
        self._max_bytes = max_bytes
        self._backups = backups
        self._echo = echo
        self._fd: int | None = None
        self._size = 0
        self._failed_at: float | None = None
        self._followers: set[LogFollower] = set()
        self._open()

    @property
    def path(self) -> Path:
        return self._log_dir / f"{self.tenant}.log"

    # -- writing ---------------------------------------------------------------------------

    def write(self, line: str) -> None:
        """Record one output line of the tenant's server."""
        stamped = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime())} {line}"
        self.ring.append(stamped)
        for follower in self._followers:
            follower.push(stamped)
        self._write_file((stamped + "\n").encode("utf-8", "replace"))
        if self._echo:
            sys.stderr.write(f"{self.tenant} | {line}\n")

    def note(self, message: str) -> None:
        """Record a line written by the daemon itself about this tenant (provisioning steps)."""
        self.write(f"[janus] {message}")

    def _write_file(self, data: bytes) -> None:
        if self._fd is None and not self._retry_due():
            return
        if self._fd is None:
            self._open()
            if self._fd is None:
                return
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
            if self._fd is None:
                return
        try:
            os.write(self._fd, data)
        except OSError as exc:
            self._give_up("cannot write to", exc)
            return
        self._size += len(data)

    # -- file handling ---------------------------------------------------------------------

    def _open(self) -> None:
        """Open (creating) the log file for appending; on failure keep going without it."""
        path = self.path
        try:
            self._log_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            self._give_up("cannot open", exc)
            return
        self._fd, self._size = fd, os.fstat(fd).st_size
        if self._failed_at is not None:
            log.info("tenant %s: writing its log file %s again", self.tenant, path,
                     extra={"tenant": self.tenant})
        self._failed_at = None

    def _rotate(self) -> None:
        """``.log`` -> ``.log.1`` -> ... -> ``.log.<backups>``; the oldest one is overwritten."""
        self._close_fd()
        path = self.path
        try:
            if self._backups == 0:
                os.unlink(path)
            for n in range(self._backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{path}.{n}", f"{path}.{n + 1}")
            if self._backups > 0:
                os.rename(path, f"{path}.1")
        except OSError as exc:
            # Writing on past the limit would break the bound on disk use: drop the file.
            self._give_up("cannot rotate", exc)
            return
        self.rotations += 1
        self._open()

    def _give_up(self, action: str, exc: OSError) -> None:
        self._close_fd()
        if self._failed_at is None:
            log.warning(
                "tenant %s: %s its log file %s (%s); keeping its output in memory and on "
                "stderr, retrying every %gs; fix the directory, then send SIGUSR1 or run "
                "janus-supervisorctl reopen-logs", self.tenant, action, self.path,
                exc.strerror or exc, RETRY_S, extra={"tenant": self.tenant})
        self._failed_at = time.monotonic()

    def _retry_due(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at >= RETRY_S

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- operator actions ------------------------------------------------------------------

    def reopen(self) -> None:
        """Close the file and open its path again (after logrotate moved it away)."""
        self._close_fd()
        self._open()

    def configure(self, log_dir: Path, *, max_bytes: int, backups: int) -> None:
        """Take new log settings from a reload; a new directory means a new file."""
        moved = log_dir != self._log_dir
        self._log_dir, self._max_bytes, self._backups = log_dir, max_bytes, backups
        if moved:
            self.reopen()

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines kept in memory (at most ``RING_LINES``)."""
        return list(self.ring)[-lines:] if lines > 0 else []

    @contextlib.contextmanager
    def follow(self, backlog_lines: int) -> Iterator[LogFollower]:
        """A follower that first yields the last ``backlog_lines`` lines, then every new one."""
        follower = LogFollower(self.tail(backlog_lines))
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._followers.discard(follower)

    def close(self) -> None:
        """Close the file and end every follower."""
        for follower in list(self._followers):
            follower.close()
        self._close_fd()
