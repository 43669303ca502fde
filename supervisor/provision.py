"""Build a tenant's variant models through the Ollama API, idempotently.

For each variant: make sure its base model exists in the tenant's store (importing it from a
local GGUF file named under ``base_models`` when it does not), compare the variant that exists
with the wanted definition, and ``/api/create`` it only when it is missing or different. A
missing base is checked with ``/api/show`` first, because ``/api/create`` would try a registry
pull and fail only after a ``pulling manifest`` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from supervisor.config import BaseModelConfig
from supervisor.errors import ProbeError, ProvisionError
from supervisor.ollama_api import OllamaAPI

log = logging.getLogger(__name__)

Note = Callable[[str], None]

_digest_cache: dict[tuple[str, int, int], str] = {}
_PROGRESS_STEP = 0.25


@dataclass(frozen=True)
class VariantPlan:
    """A variant to build: its name and the exact ``/api/create`` body."""

    name: str
    request: Mapping[str, Any]
    uploads: Mapping[str, Path]


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of ``path``, computed once per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _digest_cache[key] = "sha256:" + h.hexdigest()
    return _digest_cache[key]


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
        return a == b
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


async def upload_blob(api: OllamaAPI, path: Path, note: Note) -> str:
    """Upload ``path`` as a blob unless the server has it; returns its digest."""
    digest = await anyio.to_thread.run_sync(file_digest, path)
    if await api.has_blob(digest):
        note(f"blob {digest[:19]} of {path.name} already present")
        return digest
    size = path.stat().st_size
    marks = {"next": _PROGRESS_STEP}

    def progress(sent: int) -> None:
        if size and sent / size >= marks["next"]:
            note(f"uploading {path.name}: {sent * 100 // size}% of {size} bytes")
            marks["next"] += _PROGRESS_STEP

    response = await api.upload_file(f"/api/blobs/{digest}", path, progress)
    if response.status not in (200, 201):
        raise ProvisionError(f"upload of {path} failed: {response.error_text()}")
    return digest


async def ensure_base(api: OllamaAPI, name: str, source: BaseModelConfig | None,
                      note: Note) -> None:
    """Make sure base model ``name`` exists in the tenant's store, importing it if configured."""
    if await api.show(name) is not None:
        note(f"base model {name}: already in the store")
        return
    if source is None or source.gguf is None:
        raise ProvisionError(
            f"base model {name!r} is not in the tenant's store and no source is configured; "
            f"add base_models.{name}.gguf (a local GGUF file) to the config or put the model "
            "in the store"
        )
    if not os.access(source.gguf, os.R_OK):
        raise ProvisionError(f"base model {name!r}: GGUF file {source.gguf} is not readable; "
                             "fix the path in base_models or its permissions")
    note(f"base model {name}: importing {source.gguf}")
    files = {source.gguf.name: await upload_blob(api, source.gguf, note)}
    if source.projector is not None:
        files[source.projector.name] = await upload_blob(api, source.projector, note)
    body: dict[str, Any] = {"model": name, "files": files}
    if source.template is not None:
        body["template"] = source.template
    await _stream_create(api, body, note)


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
