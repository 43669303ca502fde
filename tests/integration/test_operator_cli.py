"""The operator's surface on the real daemon: CLI, logs (case C13), metrics, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    REPO,
    ROLES,
    Deployment,
    deadline_loop,
    needs_root,
    raw_http,
)

pytestmark = needs_root

MIB = 1024 * 1024
NOISY = """#!/bin/sh
# Prints 10 MiB before becoming the server: a tenant whose output never stops (case C13).
/usr/bin/python3 -c 'import sys; sys.stdout.write(("x" * 1023 + "\\n") * 10240)'
exec "$(dirname "$0")/ollama-emulator" "$@"
"""


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    deployment.start()
    deployment.wait_ready()
    return deployment


def metrics_of(dep: Deployment) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    data = raw_http(dep.control, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- CLI ---------------------------------------------------------------------------------------


def test_status_of_one_tenant_exits_0_only_when_ready(running: Deployment) -> None:
    ok = running.ctl("status", "dev")
    running.ctl("stop", "qa")

    stopped = running.ctl("status", "qa")

    assert ok.returncode == 0
    assert stopped.returncode == 4
    assert stopped.stdout.splitlines()[1].split()[:3] == ["qa", "stopped", "no"]


def test_logs_shows_provisioning_and_follow_sees_a_restart(running: Deployment) -> None:
    recent = running.ctl("logs", "dev", "-n", "200")
    follow = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "--socket", str(running.control), "logs", "dev",
         "-n", "0", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        running.ctl("restart", "dev")
        assert follow.stdout is not None
        first_new = follow.stdout.readline()
    finally:
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=30)

    assert recent.returncode == 0
    assert "[janus] variant janus-pro-7b-dev: created" in recent.stdout
    assert first_new.strip() != ""
    assert follow.returncode == 0


def test_rebuild_recreates_a_variant_in_place(running: Deployment) -> None:
    pid = running.pid_of("qa")

    done = running.ctl("rebuild", "qa", "janus-pro-7b-qa")

    assert done.returncode == 0, done.stderr
    assert running.pid_of("qa") == pid
    assert "variant janus-pro-7b-qa: rebuild forced" in running.ctl("logs", "qa").stdout


# -- logs on disk (case C13) -------------------------------------------------------------------


def test_case_c13_logs_never_stop_growing(deployment: Deployment) -> None:
    noisy = deployment.root / "tools" / "noisy-ollama"
    noisy.write_text(NOISY)
    noisy.chmod(0o755)
    deployment.config["ollama"]["binary"] = str(noisy)
    deployment.config["log_max_bytes"] = MIB
    deployment.config["log_backups"] = 3
    log_dir = Path(deployment.config["log_dir"])
    deployment.start()
    deployment.wait_ready()

    files = sorted(log_dir.glob("dev.log*"))
    assert [f.name for f in files] == ["dev.log", "dev.log.1", "dev.log.2", "dev.log.3"]
    assert all(MIB - 2048 < f.stat().st_size <= MIB for f in files[1:])
    assert all(f.stat().st_uid == 0 for f in files)
    assert "dev | xxxx" in deployment.log_text()

    # logrotate moves the file away, then asks the daemon to reopen.
    (log_dir / "dev.log").rename(log_dir / "dev.log-rotated")
    assert deployment.proc is not None
    deployment.proc.send_signal(signal.SIGUSR1)
    for _ in deadline_loop(10):
        if (log_dir / "dev.log").exists():
            break
    moved_size = (log_dir / "dev.log-rotated").stat().st_size
    deployment.ctl("restart", "dev")
    deployment.wait_ready(("dev",))
    assert "Listening on" in (log_dir / "dev.log").read_text(errors="replace")
    assert (log_dir / "dev.log-rotated").stat().st_size == moved_size


@pytest.fixture
def immutable(deployment: Deployment) -> Iterator[Path]:
    """The log directory, made unwritable even for root once the test says so."""
    log_dir = Path(deployment.config["log_dir"])
    yield log_dir
    subprocess.run(["chattr", "-i", str(log_dir)], capture_output=True, check=False)


def test_unwritable_log_directory_warns_and_supervision_goes_on(
    running: Deployment, immutable: Path
) -> None:
    (immutable / "dev.log").rename(immutable / "dev.log.old")
    chattr = subprocess.run(["chattr", "+i", str(immutable)], capture_output=True, check=False)
    if chattr.returncode:
        pytest.skip("chattr +i is not supported on this file system")

    reopen = running.ctl("reopen-logs")
    restart = running.ctl("restart", "dev")
    running.wait_ready(("dev",))

    assert reopen.returncode == 0 and restart.returncode == 0
    assert "tenant dev: cannot open its log file" in running.log_text()
    assert not (immutable / "dev.log").exists()
    assert "Listening on" in running.ctl("logs", "dev", "-n", "50").stdout


def test_log_directory_unusable_from_the_start_is_not_fatal(deployment: Deployment) -> None:
    blocker = deployment.root / "not-a-directory"
    blocker.write_text("")
    deployment.config["log_dir"] = str(blocker / "log")

    deployment.start()
    deployment.wait_ready()

    assert "tenant dev: cannot open its log file" in deployment.log_text()


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_report_every_tenant_with_its_runners(deployment: Deployment) -> None:
    deployment.config["ollama"]["env"] = {"JANUS_EMU_RUNNERS_AT_START": "1"}
    port = free_port()
    deployment.config["control"]["metrics_address"] = f"127.0.0.1:{port}"
    deployment.start()
    deployment.wait_ready()
    deployment.ctl("restart", "qa")
    deployment.wait_ready()

    got = metrics_of(deployment)

    for role in ROLES:
        key = (("tenant", role),)
        assert got["janus_tenant_up"][key] == 1.0
        assert got["janus_tenant_ready"][key] == 1.0
        assert got["janus_tenant_state"][(("state", "ready"), ("tenant", role))] == 1.0
        assert got["janus_tenant_processes"][key] >= 2  # server plus its runner
        assert got["janus_tenant_memory_rss_bytes"][key] > MIB
        assert 0 < got["janus_tenant_time_to_ready_seconds"][key] < 30
    restarts = got["janus_tenant_restarts_total"]
    assert restarts[(("cause", "restart requested"), ("tenant", "qa"))] == 1.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert b'janus_tenant_ready{tenant="dev"} 1.0' in reply.read()


# -- systemd notifications ---------------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 60) -> dict[str, str]:
        """The first message from now on with ``key`` (and ``value``)."""
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            data = self.sock.recv(4096).decode()
            message = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            self.messages.append(message)
            if key in message and (value is None or message[key] == value):
                return message
        raise TimeoutError(f"no {key} notification within {timeout_s}s")


@pytest.fixture
def notify(deployment: Deployment) -> Iterator[NotifySocket]:
    listener = NotifySocket(deployment.root / "notify.sock")
    deployment.extra_env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"}
    yield listener
    listener.sock.close()


def test_systemd_hears_ready_status_watchdog_reload_and_stop(
    deployment: Deployment, notify: NotifySocket
) -> None:
    # admin's server answers only after 1.5 s: READY=1 must wait for it.
    deployment.config["tenants"]["admin"]["env"] = {"JANUS_EMU_STARTUP_DELAY_S": "1.5"}
    deployment.start()

    ready = notify.wait_for("READY", "1")
    states = [t["state"] for t in deployment.status()["tenants"]]
    watchdog = notify.wait_for("WATCHDOG", "1")
    assert deployment.proc is not None
    deployment.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1")
    ready_again = notify.wait_for("READY", "1")
    deployment.proc.send_signal(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING", "1")

    assert ready["STATUS"].startswith("3 tenants: ")
    assert not {"stopped", "starting"} & set(states)
    assert any("EXTEND_TIMEOUT_USEC" in m for m in notify.messages)
    assert watchdog == {"WATCHDOG": "1"}
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert ready_again["STATUS"].startswith("3 tenants: ")
    assert "STATUS" in stopping
    assert deployment.proc.wait(timeout=60) == 0
    assert os.path.exists(notify.path)
