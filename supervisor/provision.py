"""Build a tenant's variant models through the Ollama API, idempotently.

For each variant: make sure its base model exists in the tenant's store, trying the sources
configured under ``base_models`` in order (already in the store, a shared read-only store, a
local GGUF file, a registry pull), compare the variant that exists with the wanted definition,
and ``/api/create`` it only when it is missing or different. A missing base is checked with
``/api/show`` first, because ``/api/create`` would try a registry pull and fail only after a
``pulling manifest`` line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from supervisor import shared_store
from supervisor.config import BaseModelConfig, Config
from supervisor.errors import ProbeError, ProvisionError
from supervisor.modelfile import file_digest
from supervisor.ollama_api import OllamaAPI

log = logging.getLogger(__name__)

Note = Callable[[str], None]

__all__ = ["file_digest"]  # the one digest cache lives in modelfile

_PROGRESS_FRACTION = 0.10
_PROGRESS_INTERVAL_S = 5.0
_LARGE_BYTES = 16 << 20  # smaller files skip the per-disk import slot


@dataclass(frozen=True)
class VariantPlan:
    """A variant to build: its name and the exact ``/api/create`` body."""

    name: str
    request: Mapping[str, Any]
    uploads: Mapping[str, Path]


def normalise(name: str) -> str:
    """Short display form with the tag: ``llama3`` → ``llama3:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _parse_parameters(text: str) -> dict[str, list[Any]]:
    """Read ``/api/show``'s parameter block (``name   value`` lines, values in Go %#v form)."""
    params: dict[str, list[Any]] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            continue
        name, raw = parts
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        params.setdefault(name, []).append(value)
    return params


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return bool(a == b)


def differences(wanted: Mapping[str, Any], shown: Mapping[str, Any]) -> list[str]:
    """Fields where the existing model (``/api/show``) differs from the wanted create body."""
    diffs = []
    for key in ("system", "template"):
        if key in wanted and (shown.get(key) or "") != wanted[key]:
            diffs.append(key)
    have = _parse_parameters(shown.get("parameters") or "")
    for name, value in (wanted.get("parameters") or {}).items():
        values = value if isinstance(value, list) else [value]
        got = have.get(name, [])
        if len(got) != len(values) or not all(map(_same_value, got, values)):
            diffs.append(f"parameter {name}")
    if wanted.get("messages"):
        got_messages = [{"role": m.get("role"), "content": m.get("content")}
                        for m in shown.get("messages") or []]
        if got_messages != list(wanted["messages"]):
            diffs.append("messages")
    for text in wanted.get("license") or []:
        if text not in (shown.get("license") or ""):
            diffs.append("license")
            break
    base = wanted.get("from")
    parent = (shown.get("details") or {}).get("parent_model")
    if base and parent and normalise(parent).lower() != normalise(base).lower():
        diffs.append("base")
    return diffs


@dataclass(frozen=True)
class TenantStore:
    """What provisioning needs to know about the tenant it builds for."""

    tenant: str
    models_dir: Path
    uid: int
    gid: int
    network: str  # "host" or "isolated"

    @property
    def may_pull(self) -> bool:
        return self.network == "host"


