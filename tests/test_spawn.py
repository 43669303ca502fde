"""Spawning and stopping real process trees (shell scripts stand in for the server)."""

from __future__ import annotations

import marshal
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from supervisor.errors import SpawnError
from supervisor.launch import SPEC_VAR
from supervisor.privileges import (
    Launch,
    build_environment,
    current_identity,
    resolve_identity,
)
from supervisor.spawn import LAUNCHER, group_members, spawn_server

# The leader exits at once on SIGTERM; its child ignores SIGTERM (case C4).
LEADER_QUITS_CHILD_STAYS = """
trap 'exit 0' TERM
sh -c 'trap "" TERM; echo child-ready; while :; do sleep 0.05; done' &
echo leader-ready
while :; do sleep 0.05; done
"""


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def start(  # type: ignore[no-untyped-def]
    script: str, tmp_path: Path, lines: list[str], identity=None
):
    identity = identity or current_identity()
    return await spawn_server(
        Path("/bin/sh"), ["-c", script],
        env=build_environment(identity, tmp_path, {}),
        cwd=tmp_path,
        launch=Launch(identity, nofile=4096),
        sink=lines.append,
    )


async def wait_lines(lines: list[str], wanted: set[str]) -> None:
    with anyio.fail_after(10):
        while not wanted <= set(lines):
            await anyio.sleep(0.01)


async def test_stop_waits_for_whole_group_and_kills_after_timeout(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start(LEADER_QUITS_CHILD_STAYS, tmp_path, lines)
    await wait_lines(lines, {"leader-ready", "child-ready"})

    began = time.monotonic()
    result = await server.stop(timeout_s=0.5)
    took = time.monotonic() - began

    assert result.killed
    assert result.exit.code == 0
    assert group_members(server.pgid) == []
    assert took >= 0.5


async def test_polite_server_stops_without_kill(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start("trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done",
                         tmp_path, lines)
    await wait_lines(lines, {"up"})

    result = await server.stop(timeout_s=5)

    assert not result.killed
    assert result.exit.code == 0


async def test_exit_code_and_signal_are_reported(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start("exit 7", tmp_path, lines)

    with anyio.fail_after(10):
        info = await server.wait()
    await server.stop(timeout_s=1)

    assert info.code == 7 and info.signal is None
    assert info.describe() == "exit code 7"


async def test_missing_binary_is_a_spawn_error(tmp_path: Path) -> None:
    identity = current_identity()

    with pytest.raises(SpawnError, match="could not start /nonexistent/ollama"):
        await spawn_server(Path("/nonexistent/ollama"), ["serve"], env={}, cwd=tmp_path,
                           launch=Launch(identity, nofile=1024), sink=print)


async def test_child_is_hardened(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start("echo up; exec sleep 30", tmp_path, lines)
    await wait_lines(lines, {"up"})

    status = proc_status(server.pid)
    limits = Path(f"/proc/{server.pid}/limits").read_text()
    await server.stop(timeout_s=2)

    assert status["NoNewPrivs"] == "1"
    assert status["Umask"] == "0077"
    assert any(line.startswith("Max open files") and "4096" in line
               for line in limits.splitlines())
    assert os.getsid(0) != server.pid  # the server got a session of its own


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uid")
async def test_root_drops_to_tenant_identity(tmp_path: Path) -> None:
    identity = resolve_identity("nobody")
    os.chmod(tmp_path, 0o755)
    lines: list[str] = []
    server = await start("echo up; exec sleep 30", tmp_path, lines, identity=identity)
    await wait_lines(lines, {"up"})

    status = proc_status(server.pid)
    await server.stop(timeout_s=2)

    nobody = pwd.getpwnam("nobody")
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert set(status["Groups"].split()) <= {str(g) for g in identity.groups}


async def test_exit_is_seen_while_a_grandchild_holds_the_output_pipe(tmp_path: Path) -> None:
    """A runner that outlives its server keeps the pipe open; the exit must still be seen."""
    lines: list[str] = []
    server = await start("sleep 30 & echo up; exit 3", tmp_path, lines)

    with anyio.fail_after(2):
        info = await server.wait()
    result = await server.stop(timeout_s=0.2)

    assert info.code == 3
    assert result.killed  # the grandchild in the group had to be killed
    assert group_members(server.pgid) == []


# Lists the descriptors above the standard streams that the exec'd program holds.
LIST_FDS = """
import os
for fd in range(3, 1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    print(fd)
"""


def test_launcher_closes_what_its_spawner_left_open(tmp_path: Path) -> None:
    """An event loop may leave a descriptor inheritable (uvloop's /dev/null for stdin); the
    launcher closes everything above the standard streams before the server's exec."""
    leaked = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    report_r, report_w = os.pipe()
    spec = Launch(current_identity(), nofile=1024).spec(
        [sys.executable, "-S", "-I", "-c", LIST_FDS], {}, [], report_w
    )
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-I", str(LAUNCHER)],
            env={SPEC_VAR: marshal.dumps(spec).hex()},
            pass_fds=(leaked, report_w),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        os.close(report_w)
        report = os.read(report_r, 4096)
    finally:
        os.close(leaked)
        os.close(report_r)

    assert (done.returncode, report, done.stderr) == (0, b"", "")
    assert done.stdout.split() == []
