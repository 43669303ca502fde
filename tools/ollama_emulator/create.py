"""``POST /api/create`` (JSON form) and ``POST /api/pull``, offline.

The create generator yields progress objects in Ollama's order (``parsing GGUF``,
``using existing layer …``, ``creating new layer …``, ``writing manifest``, ``success``) and
raises ApiError for a failure; the HTTP layer turns that into a status or a final error line.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Generator, Iterator
from typing import Any

from .api import ApiError, pull_error_text
from .fsutil import PathError
from .gguf_reader import has_gguf_magic
from .gofmt import go_json
from .model import gguf_info, load_model
from .names import ModelName, parse_name
from .store import CONFIG_MEDIA_TYPE, MEDIA_PREFIX, InvalidDigest, Layer, Store

Progress = Iterator[dict[str, Any]]
# Yields progress objects, then returns (layers, config of the model layer's GGUF or base).
LayerSteps = Generator[dict[str, Any], None, tuple[list[Layer], dict[str, Any]]]
_CONFIG_KEYS = (
    "model_format",
    "model_family",
    "model_families",
    "model_type",
    "file_type",
    "renderer",
    "parser",
    "requires",
    "remote_host",
    "remote_model",
    "capabilities",
    "context_length",
    "embedding_length",
    "base_name",
)


def validate_create(store: Store, request: dict[str, Any]) -> ModelName:
    """Checks done before streaming starts; returns the (case-resolved) target name."""
    for key in ("files", "adapters"):
        for path, digest in (request.get(key) or {}).items():
            if not _valid_relative_path(path):
                raise ApiError(400, "file path must be relative")
            if not digest:
                raise ApiError(400, "invalid digest format")
    license_strings(request.get("license"))
    name = parse_name(str(request.get("model") or request.get("name") or ""))
    if not name.is_valid():
        raise ApiError(400, "invalid model name")
    return store.resolve(name)


def _valid_relative_path(path: str) -> bool:
    """Go's ``fs.ValidPath``: slash-separated, no empty, ``.`` or ``..`` elements."""
    if path == ".":
        return True
    return bool(path) and all(part not in ("", ".", "..") for part in path.split("/"))


