"""Start, stop and reap one tenant's ``ollama serve`` process and everything it started.

The server runs in a session of its own, so its process group holds the server and its model
runners (Ollama starts runners without ``Setpgid`` or a death signal). Stopping is SIGTERM to
the server, a bounded wait, then SIGKILL to the whole group; a stop returns only when no live
member of the group is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from supervisor.errors import SpawnError
from supervisor.status import ExitInfo

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]

_GROUP_POLL_S = 0.01


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _exit_info(returncode: int) -> ExitInfo:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ExitInfo(signal=name, at=time.time())
    return ExitInfo(code=returncode, at=time.time())


@dataclass
class StopResult:
    """How a stop went: the server's exit and whether SIGKILL was needed."""

    exit: ExitInfo
    killed: bool


class ServerProcess:
    """A running server: its pid, its process group, and its captured output."""

    def __init__(self, proc: asyncio.subprocess.Process, sink: LineSink) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.pgid = proc.pid  # start_new_session makes the server its group's leader
        self.started_at = time.time()
        self.exit: ExitInfo | None = None
        self._sink = sink
        self._exited = anyio.Event()
        self._reader: asyncio.Task[None] | None = None

    def start_background(self) -> None:
        """Begin copying output lines to the sink and watching for exit."""
        self._reader = asyncio.ensure_future(self._copy_output())
        asyncio.ensure_future(self._watch_exit())

    async def _copy_output(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line = await stream.read(65536)
            if not line:
                return
            self._sink(line.decode("utf-8", "replace").rstrip("\n"))

    async def _watch_exit(self) -> None:
        returncode = await self._proc.wait()
        self.exit = _exit_info(returncode)
        self._exited.set()

    @property
    def running(self) -> bool:
        return self.exit is None

    async def wait(self) -> ExitInfo:
        """Wait for the server process itself to end."""
        await self._exited.wait()
        assert self.exit is not None
        return self.exit

    def signal(self, signum: int) -> None:
        if self.exit is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def stop(self, timeout_s: float) -> StopResult:
        """SIGTERM the server, wait ``timeout_s``, then SIGKILL its whole process group.

        Returns once the server has been reaped and no live member of its group remains.
        """
        killed = False
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(timeout_s):
            await self.wait()
            while group_members(self.pgid):
                await anyio.sleep(_GROUP_POLL_S)
        if self.running or group_members(self.pgid):
            killed = True
            self.kill_group()
        exit_info = await self.wait()
        await self.wait_group_empty()
        if self._reader is not None:
            self._reader.cancel()
        return StopResult(exit_info, killed)

    async def wait_group_empty(self) -> None:
        """Kill and wait until no live process is left in the server's group."""
        while group_members(self.pgid):
            self.kill_group()
            await anyio.sleep(_GROUP_POLL_S)


async def spawn_server(
    binary: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    preexec: Callable[[], None],
    sink: LineSink,
) -> ServerProcess:
    """Start ``binary args`` in a new session with ``env`` and ``preexec``; output goes to ``sink``.

    Raises ``SpawnError`` when the exec fails (missing binary, permission, preexec error).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,
            limit=1 << 20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SpawnError(f"could not start {binary}: {exc}") from exc
    server = ServerProcess(proc, sink)
    server.start_background()
    return server

