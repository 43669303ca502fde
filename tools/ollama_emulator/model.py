"""A stored model as the server sees it (``GetModel``), and the JSON views of it.

``details.parent_model`` is the ``from`` of the model layer. ``/api/create`` sets it to the
base model's short name (``base:latest``) for a model created ``from`` another one, and to
the file name given in ``files`` for an imported GGUF (``server/model.go`` ``parseFromModel``,
``server/create.go``, ``server/images.go`` ``GetModel``).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from .gguf_reader import GGUFError, GGUFInfo, read_gguf
from .gofmt import go_time, go_value
from .names import ModelName
from .store import MEDIA_PREFIX, Manifest, Store

DEFAULT_TEMPLATE = "{{ .Prompt }}"
_gguf_cache: dict[str, GGUFInfo | None] = {}
_gguf_lock = threading.Lock()


@dataclass
class Model:
    """Everything a manifest says about one model."""

    name: ModelName
    manifest: Manifest
    config: dict[str, Any]
    model_path: str = ""
    parent_model: str = ""
    projector_paths: list[str] = field(default_factory=list)
    adapter_paths: list[str] = field(default_factory=list)
    template: str = DEFAULT_TEMPLATE
    system: str = ""
    license: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def short_name(self) -> str:
        """``model:tag`` (or with namespace/host when not the defaults)."""
        return self.name.display_shortest()

    def gguf(self) -> GGUFInfo | None:
        """Header of the model GGUF, or None when it cannot be read."""
        return gguf_info(self.model_path)


def gguf_info(path: str) -> GGUFInfo | None:
    """Cached GGUF header for a blob path."""
    if not path:
        return None
    with _gguf_lock:
        if path not in _gguf_cache:
            try:
                _gguf_cache[path] = read_gguf(path)
            except (OSError, GGUFError):
                _gguf_cache[path] = None
        return _gguf_cache[path]


def load_model(store: Store, manifest: Manifest) -> Model:
    """Read the config and the small layers of ``manifest``."""
    config: dict[str, Any] = {}
    if manifest.config.digest:
        config = json.loads(store.read_blob(manifest.config.digest) or b"{}")
    model = Model(manifest.name, manifest, config)
    for layer in manifest.layers:
        _apply_layer(store, model, layer.media_type.removeprefix(MEDIA_PREFIX), layer)
    return model


def _apply_layer(store: Store, model: Model, kind: str, layer: Any) -> None:
    path = store.blob_path(layer.digest)
    if kind == "model":
        model.model_path, model.parent_model = path, layer.from_
    elif kind == "projector":
        model.projector_paths.append(path)
    elif kind == "adapter":
        model.adapter_paths.append(path)
    elif kind in ("template", "prompt"):
        model.template = store.read_blob(layer.digest).decode()
    elif kind == "system":
        model.system = store.read_blob(layer.digest).decode()
    elif kind == "license":
        model.license.append(store.read_blob(layer.digest).decode())
    elif kind == "params":
        model.params = json.loads(store.read_blob(layer.digest))
    elif kind == "messages":
        model.messages = json.loads(store.read_blob(layer.digest))


def details(model: Model) -> dict[str, Any]:
    """The ``details`` object of tags, show and ps."""
    config = model.config
    return {
        "parent_model": model.parent_model,
        "format": config.get("model_format", ""),
        "family": config.get("model_family", ""),
        "families": config.get("model_families"),
        "parameter_size": config.get("model_type", ""),
        "quantization_level": config.get("file_type", ""),
    }


def capabilities(model: Model) -> list[str]:
    """What the model can do, derived from its GGUF header and template."""
    info = model.gguf()
    caps = []
    if info is not None and info.arch_value("pooling_type") is not None:
        caps.append("embedding")
    else:
        caps.append("completion")
    if ".Tools" in model.template:
        caps.append("tools")
    if ".Suffix" in model.template:
        caps.append("insert")
    if model.projector_paths or (info is not None and info.arch_value("vision.block_count")):
        caps.append("vision")
    return caps


def modified_at(model: Model) -> str:
    """The manifest file's mtime, local time with offset."""
    return go_time(model.manifest.mtime_ns)


def tags_item(model: Model) -> dict[str, Any]:
    """One entry of ``/api/tags``."""
    return {
        "name": model.short_name,
        "model": model.short_name,
        "modified_at": modified_at(model),
        "size": model.manifest.size,
        "digest": model.manifest.digest,
        "details": details(model),
        "capabilities": capabilities(model),
    }


def parameters_text(params: dict[str, Any]) -> str:
    """``name value`` lines, name padded to 30 columns, values in Go ``%#v`` form."""
    lines = []
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        lines += [f"{key:<30} {go_value(value, sharp=True)}" for value in values]
    return "\n".join(lines)


def _modelfile_quote(text: str) -> str:
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def modelfile_text(model: Model, params: dict[str, Any]) -> str:
    """The ``modelfile`` of ``/api/show``."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.short_name}",
        "",
        f"FROM {model.model_path}",
    ]
    lines += [f"ADAPTER {_modelfile_quote(path)}" for path in model.adapter_paths]
    lines += [f"FROM {path}" for path in model.projector_paths]
    lines.append(f"TEMPLATE {_modelfile_quote(model.template)}")
    if model.system:
        lines.append(f"SYSTEM {_modelfile_quote(model.system)}")
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        lines += [f"PARAMETER {key} {_modelfile_quote(go_value(v))}" for v in values]
    lines += [f"LICENSE {_modelfile_quote(text)}" for text in model.license]
    for message in model.messages:
        content = _modelfile_quote(str(message.get("content", "")))
        lines.append(f"MESSAGE {message.get('role', '')} {content}")
    return "\n".join(lines) + "\n"


def model_info(model: Model, verbose: bool) -> dict[str, Any]:
    """GGUF metadata without name and chat template; long arrays emptied unless verbose."""
    info = model.gguf()
    if info is None:
        return {}
    result: dict[str, Any] = {}
    for key in sorted(info.kv):
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        value = info.kv[key]
        if isinstance(value, list) and info.array_lengths.get(key, 0) > 5 and not verbose:
            value = []
        result[key] = value
    if info.complete:
        result["general.parameter_count"] = info.parameter_count
    return result


def show_response(model: Model, request: dict[str, Any]) -> dict[str, Any]:
    """The ``/api/show`` body; empty fields omitted as Go's ``omitempty`` does."""
    system = request.get("system") or model.system
    options: dict[str, Any] = request.get("options") or {}
    if not isinstance(options, dict):
        options = {}
    response: dict[str, Any] = {
        "license": "\n".join(model.license),
        "modelfile": modelfile_text(model, {**model.params, **options}),
        "parameters": parameters_text(model.params),
        "template": model.template,
        "system": system,
        "details": details(model),
        "messages": [
            {"role": m.get("role", ""), "content": m.get("content", "")} for m in model.messages
        ],
        "model_info": model_info(model, bool(request.get("verbose"))),
        "capabilities": capabilities(model),
        "modified_at": modified_at(model),
    }
    keep = ("details", "model_info", "modified_at")
    return {k: v for k, v in response.items() if k in keep or v}


def blob_size(path: str) -> int:
    """Size of a blob file, 0 when missing."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
