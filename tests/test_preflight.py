"""Preflight checks, run as a real unprivileged user against real directories (case C8)."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor import preflight as preflight_module
from supervisor.errors import SpawnError
from supervisor.preflight import PreflightError, preflight
from supervisor.privileges import Identity, Launch, resolve_identity
from supervisor.spawn import spawn_server
from tests.integration.harness import create_user, delete_user, make_world_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a real tenant user)")


@dataclass
class World:
    root: Path
    identity: Identity
    binary: Path
    output: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def store(self) -> Path:
        return self.root / "stores" / "dev"

    async def check(self, *, isolated: bool = False, **paths: Path) -> None:
        """The daemon's steps, then the checks in a start of the (empty) binary as the user."""
        args = {"home": self.home, "store": self.store, "binary": self.binary, **paths}
        access = await preflight(self.identity, isolated=isolated, **args)
        server = await spawn_server(args["binary"], [], env={}, cwd=Path("/"),
                                    launch=Launch(self.identity, nofile=1024),
                                    sink=self.output.append, access=access)
        await server.wait()
        assert (await server.stop(timeout_s=5)).exit.code == 0


@pytest.fixture(scope="module")
def user() -> Iterator[Identity]:
    name = f"jtpf{secrets.token_hex(3)}"
    create_user(name)
    try:
        yield resolve_identity(name)
    finally:
        delete_user(name)


@pytest.fixture
def world(user: Identity) -> Iterator[World]:
    root = make_world_dir("janus-preflight")
    binary = root / "ollama"
    binary.write_text("#!/bin/sh\necho server started\n")
    binary.chmod(0o755)
    try:
        yield World(root, user, binary)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mode_and_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


async def test_usable_paths_pass_and_missing_ones_are_made_for_the_user(world: World) -> None:
    await world.check()

    for path in (world.store, world.home):
        assert mode_and_owner(path) == (0o700, world.identity.uid, world.identity.gid)


async def test_store_under_a_closed_parent_names_the_parent_and_the_fix(world: World) -> None:
    private = world.root / "private"
    private.mkdir(mode=0o700)  # root's, as in case C8: root could enter it, the tenant cannot
    store = private / "dev"

    with pytest.raises(SpawnError) as caught:
        await world.check(store=store)

    message = str(caught.value)
    assert message.startswith(f"models_dir {store} is out of reach for user "
                              f"{world.identity.user}: it cannot enter {private} "
                              "(owner root, mode 0700)")
    assert f"chmod o+x {private}" in message


async def test_store_the_user_cannot_write_says_chown(world: World) -> None:
    world.store.mkdir(parents=True, mode=0o755)

    with pytest.raises(SpawnError, match=rf"models_dir {world.store} \(owner root, mode 0755\) "
                                         rf"is not writable by user {world.identity.user}\. "
                                         rf"Fix: chown {world.identity.user} {world.store}"):
        await world.check()


async def test_group_access_counts_as_the_kernel_says(world: World) -> None:
    shared = world.root / "shared"
    shared.mkdir(mode=0o750)
    os.chown(shared, 0, world.identity.gid)  # closed to others, open to the user's group

    await world.check(store=shared / "dev")


async def test_unwritable_home_without_a_key_is_refused(world: World) -> None:
    world.home.mkdir(mode=0o755)

    with pytest.raises(SpawnError, match=rf"HOME {world.home} \(owner root, mode 0755\) is not "
                                         r"writable by user .* holds no readable "
                                         r"\.ollama/id_ed25519; ollama serve would exit"):
        await world.check()


async def test_read_only_home_with_a_key_is_enough(world: World) -> None:
    key = world.home / ".ollama" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("key")
    os.chown(key, world.identity.uid, world.identity.gid)
    for path in (world.home, key.parent):
        path.chmod(0o755)

    await world.check()


async def test_binary_the_user_cannot_run_is_refused(world: World) -> None:
    world.binary.chmod(0o700)

    with pytest.raises(SpawnError, match=r"ollama.binary .*ollama \(owner root, mode 0700\) is "
                                         r"not an executable file for user .*chmod a\+rx"):
        await world.check()


async def test_symlinked_store_is_refused_and_its_target_left_alone(world: World) -> None:
    target = world.root / "etc-x"
    target.mkdir(mode=0o755)
    world.store.parent.mkdir()
    world.store.symlink_to(target)
    before = mode_and_owner(target)

    with pytest.raises(SpawnError, match=rf"models_dir: {world.store} is a symbolic link "
                                         r"\(owner root\); refusing to follow it as root"):
        await world.check()

    assert mode_and_owner(target) == before
    assert list(target.iterdir()) == []


async def test_symlinked_home_is_refused_and_its_target_left_alone(world: World) -> None:
    target = world.root / "elsewhere"
    target.mkdir(mode=0o755)
    world.home.symlink_to(target)
    before = mode_and_owner(target)

    with pytest.raises(SpawnError, match=rf"HOME: {world.home} is a symbolic link"):
        await world.check()

    assert mode_and_owner(target) == before


async def test_checks_run_with_the_users_own_ids(world: World) -> None:
    # The user's own store, but mode 0500: root may write it anyway, the user may not.
    world.store.mkdir(parents=True, mode=0o500)
    os.chown(world.store, world.identity.uid, world.identity.gid)

    with pytest.raises(PreflightError, match="is not writable by user"):
        await world.check()


async def test_a_failed_check_starts_no_server(world: World) -> None:
    world.binary.chmod(0o700)

    with pytest.raises(PreflightError):
        await world.check()

    assert world.output == []


async def test_a_passed_check_runs_the_server_in_the_same_process(world: World) -> None:
    await world.check()

    assert world.output == ["server started"]


async def test_link_planted_above_the_store_is_refused(world: World) -> None:
    """A tenant that can write a directory above its store must not redirect the daemon."""
    own = world.root / "team"
    own.mkdir(mode=0o755)
    os.chown(own, world.identity.uid, world.identity.gid)
    target = world.root / "etc-y"
    target.mkdir(mode=0o755)
    link = own / "models"
    link.symlink_to(target)
    os.chown(link, world.identity.uid, world.identity.gid, follow_symlinks=False)
    before = mode_and_owner(target)

    with pytest.raises(SpawnError, match=rf"models_dir: {link} is a symbolic link \(owner "
                                         rf"{world.identity.user}\); refusing to follow it as "
                                         rf"root for {link}/dev"):
        await world.check(store=link / "dev")

    assert mode_and_owner(target) == before
    assert list(target.iterdir()) == []


async def test_roots_own_link_above_the_store_is_followed(world: World) -> None:
    real = world.root / "real"
    real.mkdir(mode=0o755)
    (world.root / "alias").symlink_to(real)  # like /var/run -> /run

    await world.check(store=world.root / "alias" / "dev")

    assert mode_and_owner(real / "dev") == (0o700, world.identity.uid, world.identity.gid)


async def test_isolated_tenant_needs_network_namespaces(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight_module, "_netns_problem", lambda: "[Errno 1] unshare: EPERM")

    with pytest.raises(SpawnError, match=r"network: isolated: cannot create a network namespace "
                                         r"\(\[Errno 1\] unshare: EPERM\)\. Fix: .* set network: "
                                         "host for this tenant"):
        await world.check(isolated=True)


async def test_this_host_can_make_network_namespaces(world: World) -> None:
    await world.check(isolated=True)
