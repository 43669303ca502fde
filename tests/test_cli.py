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
import signal
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
from supervisor.errors import ConfigError, ConfigProblem, SpawnError
from supervisor.logs import LogFollower
from supervisor.reload import Action, ReloadPlan, TenantChange
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
        self.log_lines = [f"2026-01-01T00:00:00 line {n}" for n in range(5)]
        self.followers: list[LogFollower] = []
        self.following = asyncio.Event()
        self.reload_error: Exception | None = None
        self.reload_failure: str | None = None
        self.rebuild_state = TenantState.READY

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

    async def rebuild_tenant(self, name: str, variant: str | None) -> TenantStatus:
        self.calls.append(("rebuild", f"{name}:{variant}"))
        if self.action_error is not None:
            raise self.action_error
        if variant not in (None, f"janus-pro-7b-{name}"):
            raise LookupError(f"tenant {name} has no variant {variant!r}")
        update = {"state": self.rebuild_state, "ready": self.rebuild_state is TenantState.READY,
                  "last_error": "variant janus-pro-7b-dev: base model janus-pro-7b is missing"}
        return self.tenants[name].model_copy(update=update)

    async def reload(self, dry_run: bool) -> ReloadPlan:
        self.calls.append(("reload", str(dry_run)))
        if self.reload_error is not None:
            raise self.reload_error
        changes = [
            TenantChange(tenant="dev", action=Action.APPLY, reasons=["probe_period_s 10.0 -> 2.0"]),
            TenantChange(tenant="prod", action=Action.REBUILD, variants=["prod-v"],
                         reasons=["variant prod-v changed (parameters)"]),
            TenantChange(tenant="qa", action=Action.START, reasons=["new tenant"]),
        ]
        plan = ReloadPlan(source="/etc/janus.yaml", dry_run=dry_run, changes=changes)
        if not dry_run:
            for change in plan.changes:
                change.ok, change.result = True, "done"
            if self.reload_failure:
                changes[2].ok, changes[2].result = False, self.reload_failure
            plan.applied, plan.ok = True, not self.reload_failure
        return plan

    def tenant_logs(self, name: str, lines: int) -> list[str]:
        self.tenants[name]
        return self.log_lines[-lines:] if lines else []

    @contextlib.contextmanager
    def follow_logs(self, name: str, lines: int) -> Iterator[LogFollower]:
        self.tenants[name]
        follower = LogFollower(self.log_lines[-lines:] if lines else [])
        self.followers.append(follower)
        self.following.set()
        yield follower

    def reopen_logs(self) -> list[str]:
        return ["/var/log/janus-supervisor/dev.log"]

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



async def test_ready_wait_waits_for_a_daemon_that_is_not_up_yet(
    tmp_path: Path, serve: Serve, api: FakeAPI
) -> None:
    path = tmp_path / "control.sock"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.cli", "--socket", str(path),
        "ready", "qa", "--wait", "--timeout", "30",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        # The CLI found no socket and sleeps before it looks again (clock_nanosleep, 230).
        while not Path(f"/proc/{process.pid}/syscall").read_text().startswith("230 "):
            await asyncio.sleep(0.01)
        await serve(api)
        await api.waiting.wait()
        api.set_ready("qa")
        out, err = await process.communicate()

    assert process.returncode == 0, err
    assert out.decode().startswith("qa: ready")


async def test_ready_wait_gives_up_on_a_missing_daemon_at_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    run = await ctl(path, "ready", "qa", "--wait", "--timeout", "0.3")

    assert run.code == 3
    assert "no such file" in one_line(run.err)

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


# -- reload, logs, rebuild, reopen-logs (issue 6) ----------------------------------------------


