"""Tests of supervisor.control.server: real aiohttp server, real unix socket, real clients.

The permission tests run their client as real users (created for the session) through the
system Python, which every user may execute; they are skipped unless the tests run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor.config import ControlConfig
from supervisor.control import ControlServer, open_control_socket
from supervisor.errors import ConfigError, ConfigProblem, ControlError, SpawnError
from supervisor.logs import RING_LINES, LogFollower
from supervisor.reload import Action, ReloadPlan, TenantChange
from supervisor.sockets import bind_unix_socket
from supervisor.status import DaemonStatus, TenantState, TenantStatus

LOGGER = "supervisor.control.server"
SYSTEM_PYTHON = "/usr/bin/python3"
IS_ROOT = os.geteuid() == 0


def tenant(name: str, state: TenantState = TenantState.READY) -> TenantStatus:
    return TenantStatus(
        name=name,
        state=state,
        ready=state is TenantState.READY,
        pid=1000 + len(name),
        user=f"janus_{name}",
        socket=f"/run/janus-supervisor/{name}.sock",
        since=0.0,
    )


class FakeAPI:
    """In-memory SupervisorAPI that records every call."""

    def __init__(self, *tenants: TenantStatus, uids: dict[str, int] | None = None) -> None:
        self.tenants = {t.name: t for t in tenants}
        self.uids = uids or {}
        self.calls: list[tuple[Any, ...]] = []
        self.action_error: Exception | None = None
        self.waiting = asyncio.Event()
        self._became_ready = {name: asyncio.Event() for name in self.tenants}
        self.log_lines = [f"2026-01-01T00:00:0{n} line {n}" for n in range(5)]
        self.followers: set[LogFollower] = set()
        self.reload_error: Exception | None = None

    def daemon_status(self) -> DaemonStatus:
        return DaemonStatus(version="9.9.9", pid=4242, tenants=list(self.tenants.values()))

    def tenant_names(self) -> list[str]:
        return list(self.tenants)

    def tenant_status(self, name: str) -> TenantStatus:
        return self.tenants[name]

    def tenant_uid(self, name: str) -> int | None:
        return self.uids.get(name)

    def set_state(self, name: str, state: TenantState) -> None:
        update = {"state": state, "ready": state is TenantState.READY}
        self.tenants[name] = self.tenants[name].model_copy(update=update)
        if state is TenantState.READY:
            self._became_ready[name].set()

    async def _act(self, verb: str, name: str, state: TenantState) -> TenantStatus:
        self.calls.append((verb, name))
        if self.action_error is not None:
            raise self.action_error
        self.set_state(name, state)
        return self.tenants[name]

    async def start_tenant(self, name: str) -> TenantStatus:
        return await self._act("start", name, TenantState.STARTING)

    async def stop_tenant(self, name: str) -> TenantStatus:
        return await self._act("stop", name, TenantState.STOPPED)

    async def restart_tenant(self, name: str) -> TenantStatus:
        return await self._act("restart", name, TenantState.STARTING)

    async def rebuild_tenant(self, name: str, variant: str | None) -> TenantStatus:
        self.calls.append(("rebuild", name, variant))
        if self.action_error is not None:
            raise self.action_error
        if variant not in (None, f"{name}-v"):
            raise LookupError(f"tenant {name} has no variant {variant!r}")
        return self.tenants[name]

    async def reload(self, dry_run: bool) -> ReloadPlan:
        self.calls.append(("reload", dry_run))
        if self.reload_error is not None:
            raise self.reload_error
        change = TenantChange(tenant="dev", action=Action.APPLY, reasons=["probe_period_s 2"])
        return ReloadPlan(source="janus.yaml", dry_run=dry_run, changes=[change])

    def tenant_logs(self, name: str, lines: int) -> list[str]:
        self.calls.append(("logs", name, lines))
        self.tenants[name]  # KeyError for an unknown tenant, as the daemon
        return self.log_lines[-lines:] if lines else []

    @contextlib.contextmanager
    def follow_logs(self, name: str, lines: int) -> Iterator[LogFollower]:
        self.tenants[name]  # KeyError for an unknown tenant, as the daemon
        follower = LogFollower(self.log_lines[-lines:] if lines else [])
        self.followers.add(follower)
        try:
            yield follower
        finally:
            self.followers.discard(follower)

    def reopen_logs(self) -> list[str]:
        self.calls.append(("reopen",))
        return [f"/var/log/janus-supervisor/{name}.log" for name in self.tenants]

    async def wait_ready(self, name: str, timeout_s: float) -> TenantStatus:
        self.calls.append(("wait_ready", name, timeout_s))
        self.waiting.set()
        if not self.tenants[name].ready:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._became_ready[name].wait()
        return self.tenants[name]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


Serve = Callable[..., Awaitable[ControlServer]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start a ControlServer on ``<directory>/control.sock``; closed after the test."""
    servers: list[ControlServer] = []

    async def start(
        api: FakeAPI,
        *,
        directory: Path = tmp_path,
        mode: int = 0o600,
        request_timeout_s: float = 2.0,
        **groups: str,
    ) -> ControlServer:
        path = directory / "control.sock"
        bound = bind_unix_socket(path, mode=mode, uid=os.geteuid(), gid=os.getegid())
        control = ControlConfig(socket=path, mode=mode, **groups)
        server = ControlServer(api, control, bound, request_timeout_s=request_timeout_s)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI(tenant("dev"), tenant("qa", TenantState.STARTING))


