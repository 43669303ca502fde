"""Tenant isolation on a live daemon as root (issue 3): network, sockets, files, the child.

The probes run as real users through the system Python (the venv's is under /root, closed to
them): tenant dev's user and an unrelated user scan every listening loopback TCP port and try
every tenant socket. Each tenant gets a variant with a name unique to this run, so an answer
from one of *our* servers is told apart from anything else listening on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import secrets
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.netns import netns_inode
from tests.integration.harness import (
    REPO,
    ROLES,
    Deployment,
    create_user,
    deadline_loop,
    delete_user,
    needs_root,
    new_deployment,
    user_processes,
)

pytestmark = needs_root

SYSTEM_PYTHON = "/usr/bin/python3"

# argv: markers... ; prints {"scanned": [ports], "hits": {marker: [ports]}}
SCAN = r"""
import concurrent.futures, json, socket, sys

def listeners():
    found = set()
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, port = local.split(":")
            if state != "0A":
                continue
            raw = bytes.fromhex(addr)
            if family == socket.AF_INET:
                ip = socket.inet_ntop(family, raw[::-1])
                if ip == "0.0.0.0" or ip.startswith("127."):
                    found.add((family, "127.0.0.1" if ip == "0.0.0.0" else ip, int(port, 16)))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(family, words)
                if ip in ("::", "::1"):
                    found.add((family, "::1", int(port, 16)))
    return sorted(found)

def ask(target):
    family, ip, port = target
    answer = b""
    try:
        with socket.socket(family) as s:
            s.settimeout(1.5)
            s.connect((ip, port))
            s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while len(answer) < 1 << 16 and (chunk := s.recv(65536)):
                answer += chunk
    except OSError:
        pass
    return port, answer.decode("latin-1")

targets = listeners()
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    answers = list(pool.map(ask, targets))
hits = {m: [p for p, a in answers if m in a] for m in sys.argv[1:]}
print(json.dumps({"scanned": [t[2] for t in targets], "hits": hits}))
"""

# argv: socket paths... ; prints {path: "denied" | "refused" | <answer>}
TRY_SOCKETS = r"""
import json, socket, sys
out = {}
for path in sys.argv[1:]:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        out[path] = data.decode("latin-1")
    except PermissionError:
        out[path] = "denied"
    except OSError as exc:
        out[path] = f"error {exc}"
print(json.dumps(out))
"""


def run_as(user: str, script: str, *args: str) -> Any:
    entry = pwd.getpwnam(user)
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", script, *args], check=False, capture_output=True, text=True,
        timeout=60, user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid), cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def marker(dep: Deployment, role: str) -> str:
    return f"probe-{dep.root.name[-8:]}-{role}"


def add_markers(dep: Deployment) -> None:
    for role in ROLES:
        dep.config["tenants"][role]["variants"].append({"name": marker(dep, role),
                                                       "from": "janus-pro-7b"})


def new_isolation_deployment(prefix: str) -> contextlib.AbstractContextManager[Deployment]:
    """Like the harness's ``deployment`` fixture, for module-scoped use."""
    return new_deployment(prefix, user_prefix="ji")


@pytest.fixture(scope="module")
def stranger() -> Iterator[str]:
    """A local user that is no tenant and in no group of the daemon."""
    name = f"jis{secrets.token_hex(3)}"
    create_user(name)
    yield name
    delete_user(name)


@pytest.fixture(scope="module")
def isolated() -> Iterator[Deployment]:
    """The tutorial's three tenants, default network (isolated, as root), all ready."""
    with new_isolation_deployment("janus-iso") as dep:
        add_markers(dep)
        dep.start()
        dep.wait_ready()
        yield dep


