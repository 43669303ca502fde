"""sd_notify messages to a real datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.systemd import Notifier, state_summary


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_and_status_arrive_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})

    assert notifier.ready("3 tenants: 3 ready")

    assert receive(sock) == {"READY": "1", "STATUS": "3 tenants: 3 ready"}


def test_abstract_socket_address_starts_with_a_nul_byte() -> None:
    name = f"janus-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)

        Notifier(f"@{name}").watchdog()

        assert receive(sock) == {"WATCHDOG": "1"}


def test_reloading_carries_the_monotonic_time(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    Notifier(path).reloading()

    message = receive(sock)
    assert message["RELOADING"] == "1"
    assert before_us <= int(message["MONOTONIC_USEC"]) <= before_us + 5_000_000


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})

    assert not notifier.enabled
    assert not notifier.ready("x")


@pytest.mark.parametrize(
    ("environ", "interval_s"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], interval_s: float | None
) -> None:
    assert Notifier.from_environment(environ).watchdog_interval_s == interval_s


def test_failed_send_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))

    results = [notifier.status("a"), notifier.status("b")]

    assert results == [False, False]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "systemd: cannot notify" in warnings[0].getMessage()


def test_state_summary_counts_each_state() -> None:
    assert state_summary(["ready", "starting", "ready"]) == "3 tenants: 2 ready, 1 starting"
    assert state_summary(["failed"]) == "1 tenant: 1 failed"
    assert state_summary([]) == "no tenants configured"
