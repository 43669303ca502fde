"""Place a model from a shared, read-only Ollama store into a tenant's store.

The daemon runs as root and writes inside the tenant's store, whose directories the tenant owns
and could swap for symbolic links at any moment. So every step works on directory file
descriptors opened with ``O_NOFOLLOW`` (``openat``-style ``dir_fd`` calls), new files are
created under a temp name with ``O_EXCL`` and renamed into place, and nothing is ever chowned
by path. Layout and modes follow Ollama (reference facts §4): ``manifests/<host>/<ns>/<model>/
<tag>``, ``blobs/sha256-<hex>``, directories 0755, files 0644.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DEFAULT_HOST, _DEFAULT_NAMESPACE = "registry.ollama.ai", "library"
_COPY_CHUNK = 4 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class PlaceError(Exception):
    """The shared store or the tenant's store is not as expected; the text says how to fix it."""


@dataclass(frozen=True)
class Owner:
    """The tenant's user and group, given to everything the daemon creates in its store."""

    uid: int
    gid: int


def manifest_parts(name: str) -> tuple[str, str, str, str]:
    """Manifest path parts: ``llama3`` → registry.ollama.ai/library/llama3/latest.

    Raises ``ValueError`` for a name that could climb out of the manifests directory.
    """
    tag = "latest"
    if name.rfind(":") > name.rfind("/"):
        name, tag = name.rsplit(":", 1)
    pieces = name.split("/")
    host = pieces[-3] if len(pieces) >= 3 else _DEFAULT_HOST
    namespace = pieces[-2] if len(pieces) >= 2 else _DEFAULT_NAMESPACE
    parts = (host, namespace, pieces[-1], tag)
    if len(pieces) > 3 or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise ValueError(f"{name!r} is not a model name; write model[:tag] or ns/model[:tag]")
    return parts


def read_manifest(shared: Path, parts: tuple[str, ...]) -> tuple[bytes, list[tuple[str, int]]]:
    """The raw manifest of ``parts`` in ``shared`` and its (digest, size) layers, config first.

    Raises ``FileNotFoundError`` when the model is not there and ``PlaceError`` when the
    manifest is a link, not a file, or not a valid manifest.
    """
    path = shared.joinpath("manifests", *parts)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise PlaceError(f"cannot open {path} ({exc.strerror}); repair the shared store") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise PlaceError(f"{path} is not a regular file; repair the shared store")
        raw = fh.read(1 << 20)
    try:
        return raw, _layers(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise PlaceError(f"{path} is not an Ollama manifest ({exc}); re-pull the model") from exc


def _layers(data: Any) -> list[tuple[str, int]]:
    found = []
    for layer in [data.get("config") or {}, *(data.get("layers") or [])]:
        digest = str(layer.get("digest") or "")
        if len(digest) != 71 or not digest.startswith("sha256:") or not all(
                c in "0123456789abcdef" for c in digest[7:]):
            raise ValueError(f"layer digest {digest!r} is not sha256:<64 hex>")
        found.append((digest, int(layer.get("size") or 0)))
    return found


@contextmanager
def tenant_dir(models_dir: Path, parts: tuple[str, ...], owner: Owner) -> Iterator[int]:
    """A descriptor of ``models_dir/parts…``, made as ``owner`` (0755) where missing.

    No component below ``models_dir`` is followed if it is a link: ``PlaceError`` instead.
    """
    fd = os.open(models_dir, _DIR_FLAGS)
    try:
        for part in parts:
            created = True
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                created = False
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise PlaceError(f"{models_dir}/{'/'.join(parts)} has a link or a file where a "
                                 f"directory belongs ({exc.strerror}); move it away") from exc
            os.close(fd)
            fd = child
            if created:  # by descriptor: the name may already point elsewhere
                os.fchown(fd, owner.uid, owner.gid)
        yield fd
    finally:
        os.close(fd)


def blob_source(shared: Path, digest: str, size: int) -> tuple[Path, os.stat_result]:
    """Path and ``lstat`` of a shared blob; ``PlaceError`` unless a regular file of ``size``."""
    src = shared / "blobs" / ("sha256-" + digest[7:])
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise PlaceError(f"blob {src} is missing ({exc.strerror}); re-pull the model into the "
                         "shared store") from exc
    if not stat.S_ISREG(st.st_mode) or (size and st.st_size != size):
        raise PlaceError(f"blob {src} is a link, not a file, or not {size} bytes; repair the "
                         "shared store")
    return src, st


def has_blob(dir_fd: int, digest: str, size: int) -> bool:
    """The tenant's store already holds a regular file for ``digest`` of ``size`` bytes."""
    try:
        st = os.stat("sha256-" + digest[7:], dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def may_hardlink(st: os.stat_result, dir_fd: int) -> bool:
    """One filesystem, and a blob anyone may read but only its owner write.

    A hard link shares the inode, so the blob keeps the shared store's owner: the tenant's
    server reads it and may unlink its own name, but can never change the admin's copy.
    """
    return st.st_dev == os.fstat(dir_fd).st_dev and not st.st_mode & 0o022 and bool(
        st.st_mode & 0o004)


def _temp_name(name: str) -> str:
    return f"{name}-janus-{secrets.token_hex(4)}.partial"


def link_blob(src: Path, dir_fd: int, digest: str) -> None:
    """Hard-link ``src`` into the blobs directory ``dir_fd`` (temp name, then rename)."""
    name = "sha256-" + digest[7:]
    temp = _temp_name(name)
    try:
        os.link(src, temp, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise PlaceError(f"cannot hard-link {src} ({exc.strerror}); set shared_link: copy") \
            from exc
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def copy_blob(src: Path, dir_fd: int, digest: str, owner: Owner,
              on_progress: Callable[[int], None]) -> None:
    """Copy ``src`` as ``owner`` (0644), check its digest, then rename it into place."""
    name = "sha256-" + digest[7:]
    temp = _temp_name(name)
    sha = hashlib.sha256()
    done = 0
    in_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        out_fd = _create(temp, dir_fd, owner)
        try:
            while chunk := os.read(in_fd, _COPY_CHUNK):
                sha.update(chunk)
                os.write(out_fd, chunk)
                done += len(chunk)
                on_progress(done)
        finally:
            os.close(out_fd)
    finally:
        os.close(in_fd)
    if "sha256:" + sha.hexdigest() != digest:
        os.unlink(temp, dir_fd=dir_fd)
        raise PlaceError(f"blob {src} does not match its digest {digest}; re-pull the model "
                         "into the shared store")
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _create(name: str, dir_fd: int, owner: Owner) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, 0o644)
    return fd


def place_manifest(models_dir: Path, parts: tuple[str, str, str, str], raw: bytes,
                   owner: Owner) -> None:
    """Write the manifest last, once every blob it names is in place."""
    with tenant_dir(models_dir, ("manifests", *parts[:3]), owner) as dir_fd:
        temp = _temp_name(parts[3])
        fd = _create(temp, dir_fd, owner)
        try:
            os.write(fd, raw)
        finally:
            os.close(fd)
        os.rename(temp, parts[3], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