def listening_socket_owners() -> dict[int, list[int]]:
    """uid -> pids of processes holding a listening TCP socket of the host's namespace."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(name).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    owners: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            targets = {os.readlink(f"/proc/{entry.name}/fd/{fd}")
                       for fd in os.listdir(f"/proc/{entry.name}/fd")}
            if targets & inodes:
                owners.setdefault(os.stat(f"/proc/{entry.name}").st_uid, []).append(
                    int(entry.name))
    return owners


# -- network ---------------------------------------------------------------------------------


def test_each_server_has_a_namespace_of_its_own(isolated: Deployment) -> None:
    pids = [isolated.pid_of(role) for role in ROLES]

    inodes = {netns_inode(pid) for pid in pids}

    assert len(inodes) == 3 and netns_inode() not in inodes
    for role, pid in zip(ROLES, pids, strict=True):
        assert isolated.status(role)["backend"] == f"netns:{pid} 127.0.0.1:11434"


def test_no_tenant_process_listens_in_the_host_namespace(isolated: Deployment) -> None:
    tenant_uids = {pwd.getpwnam(isolated.users[role]).pw_uid for role in ROLES}

    owners = listening_socket_owners()

    assert tenant_uids & set(owners) == set()


def decoy_listener(text: str) -> tuple[socket.socket, threading.Thread]:
    """A loopback port that answers like a tenant would: proof the scanner finds such ports."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(f"HTTP/1.1 200 OK\r\n\r\n{{\"models\":[\"{text}\"]}}".encode())

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("who", ["dev", "stranger"])
def test_no_loopback_port_leads_to_a_tenant(isolated: Deployment, stranger: str, who: str) -> None:
    user = isolated.users["dev"] if who == "dev" else stranger
    markers = [marker(isolated, role) for role in ROLES]
    decoy = f"decoy-{secrets.token_hex(4)}"
    listener, _ = decoy_listener(decoy)
    decoy_port = listener.getsockname()[1]
    try:
        found = run_as(user, SCAN, decoy, *markers)
    finally:
        listener.close()

    assert found["hits"][decoy] == [decoy_port]  # the scan does find ports that answer so
    assert {m: found["hits"][m] for m in markers} == {m: [] for m in markers}


def test_dev_user_reaches_only_its_own_socket(isolated: Deployment) -> None:
    paths = {role: str(isolated.socket_of(role)) for role in ROLES}

    answers = run_as(isolated.users["dev"], TRY_SOCKETS, *paths.values())

    assert answers[paths["admin"]] == answers[paths["qa"]] == "denied"
    assert answers[paths["dev"]].startswith("HTTP/1.1 200")
    assert marker(isolated, "dev") in answers[paths["dev"]]
    assert marker(isolated, "qa") not in answers[paths["dev"]]


def test_unrelated_user_reaches_no_socket(isolated: Deployment, stranger: str) -> None:
    paths = [str(isolated.socket_of(role)) for role in ROLES]

    answers = run_as(stranger, TRY_SOCKETS, *paths)

    assert answers == {path: "denied" for path in paths}


def test_sockets_carry_the_tenants_owner_and_mode(isolated: Deployment) -> None:
    for role in ROLES:
        st = isolated.socket_of(role).lstat()
        user = pwd.getpwnam(isolated.users[role])

        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, user.pw_gid,
                                                                  0o660)


# -- the child -------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return targets


def nofile_expected(wanted: int) -> int:
    """``wanted``, or the hard limit when even root may not raise it (some containers)."""
    raise_it = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({wanted}, {wanted}))"
    done = subprocess.run([sys.executable, "-c", raise_it], check=False, capture_output=True)
    if done.returncode == 0:
        return wanted
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_server_runs_hardened(isolated: Deployment) -> None:
    nofile = str(nofile_expected(65536))
    for role in ROLES:
        pid = isolated.pid_of(role)
        status = proc_status(pid)
        limits = Path(f"/proc/{pid}/limits").read_text()

        assert status["NoNewPrivs"] == "1"
        assert status["Umask"] == "0077"
        assert [line.split()[3:5] for line in limits.splitlines()
                if line.startswith("Max open files")] == [[nofile, nofile]]


def test_server_inherits_no_descriptor_of_the_daemon(isolated: Deployment) -> None:
    assert isolated.proc is not None
    daemon = fd_targets(isolated.proc.pid)
    private = set(daemon.values())
    log_dir = str(isolated.root / "log")

    for role in ROLES:
        server = fd_targets(isolated.pid_of(role))
        # 0 is /dev/null, 1 and 2 the output pipe the daemon reads: the only shared ones.
        shared = {fd: t for fd, t in server.items() if fd > 2 and t in private}

        assert shared == {}
        assert [t for t in server.values() if t.startswith((log_dir, "net:"))] == []
        assert server[0] == "/dev/null" and server[1] == server[2]
    assert any(t.startswith("net:") for t in daemon.values())  # the namespaces it holds


# -- network: host (what the README says about it must stay true) ----------------------------


def test_host_mode_backend_is_reachable_by_any_local_user(
    deployment: Deployment, stranger: str
) -> None:
    add_markers(deployment)
    deployment.config["tenants"]["dev"]["network"] = "host"
    deployment.start()
    deployment.wait_ready()
    backend = deployment.status("dev")["backend"]
    dev_marker = marker(deployment, "dev")

    found = run_as(stranger, SCAN, dev_marker)

    assert backend.startswith("127.0.0.1:")
    assert found["hits"][dev_marker] == [int(backend.rsplit(":", 1)[1])]
    assert deployment.status("qa")["backend"].startswith("netns:")


