"""Network namespaces: a child made isolated by its preexec, and the daemon reaching into it."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from supervisor.backend import NETNS_PORT, NetnsBackend
from supervisor.netns import Namespace, netns_inode, unshare_problem
from supervisor.privileges import (
    Launch,
    build_environment,
    current_identity,
    resolve_identity,
)
from supervisor.spawn import ServerProcess, spawn_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SYSTEM_PYTHON = "/usr/bin/python3"

# Listens where an isolated ollama serve would, reports whether lo is up, answers each client.
LISTENER = r"""
import socket, sys
lo_up = open("/sys/class/net/lo/operstate").read().strip() != "down"
links = sorted(open("/proc/net/dev").read().split("\n")[2:])
s = socket.socket()
s.bind(("127.0.0.1", 11434))
s.listen()
print("ready", int(lo_up), len([l for l in links if l.strip()]), flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the namespace\n")
    c.close()
"""


async def start_listener(tmp_path: Path, lines: list[str], user: str | None = None,
                         new_netns: bool = True) -> ServerProcess:
    identity = current_identity() if user is None else resolve_identity(user)
    server = await spawn_server(
        Path(SYSTEM_PYTHON), ["-c", LISTENER],
        env=build_environment(identity, tmp_path, {}),
        cwd=Path("/"),
        launch=Launch(identity, nofile=1024, new_netns=new_netns),
        sink=lines.append,
    )
    with anyio.fail_after(10):
        while not any(line.startswith("ready") for line in lines):
            assert server.running, lines
            await anyio.sleep(0.01)
    return server


@pytest.fixture
async def isolated(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, list[str]]]:
    lines: list[str] = []
    server = await start_listener(tmp_path, lines)
    yield server, lines
    await server.stop(2)


async def read_all(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    async with stream:
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


async def test_child_gets_its_own_namespace_with_only_loopback_up(
    isolated: tuple[ServerProcess, list[str]],
) -> None:
    server, lines = isolated

    _, lo_up, interfaces = lines[0].split()

    assert netns_inode(server.pid) != netns_inode()
    assert (lo_up, interfaces) == ("1", "1")


async def test_listener_in_the_namespace_is_not_reachable_from_the_host(
    isolated: tuple[ServerProcess, list[str]],
) -> None:
    reply = b""
    with socket.socket() as probe:
        probe.settimeout(2)
        if probe.connect_ex(("127.0.0.1", NETNS_PORT)) == 0:  # someone else's 11434, maybe
            try:
                reply = probe.recv(100)
            except TimeoutError:
                pass

    assert b"hello from the namespace" not in reply


async def test_backend_connects_into_the_namespace(
    isolated: tuple[ServerProcess, list[str]],
) -> None:
    server, _ = isolated
    backend = NetnsBackend("dev")

    backend.attach(server.pid)
    with anyio.fail_after(5):
        reply = await read_all(await backend.connect())

    assert reply == b"hello from the namespace\n"
    assert backend.address == f"netns:{server.pid} 127.0.0.1:11434"
    backend.close()


async def test_two_isolated_servers_both_bind_11434(tmp_path: Path) -> None:
    first_lines: list[str] = []
    second_lines: list[str] = []
    first = await start_listener(tmp_path, first_lines)
    second = await start_listener(tmp_path, second_lines)
    try:
        assert netns_inode(first.pid) != netns_inode(second.pid)
        assert first.running and second.running
    finally:
        await first.stop(2)
        await second.stop(2)


async def test_isolated_server_can_run_as_an_unprivileged_user(tmp_path: Path) -> None:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    lines: list[str] = []
    server = await start_listener(tmp_path, lines, user="nobody")
    backend = NetnsBackend("dev")
    try:
        backend.attach(server.pid)
        with anyio.fail_after(5):
            reply = await read_all(await backend.connect())
        uid = int(Path(f"/proc/{server.pid}/status").read_text().split("Uid:")[1].split()[0])
    finally:
        backend.close()
        await server.stop(2)

    assert reply == b"hello from the namespace\n"
    assert uid == pwd.getpwnam("nobody").pw_uid


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_attach_releases_the_previous_namespace(tmp_path: Path) -> None:
    lines_a: list[str] = []
    lines_b: list[str] = []
    first = await start_listener(tmp_path, lines_a)
    second = await start_listener(tmp_path, lines_b)
    backend = NetnsBackend("dev")
    try:
        backend.attach(first.pid)
        held = open_fds()
        backend.attach(second.pid)
        after = open_fds()
        backend.close()
        closed = open_fds()
    finally:
        await first.stop(2)
        await second.stop(2)

    assert len(after) == len(held)  # one namespace descriptor at a time
    assert len(closed) == len(held) - 1


async def test_connect_after_the_server_is_gone_is_refused(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start_listener(tmp_path, lines)
    backend = NetnsBackend("dev")
    backend.attach(server.pid)

    await server.stop(2)

    # The namespace lives on while the backend holds it, but nothing listens there now.
    with anyio.fail_after(5), pytest.raises(ConnectionRefusedError):
        await backend.connect()
    backend.close()


async def test_connect_without_a_server_names_the_tenant() -> None:
    backend = NetnsBackend("dev")

    with pytest.raises(OSError, match="tenant dev: no server attached"):
        await backend.connect()


def test_a_process_in_the_daemons_own_namespace_is_refused() -> None:
    with pytest.raises(PermissionError, match="shares the daemon's network namespace"):
        Namespace.of_process(os.getpid())


async def test_attach_to_a_process_sharing_our_namespace_fails_closed(tmp_path: Path) -> None:
    lines: list[str] = []
    server = await start_listener(tmp_path, lines, new_netns=False)
    backend = NetnsBackend("dev")
    try:
        backend.attach(server.pid)
        with pytest.raises(OSError, match="cannot open the network namespace of server pid"):
            await backend.connect()
    finally:
        await server.stop(2)


async def test_namespace_socket_returns_the_thread_to_the_host_namespace(
    isolated: tuple[ServerProcess, list[str]],
) -> None:
    server, _ = isolated
    before = netns_inode("thread-self")
    ns = Namespace.of_process(server.pid)

    ns.socket().close()
    after = netns_inode("thread-self")
    ns.close()

    assert after == before
    with pytest.raises(OSError, match="is closed"):
        ns.socket()


def test_namespace_probe_leaves_the_calling_thread_where_it_was() -> None:
    before = netns_inode("thread-self")

    problem = unshare_problem()

    assert problem is None
    assert netns_inode("thread-self") == before
