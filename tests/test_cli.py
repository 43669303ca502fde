"""Tests of janus-supervisorctl: the real CLI in a subprocess against a real control server.

The server runs in the test's event loop with a fake daemon behind it; the CLI is started with
``python -m supervisor.cli``. Tests that need another uid run the CLI through the system Python
(the venv's interpreter lives under /root) with click taken from the venv.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from supervisor import cli
from supervisor.config import DEFAULT_CONTROL_SOCKET, ControlConfig
from supervisor.control import ControlServer
from supervisor.control import server as control_server
from supervisor.errors import SpawnError
from supervisor.sockets import bind_unix_socket
from supervisor.status import DaemonStatus, TenantState, TenantStatus

REPO = Path(__file__).resolve().parents[1]
SITE_PACKAGES = Path(click.__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
IS_ROOT = os.geteuid() == 0
PROG = "janus-supervisorctl"


def tenant(name: str, state: TenantState = TenantState.READY, **fields: object) -> TenantStatus:
    return TenantStatus(
        name=name,
        state=state,
        ready=state is TenantState.READY,
        pid=2000 + len(name),
        user=f"janus_{name}",
        socket=f"/run/janus-supervisor/{name}.sock",
        since=0.0,
        uptime_s=3725.0 if state is TenantState.READY else None,
        **fields,
    )


class FakeAPI:
    """In-memory SupervisorAPI recording actions."""

    def __init__(self, *tenants: TenantStatus) -> None:
        self.tenants = {t.name: t for t in tenants}
        self.calls: list[tuple[str, str]] = []
        self.action_error: Exception | None = None
        self.action_state = TenantState.STARTING
        self.waiting = asyncio.Event()
        self._ready = {name: asyncio.Event() for name in self.tenants}

    def daemon_status(self) -> DaemonStatus:
        return DaemonStatus(version="9.9.9", pid=4242, tenants=list(self.tenants.values()))

    def tenant_names(self) -> list[str]:
        return list(self.tenants)

    def tenant_status(self, name: str) -> TenantStatus:
        return self.tenants[name]

    def tenant_uid(self, name: str) -> int | None:
        return None

    def set_ready(self, name: str) -> None:
        update = {"state": TenantState.READY, "ready": True}
        self.tenants[name] = self.tenants[name].model_copy(update=update)
        self._ready[name].set()

    async def _act(self, verb: str, name: str) -> TenantStatus:
        self.calls.append((verb, name))
        if self.action_error is not None:
            raise self.action_error
        state = TenantState.STOPPED if verb == "stop" else self.action_state
        update = {"state": state, "ready": False, "last_error": "no space left on /var/lib"}
        self.tenants[name] = self.tenants[name].model_copy(update=update)
        return self.tenants[name]

    async def start_tenant(self, name: str) -> TenantStatus:
        return await self._act("start", name)

    async def stop_tenant(self, name: str) -> TenantStatus:
        return await self._act("stop", name)

    async def restart_tenant(self, name: str) -> TenantStatus:
        return await self._act("restart", name)

    async def wait_ready(self, name: str, timeout_s: float) -> TenantStatus:
        self.waiting.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready[name].wait()
        return self.tenants[name]


@dataclass
class Run:
    code: int
    out: str
    err: str


Serve = Callable[..., Awaitable[ControlServer]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    servers: list[ControlServer] = []

    async def start(
        api: FakeAPI, *, directory: Path = tmp_path, mode: int = 0o600, gid: int = 0, **groups: str
    ) -> ControlServer:
        path = directory / "control.sock"
        bound = bind_unix_socket(path, mode=mode, uid=os.geteuid(), gid=gid or os.getegid())
        server = ControlServer(api, ControlConfig(socket=path, mode=mode, **groups), bound)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def api() -> FakeAPI:
    long_error = "variant janus-pro-7b-qa: base model janus-pro-7b is missing; " * 3
    return FakeAPI(tenant("dev"), tenant("qa", TenantState.STARTING, last_error=long_error))


async def ctl(
    socket_path: str | Path | None,
    *args: str,
    user: pwd.struct_passwd | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the real CLI; as ``user`` through the system Python when given."""
    base = [] if socket_path is None else ["--socket", str(socket_path)]
    environ = {k: v for k, v in os.environ.items() if k != cli.SOCKET_ENV}
    kwargs: dict[str, object] = {}
    python = sys.executable
    if user is not None:
        python = SYSTEM_PYTHON
        environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{SITE_PACKAGES}"}
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups, "cwd": "/"}
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "supervisor.cli",
        *base,
        *args,
        env={**environ, **(env or {})},
        cwd=kwargs.pop("cwd", REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def one_line(err: str) -> str:
    """The single stderr line of a failed command (never a traceback)."""
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


# -- status ----------------------------------------------------------------------------------


async def test_status_prints_a_table_and_exits_0_when_all_ready(serve: Serve) -> None:
    server = await serve(FakeAPI(tenant("dev"), tenant("admin")))

    run = await ctl(server.path, "status")

    header, *rows = run.out.splitlines()
    assert run.code == 0
    assert header.split() == [
        "TENANT",
        "STATE",
        "READY",
        "PID",
        "USER",
        "UPTIME",
        "RESTARTS",
        "LAST",
        "ERROR",
    ]
    assert rows[0].split() == ["dev", "ready", "yes", "2003", "janus_dev", "1h02m", "0", "-"]


async def test_status_exits_not_ready_and_shortens_the_last_error(
    serve: Serve, api: FakeAPI
) -> None:
    server = await serve(api)

    run = await ctl(server.path, "status")

    qa_row = run.out.splitlines()[2]
    assert run.code == 4
    assert qa_row.split()[:3] == ["qa", "starting", "no"]
    assert qa_row.endswith("…") and len(qa_row) < 140


@pytest.mark.parametrize(("name", "code"), [("dev", 0), ("qa", 4)])
async def test_status_of_one_tenant_exits_0_only_when_ready(
    serve: Serve, api: FakeAPI, name: str, code: int
) -> None:
    server = await serve(api)

    run = await ctl(server.path, "status", name)

    assert run.code == code
    assert len(run.out.splitlines()) == 2


async def test_status_json_is_the_daemon_document(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "status", "--json")

    assert json.loads(run.out) == api.daemon_status().model_dump(mode="json")


async def test_status_json_of_named_tenants_is_a_list(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "status", "qa", "--json")

    assert [t["name"] for t in json.loads(run.out)] == ["qa"]
    assert run.code == 4


async def test_unknown_tenant_is_a_usage_error(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "status", "prod")

    assert run.code == 2
    assert one_line(run.err) == f"{PROG}: no tenant named 'prod' (configured: dev, qa)"


async def test_invalid_tenant_name_is_refused_before_asking(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "restart", "../dev")

    assert run.code == 2
    assert "invalid tenant name '../dev'" in one_line(run.err)
    assert api.calls == []


# -- ready -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "line"), [("dev", 0, "dev: ready (pid 2003)"), ("qa", 4, "qa: not ready")]
)
async def test_ready_exits_0_only_when_ready(
    serve: Serve, api: FakeAPI, name: str, code: int, line: str
) -> None:
    server = await serve(api)

    run = await ctl(server.path, "ready", name)

    assert run.code == code
    assert run.out.startswith(line)


