"""The route table (``GenerateRoutes``) and the thin handlers that decode requests."""

from __future__ import annotations

from typing import Any

from . import inference
from .api import ApiError, decode_request, model_field, stream_requested
from .create import create_model, pull_model, validate_create
from .httpserver import TEXT_TYPE, Handler, Route
from .model import load_model, show_response, tags_item
from .names import parse_name
from .store import InvalidDigest

_STR, _BOOL, _OBJ = ("string", "string"), ("bool", "bool"), ("object", "map[string]interface {}")
_COMMON = {"model": _STR, "name": _STR, "stream": _BOOL}
_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "ShowRequest": {**_COMMON, "system": _STR, "verbose": _BOOL, "options": _OBJ},
    "CreateRequest": {
        **_COMMON,
        "from": _STR,
        "files": ("object", "map[string]string"),
        "adapters": ("object", "map[string]string"),
        "template": _STR,
        "system": _STR,
        "parameters": _OBJ,
        "messages": ("array", "[]api.Message"),
        "quantize": _STR,
    },
    "CopyRequest": {"source": _STR, "destination": _STR},
    "DeleteRequest": _COMMON,
    "PullRequest": {**_COMMON, "insecure": _BOOL},
    "PushRequest": {**_COMMON, "insecure": _BOOL},
    "GenerateRequest": {
        **_COMMON,
        "prompt": _STR,
        "system": _STR,
        "template": _STR,
        "raw": _BOOL,
        "options": _OBJ,
        "images": ("array", "[]api.ImageData"),
    },
    "ChatRequest": {**_COMMON, "messages": ("array", "[]api.Message"), "options": _OBJ},
    "EmbedRequest": {**_COMMON, "options": _OBJ, "truncate": _BOOL},
    "EmbeddingRequest": {**_COMMON, "prompt": _STR, "options": _OBJ},
}


def _request(h: Handler, go_type: str) -> dict[str, Any]:
    return decode_request(h.read_body(), go_type, _FIELDS[go_type])


def root(h: Handler) -> None:
    """``GET /`` and ``HEAD /``: the readiness text."""
    h.send_bytes(200, b"Ollama is running", TEXT_TYPE)


def version(h: Handler) -> None:
    """``GET /api/version``."""
    h.send_json(200, {"version": h.server.state.knobs.version})


def cloud_status(h: Handler) -> None:
    """``GET /api/status`` (recent versions only)."""
    h.send_json(200, {"cloud": {"disabled": False, "source": "none"}})


