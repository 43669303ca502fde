"""Tests of supervisor.sockets: safe creation and removal of the daemon's listening sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from supervisor.errors import ControlError
from supervisor.sockets import BoundSocket, bind_unix_socket, peer_credentials, remove_unix_socket

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to chown")


def bind(path: Path, mode: int = 0o660) -> BoundSocket:
    return bind_unix_socket(path, mode=mode, uid=os.geteuid(), gid=os.getegid())


def dead_socket(path: Path) -> os.stat_result:
    """Leave a socket file nobody listens on, as a SIGKILLed daemon would."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return os.lstat(path)


def connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(path))
        except ConnectionRefusedError:
            return False
    return True


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    return directory


def test_bound_socket_listens_non_blocking_at_its_path(sock_dir: Path) -> None:
    bound = bind(sock_dir / "control.sock")

    assert connects(bound.path)
    assert bound.sock.getblocking() is False
    assert bound.is_published()
    bound.close()


def test_mode_is_applied_whatever_the_umask(sock_dir: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        bound = bind(sock_dir / "control.sock", mode=0o666)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.lstat(bound.path).st_mode) == 0o666
    bound.close()


@needs_root
def test_owner_and_group_are_applied(sock_dir: Path) -> None:
    bound = bind_unix_socket(sock_dir / "dev.sock", mode=0o660, uid=4242, gid=4343)

    st = os.lstat(bound.path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o660)
    bound.close()


def test_no_temporary_name_is_left_behind(sock_dir: Path) -> None:
    bound = bind(sock_dir / "control.sock")

    assert os.listdir(sock_dir) == ["control.sock"]
    bound.close()


def test_missing_parent_is_created_with_mode_0755(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        bound = bind(tmp_path / "a" / "b" / "control.sock")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o755
    bound.close()


def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    old = dead_socket(sock_dir / "control.sock")

    bound = bind(sock_dir / "control.sock")

    assert bound.ino != old.st_ino
    assert connects(bound.path)
    bound.close()


def test_live_socket_is_refused_and_left_alone(sock_dir: Path) -> None:
    first = bind(sock_dir / "control.sock")

    with pytest.raises(ControlError, match="in use by another process; is another janus"):
        bind(sock_dir / "control.sock")

    assert first.is_published()
    assert connects(first.path)
    first.close()


def test_regular_file_is_refused_and_kept(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    path.write_text("precious")

    with pytest.raises(ControlError, match="is a regular file, not a socket; refusing"):
        bind(path)

    assert path.read_text() == "precious"


def test_directory_at_path_is_refused(sock_dir: Path) -> None:
    (sock_dir / "control.sock").mkdir()

    with pytest.raises(ControlError, match="is a directory, not a socket"):
        bind(sock_dir / "control.sock")


@pytest.mark.parametrize("target_kind", ["file", "stale socket"])
def test_symlink_at_path_is_refused_and_its_target_untouched(
    sock_dir: Path, tmp_path: Path, target_kind: str
) -> None:
    target = tmp_path / "target"
    if target_kind == "file":
        target.write_text("keep me")
    else:
        dead_socket(target)
    before = os.lstat(target)
    (sock_dir / "control.sock").symlink_to(target)

    with pytest.raises(ControlError, match="is a symbolic link; refusing to follow or replace it"):
        bind(sock_dir / "control.sock")

    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
    )
    assert os.path.islink(sock_dir / "control.sock")


def test_symlinked_parent_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)

    with pytest.raises(ControlError, match="link is a symbolic link .* refusing to follow it"):
        bind(tmp_path / "link" / "control.sock")

    assert os.listdir(real) == []


@needs_root
def test_root_owned_symlink_above_the_parent_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real" / "run").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # like /var/run -> /run

    bound = bind(tmp_path / "alias" / "run" / "control.sock")

    assert os.listdir(tmp_path / "real" / "run") == ["control.sock"]
    bound.close()


def test_parent_writable_by_others_is_refused(sock_dir: Path) -> None:
    sock_dir.chmod(0o777)

    with pytest.raises(ControlError, match=r"writable by other users \(mode 0777\)"):
        bind(sock_dir / "control.sock")

    assert os.listdir(sock_dir) == []


@needs_root
def test_parent_owned_by_another_user_is_refused(sock_dir: Path) -> None:
    os.chown(sock_dir, 4242, 4242)

    with pytest.raises(ControlError, match="is owned by uid 4242"):
        bind(sock_dir / "control.sock")


def test_too_long_path_is_refused(sock_dir: Path) -> None:
    with pytest.raises(ControlError, match="unix sockets allow at most 107"):
        bind(sock_dir / ("x" * 120))


def test_close_removes_our_socket(sock_dir: Path) -> None:
    bound = bind(sock_dir / "control.sock")

    bound.close()

    assert not os.path.lexists(bound.path)
    bound.close()  # a second close is harmless


def test_close_keeps_a_socket_that_replaced_ours(sock_dir: Path) -> None:
    bound = bind(sock_dir / "control.sock")
    os.unlink(bound.path)
    successor = dead_socket(bound.path)

    assert remove_unix_socket(bound) is False
    bound.close()

    assert os.lstat(bound.path).st_ino == successor.st_ino


def test_close_keeps_a_regular_file_at_the_path(sock_dir: Path) -> None:
    bound = bind(sock_dir / "control.sock")
    os.unlink(bound.path)
    bound.path.write_text("not ours")

    bound.close()

    assert bound.path.read_text() == "not ours"


def test_peer_credentials_name_the_connecting_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.getuid(), os.getgid())