async def test_reload_dry_run_prints_the_plan(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "reload", "--dry-run")

    assert run.code == 0
    assert run.out.splitlines() == [
        "dry run of /etc/janus.yaml: nothing was changed",
        "TENANT  ACTION   CHANGES",
        "dev     apply    probe_period_s 10.0 -> 2.0",
        "prod    rebuild  variant prod-v changed (parameters)",
        "qa      start    new tenant",
    ]
    assert api.calls == [("reload", "True")]


async def test_reload_prints_each_result(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "reload")

    assert run.code == 0
    assert run.out.splitlines()[0].split() == ["TENANT", "ACTION", "RESULT", "CHANGES"]
    assert run.out.splitlines()[1].split()[:3] == ["dev", "apply", "ok"]


async def test_reload_with_a_failed_step_exits_1(serve: Serve, api: FakeAPI) -> None:
    api.reload_failure = "tenant qa: user janus_qa does not exist"
    server = await serve(api)

    run = await ctl(server.path, "reload")

    assert run.code == 1
    assert run.out.splitlines()[-1].split(None, 3) == [
        "qa", "start", "FAILED", "new tenant => tenant qa: user janus_qa does not exist"]
    assert one_line(run.err) == f"{PROG}: reload: 1 of 3 tenants failed (qa); see the table above"


async def test_reload_of_an_invalid_file_prints_every_problem_and_exits_1(
    serve: Serve, api: FakeAPI
) -> None:
    api.reload_error = ConfigError([
        ConfigProblem("/etc/janus.yaml", "tenants.dev.probe_period_s", "-1 must be > 0", 12),
        ConfigProblem("/etc/janus.yaml", "tenants.qa.user", "'root' is not allowed", 20),
    ])
    server = await serve(api)

    run = await ctl(server.path, "reload")

    assert (run.code, run.out) == (1, "")
    assert run.err.splitlines() == [
        f"{PROG}: /etc/janus.yaml:12: tenants.dev.probe_period_s: -1 must be > 0",
        f"{PROG}: /etc/janus.yaml:20: tenants.qa.user: 'root' is not allowed",
        (f"{PROG}: the configuration has 2 problem(s); nothing was changed. "
         "Fix them and reload again"),
    ]


async def test_reload_json_is_the_daemon_document(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "reload", "--dry-run", "--json")

    assert json.loads(run.out)["changes"][1]["variants"] == ["prod-v"]


async def test_logs_prints_the_last_lines(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "logs", "dev", "-n", "2")

    assert (run.code, run.out.splitlines()) == (0, api.log_lines[-2:])


async def test_logs_json(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "logs", "dev", "-n", "1", "--json")

    assert json.loads(run.out) == {"tenant": "dev", "lines": api.log_lines[-1:]}


async def test_logs_of_an_unknown_tenant_exits_2(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "logs", "prod", "-f")

    assert run.code == 2
    assert one_line(run.err).startswith(f"{PROG}: no tenant named 'prod'")


