"""The model store under ``OLLAMA_MODELS``: blobs and manifests, laid out as Ollama does.

- ``blobs/sha256-<hex>``: content-addressed with real sha256 digests; written to a temp file
  (0600), renamed, then chmod 0644;
- ``manifests/<host>/<namespace>/<model>/<tag>``: the manifest JSON plus a newline; its sha256
  is the digest ``/api/tags`` reports. Directories are made 0755 less the umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .fsutil import PathError, mkdir_all
from .gofmt import go_json
from .names import ModelName

DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_PREFIX = "application/vnd.ollama.image."
_CHUNK = 1 << 20


class InvalidDigest(ValueError):
    """The digest does not match ``^sha256[:-][0-9a-fA-F]{64}$``."""

    def __init__(self) -> None:
        super().__init__("invalid digest format")


@dataclass
class Layer:
    """One manifest entry; ``status`` is the create progress text for it."""

    media_type: str
    digest: str
    size: int
    from_: str = ""
    name: str = ""
    status: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        """The manifest JSON object (``from`` and ``name`` omitted when empty)."""
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.from_:
            data["from"] = self.from_
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layer:
        """Build a layer from a manifest JSON object."""
        return cls(
            str(data.get("mediaType", "")),
            str(data.get("digest", "")),
            int(data.get("size", 0)),
            str(data.get("from", "")),
            str(data.get("name", "")),
        )


@dataclass
class Manifest:
    """A manifest file as read from disk."""

    name: ModelName
    path: str
    raw: bytes
    mtime_ns: int
    config: Layer
    layers: list[Layer]

    @property
    def digest(self) -> str:
        """sha256 of the manifest file bytes, without the ``sha256:`` prefix."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def size(self) -> int:
        """Sum of the layer sizes plus the config size."""
        return sum(layer.size for layer in self.layers) + self.config.size

    def digests(self) -> set[str]:
        """Every blob digest the manifest references."""
        return {layer.digest for layer in self.layers} | {self.config.digest}