def tags(h: Handler) -> None:
    """``GET /api/tags``: every model, newest first."""
    store = h.server.state.store
    models = []
    for manifest in store.manifests():
        try:
            models.append(load_model(store, manifest))
        except (OSError, ValueError):
            continue
    models.sort(key=lambda m: m.manifest.mtime_ns // 1_000_000_000, reverse=True)
    h.send_json(200, {"models": [tags_item(m) for m in models]})


def ps(h: Handler) -> None:
    """``GET /api/ps``: loaded models."""
    h.send_json(200, {"models": h.server.state.sched.ps()})


def show(h: Handler) -> None:
    """``POST /api/show``."""
    request = _request(h, "ShowRequest")
    text = model_field(request)
    if not text:
        raise ApiError(400, "model is required")
    name = parse_name(text)
    if not name.is_valid():
        raise ApiError(400, "invalid model name")
    store = h.server.state.store
    manifest = store.find(name)
    if manifest is None:
        raise ApiError(404, f"model '{name.display_shortest()}' not found")
    h.send_json(200, show_response(load_model(store, manifest), request))


def create(h: Handler) -> None:
    """``POST /api/create`` (JSON form; the pre-0.5.5 ``modelfile`` field is ignored)."""
    state = h.server.state
    request = _request(h, "CreateRequest")
    name = validate_create(state.store, request)
    items = create_model(state.store, request, name, state.knobs.fail_create, not state.noprune)
    h.send_stream(items) if stream_requested(request) else h.send_last(items)


def blob_head(h: Handler) -> None:
    """``HEAD /api/blobs/sha256:<hex>``: 200 or 404, no body."""
    try:
        path_exists = h.server.state.store.has_blob(h.digest_param)
    except InvalidDigest as exc:
        raise ApiError(400, str(exc)) from exc
    if not path_exists:
        raise ApiError(404, f'blob "{h.digest_param}" not found')
    h.send_bytes(200, b"", None)


def blob_upload(h: Handler) -> None:
    """``POST /api/blobs/sha256:<hex>``: 201 stored, 200 already there, 400 mismatch."""
    store = h.server.state.store
    try:
        exists = store.has_blob(h.digest_param)
    except InvalidDigest as exc:
        raise ApiError(400, str(exc)) from exc
    if exists:
        h.send_bytes(200, b"", None)
        return
    digest, _size = store.receive_blob(h.body_chunks())
    if digest != h.digest_param:
        raise ApiError(400, f'digest mismatch, expected "{h.digest_param}", got "{digest}"')
    h.send_bytes(201, b"", None)


def copy(h: Handler) -> None:
    """``POST /api/copy``: copies the manifest file; empty 200."""
    request = _request(h, "CopyRequest")
    store = h.server.state.store
    source_text, dest_text = str(request.get("source") or ""), str(request.get("destination") or "")
    source, dest = parse_name(source_text), parse_name(dest_text)
    if not source.is_valid():
        raise ApiError(400, f'source "{source_text}" is invalid')
    if not dest.is_valid():
        raise ApiError(400, f'destination "{dest_text}" is invalid')
    with store.lock:
        manifest = store.find(source)
        if manifest is None:
            raise ApiError(404, f'model "{source_text}" not found')
        store.copy_manifest(manifest, store.resolve(dest))
    h.send_bytes(200, b"", None)


def delete(h: Handler) -> None:
    """``DELETE /api/delete``: empty 200; unused blobs go too unless OLLAMA_NOPRUNE."""
    state = h.server.state
    request = _request(h, "DeleteRequest")
    text = model_field(request)
    name = parse_name(text)
    if not name.is_valid():
        raise ApiError(400, f'name "{text}" is invalid')
    with state.store.lock:
        manifest = state.store.find(name)
        if manifest is None:
            raise ApiError(404, f"model '{text}' not found")
        state.store.remove_manifest(manifest)
        if not state.noprune:
            state.store.remove_unused_layers(manifest)
    h.send_bytes(200, b"", None)


def pull(h: Handler) -> None:
    """``POST /api/pull``: always fails offline after ``pulling manifest``."""
    request = _request(h, "PullRequest")
    if not parse_name(model_field(request)).is_valid():
        raise ApiError(400, "invalid model name")
    items = pull_model(request)
    h.send_stream(items) if stream_requested(request) else h.send_last(items)


def push(h: Handler) -> None:
    """``POST /api/push``: fails offline (or on a missing model) after the first status."""
    request = _request(h, "PushRequest")
    name = parse_name(model_field(request))
    if not name.is_valid():
        raise ApiError(400, "invalid model name")
    store = h.server.state.store

    def items() -> Any:
        yield {"status": "retrieving manifest"}
        if store.find(name) is None:
            raise ApiError(500, f"open {store.manifest_path(name)}: no such file or directory")
        raise ApiError(
            500,
            f'Post "https://{name.host}/v2/{name.namespace}/{name.model}/blobs/'
            f'uploads/": dial tcp: lookup {name.host}: no such host',
        )

    h.send_stream(items()) if stream_requested(request) else h.send_last(items())


def _answer(h: Handler, answer: inference.Answer) -> None:
    if answer.stream is not None:
        h.send_stream(answer.stream)
    else:
        h.send_json(200, answer.body)


def generate(h: Handler) -> None:
    """``POST /api/generate``."""
    _answer(h, inference.generate(h.server.state, _request(h, "GenerateRequest")))


def chat(h: Handler) -> None:
    """``POST /api/chat``."""
    _answer(h, inference.chat(h.server.state, _request(h, "ChatRequest")))


def embed(h: Handler) -> None:
    """``POST /api/embed``."""
    _answer(h, inference.embed(h.server.state, _request(h, "EmbedRequest")))


def embeddings(h: Handler) -> None:
    """``POST /api/embeddings``."""
    _answer(h, inference.embeddings(h.server.state, _request(h, "EmbeddingRequest")))


def build_routes(with_status: bool) -> dict[str, dict[str, Route]]:
    """Path → method → handler; ``/api/status`` only for versions that have it."""
    routes: dict[str, dict[str, Route]] = {
        "/": {"GET": root, "HEAD": root},
        "/api/version": {"GET": version, "HEAD": version},
        "/api/tags": {"GET": tags, "HEAD": tags},
        "/api/ps": {"GET": ps},
        "/api/show": {"POST": show},
        "/api/create": {"POST": create},
        "/api/blobs/:digest": {"POST": blob_upload, "HEAD": blob_head},
        "/api/copy": {"POST": copy},
        "/api/delete": {"DELETE": delete},
        "/api/pull": {"POST": pull},
        "/api/push": {"POST": push},
        "/api/generate": {"POST": generate},
        "/api/chat": {"POST": chat},
        "/api/embed": {"POST": embed},
        "/api/embeddings": {"POST": embeddings},
    }
    if with_status:
        routes["/api/status"] = {"GET": cloud_status}
    return routes
