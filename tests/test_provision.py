"""Base model sources, progress and import bounds of ``supervisor.provision`` (issue 5).

The emulator runs as a real child; the shared store is a second emulator's store, made the way
an admin would make one (``create`` once, then read-only).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from supervisor import modelfile, provision, shared_store
from supervisor.config import BaseModelConfig
from supervisor.errors import ProvisionError
from supervisor.ollama_api import OllamaAPI
from supervisor.provision import ImportLimiter, Progress, TenantStore, ensure_base
from tests.emulator_fixtures import DEMO_GGUF, EmulatorProcess, start_emulator

BASE = "janus-base"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmulatorProcess]:
    emulator = start_emulator(tmp_path / "tenant")
    try:
        yield emulator
    finally:
        emulator.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only shared store holding BASE, made by an emulator the way an admin would."""
    root = tmp_path_factory.mktemp("shared")
    admin = start_emulator(root / "admin")
    try:
        admin.create_demo_base(BASE)
    finally:
        admin.close()
    return admin.models


def api_of(emu: EmulatorProcess) -> OllamaAPI:
    return OllamaAPI(lambda: anyio.connect_tcp("127.0.0.1", emu.port))


def store_of(emu: EmulatorProcess, network: str = "isolated") -> TenantStore:
    return TenantStore("alpha", emu.models, os.getuid(), os.getgid(), network)


async def ensure(emu: EmulatorProcess, source: BaseModelConfig, notes: list[str],
                 network: str = "isolated") -> str:
    api = api_of(emu)
    try:
        return await ensure_base(api, BASE, source, notes.append, store_of(emu, network))
    finally:
        await api.aclose()


def blob_files(store: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in (store / "blobs").iterdir()}


# -- sources -----------------------------------------------------------------------------------
async def test_store_source_wins_when_the_model_is_there(emu: EmulatorProcess) -> None:
    emu.create_demo_base(BASE)
    notes: list[str] = []

    used = await ensure(emu, BaseModelConfig(gguf=DEMO_GGUF), notes)

    assert used == "store"
    assert f"base model {BASE}: trying source store" in notes
    assert not any("trying source gguf" in n for n in notes)


async def test_sources_are_tried_in_the_configured_order(emu: EmulatorProcess,
                                                         shared: Path) -> None:
    notes: list[str] = []
    source = BaseModelConfig(gguf=DEMO_GGUF, shared_store=shared, sources=["gguf", "shared"])

    used = await ensure(emu, source, notes)

    assert used == "gguf"
    assert [n for n in notes if "trying source" in n] == [f"base model {BASE}: trying source gguf"]


async def test_shared_store_is_hard_linked_and_show_finds_it(emu: EmulatorProcess,
                                                             shared: Path) -> None:
    notes: list[str] = []

    used = await ensure(emu, BaseModelConfig(shared_store=shared), notes)

    assert used == "shared"
    theirs, ours = blob_files(shared), blob_files(emu.models)
    assert set(theirs) <= set(ours)
    assert all(ours[name].st_ino == theirs[name].st_ino for name in theirs)
    assert any("hard-linked" in n for n in notes)


async def test_shared_store_copy_gives_tenant_owned_0644_files(emu: EmulatorProcess,
                                                               shared: Path) -> None:
    notes: list[str] = []

    await ensure(emu, BaseModelConfig(shared_store=shared, shared_link="copy"), notes)

    theirs, ours = blob_files(shared), blob_files(emu.models)
    for name in theirs:
        assert ours[name].st_ino != theirs[name].st_ino
        assert (ours[name].st_uid, ours[name].st_mode & 0o777) == (os.getuid(), 0o644)
    manifest = emu.models / "manifests/registry.ollama.ai/library" / BASE / "latest"
    assert manifest.stat().st_mode & 0o777 == 0o644
    assert not [p for p in (emu.models / "blobs").iterdir() if "partial" in p.name]


