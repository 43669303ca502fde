"""Crashes, hangs, stops and the daemon's own death, with the emulator's fault knobs (issue 4).

Each test trims the tutorial deployment to the tenants it needs and sets knobs through the
tenant's ``env``; the daemon passes them through like any other tenant environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.harness import (
    Deployment,
    deadline_loop,
    needs_root,
    raw_http,
    user_processes,
)

pytestmark = needs_root


def only(dep: Deployment, *roles: str, **knobs: Any) -> None:
    """Keep ``roles``; give each the knobs (tenant config keys, or env when upper case)."""
    for role in list(dep.config["tenants"]):
        if role not in roles:
            del dep.config["tenants"][role]
    for role in roles:
        tenant = dep.config["tenants"][role]
        for key, value in knobs.items():
            if key.isupper():
                tenant.setdefault("env", {})[key] = str(value)
            else:
                tenant[key] = value


def wait_status(dep: Deployment, role: str, predicate: Any, timeout_s: float = 30) -> Any:
    for _ in deadline_loop(timeout_s, 0.02):
        status = dep.status(role)
        if predicate(status):
            return status


def lock_is_free(path: Path) -> bool:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def tenant_writable(dep: Deployment, role: str, name: str) -> Path:
    user = pwd.getpwnam(dep.users[role])
    path = dep.root / name
    path.touch()
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def port_free(backend: str) -> bool:
    host, port = backend.rsplit(" ", 1)[-1].rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


# The runner knobs, and what the two runners then are: (left the server's session, ignores TERM).
@pytest.mark.parametrize(("runners", "kinds_wanted"), [
    pytest.param({"JANUS_EMU_RUNNER_SETSID": "1"}, [(True, False)] * 2, id="setsid"),
    pytest.param({"JANUS_EMU_RUNNER_IGNORE_SIGTERM": "1"}, [(False, True)] * 2, id="ignore-term"),
    # C1 as reported: one runner stays in the group and ignores TERM, the other calls setsid.
    pytest.param({"JANUS_EMU_RUNNER_IGNORE_SIGTERM": "#0", "JANUS_EMU_RUNNER_SETSID": "#1"},
                 [(False, True), (True, False)], id="one-of-each"),
])
def test_stop_leaves_no_grandchild(
    deployment: Deployment, runners: dict[str, str], kinds_wanted: list[tuple[bool, bool]]
) -> None:
    """Cases C1 and C4: the leader quits at once, runners escape the group or ignore TERM."""
    # Host network, so that "the backend port is free again" can be checked from here.
    only(deployment, "dev", JANUS_EMU_EXIT_FAST=1, JANUS_EMU_RUNNERS_AT_START=2, stop_timeout_s=2,
         network="host", **runners)
    deployment.start()
    deployment.wait_ready(("dev",))
    backend = deployment.status("dev")["backend"]
    wait_status(deployment, "dev", lambda s: len(user_processes(deployment.users["dev"])) == 3)
    server = deployment.pid_of("dev")
    kinds = sorted(runner_kind(pid, server) for pid in user_processes(deployment.users["dev"])
                   if pid != server)

    began = time.monotonic()
    with watch_states(deployment, "dev") as seen:
        result = deployment.ctl("stop", "dev")
    took = time.monotonic() - began

    assert result.returncode == 0, result.stderr
    assert deployment.status("dev")["state"] == "stopped"
    assert user_processes(deployment.users["dev"]) == []
    # C4: stopping until the group is empty, and stopped only then.
    assert "stopping" in {state for state, _ in seen}
    assert all(left == 0 for state, left in seen if state == "stopped"), seen
    assert port_free(backend)
    assert deployment.status("dev")["last_exit"]["killed_after_timeout"] is True
    assert took >= 2.0
    assert "killed after stop timeout" in deployment.log_text()
    assert kinds == kinds_wanted


@contextlib.contextmanager
def watch_states(dep: Deployment, role: str) -> Iterator[list[tuple[str, int]]]:
    """Samples of (state, live processes of the tenant's user), state read first, taken every
    10 ms in a thread while the block runs."""
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            state = dep.status(role)["state"]
            seen.append((state, len(user_processes(dep.users[role]))))

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def runner_kind(pid: int, server: int) -> tuple[bool, bool]:
    """Whether ``pid`` left ``server``'s session, and whether it ignores SIGTERM."""
    ignored = int(proc_status_field(pid, "SigIgn"), 16)
    return os.getsid(pid) != os.getsid(server), bool(ignored & (1 << (signal.SIGTERM - 1)))


def proc_status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def test_sigkilled_daemon_leaves_nothing_running_twice(deployment: Deployment) -> None:
    """Cases C2 and C3: servers die with the daemon; the next daemon ends the runners first.

    dev's two runners call setsid and ignore SIGTERM, and the daemon is killed as soon as they
    run, before any probe period: they are neither in the record nor in its process group (the
    tester's repro). Their uid, their start before the new daemon and the store in their
    environment must still mark them. qa's runner stays in the recorded group.
    """
    lock = tenant_writable(deployment, "dev", "gpu.lock")
    os.chmod(lock, 0o666)
    only(deployment, "dev", "qa", JANUS_EMU_RUNNERS_AT_START=1, probe_period_s=30)
    dev_env = deployment.config["tenants"]["dev"]["env"]
    dev_env.update(JANUS_EMU_RUNNERS_AT_START="2", JANUS_EMU_RUNNER_SETSID="1",
                   JANUS_EMU_RUNNER_IGNORE_SIGTERM="1", JANUS_EMU_RUNNER_LOCK=str(lock))
    dev_user = deployment.users["dev"]
    deployment.start()
    deployment.wait_ready(("dev", "qa"))
    old = {r: deployment.pid_of(r) for r in ("dev", "qa")}
    wait_status(deployment, "dev", lambda s: len(user_processes(dev_user)) == 3)
    runners = [psutil.Process(p) for p in user_processes(dev_user) if p != old["dev"]]
    assert not lock_is_free(lock)

    deployment.proc.kill()  # type: ignore[union-attr]
    deployment.proc.wait()  # type: ignore[union-attr]
    record_path = Path(deployment.config["state_dir"]) / "run" / "dev.json"
    record = json.loads(record_path.read_text())
    assert [pid for pid, _ in record["known"]] == [old["dev"]], "runners recorded: no C2 gap"
    for _ in deadline_loop(10):
        if not any(os.path.exists(f"/proc/{p}") and Path(f"/proc/{p}/stat").read_text()
                   .split(") ")[1][0] not in "ZX" for p in old.values()):
            break
    assert all(r.is_running() for r in runners), "the runners should outlive the daemon"
    assert not lock_is_free(lock), "the runners should still hold the lock (C3 setup)"
    del dev_env["JANUS_EMU_RUNNER_LOCK"]  # the new runners must not hold it: it shows the old
    deployment.start()
    deployment.wait_ready(("dev", "qa"))

    assert lock_is_free(lock)
    assert not any(r.is_running() for r in runners)
    log_text = deployment.log_text()  # the new daemon's log only
    spawned = log_text.index("tenant dev: started server pid")
    for runner in runners:
        assert -1 < log_text.find(f"tenant dev: ending pid {runner.pid} ") < spawned
    assert "tenant qa: ending pid" in log_text
    for role in ("dev", "qa"):
        assert deployment.pid_of(role) != old[role]
        servers = [p for p in user_processes(deployment.users[role])
                   if "runner" not in Path(f"/proc/{p}/cmdline").read_text()]
        assert servers == [deployment.pid_of(role)]
    wait_status(deployment, "dev", lambda s: len(user_processes(dev_user)) == 3)
    # One early look after ready records the new runners long before the 30 s probe period.
    wait_status(deployment, "dev", lambda s: len(json.loads(record_path.read_text())["known"])
                == 3, timeout_s=5)

    assert deployment.stop() == 0

    assert user_processes(dev_user) == []
    assert user_processes(deployment.users["qa"]) == []


def test_sigterm_to_daemon_releases_runner_lock(deployment: Deployment) -> None:
    """Case C3, first half."""
    lock = tenant_writable(deployment, "dev", "gpu.lock")
    only(deployment, "dev", JANUS_EMU_RUNNERS_AT_START=1, JANUS_EMU_EXIT_FAST=1,
         JANUS_EMU_RUNNER_LOCK=lock, stop_timeout_s=1)
    deployment.start()
    deployment.wait_ready(("dev",))
    wait_status(deployment, "dev", lambda s: not lock_is_free(lock))

    assert deployment.stop() == 0

    assert lock_is_free(lock)


def test_crash_loop_backs_off_then_fails(deployment: Deployment) -> None:
    """Case C9: growing delays, counters in status, then failed; start leaves failed."""
    only(deployment, "dev", JANUS_EMU_CRASH_AFTER_S=0.2, backoff_initial_s=0.2, backoff_max_s=0.8,
         restart_budget=4, restart_window_s=120)
    deployment.start()
    assert deployment.proc is not None
    daemon = psutil.Process(deployment.proc.pid)
    wait_status(deployment, "dev", lambda s: s["last_exit"] is not None)
    cpu_before, began = sum(daemon.cpu_times()[:2]), time.monotonic()
    delays: dict[float, float] = {}
    for _ in deadline_loop(60, 0.01):
        status = deployment.status("dev")
        if status["state"] == "backoff" and status["next_start_at"]:
            delay = round(status["next_start_at"] - status["last_exit"]["at"], 1)
            delays[status["next_start_at"]] = delay
        if status["state"] == "failed":
            break

    cpu_share = (sum(daemon.cpu_times()[:2]) - cpu_before) / (time.monotonic() - began)
    own_lines = [line for line in deployment.log_text().splitlines()
                 if " supervisor." in line and "tenant dev:" in line]

    assert list(delays.values()) == [0.2, 0.4, 0.8, 0.8]
    assert status["restarts"] == 4
    # No busy loop and no flood: a fraction of a core, a few lines of its own per start.
    assert cpu_share < 0.5, cpu_share
    assert len(own_lines) <= 10 * 5, own_lines  # 6 a start now: its states, pid and exit
    assert status["last_exit"]["code"] == 1
    assert "restart budget" in status["last_error"]
    assert status["since"] >= status["last_exit"]["at"]  # when it became failed, after the exit
    assert deployment.ctl("start", "dev").returncode in (0, 4)
    assert deployment.status("dev")["state"] != "failed"


def test_backoff_resets_only_after_a_healthy_period(deployment: Deployment) -> None:
    """Case C9: a crash after ``healthy_reset_s`` of readiness restarts at once and forgets the
    earlier failures; crashes sooner wait ``backoff_initial_s``, doubling."""
    only(deployment, "dev", healthy_reset_s=1.0, backoff_initial_s=0.5, backoff_max_s=4,
         restart_budget=10, restart_window_s=120)
    deployment.start()

    def delay_after_kill(up_for_s: float) -> float:
        """kill -9 the server once it has been ready ``up_for_s``; the delay before the next."""
        status = wait_status(deployment, "dev",
                             lambda s: s["ready"] and s["uptime_s"] >= up_for_s)
        os.kill(status["pid"], signal.SIGKILL)
        after = wait_status(deployment, "dev", lambda s: s["state"] == "backoff"
                            or s["pid"] not in (None, status["pid"]))
        if after["state"] != "backoff":
            return 0.0
        return round(after["next_start_at"] - after["last_exit"]["at"], 1)

    delays = [delay_after_kill(up) for up in (1.3, 0, 0, 1.3, 0)]

    assert delays == [0.0, 0.5, 1.0, 0.0, 0.5]
    assert deployment.status("dev")["restarts"] == 5


def test_slow_start_stays_starting_and_start_timeout_bounds_it(deployment: Deployment) -> None:
    """Case C10: not ready before GET / answers; start_timeout_s ends a start that never does."""
    only(deployment, "dev", JANUS_EMU_STARTUP_DELAY_S=30, start_timeout_s=1.5,
         backoff_initial_s=5)
    deployment.start()

    first = wait_status(deployment, "dev", lambda s: s["pid"] is not None)
    assert first["state"] == "starting" and first["ready"] is False
    status = wait_status(deployment, "dev", lambda s: s["state"] == "backoff")

    assert "start_timeout_s" in status["last_error"]
    assert status["restarts"] == 1


def test_death_while_starting_counts_as_failed_start(deployment: Deployment) -> None:
    """Case C10: the server dies before it ever answered."""
    only(deployment, "dev", JANUS_EMU_STARTUP_DELAY_S=5, JANUS_EMU_CRASH_AFTER_S=0.5,
         backoff_initial_s=5)
    deployment.start()

    status = wait_status(deployment, "dev", lambda s: s["state"] == "backoff")

    assert status["restarts"] == 1
    assert status["last_exit"]["code"] == 1
    assert "exited unexpectedly" in status["last_error"]


def test_wedged_server_is_restarted_by_deep_probe(deployment: Deployment) -> None:
    """Case C11: GET / answers but /api/show hangs and SIGTERM is ignored."""
    only(deployment, "dev", JANUS_EMU_WEDGE_AFTER_S=1.5, JANUS_EMU_IGNORE_SIGTERM=1,
         deep_probe_every=1, probe_period_s=0.3, probe_timeout_s=0.5, probe_failure_threshold=2,
         stop_timeout_s=1)
    deployment.start()
    deployment.wait_ready(("dev",))
    first = deployment.pid_of("dev")

    status = wait_status(deployment, "dev", lambda s: s["ready"] and s["pid"] != first, 30)

    assert status["last_exit"]["killed_after_timeout"] is True
    assert "deep probe" in deployment.log_text()
    assert all(v["state"] == "ready" for v in status["variants"])


def test_stopped_server_that_hangs_everything_is_restarted(deployment: Deployment) -> None:
    """Case C11, second form: nothing answers at all (as under SIGSTOP)."""
    only(deployment, "dev", probe_period_s=0.3, probe_timeout_s=0.5, probe_failure_threshold=2,
         stop_timeout_s=1)
    deployment.start()
    deployment.wait_ready(("dev",))
    first = deployment.pid_of("dev")

    os.kill(first, signal.SIGSTOP)
    status = wait_status(deployment, "dev", lambda s: s["ready"] and s["pid"] != first, 30)

    assert status["restarts"] >= 1
    assert "liveness failed 2/2" in deployment.log_text()


@pytest.mark.parametrize(("policy", "code", "restarts"),
                         [("never", 1, False), ("on-failure", 0, False), ("on-failure", 3, True)])
def test_restart_policy(deployment: Deployment, policy: str, code: int, restarts: bool) -> None:
    only(deployment, "dev", restart=policy, JANUS_EMU_CRASH_AFTER_S=1, JANUS_EMU_CRASH_CODE=code,
         backoff_initial_s=0.1)
    deployment.start()
    deployment.wait_ready(("dev",))
    first = deployment.pid_of("dev")

    if restarts:
        status = wait_status(deployment, "dev", lambda s: s["pid"] not in (None, first))
    else:
        status = wait_status(deployment, "dev", lambda s: s["state"] == "stopped")

    assert status["last_exit"]["code"] == code
    assert (status["restarts"] >= 1) is restarts


def test_admin_stop_wins_over_pending_restart(deployment: Deployment) -> None:
    only(deployment, "dev", JANUS_EMU_CRASH_AFTER_S=0.5, backoff_initial_s=1.5)
    deployment.start()
    wait_status(deployment, "dev", lambda s: s["state"] == "backoff")

    result = deployment.ctl("stop", "dev")
    after = deployment.status("dev")
    end = time.monotonic() + 2.5
    states = set()
    while time.monotonic() < end:  # longer than the pending backoff: it must never fire
        states.add(deployment.status("dev")["state"])
        time.sleep(0.05)

    assert result.returncode == 0
    assert after["state"] == "stopped" and after["next_start_at"] is None
    assert states == {"stopped"}


def test_killed_server_with_a_runner_is_seen_at_once(deployment: Deployment) -> None:
    """The runner keeps the server's output pipe open; its death must still be noticed."""
    only(deployment, "dev", JANUS_EMU_RUNNERS_AT_START=1, probe_period_s=30)
    deployment.start()
    deployment.wait_ready(("dev",))
    first = deployment.pid_of("dev")
    wait_status(deployment, "dev", lambda s: len(user_processes(deployment.users["dev"])) == 2)
    runner = max(user_processes(deployment.users["dev"]))

    os.kill(first, signal.SIGKILL)
    status = wait_status(deployment, "dev", lambda s: s["pid"] not in (None, first), 5)

    assert status["last_exit"]["signal"] == "SIGKILL"
    assert runner not in user_processes(deployment.users["dev"])


def test_requests_during_a_restart_all_succeed(deployment: Deployment) -> None:
    """Connections wait (connect_wait_s) while the tenant restarts; none gets an error."""
    only(deployment, "dev", connect_wait_s=30, JANUS_EMU_STARTUP_DELAY_S=0.3)
    deployment.start()
    deployment.wait_ready(("dev",))
    first = deployment.pid_of("dev")
    answers: list[bytes] = []
    done = threading.Event()
    request = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

    def client_loop() -> None:
        while not done.is_set():
            answers.append(raw_http(deployment.socket_of("dev"), request)[:12])

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        wait_status(deployment, "dev", lambda s: len(answers) >= 5)
        result = deployment.ctl("restart", "dev")
        wait_status(deployment, "dev", lambda s: s["ready"] and s["pid"] != first)
        count = len(answers)
        wait_status(deployment, "dev", lambda s: len(answers) >= count + 5)
    finally:
        done.set()
        thread.join(timeout=30)

    assert result.returncode == 0, result.stderr
    assert set(answers) == {b"HTTP/1.1 200"}, [a for a in answers if a != b"HTTP/1.1 200"][:3]