class Progress:
    """Notes a long step's progress at most every 10 % or every 5 s, whichever comes first."""

    def __init__(self, note: Note, what: str, total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.note, self.what, self.total, self.clock = note, what, total, clock
        self.started = self.last_time = clock()
        self.last_fraction = 0.0

    def update(self, done: int) -> None:
        """Record that ``done`` of ``total`` bytes are through; notes when a step is due."""
        now = self.clock()
        fraction = done / self.total if self.total else 1.0
        if fraction < 1.0 and (fraction - self.last_fraction < _PROGRESS_FRACTION
                               and now - self.last_time < _PROGRESS_INTERVAL_S):
            return
        if fraction >= 1.0 and self.last_fraction >= 1.0:
            return
        self.last_fraction, self.last_time = fraction, now
        rate = done / max(now - self.started, 1e-6) / (1 << 20)
        self.note(f"{self.what}: {fraction:.0%} ({done} of {self.total} bytes, {rate:.1f} MiB/s)")


@dataclass
class ImportLimiter:
    """At most ``per_disk`` large uploads or copies at a time from one device (``st_dev``).

    Three tenants importing the same 4 GiB file would otherwise read it three times at once
    and thrash the disk; one after the other, the page cache serves the later ones.
    """

    per_disk: int = 1
    _slots: dict[tuple[int, object], anyio.Semaphore] = field(default_factory=dict)

    @asynccontextmanager
    async def slot(self, path: Path, note: Note, what: str) -> AsyncIterator[None]:
        """Hold the slot of ``path``'s disk while the body runs (none for small files)."""
        st = path.stat()
        if st.st_size < _LARGE_BYTES:
            yield
            return
        # Keyed by event loop too: a semaphore belongs to the loop that first waited on it.
        key = (st.st_dev, anyio.lowlevel.current_token())
        sem = self._slots.setdefault(key, anyio.Semaphore(self.per_disk))
        if sem.value == 0:
            note(f"{what}: waiting for another import from the same disk to finish")
        async with sem:
            yield


IMPORTS = ImportLimiter()


def uses_shared_store(config: Config) -> bool:
    """True when a base model may come from a shared store: servers then need OLLAMA_NOPRUNE.

    Linked blobs sit in the store before any manifest names them; Ollama's startup prune would
    delete them (reference facts §4).
    """
    return any("shared" in b.sources and b.shared_store for b in config.base_models.values())


async def _stream_create(api: OllamaAPI, body: Mapping[str, Any], note: Note) -> None:
    last = ""
    async for line in api.stream_json("/api/create", dict(body)):
        if "error" in line:
            raise ProvisionError(str(line["error"]))
        status = str(line.get("status", ""))
        if status and status != last:
            note(f"create {body['model']}: {status}")
            last = status
    if last != "success":
        raise ProvisionError(f"create {body['model']} ended without success (last: {last!r})")


async def upload_blob(api: OllamaAPI, path: Path, note: Note,
                      limiter: ImportLimiter | None = None) -> str:
    """Upload ``path`` as a blob unless the server has it; returns its digest."""
    digest = await anyio.to_thread.run_sync(file_digest, path)
    if await api.has_blob(digest):
        note(f"blob {digest[:19]} of {path.name} already present")
        return digest
    async with (limiter or IMPORTS).slot(path, note, f"upload {path.name}"):
        progress = Progress(note, f"uploading {path.name}", path.stat().st_size)
        response = await api.upload_file(f"/api/blobs/{digest}", path, progress.update)
    if response.status not in (200, 201):
        raise ProvisionError(f"upload of {path} failed: {response.error_text()}; check the "
                             "file is a GGUF model and the tenant's disk has room")
    return digest


# -- sources -----------------------------------------------------------------------------------
class SourceSkipped(Exception):
    """A source does not apply or did not work; the message is the reason, then the fix."""


async def _from_store(api: OllamaAPI, name: str, source: BaseModelConfig, store: TenantStore,
                      note: Note, limiter: ImportLimiter) -> None:
    if await api.show(name) is None:
        raise SourceSkipped(f"not in the tenant's store {store.models_dir}")


async def _from_gguf(api: OllamaAPI, name: str, source: BaseModelConfig, store: TenantStore,
                     note: Note, limiter: ImportLimiter) -> None:
    if source.gguf is None:
        raise SourceSkipped(f"no file configured; set base_models.{name}.gguf")
    for path in (source.gguf, source.projector):
        if path is not None and not os.access(path, os.R_OK):
            raise SourceSkipped(f"{path} is not readable; fix the path in base_models.{name} "
                                "or its permissions")
    files = {source.gguf.name: await upload_blob(api, source.gguf, note, limiter)}
    if source.projector is not None:
        files[source.projector.name] = await upload_blob(api, source.projector, note, limiter)
    body: dict[str, Any] = {"model": name, "files": files}
    if source.template is not None:
        body["template"] = source.template
    await _stream_create(api, body, note)


async def _from_pull(api: OllamaAPI, name: str, source: BaseModelConfig, store: TenantStore,
                     note: Note, limiter: ImportLimiter) -> None:
    if "pull" not in source.sources:
        raise SourceSkipped(f"not in sources; add pull to base_models.{name}.sources to allow it")
    if not store.may_pull:
        raise SourceSkipped(f"tenant {store.tenant} is network: {store.network}; no registry "
                            "pull is attempted (use a shared store or GGUF file, or set "
                            "network: host)")
    progress: dict[str, Progress] = {}
    async for line in api.stream_json("/api/pull", {"model": name}):
        if "error" in line:
            raise SourceSkipped(f"registry pull failed: {line['error']}")
        digest, total = str(line.get("digest") or ""), int(line.get("total") or 0)
        if digest and total:
            if digest not in progress:
                progress[digest] = Progress(note, f"pulling {digest[7:19]}", total)
            progress[digest].update(int(line.get("completed") or 0))
        elif line.get("status"):
            note(f"pull {name}: {line['status']}")


async def _from_shared(api: OllamaAPI, name: str, source: BaseModelConfig, store: TenantStore,
                       note: Note, limiter: ImportLimiter) -> None:
    shared = source.shared_store
    if shared is None:
        raise SourceSkipped(f"no shared store configured; set base_models.{name}.shared_store")
    try:
        parts = shared_store.manifest_parts(name)
        raw, layers = await anyio.to_thread.run_sync(shared_store.read_manifest, shared, parts)
        for digest, size in layers:
            await _place_blob(source, shared, store, digest, size, note, limiter)
        owner = shared_store.Owner(store.uid, store.gid)
        await anyio.to_thread.run_sync(shared_store.place_manifest, store.models_dir, parts, raw,
                                       owner)
    except FileNotFoundError as exc:
        raise SourceSkipped(f"{exc.filename} does not exist; pull the model into the shared "
                            "store as its admin") from None
    except (ValueError, shared_store.PlaceError) as exc:
        raise SourceSkipped(str(exc)) from exc
    if await api.show(name) is None:
        raise SourceSkipped("manifest and blobs placed but /api/show does not find the model; "
                            "check the server's log")


async def _place_blob(source: BaseModelConfig, shared: Path, store: TenantStore, digest: str,
                      size: int, note: Note, limiter: ImportLimiter) -> None:
    """Hard-link or copy one blob of the shared store into the tenant's store."""
    src, st = shared_store.blob_source(shared, digest, size)
    owner = shared_store.Owner(store.uid, store.gid)
    with shared_store.tenant_dir(store.models_dir, ("blobs",), owner) as dir_fd:
        if shared_store.has_blob(dir_fd, digest, st.st_size):
            note(f"blob {digest[:19]}: already in the store")
            return
        if source.shared_link == "hardlink" and shared_store.may_hardlink(st, dir_fd):
            await anyio.to_thread.run_sync(shared_store.link_blob, src, dir_fd, digest)
            note(f"blob {digest[:19]}: hard-linked from {shared}")
            return
        async with limiter.slot(src, note, f"copy of {digest[:19]}"):
            progress = Progress(note, f"copying {digest[:19]} from {shared}", st.st_size)
            await anyio.to_thread.run_sync(shared_store.copy_blob, src, dir_fd, digest, owner,
                                           progress.update)


_SOURCES = {"store": _from_store, "shared": _from_shared, "gguf": _from_gguf, "pull": _from_pull}


async def ensure_base(api: OllamaAPI, name: str, source: BaseModelConfig | None, note: Note,
                      store: TenantStore, limiter: ImportLimiter | None = None) -> str:
    """Make sure base model ``name`` is in the tenant's store; returns the source that had it.

    Tries ``source.sources`` in order, noting each attempt. Raises ``ProvisionError`` naming
    every source tried, its reason, and the fix when none works.
    """
    source = source or BaseModelConfig()
    order = list(source.sources)
    if "pull" not in order:
        order.append("pull")  # only to say why it was not tried
    tried: list[str] = []
    for kind in order:
        note(f"base model {name}: trying source {kind}")
        try:
            await _SOURCES[kind](api, name, source, store, note, limiter or IMPORTS)
        except SourceSkipped as exc:
            note(f"base model {name}: source {kind}: {exc}")
            tried.append(f"{kind}: {exc}")
            continue
        note(f"base model {name}: available (source {kind})")
        return kind
    raise ProvisionError(
        f"tenant {store.tenant}: base model {name!r} is not available from any source; tried "
        + "; ".join(tried) + f". Fix one of them under base_models.{name}, or put the model "
        "in the tenant's store, then 'janus-supervisorctl rebuild " + store.tenant + "'"
    )


async def build_variant(api: OllamaAPI, plan: VariantPlan, note: Note, *,
                        force: bool = False) -> bool:
    """Create ``plan`` unless an identical model exists (or ``force``). True when (re)created."""
    shown = await api.show(plan.name)
    if shown is not None and force:
        note(f"variant {plan.name}: rebuild forced")
    elif shown is not None:
        diffs = differences(plan.request, shown)
        if not diffs:
            note(f"variant {plan.name}: up to date")
            return False
        note(f"variant {plan.name}: differs in {', '.join(diffs)}; re-creating")
    body = dict(plan.request)
    if plan.uploads:
        files = dict(body.get("files") or {})
        for rel, path in plan.uploads.items():
            files[rel] = await upload_blob(api, path, note)
        body["files"] = files
    await _stream_create(api, body, note)
    note(f"variant {plan.name}: created")
    return True


def provision_error(exc: Exception) -> str:
    """Text for ``last_error`` from a provisioning failure."""
    if isinstance(exc, (ProvisionError, ProbeError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