async def test_ready_wait_exits_0_once_the_tenant_is_ready(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    async with asyncio.timeout(20):
        waiting = asyncio.create_task(ctl(server.path, "ready", "qa", "--wait", "--timeout", "30"))
        await api.waiting.wait()
        api.set_ready("qa")
        run = await waiting

    assert run.code == 0
    assert run.out.startswith("qa: ready")


async def test_ready_wait_exits_not_ready_at_the_timeout(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "ready", "qa", "--wait", "--timeout", "0.3", "--json")

    assert run.code == 4
    assert json.loads(run.out)["state"] == "starting"


# -- actions ---------------------------------------------------------------------------------


async def test_restart_reports_each_tenant(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "restart", "dev", "qa")

    assert run.code == 0
    assert api.calls == [("restart", "dev"), ("restart", "qa")]
    assert run.out.splitlines() == [
        "dev: restarted (starting, pid 2003)",
        "qa: restarted (starting, pid 2002)",
    ]


async def test_stop_all_stops_every_tenant(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "stop", "--all", "--json")

    assert run.code == 0
    assert api.calls == [("stop", "dev"), ("stop", "qa")]
    assert [t["state"] for t in json.loads(run.out)] == ["stopped", "stopped"]


@pytest.mark.parametrize("args", [["restart"], ["restart", "dev", "--all"]])
async def test_action_needs_tenants_or_all(serve: Serve, api: FakeAPI, args: list[str]) -> None:
    server = await serve(api)

    run = await ctl(server.path, *args)

    assert run.code == 2
    assert "name one or more tenants, or give --all" in run.err
    assert api.calls == []


async def test_action_refused_by_the_daemon_exits_1(serve: Serve, api: FakeAPI) -> None:
    api.action_error = SpawnError("tenant dev is stopping; try again when it is stopped")
    server = await serve(api)

    run = await ctl(server.path, "start", "dev")

    assert run.code == 1
    assert one_line(run.err) == (
        f"{PROG}: dev: tenant dev is stopping; try again when it is stopped"
    )


async def test_start_that_leaves_the_tenant_failed_exits_1(serve: Serve, api: FakeAPI) -> None:
    api.action_state = TenantState.FAILED
    server = await serve(api)

    run = await ctl(server.path, "start", "dev")

    assert run.code == 1
    assert one_line(run.err) == f"{PROG}: dev: start failed: no space left on /var/lib"


async def test_unknown_tenant_in_an_action_is_a_usage_error(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "restart", "prod")

    assert run.code == 2
    assert one_line(run.err).startswith(f"{PROG}: prod: no tenant named 'prod'")


# -- unreachable daemon ----------------------------------------------------------------------


async def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    run = await ctl(path, "status")

    assert run.code == 3
    assert one_line(run.err) == (
        f"{PROG}: cannot reach the daemon at {path}: no such file (is janus-supervisord running?)"
    )


async def test_stale_socket_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    leave_dead_socket(path)

    run = await ctl(path, "ready", "dev")

    assert run.code == 3
    assert "connection refused (stale socket; is janus-supervisord running?)" in one_line(run.err)


def leave_dead_socket(path: Path) -> None:
    """A socket file nobody listens on, as a SIGKILLed daemon leaves behind."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


async def test_socket_comes_from_the_environment(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(None, "status", "dev", env={cli.SOCKET_ENV: server.path})

    assert run.code == 0


# -- permissions (cases C5, C6) --------------------------------------------------------------


@dataclass(frozen=True)
class Accounts:
    ops_group: str
    ops_gid: int
    member: pwd.struct_passwd
    stranger: pwd.struct_passwd


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    """A throwaway ops group with one member, and a user outside it; removed afterwards."""
    if not IS_ROOT or not shutil.which("useradd") or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root, useradd and a system python for tests with real users")
    prefix = f"jtest_{secrets.token_hex(3)}"
    group, member, stranger = f"{prefix}_ops", f"{prefix}_mem", f"{prefix}_out"
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    made: list[list[str]] = []
    try:
        subprocess.run(["groupadd", "--system", group], check=True)
        made.append(["groupdel", group])
        for name, extra in ((member, ["-G", group]), (stranger, [])):
            subprocess.run([*useradd, *extra, name], check=True)
            made.insert(0, ["userdel", name])
        yield Accounts(
            group, grp.getgrnam(group).gr_gid, pwd.getpwnam(member), pwd.getpwnam(stranger)
        )
    finally:
        for command in made:
            subprocess.run(command, check=False)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A socket directory other users can traverse (pytest's tmp_path is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="janus-cli-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.root
async def test_root_only_socket_gives_one_line_and_exit_5(
    serve: Serve, api: FakeAPI, accounts: Accounts, public_dir: Path
) -> None:
    server = await serve(api, directory=public_dir, mode=0o660)

    run = await ctl(server.path, "status", user=accounts.stranger)

    assert run.code == 5
    assert one_line(run.err) == (
        f"{PROG}: permission denied on the control socket {server.path} (root:root, mode 0660); "
        "only its owner may connect: run as root (sudo)"
    )


@pytest.mark.root
async def test_group_socket_member_gets_the_table_others_a_hint(
    serve: Serve, api: FakeAPI, accounts: Accounts, public_dir: Path
) -> None:
    group = accounts.ops_group
    server = await serve(
        api, directory=public_dir, mode=0o660, gid=accounts.ops_gid, admin_group=group
    )

    member = await ctl(server.path, "status", "dev", user=accounts.member)
    stranger = await ctl(server.path, "status", "dev", user=accounts.stranger)

    assert (member.code, member.out.split()[:2]) == (0, ["TENANT", "STATE"])
    assert stranger.code == 5
    assert one_line(stranger.err).endswith(
        f"(root:{group}, mode 0660); join group {group} (sudo usermod -aG {group} $USER, "
        "then log in again) or use sudo"
    )


@pytest.mark.root
async def test_refusal_by_the_daemon_exits_5_with_its_reason(
    serve: Serve, api: FakeAPI, accounts: Accounts, public_dir: Path
) -> None:
    server = await serve(api, directory=public_dir, mode=0o666)

    run = await ctl(server.path, "restart", "dev", user=accounts.stranger)

    uid = accounts.stranger.pw_uid
    assert run.code == 5
    assert one_line(run.err) == (
        f"{PROG}: uid {uid} may not restart tenant dev: needs admin (root)"
    )
    assert api.calls == []


# -- help, completion, version, speed --------------------------------------------------------


async def test_help_lists_commands_defaults_and_completion() -> None:
    run = await ctl(None, "--help")

    assert run.code == 0
    for word in ("status", "start", "stop", "restart", "ready", "version"):
        assert f"\n  {word} " in run.out
    assert "else /run/janus-supervisor/control.sock (the default)" in run.out
    assert "$JANUS_SUPERVISOR_SOCKET" in run.out
    assert "_JANUS_SUPERVISORCTL_COMPLETE=bash_source janus-supervisorctl" in run.out


async def test_ready_help_shows_the_default_timeout() -> None:
    run = await ctl(None, "ready", "--help")

    assert "[default: 60; x>=0]" in run.out
    assert f"Example: {PROG} ready dev --wait --timeout 120" in run.out


async def test_bash_completion_script_is_generated() -> None:
    run = await ctl(None, env={cli.COMPLETE_ENV: "bash_source"})

    assert run.code == 0
    assert "_janus_supervisorctl_completion()" in run.out


async def test_tenant_names_complete_from_the_daemon(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    env = {
        cli.COMPLETE_ENV: "bash_complete",
        "COMP_WORDS": f"{PROG} restart d",
        "COMP_CWORD": "2",
        cli.SOCKET_ENV: server.path,
    }

    run = await ctl(None, env=env)

    assert run.out.split() == ["plain,dev"]


async def test_version_names_both_sides(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "version")

    assert run.out.splitlines() == [f"{PROG} 0.1.0", "janus-supervisord 9.9.9 (pid 4242)"]


def test_cli_defaults_match_the_daemon() -> None:
    assert cli.DEFAULT_SOCKET == str(DEFAULT_CONTROL_SOCKET)
    assert cli.TENANT_NAME.pattern == control_server.TENANT_NAME.pattern


def test_cli_imports_no_heavy_module() -> None:
    heavy = [
        "aiohttp",
        "anyio",
        "pydantic",
        "http.client",
        "supervisor.config",
        "supervisor.control",
    ]
    code = f"import sys, supervisor.cli; print([m for m in {heavy!r} if m in sys.modules])"

    out = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True
    )

    assert out.stdout.strip() == "[]", out.stderr


async def test_status_wall_time(
    serve: Serve, api: FakeAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measures (does not assert) the wall time of ``status`` in a fresh process."""
    server = await serve(api)
    command = [sys.executable, "-m", "supervisor.cli", "--socket", server.path, "status"]
    samples = []
    for _ in range(15):
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, stdout=asyncio.subprocess.DEVNULL
        )
        await process.wait()
        samples.append((time.perf_counter() - started) * 1000)

    with capsys.disabled():
        print(
            f"\n[janus-supervisorctl status wall time: best {min(samples):.1f} ms, "
            f"median {statistics.median(samples):.1f} ms over {len(samples)} runs]"
        )
