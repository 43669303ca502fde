"""Tenant log files: size rotation, reopen for logrotate, ring, followers, failures (case C13)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from supervisor import logs
from supervisor.logs import LogFollower, TenantLog

MIB = 1024 * 1024
LINE = "x" * 99  # 100 bytes with the newline, plus the 20-byte time stamp


def log_files(directory: Path, tenant: str = "dev") -> list[Path]:
    return sorted(directory.glob(f"{tenant}.log*"))


def write_bytes(out: TenantLog, total: int) -> None:
    for _ in range(total // (len(LINE) + 21)):
        out.write(LINE)


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make ``directory`` refuse new entries, for root too (immutable attribute)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    done = subprocess.run(
        ["chattr", "+i", str(directory)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "supervisor.logs" and r.levelname == "WARNING"]


def test_ten_mib_through_a_1_mib_limit_leaves_at_most_four_files(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, max_bytes=MIB, backups=3, echo=False)

    write_bytes(out, 10 * MIB)

    files = log_files(tmp_path)
    assert [f.name for f in files] == ["dev.log", "dev.log.1", "dev.log.2", "dev.log.3"]
    assert all(f.stat().st_size <= MIB for f in files)
    assert all(f.stat().st_size > MIB - 200 for f in files[1:])
    assert out.rotations >= 9


def test_rotation_keeps_the_newest_lines_in_the_current_file(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, max_bytes=4096, backups=1, echo=False)

    for n in range(1000):
        out.write(f"line {n:03d}")

    assert (tmp_path / "dev.log").read_text().splitlines()[-1].endswith("line 999")
    assert "line 000" not in (tmp_path / "dev.log.1").read_text()
    assert not (tmp_path / "dev.log.2").exists()


def test_no_backups_means_one_file_that_starts_over(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, max_bytes=4096, backups=0, echo=False)

    write_bytes(out, 20_000)

    assert [f.name for f in log_files(tmp_path)] == ["dev.log"]
    assert (tmp_path / "dev.log").stat().st_size <= 4096


def test_file_and_directory_are_private_to_the_daemon(tmp_path: Path) -> None:
    directory = tmp_path / "log"

    TenantLog("dev", directory, echo=False).write("hello")

    st = (directory / "dev.log").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750


def test_reopen_after_logrotate_moved_the_file_writes_a_new_file(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, echo=False)
    out.write("before")
    (tmp_path / "dev.log").rename(tmp_path / "dev.log-20260101")
    out.write("still old file")

    out.reopen()
    out.write("after")

    assert (tmp_path / "dev.log").read_text().endswith(" after\n")
    assert "after" not in (tmp_path / "dev.log-20260101").read_text()
    assert "still old file" in (tmp_path / "dev.log-20260101").read_text()


def test_unwritable_directory_at_start_warns_and_keeps_ring(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    out = TenantLog("dev", blocker / "log", echo=False)
    out.write("kept in memory")

    [warning] = warnings_of(caplog)
    assert warning.tenant == "dev"  # type: ignore[attr-defined]
    assert "tenant dev: cannot open its log file" in warning.getMessage()
    assert "SIGUSR1" in warning.getMessage()
    assert out.tail(1)[0].endswith(" kept in memory")


def test_directory_turning_unwritable_bounds_the_file_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = TenantLog("dev", tmp_path, max_bytes=4096, backups=2, echo=False)

    with unwritable(tmp_path):
        write_bytes(out, 40_000)
        out.write("last line")

    assert len(warnings_of(caplog)) == 1
    assert "cannot rotate" in warnings_of(caplog)[0].getMessage()
    assert (tmp_path / "dev.log").stat().st_size <= 4096
    assert out.tail(1)[0].endswith(" last line")


def test_reopen_after_the_directory_is_fixed_resumes_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "supervisor.logs")
    out = TenantLog("dev", tmp_path, echo=False)
    (tmp_path / "dev.log").rename(tmp_path / "moved.log")
    with unwritable(tmp_path):
        out.reopen()
        out.write("lost for the file")

    out.reopen()
    out.write("back")

    assert (tmp_path / "dev.log").read_text().endswith(" back\n")
    assert any("writing its log file" in r.getMessage() for r in caplog.records)


def test_file_retried_after_retry_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = TenantLog("dev", tmp_path, echo=False)
    (tmp_path / "dev.log").rename(tmp_path / "moved.log")
    with unwritable(tmp_path):
        out.reopen()
    monkeypatch.setattr(logs, "RETRY_S", 0.0)

    out.write("retried")

    assert (tmp_path / "dev.log").read_text().endswith(" retried\n")


def test_symlink_at_the_log_path_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "dev.log").symlink_to(target)

    TenantLog("dev", tmp_path / "log", echo=False).write("planted?")

    assert target.read_text() == "precious\n"
    assert len(warnings_of(caplog)) == 1


def test_each_line_goes_to_stderr_prefixed_by_the_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    TenantLog("qa", tmp_path).write('level=INFO msg="Listening on 127.0.0.1:11434"')

    assert capsys.readouterr().err == 'qa | level=INFO msg="Listening on 127.0.0.1:11434"\n'


def test_tail_returns_the_last_lines_of_the_ring(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, echo=False)
    for n in range(logs.RING_LINES + 5):
        out.write(f"n={n}")

    tail = out.tail(2)

    assert [line.split(" ", 1)[1] for line in tail] == [
        f"n={logs.RING_LINES + 3}",
        f"n={logs.RING_LINES + 4}",
    ]
    assert len(out.tail(10**6)) == logs.RING_LINES
    assert out.tail(0) == []


def test_configure_with_a_new_directory_moves_the_file(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path / "a", echo=False)

    out.configure(tmp_path / "b", max_bytes=4096, backups=1)
    out.write("moved")

    assert (tmp_path / "b" / "dev.log").read_text().endswith(" moved\n")


async def test_follower_gets_the_backlog_then_new_lines(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, echo=False)
    out.write("old")

    with out.follow(5) as follower:
        first = await follower.next_lines()
        out.write("new")
        second = await follower.next_lines()
    out.write("after the client left")

    assert [line.split(" ", 1)[1] for line in first or []] == ["old"]
    assert [line.split(" ", 1)[1] for line in second or []] == ["new"]
    follower.close()
    assert await follower.next_lines() is None  # nothing was queued after the client left


async def test_follower_wakes_when_a_line_arrives() -> None:
    follower = LogFollower([])
    got: list[list[str] | None] = []

    async with anyio.create_task_group() as tg:

        async def read() -> None:
            got.append(await follower.next_lines())

        tg.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        follower.push("hello")

    assert got == [["hello"]]


async def test_slow_follower_drops_the_oldest_lines_and_counts_them() -> None:
    follower = LogFollower([], limit=3)

    for n in range(5):
        follower.push(str(n))

    assert await follower.next_lines() == ["2", "3", "4"]
    assert follower.dropped == 2


async def test_closing_the_log_ends_its_followers(tmp_path: Path) -> None:
    out = TenantLog("dev", tmp_path, echo=False)

    with out.follow(0) as follower:
        out.close()
        ended = await follower.next_lines()

    assert ended is None
