"""Start, stop and reap one tenant's ``ollama serve`` process and everything it started.

The server runs in a session of its own, so its process group holds the server and its model
runners (Ollama starts runners without ``Setpgid`` or a death signal). Stopping is SIGTERM to
the server, a bounded wait, then SIGKILL to the whole group; a stop returns only when no live
member of the group is left.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from supervisor import launch as launcher_module
from supervisor.errors import SpawnError
from supervisor.launch import CHECK_FAILED, SPEC_VAR
from supervisor.leftovers import SERVER_PIDS, ProcessTracker, reap_orphans
from supervisor.preflight import AccessCheck, PreflightError
from supervisor.privileges import Launch
from supervisor.status import ExitInfo

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]

_GROUP_POLL_S = 0.01
_MAX_LINE = 1 << 20
LAUNCHER = Path(launcher_module.__file__)
# Launching includes the access checks, which a hung network filesystem can stall.
REPORT_TIMEOUT_S = 10.0


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


def _group_exists(pgid: int) -> bool:
    """Cheap first check: any process (zombies included) in group ``pgid``?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


class _ServerProtocol(asyncio.SubprocessProtocol):
    """Splits the server's output into lines and notes its exit the moment it happens.

    ``Process.wait()`` of asyncio's high-level API also waits until the output pipe closes,
    and a model runner that outlives its server keeps that pipe open, so the exit would be
    seen late. ``process_exited`` fires on the exit itself.
    """

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._partial = b""
        self.exited = anyio.Event()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._sink(line.decode("utf-8", "replace"))
        if len(self._partial) > _MAX_LINE:
            self._sink(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._partial:
            self._sink(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def process_exited(self) -> None:
        self.exited.set()


class ServerProcess:
    """A running server: its pid, its process group, and its captured output."""

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _ServerProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.pid = transport.get_pid()
        self.pgid = self.pid  # start_new_session makes the server its group's leader
        self.started_at = time.time()
        self.exit: ExitInfo | None = None
        self.tracker: ProcessTracker | None = None
        SERVER_PIDS.add(self.pid)

    def _note_exit(self) -> None:
        if self.exit is None:
            returncode = self._transport.get_returncode()
            assert returncode is not None
            SERVER_PIDS.discard(self.pid)
            self.exit = _exit_info(returncode)

    async def wait(self) -> ExitInfo:
        """Wait for the server process itself to end."""
        await self._protocol.exited.wait()
        self._note_exit()
        assert self.exit is not None
        return self.exit

    @property
    def running(self) -> bool:
        if self.exit is None and self._protocol.exited.is_set():
            self._note_exit()
        return self.exit is None

    def signal(self, signum: int) -> None:
        if self.exit is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _leftovers(self) -> bool:
        """True while anything of this instance lives: group members or tracked processes."""
        if _group_exists(self.pgid) and group_members(self.pgid):
            return True
        return bool(self.tracker and self.tracker.survivors())

    async def discard(self) -> None:
        """Kill and reap a process that never became the server (a failed launch)."""
        self.kill_all()
        await self.wait()
        self._transport.close()

    def kill_all(self) -> None:
        """SIGKILL the process group and every tracked process that left it."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.tracker is not None:
            self.tracker.kill_survivors()

    async def stop(self, timeout_s: float) -> StopResult:
        """SIGTERM the server, wait ``timeout_s``, then SIGKILL everything started for it.

        Returns once the server has been reaped and no live process of this instance remains:
        neither in its process group nor among the tracked descendants that left the group.
        """
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(timeout_s):
            await self.wait()
            while self._leftovers():
                await anyio.sleep(_GROUP_POLL_S)
        killed = self.running or self._leftovers()
        if killed:
            self.kill_all()
        exit_info = await self.wait()
        if killed:
            exit_info = exit_info.model_copy(update={"killed_after_timeout": True})
        while self._leftovers():
            self.kill_all()
            await anyio.sleep(_GROUP_POLL_S)
        reap_orphans()
        if self.tracker is not None:
            self.tracker.forget()
        self._transport.close()
        return StopResult(exit_info, killed)


def watch_children_with_pidfd() -> None:
    """On Python 3.11, wait for servers with pidfds instead of one blocked thread per server.

    (3.12 and later pick the pidfd watcher themselves.) Call from inside the running loop.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel without pidfd: keep the default threaded watcher
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def spawn_server(
    binary: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    launch: Launch,
    sink: LineSink,
    access: AccessCheck | None = None,
) -> ServerProcess:
    """Start ``binary args`` in a new session as ``launch`` says; output goes to ``sink``.

    The new process is ``supervisor.launch`` (a vfork, no Python run in the daemon's copy):
    it takes the ``launch`` steps, answers ``access`` as the tenant's user and execs the
    server with exactly ``env``. Returns once the server runs. Raises ``PreflightError`` when
    an access check fails (no server was started), ``SpawnError`` when a step or the exec
    fails.
    """
    checks = access.checks if access is not None else []
    read_fd, write_fd = os.pipe()
    spec = launch.spec([str(binary), *args], env, [(c.kind, str(c.path)) for c in checks], write_fd)
    try:
        server = await _start_launcher(spec, cwd, sink, write_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(read_fd)
        raise SpawnError(f"could not start {binary}: {exc}") from exc
    finally:
        os.close(write_fd)
    report = None
    with anyio.move_on_after(REPORT_TIMEOUT_S):
        report = await _read_report(read_fd)
    if report == b"":
        return server
    await server.discard()
    if report is None and access is not None:
        raise PreflightError(access.timeout_problem(REPORT_TIMEOUT_S))
    if report is None:
        raise SpawnError(
            f"could not start {binary}: no word from {LAUNCHER.name} within {REPORT_TIMEOUT_S:g}s"
        )
    if report.startswith(CHECK_FAILED) and access is not None:
        answers = [digit == ord("1") for digit in report[1:]]
        raise PreflightError(access.problem(answers) or "an access check failed")
    raise SpawnError(f"could not start {binary}: {report[1:].decode(errors='replace')}")


async def _start_launcher(
    spec: dict[str, Any], cwd: Path, sink: LineSink, report_fd: int
) -> ServerProcess:
    loop = asyncio.get_running_loop()
    # No preexec_fn, user or groups: subprocess can vfork, and the daemon waits only for the
    # exec of the launcher, not for a copy of itself to run Python.
    transport, protocol = await loop.subprocess_exec(
        lambda: _ServerProtocol(sink),
        sys.executable,
        "-S",
        "-I",
        str(LAUNCHER),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={SPEC_VAR: marshal.dumps(spec).hex()},
        cwd=str(cwd),
        start_new_session=True,
        close_fds=True,
        pass_fds=(report_fd,),
    )
    return ServerProcess(transport, protocol)


async def _read_report(fd: int) -> bytes:
    """Everything the launcher writes to the report pipe, until it closes (then ``fd`` too)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    try:
        while True:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _settle, readable)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            data = os.read(fd, 4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    finally:
        os.close(fd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