async def start_follow(server: ControlServer, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.cli", "--socket", server.path, "logs", "dev", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def test_logs_follow_prints_new_lines_until_ctrl_c(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    process = await start_follow(server, "-n", "1", "-f")
    assert process.stdout is not None

    async with asyncio.timeout(20):
        first = await process.stdout.readline()
        api.followers[0].push("a new line")
        second = await process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, err = await process.communicate()

    assert (first.decode(), second.decode()) == (api.log_lines[-1] + "\n", "a new line\n")
    assert (process.returncode, err) == (0, b"")


async def test_logs_follow_ends_with_a_note_when_the_daemon_stops(
    serve: Serve, api: FakeAPI
) -> None:
    server = await serve(api)
    process = await start_follow(server, "-n", "0", "-f")

    async with asyncio.timeout(20):
        await api.following.wait()
        await server.close()
        _, err = await process.communicate()

    assert process.returncode == 0
    assert "the daemon ended the stream of dev" in one_line(err.decode())


async def test_rebuild_reports_the_ready_tenant(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "rebuild", "dev", "janus-pro-7b-dev")

    assert (run.code, run.out) == (0, "dev: rebuilt janus-pro-7b-dev (ready, pid 2003)\n")
    assert api.calls == [("rebuild", "dev:janus-pro-7b-dev")]


async def test_rebuild_that_leaves_the_tenant_degraded_exits_1(serve: Serve, api: FakeAPI) -> None:
    api.rebuild_state = TenantState.DEGRADED
    server = await serve(api)

    run = await ctl(server.path, "rebuild", "dev")

    assert run.code == 1
    assert one_line(run.err) == (
        f"{PROG}: dev: rebuild of every variant left it degraded: variant janus-pro-7b-dev: "
        "base model janus-pro-7b is missing"
    )


@pytest.mark.parametrize(("variant", "code"), [("nope", 2), ("../etc", 2)])
async def test_rebuild_of_an_unknown_variant_is_a_usage_error(
    serve: Serve, api: FakeAPI, variant: str, code: int
) -> None:
    server = await serve(api)

    run = await ctl(server.path, "rebuild", "dev", variant)

    assert run.code == code
    one_line(run.err)


async def test_rebuild_refused_by_the_daemon_exits_1(serve: Serve, api: FakeAPI) -> None:
    api.action_error = SpawnError("tenant dev is backoff; rebuild needs a running server")
    server = await serve(api)

    run = await ctl(server.path, "rebuild", "dev")

    assert run.code == 1
    assert one_line(run.err) == (
        f"{PROG}: tenant dev is backoff; rebuild needs a running server"
    )


async def test_reopen_logs_names_the_files(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "reopen-logs")

    assert (run.code, run.out) == (0, "reopened /var/log/janus-supervisor/dev.log\n")


async def test_version_json(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)

    run = await ctl(server.path, "version", "--json")

    assert json.loads(run.out) == {"cli": "0.1.0", "daemon": "9.9.9", "pid": 4242}


@pytest.mark.parametrize("command", ["status", "ready", "start", "stop", "restart", "reload",
                                     "logs", "rebuild", "version", "reopen-logs"])
def test_every_command_has_json_output(command: str) -> None:
    assert any(p.name == "as_json" for p in cli.cli.commands[command].params)


# -- the click-free status path (issue 6: status under 60 ms) ----------------------------------

CLICK_STATUS = (
    "import sys; from supervisor.cli_commands import cli; "
    "cli.main(args=sys.argv[1:], prog_name='janus-supervisorctl')"
)


async def run_python(code: str, *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def test_plain_status_does_not_import_click(serve: Serve, api: FakeAPI) -> None:
    server = await serve(api)
    code = ("import sys; from supervisor import cli; "
            "rc = cli.fast_status(sys.argv[1:]); print('click' in sys.modules, rc)")

    run = await run_python(code, "--socket", server.path, "status")

    assert run.out.splitlines()[-1] == "False 4"


@pytest.mark.parametrize("args", [["status"], ["status", "dev"], ["status", "--json"],
                                  ["status", "qa", "dev", "--json"], ["status", "prod"]])
async def test_fast_status_answers_like_the_click_command(
    serve: Serve, api: FakeAPI, args: list[str]
) -> None:
    server = await serve(api)

    fast = await ctl(server.path, *args)
    slow = await run_python(CLICK_STATUS, "--socket", server.path, *args)

    assert (fast.code, fast.out, fast.err) == (slow.code, slow.out, slow.err)


@pytest.mark.parametrize("args", [["status", "--help"], ["status", "-x"], ["status", "Dev"],
                                  ["version"], []])
def test_other_command_lines_go_to_click(args: list[str]) -> None:
    assert cli.fast_status(["--socket", "/nonexistent", *args]) is None


async def test_fast_status_takes_the_socket_from_the_environment(
    serve: Serve, api: FakeAPI
) -> None:
    server = await serve(api)

    run = await ctl(None, "status", "dev", env={cli.SOCKET_ENV: server.path})

    assert run.code == 0
