"""Ending what a killed daemon left behind: by uid and start time, never by a bare pid."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.leftovers import ProcessTracker, end_leftovers, ref_of


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def write_record(path: Path, pid: int, start: float, pgid: int | None = None) -> None:
    path.write_text(json.dumps({"uid": os.getuid(), "pgid": pgid or -1,
                                "server": [pid, start], "known": [[pid, start]]}))


def test_recorded_process_with_matching_start_time_is_ended(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    record = tmp_path / "dev.json"
    ref = ref_of(sleeper.pid)
    assert ref is not None
    write_record(record, ref.pid, ref.start)

    killed = end_leftovers("dev", record)

    assert killed == [sleeper.pid]
    assert sleeper.wait(timeout=5) is not None  # reaped; psutil collected its status
    assert not record.exists()


def test_reused_pid_of_an_unrelated_process_is_never_signalled(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    record = tmp_path / "dev.json"
    ref = ref_of(sleeper.pid)
    assert ref is not None
    write_record(record, ref.pid, ref.start - 3600)  # same pid, other process

    killed = end_leftovers("dev", record)

    assert killed == []
    assert sleeper.poll() is None


def test_group_member_started_after_the_server_is_ended(tmp_path: Path) -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], start_new_session=True,
                              stdout=subprocess.PIPE)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    record = tmp_path / "dev.json"
    leader_ref = ref_of(leader.pid)
    assert leader_ref is not None
    # The record knows only the leader (the runner came after the last observation).
    write_record(record, leader.pid, leader_ref.start, pgid=leader.pid)

    killed = end_leftovers("dev", record)
    leader.wait(timeout=5)
    leader.stdout.close()

    assert set(killed) == {leader.pid, child}
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


def test_missing_record_ends_nothing(tmp_path: Path) -> None:
    assert end_leftovers("dev", tmp_path / "none.json") == []


def test_tracker_records_descendants_that_leave_the_group(tmp_path: Path) -> None:
    script = "setsid sleep 60 & echo $!; wait"
    server = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                              stdout=subprocess.PIPE)
    assert server.stdout is not None
    escaped = int(server.stdout.readline())
    record = tmp_path / "dev.json"
    tracker = ProcessTracker(server.pid, os.getuid(), tmp_path / "store", record)

    tracker.observe()
    saved = json.loads(record.read_text())
    signalled = tracker.kill_survivors()
    server.wait(timeout=5)
    server.stdout.close()

    assert escaped in [pid for pid, _ in saved["known"]]
    assert signalled == 2
    tracker.forget()
    assert not record.exists()