async def test_shared_blob_that_is_a_symlink_is_refused(emu: EmulatorProcess, shared: Path,
                                                        tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(shared, evil)
    blob = max((evil / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    blob.unlink()
    blob.symlink_to("/etc/shadow")
    notes: list[str] = []

    with pytest.raises(ProvisionError, match=r"shared: blob .* is a link"):
        await ensure(emu, BaseModelConfig(shared_store=evil, sources=["store", "shared"]), notes)

    assert not (emu.models / "blobs" / blob.name).exists()


async def test_tenant_blobs_dir_swapped_for_a_link_is_not_followed(
        emu: EmulatorProcess, shared: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (emu.models / "blobs").rename(emu.models / "blobs.moved")
    (emu.models / "blobs").symlink_to(elsewhere)

    with pytest.raises(ProvisionError, match=r"shared: .*/blobs has a link or a file"):
        await ensure(emu, BaseModelConfig(shared_store=shared, sources=["shared"]), [])

    assert list(elsewhere.iterdir()) == []


async def test_pull_is_never_attempted_in_an_isolated_tenant(emu: EmulatorProcess) -> None:
    notes: list[str] = []

    with pytest.raises(ProvisionError, match="network: isolated; no registry pull"):
        await ensure(emu, BaseModelConfig(sources=["store", "pull"]), notes)

    assert "/api/pull" not in emu.stdout.text()


async def test_pull_in_a_host_tenant_reports_the_registry_error(emu: EmulatorProcess) -> None:
    notes: list[str] = []

    with pytest.raises(ProvisionError, match=r"pull: registry pull failed: pull model manifest"):
        await ensure(emu, BaseModelConfig(sources=["store", "pull"]), notes, network="host")

    assert f"pull {BASE}: pulling manifest" in notes


async def test_error_names_base_every_source_and_the_fix(emu: EmulatorProcess,
                                                         tmp_path: Path) -> None:
    source = BaseModelConfig(shared_store=tmp_path, gguf=tmp_path / "missing.gguf")

    with pytest.raises(ProvisionError) as caught:
        await ensure(emu, source, [])

    text = str(caught.value)
    assert f"tenant alpha: base model '{BASE}' is not available" in text
    for kind in ("store: not in", "shared: ", "gguf: ", "pull: not in sources"):
        assert kind in text
    assert "rebuild alpha" in text


# -- pure helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "parts"), [
    ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
    ("user/m:7b", ("registry.ollama.ai", "user", "m", "7b")),
    ("host.tld:5000/ns/m", ("host.tld:5000", "ns", "m", "latest")),
])
def test_manifest_parts_follow_ollama_name_rules(name: str, parts: tuple[str, ...]) -> None:
    assert shared_store.manifest_parts(name) == parts


def test_manifest_parts_refuse_path_tricks() -> None:
    with pytest.raises(ValueError, match="not a model name"):
        shared_store.manifest_parts("../x")


def test_progress_notes_every_tenth_or_every_five_seconds() -> None:
    now = [0.0]
    notes: list[str] = []
    progress = Progress(notes.append, "uploading f", 1000, clock=lambda: now[0])

    for done in range(0, 1001, 10):  # 100 updates, fast: only the 10 % steps are noted
        progress.update(done)
    now[0] = 100.0
    slow = Progress(notes.append, "slow", 1000, clock=lambda: now[0])
    now[0] = 106.0
    slow.update(1)

    assert len([n for n in notes if n.startswith("uploading f")]) == 10
    assert notes[-1].startswith("slow: 0% (1 of 1000 bytes")


def test_one_digest_cache_shared_with_modelfile() -> None:
    assert provision.file_digest is modelfile.file_digest


def test_noprune_needed_only_with_a_shared_store(tmp_path: Path) -> None:
    class Cfg:
        base_models: ClassVar[dict[str, BaseModelConfig]] = {
            "a": BaseModelConfig(gguf=DEMO_GGUF)
        }

    assert not provision.uses_shared_store(Cfg())  # type: ignore[arg-type]
    Cfg.base_models["b"] = BaseModelConfig(shared_store=tmp_path)
    assert provision.uses_shared_store(Cfg())  # type: ignore[arg-type]


# -- import bounds -----------------------------------------------------------------------------
async def _overlaps(per_disk: int, big: list[Path]) -> int:
    """Run one import per file at once; returns the most that held a slot together."""
    limiter = ImportLimiter(per_disk)
    inside, most = 0, 0
    entered = anyio.Event()

    async def one(path: Path) -> None:
        nonlocal inside, most
        async with limiter.slot(path, lambda _m: None, "test"):
            inside += 1
            most = max(most, inside)
            entered.set()
            for _ in range(5):  # yield so others may try to enter
                await anyio.lowlevel.checkpoint()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for path in big:
            tg.start_soon(one, path)
    return most


@pytest.fixture
def big_files(tmp_path: Path) -> list[Path]:
    files = []
    for i in range(3):
        path = tmp_path / f"big{i}.gguf"
        with open(path, "wb") as fh:
            fh.truncate(32 << 20)  # sparse: large to the limiter, no disk used
        files.append(path)
    return files


async def test_large_imports_from_one_disk_are_serialized(big_files: list[Path]) -> None:
    assert await _overlaps(1, big_files) == 1


async def test_import_slots_per_disk_are_configurable(big_files: list[Path]) -> None:
    assert await _overlaps(3, big_files) == 3


async def test_waiting_import_is_noted(big_files: list[Path]) -> None:
    limiter, notes = ImportLimiter(1), []
    async with limiter.slot(big_files[0], notes.append, "upload a"):
        with anyio.move_on_after(0.05):
            async with limiter.slot(big_files[1], notes.append, "upload b"):
                pass

    assert notes == ["upload b: waiting for another import from the same disk to finish"]


def padded_gguf(path: Path, size: int) -> Path:
    """The demo GGUF's bytes followed by zeros up to ``size`` (the emulator checks the header)."""
    shutil.copyfile(DEMO_GGUF, path)
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return path


async def test_three_tenants_upload_one_large_gguf_one_after_the_other(tmp_path: Path) -> None:
    gguf = padded_gguf(tmp_path / "big.gguf", 24 << 20)
    emus = [start_emulator(tmp_path / f"t{i}") for i in range(3)]
    events: list[tuple[int, str]] = []
    limiter = ImportLimiter(1)

    async def tenant(i: int) -> None:
        api = api_of(emus[i])
        try:
            await ensure_base(api, BASE, BaseModelConfig(gguf=gguf),
                              lambda m: events.append((i, m)), store_of(emus[i]), limiter)
        finally:
            await api.aclose()

    try:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(tenant, i)
    finally:
        for emulator in emus:
            emulator.close()

    uploads = [i for i, m in events if m.startswith("uploading big.gguf")]
    blocks = [i for n, i in enumerate(uploads) if n == 0 or uploads[n - 1] != i]
    assert sorted(blocks) == [0, 1, 2]  # each tenant's progress lines form one block
    assert sum("waiting for another import" in m for _, m in events) >= 1
