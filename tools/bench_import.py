#!/usr/bin/env python3
"""Benchmark base model import: shared store (hard links) vs ``cp`` vs local GGUF upload.

Not a test. Generates a GGUF of ``--size-mib`` (the demo GGUF's header, then filler), makes a
shared store with one emulator (as an admin would), then imports the model into three tenant
emulators at once from the shared store, and again from the local GGUF file. Prints wall
times and the disk used (statvfs free-space delta and ``du`` of the tenant stores).

    .venv/bin/python tools/bench_import.py [--size-mib 1024] [--dir /var/tmp]

Goal (issue 5): three tenants from a shared store in under twice the time of one ``cp``, and
no more than the file's size of extra disk when the store is on the same filesystem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor.config import BaseModelConfig
from supervisor.ollama_api import OllamaAPI
from supervisor.provision import ImportLimiter, TenantStore, ensure_base
from tests.emulator_fixtures import DEMO_GGUF, EmulatorProcess, start_emulator

BASE = "bench-base"
TENANTS = 3


def make_gguf(path: Path, size: int) -> None:
    """Valid GGUF header (the demo file), then non-zero filler so nothing is sparse."""
    filler = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as out:
        out.write(DEMO_GGUF.read_bytes())
        while out.tell() < size:
            out.write(filler[: size - out.tell()])
        out.flush()
        os.fsync(out.fileno())


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def du_bytes(*paths: Path) -> int:
    """``du -sbc`` over all paths at once: a hard-linked blob counts once, as on disk."""
    out = subprocess.run(["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def timed_cp(src: Path, dst: Path) -> float:
    start = time.monotonic()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    os.sync()
    elapsed = time.monotonic() - start
    dst.unlink()
    return elapsed


async def import_all(emus: list[EmulatorProcess], source: BaseModelConfig) -> float:
    """Import BASE into every emulator at once; returns wall seconds (synced to disk)."""
    limiter = ImportLimiter(1)

    async def one(emu: EmulatorProcess) -> None:
        api = OllamaAPI(lambda: anyio.connect_tcp("127.0.0.1", emu.port))
        store = TenantStore(f"t{emu.port}", emu.models, os.getuid(), os.getgid(), "isolated")
        try:
            await ensure_base(api, BASE, source, lambda _m: None, store, limiter)
        finally:
            await api.aclose()

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for emu in emus:
            tg.start_soon(one, emu)
    os.sync()
    return time.monotonic() - start


def measure(work: Path, label: str, source: BaseModelConfig) -> tuple[float, int, int]:
    """Run one three-tenant import in fresh stores; returns (seconds, free delta, du)."""
    emus = [start_emulator(work / f"{label}{i}") for i in range(TENANTS)]
    try:
        os.sync()
        before = free_bytes(work)
        seconds = anyio.run(import_all, emus, source)
        used = before - free_bytes(work)
        du = du_bytes(*(e.models for e in emus))
    finally:
        for emu in emus:
            emu.close()
    for i in range(TENANTS):
        shutil.rmtree(work / f"{label}{i}", ignore_errors=True)
    return seconds, used, du


def make_shared_store(work: Path, gguf: Path) -> Path:
    admin = start_emulator(work / "admin")
    try:
        admin.upload_blob(gguf)
        anyio.run(_create_base, admin, gguf)
    finally:
        admin.close()
    return admin.models


async def _create_base(admin: EmulatorProcess, gguf: Path) -> None:
    api = OllamaAPI(lambda: anyio.connect_tcp("127.0.0.1", admin.port))
    store = TenantStore("admin", admin.models, os.getuid(), os.getgid(), "isolated")
    try:
        await ensure_base(api, BASE, BaseModelConfig(gguf=gguf), lambda _m: None, store)
    finally:
        await api.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="GGUF size (default 1024)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="work directory")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="janus-bench-import-", dir=args.dir))
    try:
        gguf = work / "bench.gguf"
        make_gguf(gguf, size)
        shared = make_shared_store(work, gguf)
        cp_s = timed_cp(gguf, work / "copy.gguf")
        print(f"file: {size / (1 << 30):.2f} GiB on {args.dir}; shared store {shared}")
        print(f"one cp of the file:                  {cp_s:7.2f} s")
        rows: list[tuple[str, BaseModelConfig]] = [
            ("shared store (hard links)", BaseModelConfig(shared_store=shared,
                                                          sources=["shared"])),
            ("shared store (copy)", BaseModelConfig(shared_store=shared, sources=["shared"],
                                                    shared_link="copy")),
            ("local GGUF upload", BaseModelConfig(gguf=gguf, sources=["gguf"])),
        ]
        results = {}
        for label, source in rows:
            seconds, used, du = measure(work, label.split()[0] + label.split()[-1][:-1], source)
            results[label] = (seconds, used)
            print(f"{TENANTS} tenants, {label + ':':27s} {seconds:7.2f} s "
                  f"({seconds / cp_s:4.2f} x cp); disk: free-space delta "
                  f"{used / (1 << 20):8.1f} MiB, du of tenant stores {du / (1 << 20):8.1f} MiB")
        seconds, used = results["shared store (hard links)"]
        ok = seconds < 2 * cp_s and used <= size
        print(f"goal (hard links < 2 x cp and <= {size >> 20} MiB extra disk): "
              f"{'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
