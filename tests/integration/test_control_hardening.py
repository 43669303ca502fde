"""The control plane of a live daemon as root, used by real local users (cases C5 and C6).

Clients run as a tenant's user, as an unrelated user and as a member of the operators' group,
through the system Python (the venv's interpreter lives under /root, closed to them).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tests.integration.harness import (
    REPO,
    ROLES,
    Deployment,
    control_get,
    create_user,
    delete_user,
    needs_root,
    raw_http,
)
from tests.integration.test_isolation import new_deployment, run_as, stranger

pytestmark = needs_root

__all__ = ["stranger"]

SYSTEM_PYTHON = "/usr/bin/python3"
SITE_PACKAGES = Path(click.__file__).resolve().parents[1]

# argv: socket, method, target ; prints {"status": int, "body": any}
REQUEST = r"""
import json, socket, sys
path, method, target = sys.argv[1:4]
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(20)
    s.connect(path)
    s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": json.loads(body) if body else None}))
"""

# argv: socket, head, drip ("flood", or seconds between single bytes) ;
# prints {"reply": str, "sent": int}. Stops sending once the server answers or hangs up.
HOSTILE = r"""
import json, select, socket, sys, time
path, head, drip = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(head.encode().decode("unicode_escape").encode())
s.setblocking(False)
sent, reply = 0, b""
flood = drip == "flood"
give_up = time.monotonic() + 40
while time.monotonic() < give_up:
    writers = [s] if flood and sent < 110 * 2**20 else []
    readable, writable, _ = select.select([s], writers, [], 1.0 if flood else float(drip))
    if readable:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            break
        reply += data
    elif writable or not flood:
        try:
            sent += s.send(b"x" * 65536 if flood else b"x")
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
print(json.dumps({"reply": reply.decode("latin-1"), "sent": sent}))
"""


def request_as(user: str, dep: Deployment, method: str, target: str) -> dict[str, Any]:
    return run_as(user, REQUEST, str(dep.control), method, target)  # type: ignore[no-any-return]


def start_as(user: str, script: str, *args: str) -> subprocess.Popen[str]:
    entry = pwd.getpwnam(user)
    return subprocess.Popen(
        [SYSTEM_PYTHON, "-I", "-c", script, *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid), cwd="/",
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def refusals(dep: Deployment) -> list[str]:
    return [line for line in dep.log_text().splitlines() if "control: refused" in line]


@pytest.fixture(scope="module")
def ops() -> Iterator[tuple[str, str]]:
    """An operators' group and one member of it: (group, member)."""
    tag = secrets.token_hex(3)
    group, member = f"jco{tag}", f"jcm{tag}"
    subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
    create_user(member)
    subprocess.run(["usermod", "-aG", group, member], check=True, capture_output=True)
    yield group, member
    delete_user(member)
    subprocess.run(["groupdel", group], check=False, capture_output=True)


@pytest.fixture(scope="module")
def open_control(ops: tuple[str, str]) -> Iterator[Deployment]:
    """A daemon whose control socket every local user may connect to (0666): the daemon's
    own checks are all that stand between a caller and an action."""
    with new_deployment("janus-c5") as dep:
        dep.config["control"].update(mode="0666", admin_group=ops[0])
        dep.start()
        dep.wait_ready()
        yield dep


@pytest.fixture(scope="module")
def ops_control(ops: tuple[str, str]) -> Iterator[Deployment]:
    """A daemon whose control socket is 0660 root:<ops> (case C6)."""
    with new_deployment("janus-c6") as dep:
        dep.config["control"].update(mode="0660", group=ops[0], admin_group=ops[0])
        dep.start()
        dep.wait_ready()
        yield dep


# -- case C5 ---------------------------------------------------------------------------------

ODD_TARGETS = [
    "/",
    "/RPC2",
    "/v1/exec",
    "/v1/tenants/dev/exec",
    "/v1/tenants/dev/start/../../../status",
    "/v1/tenants/..%2f..%2fetc%2fpasswd",
    "/v1/tenants/%2e%2e",
    "/v1/tenants/dev.bak",
    "/v1/tenants/__import__('os').system('id')",
]


@pytest.mark.parametrize("who", ["dev", "stranger"])
def test_unknown_routes_and_path_tricks_get_json_errors(
    open_control: Deployment, stranger: str, who: str
) -> None:
    user = open_control.users["dev"] if who == "dev" else stranger
    pids = {role: open_control.pid_of(role) for role in ROLES}
    mine = f"from uid {uid_of(user)} "
    logged_before = sum(mine in line for line in refusals(open_control))

    answers = {t: request_as(user, open_control, "GET", t) for t in ODD_TARGETS}

    for target, answer in answers.items():
        assert answer["status"] in (400, 403, 404), (target, answer)
        assert isinstance(answer["body"]["error"], str), (target, answer)
    assert answers["/RPC2"]["status"] == answers["/v1/tenants/dev/exec"]["status"] == 404
    assert {role: open_control.pid_of(role) for role in ROLES} == pids
    logged = sum(mine in line for line in refusals(open_control)) - logged_before
    assert logged == len(ODD_TARGETS)  # every refusal, one line each, with the caller's uid