class Store:
    """Blob and manifest operations on one model directory; safe to share between threads."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs_dir = os.path.join(root, "blobs")
        self.manifests_dir = os.path.join(root, "manifests")
        self.lock = threading.RLock()

    def ensure_dirs(self) -> None:
        """Create ``blobs/`` (raises PathError), as ``GetBlobsPath("")`` does at startup."""
        mkdir_all(self.blobs_dir, 0o755)

    def blob_path(self, digest: str) -> str:
        """``blobs/sha256-<hex>`` for ``sha256:<hex>``; raises InvalidDigest."""
        if not DIGEST_RE.match(digest):
            raise InvalidDigest()
        return os.path.join(self.blobs_dir, digest.replace(":", "-"))

    def has_blob(self, digest: str) -> bool:
        """True when the blob file exists."""
        return os.path.exists(self.blob_path(digest))

    def receive_blob(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Stream ``chunks`` into the store; returns (``sha256:<hex>``, size).

        The data goes to a temp file chunk by chunk, so memory stays flat for any size.
        """
        mkdir_all(self.blobs_dir, 0o755)
        temp = os.path.join(self.blobs_dir, f"sha256-{time.time_ns()}{threading.get_ident()}")
        hasher, size = hashlib.sha256(), 0
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    hasher.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + hasher.hexdigest()
            self._commit_temp(temp, digest)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return digest, size

    def _commit_temp(self, temp: str, digest: str) -> bool:
        final = self.blob_path(digest)
        if os.path.exists(final):
            return False
        os.rename(temp, final)
        os.chmod(final, 0o644)
        return True

    def new_layer(self, data: bytes, media_type: str) -> Layer:
        """Store ``data`` as a blob; status says "creating new" or "using existing" layer."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.lock:
            existed = os.path.exists(self.blob_path(digest))
            if not existed:
                self.receive_blob([data])
        word = "using existing" if existed else "creating new"
        return Layer(media_type, digest, len(data), status=f"{word} layer {digest}")

    def layer_from_blob(self, digest: str, media_type: str, from_: str) -> Layer:
        """A layer for an existing blob (``NewLayerFromLayer``); raises PathError if missing."""
        path = self.blob_path(digest)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise PathError("stat", path, exc) from exc
        return Layer(media_type, digest, size, from_, status=f"using existing layer {digest}")

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """The bytes of a small blob (template, system, params …)."""
        with open(self.blob_path(digest), "rb") as fh:
            return fh.read(limit)

    def manifest_path(self, name: ModelName) -> str:
        """Where the manifest of ``name`` lives."""
        return os.path.join(self.manifests_dir, *name.parts())

    def read_manifest(self, name: ModelName) -> Manifest | None:
        """The manifest of ``name`` (exact path) or None; raises ValueError when corrupt."""
        path = self.manifest_path(name)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            mtime_ns = os.stat(path).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            # Corrupt content, not a wrong argument: callers catch ValueError for a bad manifest.
            raise ValueError(f"manifest {path} is not a JSON object")  # noqa: TRY004 - see above
        layers = [Layer.from_json(item) for item in data.get("layers") or []]
        return Manifest(
            name, path, raw, mtime_ns, Layer.from_json(data.get("config") or {}), layers
        )

    def resolve(self, name: ModelName) -> ModelName:
        """Give ``name`` the casing of existing directories and files (``getExistingName``)."""
        base, parts = self.manifests_dir, []
        for part in name.parts():
            match = part
            try:
                match = next(e for e in sorted(os.listdir(base)) if e.lower() == part.lower())
            except (OSError, StopIteration):
                pass
            parts.append(match)
            base = os.path.join(base, match)
        return ModelName(*parts)

    def find(self, name: ModelName) -> Manifest | None:
        """The manifest for ``name`` matched case-insensitively, or None."""
        return self.read_manifest(self.resolve(name))

    def manifests(self, strict: bool = False) -> list[Manifest]:
        """Every manifest with a valid name; a corrupt one raises only when ``strict``."""
        found = []
        for rel in self._manifest_files():
            name = ModelName(*rel)
            if not name.is_valid():
                continue
            try:
                manifest = self.read_manifest(name)
            except (ValueError, OSError):
                if strict:
                    raise
                continue
            if manifest is not None:
                found.append(manifest)
        return found

    def _manifest_files(self) -> list[tuple[str, str, str, str]]:
        found = []
        for dirpath, _dirs, files in os.walk(self.manifests_dir):
            rel = os.path.relpath(dirpath, self.manifests_dir).split(os.sep)
            if len(rel) == 3 and rel[0] != ".":
                found += [(rel[0], rel[1], rel[2], tag) for tag in files]
        return found

    def write_manifest(self, name: ModelName, config: Layer, layers: list[Layer]) -> None:
        """Write the manifest file (0666 less the umask, like ``os.Create``)."""
        data = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        self._write_manifest_bytes(name, (go_json(data) + "\n").encode())

    def _write_manifest_bytes(self, name: ModelName, raw: bytes) -> None:
        path = self.manifest_path(name)
        mkdir_all(os.path.dirname(path), 0o755)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)

    def copy_manifest(self, source: Manifest, destination: ModelName) -> None:
        """Copy the manifest file only; the blobs are shared."""
        self._write_manifest_bytes(destination, source.raw)

    def remove_manifest(self, manifest: Manifest) -> None:
        """Delete the manifest file and the directories it leaves empty."""
        os.unlink(manifest.path)
        self.prune_directories()

    def remove_unused_layers(self, manifest: Manifest) -> list[str]:
        """Delete the blobs of ``manifest`` that no remaining manifest uses."""
        in_use: set[str] = set()
        for other in self.manifests():
            in_use |= other.digests()
        removed = []
        for digest in sorted(manifest.digests() - in_use):
            try:
                os.unlink(self.blob_path(digest))
                removed.append(digest)
            except (OSError, InvalidDigest):
                pass
        return removed

    def prune_directories(self) -> None:
        """Remove empty directories below ``manifests/`` (``PruneDirectory``)."""
        for dirpath, _dirs, _files in os.walk(self.manifests_dir, topdown=False):
            if dirpath != self.manifests_dir:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    def fix_blobs(self) -> None:
        """Rename legacy ``sha256:<hex>`` blob names to ``sha256-<hex>``."""
        for entry in _listdir(self.blobs_dir):
            if entry.startswith("sha256:"):
                os.replace(
                    os.path.join(self.blobs_dir, entry),
                    os.path.join(self.blobs_dir, entry.replace(":", "-")),
                )

    def prune(self, min_age_s: float) -> tuple[int, int]:
        """Delete unreferenced and invalid blob files; returns (total blobs, removed).

        Files modified less than ``min_age_s`` ago are left alone (Ollama 0.21 and later
        use one hour; older versions delete at once). Raises ValueError on a corrupt manifest.
        """
        in_use: set[str] = set()
        for manifest in self.manifests(strict=True):
            in_use |= manifest.digests()
        candidates: set[str] = set()
        for entry in _listdir(self.blobs_dir):
            path = os.path.join(self.blobs_dir, entry)
            if _younger_than(path, min_age_s):
                continue
            if DIGEST_RE.match(entry):
                candidates.add(entry.replace("-", ":", 1))
            else:
                _unlink_quietly(path)
        total, unused = len(candidates), candidates - in_use
        for digest in unused:
            _unlink_quietly(self.blob_path(digest))
        self.prune_directories()
        return total, len(unused)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _younger_than(path: str, seconds: float) -> bool:
    try:
        return seconds > 0 and time.time() - os.stat(path).st_mtime < seconds
    except OSError:
        return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