async def request(server: ControlServer, method: str, target: str) -> Reply:
    """One request through aiohttp's own client over the unix socket."""
    connector = aiohttp.UnixConnector(path=server.path)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, f"http://localhost{target}") as response,
    ):
        return Reply(response.status, dict(response.headers), await response.json())


async def raw_request(server: ControlServer, head: str, body: bytes = b"") -> Reply:
    """Send bytes exactly as given (no client-side path normalisation) and parse the reply."""
    reader, writer = await asyncio.open_unix_connection(server.path)
    writer.write(head.encode() + b"\r\n\r\n" + body)
    data = await reader.read()
    writer.close()
    return parse_reply(data)


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Reply(int(lines[0].split()[1]), headers, json.loads(body) if body else None)


# -- routes ----------------------------------------------------------------------------------


async def test_status_lists_every_tenant(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "GET", "/v1/status")

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert [t["name"] for t in reply.body["tenants"]] == ["dev", "qa"]
    assert reply.body["version"] == "9.9.9"


async def test_tenant_route_returns_its_status(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "GET", "/v1/tenants/qa")

    assert reply.status == 200
    assert (reply.body["name"], reply.body["state"], reply.body["ready"]) == (
        "qa",
        "starting",
        False,
    )


async def test_unknown_tenant_is_404_naming_it(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "GET", "/v1/tenants/prod")

    assert reply.status == 404
    assert reply.body == {"error": "no tenant named 'prod' (configured: dev, qa)"}


@pytest.mark.parametrize(
    "target",
    ["/", "/v1", "/v1/status/", "/v1/tenants", "/v1/reloads", "/metric", "/v1/tenants/dev/x"],
)
async def test_unknown_route_is_404_json(serve: Serve, api: FakeAPI, target: str) -> None:
    server = await serve(api)

    reply = await request(server, "GET", target)

    assert reply.status == 404
    assert reply.body["error"].startswith(f"no route {target}; routes: GET /v1/status")


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("POST", "/v1/status", "GET"),
        ("HEAD", "/v1/status", "GET"),
        ("DELETE", "/v1/tenants/dev", "GET"),
        ("GET", "/v1/tenants/dev/restart", "POST"),
        ("PUT", "/v1/tenants/dev/stop", "POST"),
        ("GET", "/v1/reload", "POST"),
        ("POST", "/metrics", "GET"),
        ("POST", "/v1/tenants/dev/logs", "GET"),
    ],
)
async def test_wrong_method_is_405_json(
    serve: Serve, api: FakeAPI, method: str, target: str, allowed: str
) -> None:
    server = await serve(api)

    reply = await raw_request(server, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close")

    assert reply.status == 405
    assert reply.headers["Allow"] == allowed
    if method != "HEAD":  # HEAD answers carry no body
        assert reply.body["error"] == f"method {method} not allowed on {target}; use {allowed}"
    assert api.calls == []


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "%2e%2e",
        ".",
        "dev.bak",
        "..%2f..%2fetc",
        "%2Fetc%2Fpasswd",
        "Dev",
        "dev%0aWARNING:forged",
        "dev%00",
        "1dev",
        "d" * 33,
        "x" * 5000,
    ],
)
@pytest.mark.parametrize("suffix", ["", "/ready", "/restart"])
async def test_name_tricks_never_reach_the_api(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture, name: str, suffix: str
) -> None:
    server = await serve(api)
    method = "POST" if suffix == "/restart" else "GET"

    head = f"{method} /v1/tenants/{name}{suffix} HTTP/1.1\r\nHost: x\r\nConnection: close"
    reply = await raw_request(server, head + "\r\nContent-Length: 0")

    assert reply.status in (400, 404)
    assert isinstance(reply.body["error"], str) and len(reply.body["error"]) < 400
    assert api.calls == []
    assert [len(m.splitlines()) for m in refusals(caplog)] == [1]  # logged, on one line