def test_tenant_user_reads_only_its_own_tenant(open_control: Deployment) -> None:
    user = open_control.users["dev"]

    own = request_as(user, open_control, "GET", "/v1/tenants/dev")
    other = request_as(user, open_control, "GET", "/v1/tenants/qa")
    listed = request_as(user, open_control, "GET", "/v1/status")

    assert (own["status"], own["body"]["name"]) == (200, "dev")
    assert other["status"] == 403
    assert [t["name"] for t in listed["body"]["tenants"]] == ["dev"]


@pytest.mark.parametrize(("who", "target"), [("dev", "qa"), ("dev", "dev"), ("stranger", "dev")])
def test_restart_by_a_non_admin_is_refused_and_logged(
    open_control: Deployment, stranger: str, who: str, target: str
) -> None:
    user = open_control.users["dev"] if who == "dev" else stranger
    pid = open_control.pid_of(target)

    answer = request_as(user, open_control, "POST", f"/v1/tenants/{target}/restart")

    uid = uid_of(user)
    assert answer["status"] == 403
    assert answer["body"]["error"].startswith(f"uid {uid} may not restart tenant {target}: "
                                              "needs admin (root or group ")
    assert open_control.pid_of(target) == pid
    assert any(f"refused POST /v1/tenants/{target}/restart from uid {uid}" in line
               for line in refusals(open_control))


def test_unrelated_user_gets_a_clear_refusal_for_reads(
    open_control: Deployment, stranger: str
) -> None:
    answer = request_as(stranger, open_control, "GET", "/v1/status")

    assert answer["status"] == 403
    assert answer["body"]["error"].startswith(f"uid {uid_of(stranger)} may not read the status")
    assert any(f"refused GET /v1/status from uid {uid_of(stranger)}" in line
               for line in refusals(open_control))


def test_flood_and_trickle_are_cut_off_while_others_are_served(
    open_control: Deployment, stranger: str
) -> None:
    control = str(open_control.control)
    restart = "POST /v1/tenants/dev/restart HTTP/1.1\\r\\nHost: x\\r\\n"
    pids = {role: open_control.pid_of(role) for role in ROLES}
    flood = start_as(stranger, HOSTILE, control,
                     restart + "Content-Length: 104857600\\r\\n\\r\\n", "flood")
    trickle = start_as(open_control.users["dev"], HOSTILE, control,
                       restart + "Content-Length: 1000\\r\\n\\r\\n", "0.05")
    slow_head = start_as(stranger, HOSTILE, control, restart, "0.05")

    served = [control_get(open_control.control, "/v1/status")[0] for _ in range(20)]
    flooded, trickled, headless = result_of(flood), result_of(trickle), result_of(slow_head)

    assert served == [200] * 20
    assert flooded["reply"].startswith("HTTP/1.1 413")
    assert flooded["sent"] < 16 * 2**20  # what socket buffers held, not 100 MiB
    assert trickled["reply"].startswith("HTTP/1.1 408")
    assert trickled["sent"] < 1000
    assert headless["reply"] == ""  # dropped before its headers were complete
    assert {role: open_control.pid_of(role) for role in ROLES} == pids
    logged = refusals(open_control)
    assert any(f"from uid {uid_of(stranger)}" in line and "with 413" in line for line in logged)
    dev_uid = uid_of(open_control.users["dev"])
    assert any(f"from uid {dev_uid}" in line and "with 408" in line for line in logged)


# -- case C6 ---------------------------------------------------------------------------------


def ctl_as(user: str, dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(user)
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "supervisor.cli", "--socket", str(dep.control), *args],
        check=False, capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{SITE_PACKAGES}"},
        user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
    )


def test_control_socket_is_0660_root_and_the_ops_group(
    ops_control: Deployment, ops: tuple[str, str]
) -> None:
    st = ops_control.control.lstat()

    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, grp.getgrnam(ops[0]).gr_gid, 0o660)


def test_ops_member_gets_the_table(ops_control: Deployment, ops: tuple[str, str]) -> None:
    done = ctl_as(ops[1], ops_control, "status")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:2] == ["TENANT", "STATE"]
    assert all(role in done.stdout for role in ROLES)


def test_non_member_gets_one_line_naming_socket_and_group(
    ops_control: Deployment, ops: tuple[str, str], stranger: str
) -> None:
    done = ctl_as(stranger, ops_control, "status")

    assert done.returncode == 5
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(ops_control.control) in done.stderr
    assert f"root:{ops[0]}" in done.stderr and f"join group {ops[0]}" in done.stderr


# -- one daemon per control socket -----------------------------------------------------------


def socket_identity(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def test_second_daemon_on_the_same_config_leaves_the_first_alone(
    ops_control: Deployment,
) -> None:
    dep = ops_control
    sockets = [dep.control, *(dep.socket_of(role) for role in ROLES)]
    before = {path: socket_identity(path) for path in sockets}
    pids = {role: dep.pid_of(role) for role in ROLES}

    second = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(dep.config_path)],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
    )

    assert second.returncode != 0
    assert f"{dep.control} is in use by another process" in second.stderr
    assert "Traceback" not in second.stderr
    assert {path: socket_identity(path) for path in sockets} == before
    assert {role: dep.pid_of(role) for role in ROLES} == pids
    assert all(dep.status(role)["ready"] for role in ROLES)
    answer = raw_http(dep.socket_of("dev"),
                      b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