def license_strings(value: Any) -> list[str]:
    """``license`` as a list; raises ApiError 400 for anything but a string or strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ApiError(400, "invalid license")


def create_model(
    store: Store, request: dict[str, Any], name: ModelName, fail_glob: str, prune: bool
) -> Progress:
    """Run a create; yields progress objects, raises ApiError on failure."""
    if request.get("from"):
        layers, config = yield from _layers_from_model(store, str(request["from"]))
    elif request.get("files") is not None:
        layers, config = yield from _layers_from_files(store, request["files"], "")
    else:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    if request.get("adapters"):
        adapters, _ = yield from _layers_from_files(store, request["adapters"], "adapter")
        layers += adapters
    layers = _apply_modelfile_layers(store, layers, request)
    config_layer = _config_layer(store, config, layers)
    for layer in layers:
        if layer.status:
            yield {"status": layer.status}
    if fail_glob and _matches(fail_glob, name, request):
        # Fails mid-stream like a real write error: after the layer lines, no manifest.
        raise ApiError(
            500,
            f"emulated failure creating {name.display_shortest()!r} "
            f"(JANUS_EMU_FAIL_CREATE={fail_glob})",
        )
    yield {"status": "writing manifest"}
    with store.lock:
        old = store.read_manifest(name)
        store.write_manifest(name, config_layer, layers)
        if prune and old is not None:
            store.remove_unused_layers(old)
    yield {"status": "success"}


def _matches(pattern: str, name: ModelName, request: dict[str, Any]) -> bool:
    candidates = {name.display_shortest(), name.model, str(request.get("model") or "")}
    return any(fnmatch.fnmatch(c.lower(), pattern.lower()) for c in candidates if c)


def _layers_from_model(store: Store, from_text: str) -> LayerSteps:
    base = parse_name(from_text)
    if not base.is_valid():
        raise ApiError(400, "invalid model name")
    # Like parseFromModel: an exact path lookup; a missing base is pulled (offline: fails).
    manifest = store.read_manifest(base)
    if manifest is None:
        yield {"status": "pulling manifest"}
        raise ApiError(500, pull_error_text(base))
    source = base.display_shortest()
    layers = [
        store.layer_from_blob(layer.digest, layer.media_type, source) for layer in manifest.layers
    ]
    for new, old in zip(layers, manifest.layers, strict=True):
        new.name = old.name
    return layers, dict(load_model(store, manifest).config)


def _layers_from_files(store: Store, files: dict[str, str], forced_kind: str) -> LayerSteps:
    if not _has_gguf(store, files):
        raise ApiError(400, "unknown type")
    layers: list[Layer] = []
    config: dict[str, Any] = {}
    for path in sorted(files):
        yield {"status": "parsing GGUF"}
        layer, file_config = _gguf_layer(store, path, files[path], forced_kind)
        layers.append(layer)
        config = config or file_config
    return layers, config


def _has_gguf(store: Store, files: dict[str, str]) -> bool:
    for path, digest in files.items():
        if path.endswith(".gguf"):
            return True
        if path.endswith(".safetensors"):
            raise ApiError(400, "the emulator cannot convert safetensors; import a GGUF file")
        try:
            with open(store.blob_path(digest), "rb") as fh:
                if has_gguf_magic(fh.read(4)):
                    return True
        except (OSError, InvalidDigest):
            continue
    return False


def _gguf_layer(
    store: Store, path: str, digest: str, forced_kind: str
) -> tuple[Layer, dict[str, Any]]:
    try:
        blob = store.blob_path(digest)
        with open(blob, "rb") as fh:
            head = fh.read(4)
    except InvalidDigest as exc:
        raise ApiError(400, "invalid digest format") from exc
    except OSError as exc:
        raise ApiError(500, str(PathError("open", store.blob_path(digest), exc))) from exc
    if not has_gguf_magic(head):
        raise ApiError(400, "supplied file was not in GGUF format")
    info = gguf_info(blob)
    kind = forced_kind or _media_kind(info.kind if info else "", info.architecture if info else "")
    layer = store.layer_from_blob(digest, MEDIA_PREFIX + kind, path)
    return layer, (_config_from_gguf(info) if kind == "model" else {})


def _media_kind(gguf_kind: str, architecture: str) -> str:
    if gguf_kind == "adapter":
        return "adapter"
    if gguf_kind in ("projector", "mmproj") or architecture == "clip":
        return "projector"
    return "model"


def _config_from_gguf(info: Any) -> dict[str, Any]:
    arch = info.architecture if info else ""
    return {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch] if arch else None,
        "model_type": human_number(info.parameter_count if info else 0),
        "file_type": info.file_type_name() if info else "unknown",
    }


def human_number(count: int) -> str:
    """Go's ``format.HumanNumber`` (``7B``, ``3.2B``, ``135.50M``, ``144``)."""
    for unit, suffix, decimals in ((10**9, "B", 1), (10**6, "M", 2)):
        if count >= unit:
            value = count / unit
            return (
                f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{decimals}f}{suffix}"
            )
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def _apply_modelfile_layers(
    store: Store, layers: list[Layer], request: dict[str, Any]
) -> list[Layer]:
    for key in ("template", "system"):
        if request.get(key):
            drop = {"template", "prompt"} if key == "template" else {"system"}
            layers = _without(layers, drop)
            layers.append(store.new_layer(str(request[key]).encode(), MEDIA_PREFIX + key))
    for text in license_strings(request.get("license")):
        layers.append(store.new_layer(text.encode(), MEDIA_PREFIX + "license"))
    if request.get("parameters") is not None:
        layers = _set_parameters(store, layers, dict(request["parameters"]))
    if request.get("messages") is not None:
        messages = [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in request["messages"]
            if isinstance(m, dict)
        ]
        layers = _without(layers, {"messages"})
        layers.append(
            store.new_layer((go_json(messages) + "\n").encode(), MEDIA_PREFIX + "messages")
        )
    return layers


def _without(layers: list[Layer], kinds: set[str]) -> list[Layer]:
    return [layer for layer in layers if layer.media_type.removeprefix(MEDIA_PREFIX) not in kinds]


def _set_parameters(store: Store, layers: list[Layer], params: dict[str, Any]) -> list[Layer]:
    # The base model's parameters are merged in; the request wins (setParameters).
    for layer in layers:
        if layer.media_type == MEDIA_PREFIX + "params":
            for key, value in json.loads(store.read_blob(layer.digest)).items():
                params.setdefault(key, value)
    if not params:
        return layers
    layers = _without(layers, {"params"})
    encoded = go_json({key: params[key] for key in sorted(params)}) + "\n"
    layers.append(store.new_layer(encoded.encode(), MEDIA_PREFIX + "params"))
    return layers


def _config_layer(store: Store, config: dict[str, Any], layers: list[Layer]) -> Layer:
    ordered: dict[str, Any] = {
        "model_format": "",
        "model_family": "",
        "model_families": None,
        "model_type": "",
        "file_type": "",
    }
    ordered.update({key: config[key] for key in _CONFIG_KEYS if config.get(key)})
    ordered.update(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        }
    )
    return store.new_layer((go_json(ordered) + "\n").encode(), CONFIG_MEDIA_TYPE)


def pull_model(request: dict[str, Any]) -> Progress:
    """``/api/pull`` without a network: ``pulling manifest``, then the lookup error."""
    name = parse_name(str(request.get("model") or request.get("name") or ""))
    yield {"status": "pulling manifest"}
    raise ApiError(500, pull_error_text(name, bool(request.get("insecure"))))