async def test_ready_is_200_when_ready_and_503_otherwise(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    ready = await request(server, "GET", "/v1/tenants/dev/ready")
    starting = await request(server, "GET", "/v1/tenants/qa/ready")

    assert (ready.status, ready.body["name"]) == (200, "dev")
    assert (starting.status, starting.body["state"]) == (503, "starting")


async def test_ready_wait_answers_once_the_tenant_is_ready(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    async with asyncio.timeout(5):
        pending = asyncio.create_task(request(server, "GET", "/v1/tenants/qa/ready?wait=30"))
        await api.waiting.wait()
        api.set_state("qa", TenantState.READY)
        reply = await pending

    assert (reply.status, reply.body["ready"]) == (200, True)


async def test_ready_wait_ends_with_503_at_its_timeout(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    async with asyncio.timeout(5):
        reply = await request(server, "GET", "/v1/tenants/qa/ready?wait=0.2")

    assert reply.status == 503
    assert api.calls == [("wait_ready", "qa", 0.2)]


async def test_ready_wait_is_capped_at_300_s(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    await request(server, "GET", "/v1/tenants/dev/ready?wait=1e9")

    assert api.calls == [("wait_ready", "dev", 300.0)]


@pytest.mark.parametrize("wait", ["abc", "-1", "nan", "inf"])
async def test_invalid_wait_is_400(serve: Serve, api: FakeAPI, wait: str) -> None:
    server = await serve(api)

    reply = await request(server, "GET", f"/v1/tenants/dev/ready?wait={wait}")

    assert reply.status == 400
    assert "expected seconds" in reply.body["error"]


@pytest.mark.parametrize(
    ("verb", "state"), [("start", "starting"), ("stop", "stopped"), ("restart", "starting")]
)
async def test_actions_run_and_are_logged_with_the_uid(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture, verb: str, state: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await serve(api)

    reply = await request(server, "POST", f"/v1/tenants/dev/{verb}")

    assert (reply.status, reply.body["state"]) == (200, state)
    assert api.calls == [(verb, "dev")]
    [record] = [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.INFO and "requested" in r.getMessage()
    ]
    assert record.getMessage().startswith(f"tenant dev: {verb} requested by uid {os.geteuid()}")


async def test_action_refused_by_the_daemon_is_409_with_its_message(
    serve: Serve, api: FakeAPI
) -> None:
    api.action_error = SpawnError("tenant dev: preflight failed; fix /var/lib/ollama_dev")
    server = await serve(api)

    reply = await request(server, "POST", "/v1/tenants/dev/start")

    assert reply.status == 409
    assert reply.body == {"error": "tenant dev: preflight failed; fix /var/lib/ollama_dev"}


async def test_api_bug_is_500_and_logged(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api.action_error = RuntimeError("boom")
    server = await serve(api)

    reply = await request(server, "POST", "/v1/tenants/dev/stop")

    assert reply.status == 500
    assert "see its log" in reply.body["error"]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


async def test_close_removes_the_socket(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    await server.close()

    assert not os.path.lexists(server.path)


async def test_missing_groups_are_warned_about_at_start(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    await serve(api, admin_group="jtest-no-such-group")

    assert "control.admin_group: no group named 'jtest-no-such-group'" in refusals(caplog)[0]


def test_control_socket_with_unknown_group_is_refused(tmp_path: Path) -> None:
    control = ControlConfig(socket=tmp_path / "control.sock", group="jtest-no-such-group")

    with pytest.raises(ControlError, match="control.group: no group named 'jtest-no-such-group'"):
        open_control_socket(control)

    assert not (tmp_path / "control.sock").exists()


def test_control_socket_gets_mode_and_group_from_config(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    control = ControlConfig(socket=tmp_path / "control.sock", mode=0o640, group=group)

    bound = open_control_socket(control)

    st = os.lstat(bound.path)
    assert (st.st_gid, st.st_mode & 0o777) == (os.getegid(), 0o640)
    bound.close()


# -- hostile clients (case C5) ---------------------------------------------------------------


class RawClient:
    """A client on a plain non-blocking socket that keeps what it read when its writes fail.

    (asyncio streams drop buffered data once a write hits a closed connection.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, server: ControlServer) -> RawClient:
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, server.path)
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)
        self.sent += len(data)

    async def read_all(self) -> bytes:
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := await self._loop.sock_recv(self.sock, 65536):
                data += chunk
        return data

    async def read_while(self, sender: Awaitable[None]) -> bytes:
        """Read until the server closes, while ``sender`` writes; stop it then."""

        async def quietly() -> None:
            with contextlib.suppress(OSError):
                await sender

        sending = asyncio.create_task(quietly())
        try:
            return await self.read_all()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            self.sock.close()


async def flood(server: ControlServer, head: str, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk`` repeatedly up to ``total`` bytes; return reply and bytes sent.

    Stops sending as soon as the server answers or drops the connection.
    """
    client = await RawClient.connect(server)
    await client.send(head.encode() + b"\r\n\r\n")

    async def pump() -> None:
        while client.sent < total:
            await client.send(chunk)

    data = await client.read_while(pump())
    return data, client.sent


async def test_huge_body_is_cut_off_while_others_are_served(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(api)
    head = "POST /v1/tenants/dev/restart HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600"

    async with asyncio.timeout(5):
        flooding = asyncio.create_task(flood(server, head, b"x" * 65536, 100 * 2**20))
        other = await request(server, "GET", "/v1/tenants/dev")
        data, sent = await flooding

    assert other.status == 200
    assert parse_reply(data).status == 413
    assert sent < 16 * 2**20  # what socket buffers held, not the 100 MiB
    assert api.calls == []
    assert f"from uid {os.geteuid()} (pid {os.getpid()}) with 413" in refusals(caplog)[0]


async def test_endless_chunked_body_is_cut_off_at_64_kib(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    head = "POST /v1/tenants/dev/restart HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"

    async with asyncio.timeout(5):
        data, _ = await flood(server, head, chunk, 100 * 2**20)

    reply = parse_reply(data)
    assert (reply.status, reply.headers.get("Connection")) == (413, "close")
    assert api.calls == []


async def trickle(server: ControlServer, first: bytes, drip: bytes, period_s: float) -> bytes:
    """Send ``first``, then one byte of ``drip`` per period; return what the server sent back."""
    client = await RawClient.connect(server)
    await client.send(first)

    async def drip_bytes() -> None:
        for byte in drip:
            await client.send(bytes([byte]))
            await asyncio.sleep(period_s)  # the fault itself: a client that dawdles

    return await client.read_while(drip_bytes())


async def test_trickled_body_is_cut_off_while_others_are_served(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api, request_timeout_s=0.5)
    head = b"POST /v1/tenants/dev/restart HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"

    async with asyncio.timeout(5):
        trickling = asyncio.create_task(trickle(server, head, b"x" * 1000, 0.05))
        other = await request(server, "GET", "/v1/status")
        data = await trickling

    assert other.status == 200
    assert parse_reply(data).status == 408
    assert api.calls == []


async def test_trickled_headers_are_cut_off(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api, request_timeout_s=0.5)
    first = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"

    async with asyncio.timeout(5):
        trickling = asyncio.create_task(trickle(server, first, b"X-Slow: " + b"y" * 1000, 0.05))
        other = await request(server, "GET", "/v1/tenants/qa")
        data = await trickling

    assert other.status == 200
    assert data == b""  # dropped without an answer before the headers were complete


async def test_oversized_headers_are_refused_and_the_connection_closed(
    serve: Serve, api: FakeAPI
) -> None:
    server = await serve(api)
    head = "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: " + "y" * 20000

    reply = await raw_request(server, head)

    assert reply.status == 431
    assert reply.headers["Connection"] == "close"
    assert reply.body["error"].startswith("malformed HTTP request")
    assert api.calls == []



async def test_status_lines_carry_the_reason_phrase(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    lines = []
    for head in ("GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close",
                 "GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nConnection: close",
                 "BROKEN LINE"):
        reader, writer = await asyncio.open_unix_connection(server.path)
        writer.write(head.encode() + b"\r\n\r\n")
        lines.append((await reader.readline()).decode().rstrip())
        writer.close()

    assert lines == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 400 Bad Request"]

# -- rights, with real users (case C5) -------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: list[int]


@dataclass(frozen=True)
class Accounts:
    ops_group: str
    read_group: str
    tenant_user: Account  # runs tenant dev
    stranger: Account
    admin: Account  # supplementary member of ops_group
    reader: Account  # supplementary member of read_group


def _account(name: str) -> Account:
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid, os.getgrouplist(name, entry.pw_gid))


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    """Throwaway system users and groups with unique names, removed afterwards."""
    if not IS_ROOT or not shutil.which("useradd") or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root, useradd and a system python for tests with real users")
    prefix = f"jtest_{secrets.token_hex(3)}"
    groups = [f"{prefix}_ops", f"{prefix}_read"]
    users = {"dev": None, "other": None, "adm": groups[0], "rd": groups[1]}
    made_groups: list[str] = []
    made_users: list[str] = []
    try:
        for group in groups:
            subprocess.run(["groupadd", "--system", group], check=True)
            made_groups.append(group)
        for suffix, extra in users.items():
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            cmd += ["-G", extra] if extra else []
            subprocess.run([*cmd, f"{prefix}_{suffix}"], check=True)
            made_users.append(f"{prefix}_{suffix}")
        yield Accounts(
            groups[0],
            groups[1],
            *(_account(f"{prefix}_{suffix}") for suffix in users),
        )
    finally:
        for user in made_users:
            subprocess.run(["userdel", user], check=False)
        for group in made_groups:
            subprocess.run(["groupdel", group], check=False)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A socket directory other users can traverse (pytest's tmp_path is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="janus-ctl-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


CLIENT = r"""
import json, socket, sys
method, target, path = sys.argv[1:4]
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(10)
sock.connect(path)
sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
             "Connection: close\r\n\r\n".encode())
data = b""
while chunk := sock.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": json.loads(body)}))
"""


async def request_as(
    account: Account, server: ControlServer, method: str, target: str, *, gid: int | None = None
) -> Reply:
    """Send one request from a process running as ``account`` (optionally with another gid)."""
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        "-I",
        "-c",
        CLIENT,
        method,
        target,
        server.path,
        user=account.uid,
        group=account.gid if gid is None else gid,
        extra_groups=account.groups,
        cwd="/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    answer = json.loads(out)
    return Reply(answer["status"], {}, answer["body"])


@pytest.fixture
async def guarded(
    serve: Serve, accounts: Accounts, public_dir: Path
) -> tuple[ControlServer, FakeAPI]:
    """A server whose dev tenant runs as ``accounts.tenant_user``, with admin and read groups."""
    fake = FakeAPI(tenant("dev"), tenant("qa"), uids={"dev": accounts.tenant_user.uid})
    server = await serve(
        fake,
        directory=public_dir,
        mode=0o666,
        admin_group=accounts.ops_group,
        read_group=accounts.read_group,
    )
    return server, fake


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


@pytest.mark.root
@pytest.mark.parametrize(
    ("method", "target", "what"),
    [
        ("GET", "/v1/status", "read the status"),
        ("GET", "/v1/tenants/dev", "read tenant dev"),
        ("GET", "/v1/tenants/dev/ready", "read tenant dev"),
        ("POST", "/v1/tenants/dev/restart", "restart tenant dev"),
        ("GET", "/v1/tenants/nosuch", "read tenant nosuch"),
    ],
)
async def test_unrelated_user_is_refused_and_logged(
    guarded: tuple[ControlServer, FakeAPI],
    accounts: Accounts,
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    what: str,
) -> None:
    server, fake = guarded
    uid = accounts.stranger.uid

    reply = await request_as(accounts.stranger, server, method, target)

    assert reply.status == 403
    assert reply.body["error"].startswith(f"uid {uid} may not {what}: needs ")
    [logged] = refusals(caplog)
    assert f"{method} {target} from uid {uid}" in logged
    assert [c for c in fake.calls if c[0] != "wait_ready"] == []


@pytest.mark.root
async def test_restart_refusal_names_the_admin_group(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts
) -> None:
    server, _ = guarded

    reply = await request_as(accounts.stranger, server, "POST", "/v1/tenants/dev/restart")

    uid, group = accounts.stranger.uid, accounts.ops_group
    assert reply.body["error"] == (
        f"uid {uid} may not restart tenant dev: needs admin (root or group {group})"
    )


@pytest.mark.root
async def test_tenant_user_reads_only_its_own_tenant(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts
) -> None:
    server, fake = guarded
    user = accounts.tenant_user

    own = await request_as(user, server, "GET", "/v1/tenants/dev")
    other = await request_as(user, server, "GET", "/v1/tenants/qa")
    status = await request_as(user, server, "GET", "/v1/status")
    restart = await request_as(user, server, "POST", "/v1/tenants/dev/restart")

    assert (own.status, other.status, status.status, restart.status) == (200, 403, 200, 403)
    assert [t["name"] for t in status.body["tenants"]] == ["dev"]
    assert fake.calls == []


@pytest.mark.root
async def test_admin_group_member_may_restart(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server, fake = guarded

    reply = await request_as(accounts.admin, server, "POST", "/v1/tenants/qa/restart")

    assert reply.status == 200
    assert fake.calls == [("restart", "qa")]
    assert any(
        f"restart requested by uid {accounts.admin.uid}" in r.getMessage() for r in caplog.records
    )


@pytest.mark.root
async def test_connection_gid_of_the_admin_group_grants_admin(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts
) -> None:
    server, fake = guarded
    ops_gid = grp.getgrnam(accounts.ops_group).gr_gid

    reply = await request_as(accounts.stranger, server, "POST", "/v1/tenants/dev/stop", gid=ops_gid)

    assert reply.status == 200
    assert fake.calls == [("stop", "dev")]


@pytest.mark.root
async def test_read_group_member_reads_all_but_may_not_act(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts
) -> None:
    server, fake = guarded

    status = await request_as(accounts.reader, server, "GET", "/v1/status")
    stop = await request_as(accounts.reader, server, "POST", "/v1/tenants/qa/stop")

    assert [t["name"] for t in status.body["tenants"]] == ["dev", "qa"]
    assert stop.status == 403
    assert fake.calls == []


@pytest.mark.root
async def test_uid_without_passwd_entry_is_refused(
    guarded: tuple[ControlServer, FakeAPI], accounts: Accounts
) -> None:
    server, _ = guarded
    ghost = Account("ghost", 54321, 54321, [54321])

    reply = await request_as(ghost, server, "GET", "/v1/status")

    assert reply.status == 403
    assert reply.body["error"].startswith("uid 54321 may not read the status")


# -- operator routes: logs, reload, rebuild, metrics (issue 6) ------------------------------


async def open_stream(server: ControlServer, target: str) -> tuple[asyncio.StreamReader,
                                                                   asyncio.StreamWriter, str]:
    """Send a GET and read the reply head; returns the open connection and the head."""
    reader, writer = await asyncio.open_unix_connection(server.path)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head.decode()


async def next_chunk(reader: asyncio.StreamReader) -> list[Any] | None:
    """The NDJSON records of the next chunk of a chunked body; None at its last chunk."""
    async with asyncio.timeout(5):
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            return None
        data = await reader.readexactly(size + 2)
    return [json.loads(line) for line in data[:-2].decode().splitlines()]


async def test_logs_returns_the_last_lines(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "GET", "/v1/tenants/dev/logs?lines=2")

    assert reply.status == 200
    assert reply.body == {"tenant": "dev", "lines": api.log_lines[-2:]}


@pytest.mark.parametrize(
    ("query", "lines"), [("", 100), ("?lines=0", 0), ("?lines=999999", RING_LINES)]
)
async def test_logs_lines_default_and_cap(
    serve: Serve, api: FakeAPI, query: str, lines: int
) -> None:
    server = await serve(api)

    await request(server, "GET", f"/v1/tenants/dev/logs{query}")

    assert api.calls == [("logs", "dev", lines)]


@pytest.mark.parametrize("query", ["?lines=-1", "?lines=ten", "?follow=maybe"])
async def test_logs_with_a_bad_query_is_400(serve: Serve, api: FakeAPI, query: str) -> None:
    server = await serve(api)

    reply = await request(server, "GET", f"/v1/tenants/dev/logs{query}")

    assert reply.status == 400


async def test_logs_of_an_unknown_tenant_is_404(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "GET", "/v1/tenants/prod/logs?follow=1")

    assert reply.status == 404


async def test_follow_streams_backlog_then_new_lines(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reader, writer, head = await open_stream(server, "/v1/tenants/dev/logs?lines=1&follow=1")
    first = await next_chunk(reader)
    [follower] = api.followers
    follower.push("fresh line")
    second = await next_chunk(reader)
    writer.close()

    assert "transfer-encoding: chunked" in head.lower()
    assert "application/x-ndjson" in head
    assert (first, second) == ([{"line": api.log_lines[-1]}], [{"line": "fresh line"}])


async def test_follow_ends_when_the_client_leaves(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    _, writer, _ = await open_stream(server, "/v1/tenants/dev/logs?lines=0&follow=1")
    assert len(api.followers) == 1

    writer.close()
    await writer.wait_closed()

    async with asyncio.timeout(5):
        while api.followers:
            await asyncio.sleep(0.01)


async def test_follow_reports_dropped_lines(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    reader, writer, _ = await open_stream(server, "/v1/tenants/dev/logs?lines=0&follow=1")
    [follower] = api.followers
    follower.dropped = 3
    follower.push("after a gap")

    records = await next_chunk(reader)
    writer.close()

    assert records == [{"dropped": 3}, {"line": "after a gap"}]


async def test_closing_the_server_ends_follow_streams(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    reader, writer, _ = await open_stream(server, "/v1/tenants/dev/logs?lines=0&follow=1")

    async with asyncio.timeout(3):  # well under the shutdown timeout of 5 s
        await server.close()
        end = await next_chunk(reader)
    writer.close()

    assert end is None


@pytest.mark.parametrize(("query", "dry_run"), [("", False), ("?dry_run=1", True)])
async def test_reload_returns_the_plan(
    serve: Serve, api: FakeAPI, query: str, dry_run: bool
) -> None:
    server = await serve(api)

    reply = await request(server, "POST", f"/v1/reload{query}")

    assert reply.status == 200
    assert reply.body["dry_run"] is dry_run
    assert reply.body["changes"][0]["action"] == "apply"
    assert api.calls == [("reload", dry_run)]


async def test_invalid_config_is_422_listing_every_problem(
    serve: Serve, api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api.reload_error = ConfigError([
        ConfigProblem("/etc/j.yaml", "tenants.dev.probe_period_s", "-1 must be > 0", 12),
        ConfigProblem("/etc/j.yaml", "tenants.qa.user", "'root' cannot be a tenant user", 20),
    ])
    server = await serve(api)

    reply = await request(server, "POST", "/v1/reload")

    assert reply.status == 422
    assert reply.body["problems"] == [
        "/etc/j.yaml:12: tenants.dev.probe_period_s: -1 must be > 0",
        "/etc/j.yaml:20: tenants.qa.user: 'root' cannot be a tenant user",
    ]
    assert reply.body["error"].startswith("the configuration has 2 problem(s); nothing was changed")
    assert any(r.levelno == logging.ERROR and "tenants.qa.user" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(("query", "variant"), [("", None), ("?variant=dev-v", "dev-v")])
async def test_rebuild_passes_the_variant(
    serve: Serve, api: FakeAPI, query: str, variant: str | None
) -> None:
    server = await serve(api)

    reply = await request(server, "POST", f"/v1/tenants/dev/rebuild{query}")

    assert reply.status == 200
    assert api.calls == [("rebuild", "dev", variant)]


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("?variant=other", 404, "tenant dev has no variant 'other'"),
        ("?variant=..%2Fx", 400, "variant='../x' is not a model name"),
    ],
)
async def test_rebuild_of_a_wrong_variant_is_refused(
    serve: Serve, api: FakeAPI, query: str, status: int, error: str
) -> None:
    server = await serve(api)

    reply = await request(server, "POST", f"/v1/tenants/dev/rebuild{query}")

    assert (reply.status, reply.body["error"]) == (status, error)


async def test_rebuild_of_a_stopped_tenant_is_409(serve: Serve, api: FakeAPI) -> None:
    api.action_error = SpawnError("tenant dev is stopped; rebuild needs a running server")
    server = await serve(api)

    reply = await request(server, "POST", "/v1/tenants/dev/rebuild")

    assert reply.status == 409
    assert "rebuild needs a running server" in reply.body["error"]


async def test_metrics_is_prometheus_text(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    connector = aiohttp.UnixConnector(path=server.path)

    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://localhost/metrics") as response,
    ):
        text = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert "# TYPE janus_reloads_total counter" in text


async def test_reopen_logs_names_every_file(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    reply = await request(server, "POST", "/v1/logs/reopen")

    assert reply.body == {"reopened": ["/var/log/janus-supervisor/dev.log",
                                       "/var/log/janus-supervisor/qa.log"]}


async def test_reload_can_change_the_socket_mode_in_place(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api, mode=0o600)

    server.apply_control(ControlConfig(socket=Path(server.path), mode=0o660))

    assert os.stat(server.path).st_mode & 0o777 == 0o660


STATUS_CLIENT = r"""
import socket, sys
method, target, path = sys.argv[1:4]
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(10)
sock.connect(path)
sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
             "Connection: close\r\n\r\n".encode())
print(sock.recv(64).split()[1].decode())
"""


async def status_as(account: Account, server: ControlServer, method: str, target: str) -> int:
    """Only the status code of a request sent as ``account`` (the body may not be JSON)."""
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, "-I", "-c", STATUS_CLIENT, method, target, server.path,
        user=account.uid, group=account.gid, extra_groups=account.groups, cwd="/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return int(out)


@pytest.mark.root
@pytest.mark.parametrize(
    ("who", "method", "target", "status"),
    [
        ("stranger", "GET", "/v1/tenants/dev/logs", 403),
        ("stranger", "GET", "/metrics", 403),
        ("stranger", "POST", "/v1/reload?dry_run=1", 403),
        ("stranger", "POST", "/v1/tenants/dev/rebuild", 403),
        ("stranger", "POST", "/v1/logs/reopen", 403),
        ("tenant_user", "GET", "/v1/tenants/dev/logs", 200),
        ("tenant_user", "GET", "/v1/tenants/qa/logs", 403),
        ("tenant_user", "GET", "/metrics", 403),
        ("tenant_user", "POST", "/v1/tenants/dev/rebuild", 403),
        ("reader", "GET", "/v1/tenants/qa/logs", 200),
        ("reader", "GET", "/metrics", 200),
        ("reader", "POST", "/v1/reload", 403),
        ("admin", "POST", "/v1/reload", 200),
        ("admin", "POST", "/v1/tenants/qa/rebuild", 200),
    ],
)
async def test_who_may_use_the_operator_routes(
    guarded: tuple[ControlServer, FakeAPI],
    accounts: Accounts,
    who: str,
    method: str,
    target: str,
    status: int,
) -> None:
    server, fake = guarded

    got = await status_as(getattr(accounts, who), server, method, target)

    assert got == status
    if status == 403:
        assert [c for c in fake.calls if c[0] != "logs"] == []