# -- files: preflight (case C8) and symbolic links -------------------------------------------


def wait_state(dep: Deployment, role: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
    for _ in deadline_loop(timeout_s, 0.05):
        assert dep.proc is not None and dep.proc.poll() is None, dep.log_text()[-3000:]
        status = dep.status(role)
        if status["state"] == state:
            return status  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


def assert_never_spawned(dep: Deployment, role: str) -> None:
    tenant_log = dep.root / "log" / f"{role}.log"

    assert dep.status(role)["pid"] is None
    assert user_processes(dep.users[role]) == []
    assert f"tenant {role}: started server" not in dep.log_text()
    assert not tenant_log.exists() or tenant_log.read_text() == ""


def test_store_behind_a_closed_directory_fails_only_that_tenant(deployment: Deployment) -> None:
    """Case C8."""
    private = deployment.root / "private"
    private.mkdir(mode=0o700)
    qa = pwd.getpwnam(deployment.users["qa"])
    os.chown(private, qa.pw_uid, qa.pw_gid)
    deployment.config["tenants"]["dev"]["models_dir"] = str(private / "ollama_dev")
    deployment.start()

    status = wait_state(deployment, "dev", "failed")
    deployment.wait_ready(("admin", "qa"))

    assert str(private) in status["last_error"]
    assert f"chmod o+x {private}" in status["last_error"]
    assert_never_spawned(deployment, "dev")


def tree_state(path: Path) -> list[tuple[str, int, int, int]]:
    """Owner, group and mode of ``path`` and everything below it, links not followed."""
    paths = [path, *sorted(path.rglob("*"))]
    return [(str(p), os.lstat(p).st_uid, os.lstat(p).st_gid, os.lstat(p).st_mode) for p in paths]


def test_planted_links_for_store_and_home_are_refused(deployment: Deployment) -> None:
    etc_x = deployment.root / "etc-x"  # stands in for /etc/x: root's, never to be handed over
    etc_x.mkdir(mode=0o755)
    (etc_x / "config").write_text("root's\n")
    before = tree_state(etc_x)
    dev_store = deployment.store_of("dev")
    dev_store.parent.mkdir(mode=0o755, exist_ok=True)
    dev_store.symlink_to(etc_x)
    qa_home = deployment.root / "qa-home"
    qa_home.symlink_to(etc_x)
    deployment.config["tenants"]["qa"]["home"] = str(qa_home)
    deployment.start()

    dev = wait_state(deployment, "dev", "failed")
    qa = wait_state(deployment, "qa", "failed")
    deployment.wait_ready(("admin",))

    assert f"{dev_store} is a symbolic link" in dev["last_error"]
    assert f"HOME: {qa_home} is a symbolic link" in qa["last_error"]
    assert tree_state(etc_x) == before
    assert_never_spawned(deployment, "dev")
    assert_never_spawned(deployment, "qa")


def test_link_planted_above_a_store_is_not_followed(deployment: Deployment) -> None:
    """The tenant owns a directory above its store and swaps a level for a link to root's."""
    dev = pwd.getpwnam(deployment.users["dev"])
    team = deployment.root / "team"
    team.mkdir(mode=0o755)
    os.chown(team, dev.pw_uid, dev.pw_gid)
    etc_y = deployment.root / "etc-y"
    etc_y.mkdir(mode=0o755)
    before = tree_state(etc_y)
    link = team / "models"
    link.symlink_to(etc_y)
    os.chown(link, dev.pw_uid, dev.pw_gid, follow_symlinks=False)
    deployment.config["tenants"]["dev"]["models_dir"] = str(link / "ollama_dev")
    deployment.start()

    status = wait_state(deployment, "dev", "failed")
    deployment.wait_ready(("admin", "qa"))

    assert f"{link} is a symbolic link" in status["last_error"]
    assert tree_state(etc_y) == before  # nothing made in root's directory, nothing handed over
    assert_never_spawned(deployment, "dev")


def test_symlinked_socket_directory_stops_the_daemon(deployment: Deployment) -> None:
    real = deployment.root / "real-run"
    real.mkdir(mode=0o755)
    before = tree_state(real)
    link = deployment.root / "run-link"
    link.symlink_to(real)
    deployment.config["tenants"]["dev"]["socket"]["path"] = str(link / "dev.sock")
    deployment.write()

    done = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon", "--config", str(deployment.config_path)],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
    )

    assert done.returncode == 1
    assert f"{link} is a symbolic link" in done.stderr
    assert "Traceback" not in done.stderr
    assert tree_state(real) == before
    assert not deployment.control.exists()
    for role in ROLES:
        assert user_processes(deployment.users[role]) == []
