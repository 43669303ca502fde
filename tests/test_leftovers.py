"""Ending what a killed daemon left behind: by uid and start time, never by a bare pid."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from supervisor.leftovers import ProcessTracker, end_leftovers, ref_of
from tests.integration.harness import create_user, delete_user


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


# -- runners that left the recorded group before any observation (cases C2/C3) ---------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a real tenant user)")
SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture(scope="module")
def tenant_user() -> Iterator[pwd.struct_passwd]:
    name = f"jtlo{secrets.token_hex(3)}"
    create_user(name)
    try:
        yield pwd.getpwnam(name)
    finally:
        delete_user(name)


@dataclass
class Spawner:
    user: pwd.struct_passwd
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(self, env: dict[str, str] | None = None) -> psutil.Process:
        """``sleep`` as the tenant user in a session of its own (as after ``setsid``)."""
        proc = subprocess.Popen([SLEEP, "60"], user=self.user.pw_uid, group=self.user.pw_gid,
                                extra_groups=[], start_new_session=True, cwd="/",
                                env={"PATH": "/usr/bin:/bin", **(env or {})})
        self.procs.append(proc)
        return psutil.Process(proc.pid)

    def dead_server(self, record: Path, store: Path | None) -> None:
        """Record a server that is gone, in the old format (no marker) unless ``store``."""
        server = self()
        if store is None:
            record.write_text(json.dumps({
                "uid": self.user.pw_uid, "pgid": server.pid,
                "server": [server.pid, server.create_time()],
                "known": [[server.pid, server.create_time()]]}))
        else:
            ProcessTracker(server.pid, self.user.pw_uid, store, record)
        server.kill()
        self.procs[-1].wait()


@pytest.fixture
def spawn(tenant_user: pwd.struct_passwd) -> Iterator[Spawner]:
    spawner = Spawner(tenant_user)
    yield spawner
    for proc in spawner.procs:
        proc.kill()
        proc.wait()


def ended(proc: psutil.Process) -> bool:
    try:
        proc.wait(timeout=5)
    except psutil.TimeoutExpired:
        return False
    return True


@needs_root
def test_marked_process_outside_record_and_group_is_ended(tmp_path: Path, spawn: Spawner) -> None:
    store = tmp_path / "stores" / "dev"
    record = tmp_path / "dev.json"
    spawn.dead_server(record, None)  # a record of the old format: uid, group, server only
    runner = spawn({"OLLAMA_MODELS": str(store), "HOME": "/nonexistent"})
    unmarked = spawn({"OLLAMA_MODELS": str(tmp_path / "stores" / "other")})
    ours = subprocess.Popen([SLEEP, "60"], env={"OLLAMA_MODELS": str(store)},
                            start_new_session=True)  # marked, but another uid (root)
    daemon_start = max(runner.create_time(), unmarked.create_time()) + 1

    try:
        killed = end_leftovers("dev", record, store, started_before=daemon_start)
    finally:
        ours.kill()
        ours.wait()

    assert killed == [runner.pid]
    assert ended(runner)
    assert unmarked.is_running() and unmarked.status() != psutil.STATUS_ZOMBIE
    assert not record.exists()


@needs_root
def test_marked_process_started_after_the_daemon_is_left_alone(tmp_path: Path,
                                                               spawn: Spawner) -> None:
    store = tmp_path / "stores" / "dev"
    record = tmp_path / "dev.json"
    spawn.dead_server(record, None)
    late = spawn({"OLLAMA_MODELS": str(store)})
    daemon_start = late.create_time() - 1  # the daemon was already running when it started

    killed = end_leftovers("dev", record, store, started_before=daemon_start)

    assert killed == []
    assert late.is_running() and late.status() != psutil.STATUS_ZOMBIE


@needs_root
def test_marker_saved_in_the_record_is_enough(tmp_path: Path, spawn: Spawner) -> None:
    """The store may have moved in the new config: the record's own marker still finds them."""
    store = tmp_path / "stores" / "dev"
    record = tmp_path / "dev.json"
    spawn.dead_server(record, store)
    assert json.loads(record.read_text())["marker"] == f"OLLAMA_MODELS={store}"
    runner = spawn({"OLLAMA_MODELS": str(store)})

    killed = end_leftovers("dev", record, tmp_path / "moved",
                           started_before=runner.create_time() + 1)

    assert killed == [runner.pid]
    assert ended(runner)


def test_no_record_means_no_search_by_marker(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.Popen([SLEEP, "60"], env={"OLLAMA_MODELS": str(store)},
                            start_new_session=True)
    try:
        killed = end_leftovers("dev", tmp_path / "none.json", store,
                               started_before=psutil.Process(proc.pid).create_time() + 1)
        assert killed == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
