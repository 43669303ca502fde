"""``/api/generate``, ``/api/chat``, ``/api/embed`` and ``/api/embeddings``.

Answers are deterministic so a test can see what was in effect. The reply text is one line::

    emulator model=<name:tag> system=<JSON string> params=<JSON object> images=<n>
    prompt=<JSON string>

(shown wrapped here; it is a single line with single spaces).

``params`` is the model's stored parameters merged with the request's ``options`` (the request
wins), as compact JSON with sorted keys; ``system`` is the request's system prompt (``system``
field or the last ``system`` message) or else the model's; ``prompt`` is the request ``prompt``
or the content of the last chat message. With ``format`` set the reply is the JSON object
``{"emulator": "<that line>"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .api import ApiError, keep_alive_from, stream_requested
from .gofmt import go_time
from .model import Model, capabilities, details, load_model
from .names import parse_name
from .sched import Runner
from .state import ServerState


def find_model(state: ServerState, text: str, missing: str) -> Model:
    """Load the model named ``text``; raises ApiError 404 with ``missing`` as the text."""
    name = parse_name(text)
    manifest = state.store.find(name) if name.is_valid() else None
    if manifest is None:
        raise ApiError(404, missing)
    return load_model(state.store, manifest)


def _now() -> str:
    return go_time(time.time_ns(), local=False)


def reply_line(model: Model, system: str, options: dict[str, Any], images: int, prompt: str) -> str:
    """The deterministic reply (see the module docstring)."""
    merged = {**model.params, **options}
    params = json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (
        f"emulator model={model.short_name} system={json.dumps(system, ensure_ascii=False)}"
        f" params={params} images={images} prompt={json.dumps(prompt, ensure_ascii=False)}"
    )


def _acquire(state: ServerState, model: Model) -> Runner:
    info = {
        "name": model.short_name,
        "model": model.short_name,
        "size": model.manifest.size,
        "digest": model.manifest.digest,
        "details": details(model),
        "size_vram": 0,
        "context_length": int(model.params.get("num_ctx") or 4096),
    }
    return state.sched.acquire(model.short_name.lower(), model.short_name, model.model_path, info)


def _check_images(images: list[Any]) -> int:
    for image in images:
        try:
            base64.b64decode(str(image), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "illegal base64 data at input byte 0") from exc
    return len(images)


def _metrics(runner: Runner, prompt: str, chunks: int) -> dict[str, Any]:
    loaded = time.time_ns() - runner.started_ns < 1_000_000_000
    return {
        "total_duration": 1_000_000 + chunks * 1_000,
        "load_duration": 500_000 if loaded else 1_000,
        "prompt_eval_count": len(prompt.split()) + 1,
        "prompt_eval_duration": 100_000,
        "eval_count": chunks,
        "eval_duration": chunks * 1_000,
    }


class Answer:
    """What a handler hands to the HTTP layer: a JSON object or a stream of them."""

    def __init__(
        self, body: dict[str, Any] | None = None, stream: Iterator[dict[str, Any]] | None = None
    ) -> None:
        self.body = body
        self.stream = stream


@dataclass
class Turn:
    """One generate or chat request, reduced to what the reply depends on."""

    model: Model
    head: dict[str, Any]
    field: str
    system: str
    prompt: str
    images: int
    has_input: bool


def generate(state: ServerState, request: dict[str, Any]) -> Answer:
    """``POST /api/generate``."""
    name = str(request.get("model") or "")
    if not name:
        raise ApiError(400, "model is required")
    model = find_model(state, name, f"model '{name}' not found")
    if "completion" not in capabilities(model):
        raise ApiError(400, f'"{name}" does not support generate')
    prompt = str(request.get("prompt") or "")
    turn = Turn(
        model,
        {"model": name, "created_at": _now()},
        "response",
        system=str(request.get("system") or model.system),
        prompt=prompt,
        images=_check_images(list(request.get("images") or [])),
        has_input=bool(prompt),
    )
    return _run(state, request, turn)


def chat(state: ServerState, request: dict[str, Any]) -> Answer:
    """``POST /api/chat``."""
    name = str(request.get("model") or "")
    if not name or not parse_name(name).is_valid():
        raise ApiError(400, "model is required")
    model = find_model(state, name, f"model '{name}' not found")
    if "completion" not in capabilities(model):
        raise ApiError(400, f'"{name}" does not support chat')
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    systems = [
        str(m.get("content", "")) for m in messages if str(m.get("role", "")).lower() == "system"
    ]
    turn = Turn(
        model,
        {"model": name, "created_at": _now()},
        "message",
        system=systems[-1] if systems else model.system,
        prompt=str(messages[-1].get("content", "")) if messages else "",
        images=sum(_check_images(list(m.get("images") or [])) for m in messages),
        has_input=bool(messages),
    )
    return _run(state, request, turn)


def _options(request: dict[str, Any]) -> dict[str, Any]:
    options = request.get("options")
    return dict(options) if isinstance(options, dict) else {}


def _run(state: ServerState, request: dict[str, Any], turn: Turn) -> Answer:
    keep_alive = keep_alive_from(request)
    head, field = turn.head, turn.field
    if not turn.has_input and keep_alive == 0:
        state.sched.unload(turn.model.short_name.lower())
        return Answer(_done(head, field, "unload"))
    effective = state.keep_alive_ns if keep_alive is None else keep_alive
    runner = _acquire(state, turn.model)
    if not turn.has_input:
        state.sched.release(runner, effective)
        return Answer(_done(head, field, "load"))

    reply = reply_line(turn.model, turn.system, _options(request), turn.images, turn.prompt)
    if request.get("format"):
        reply = json.dumps({"emulator": reply}, ensure_ascii=False)
    chunks = re.findall(r"\S+\s*", reply) or [reply]
    final = {**_done(head, field, "stop"), **_metrics(runner, reply, len(chunks))}
    if field == "response":
        final["context"] = list(hashlib.sha256(reply.encode()).digest()[:8])
    if stream_requested(request):
        return Answer(stream=_stream(state, runner, effective, turn, chunks, final))

    state.sched.release(runner, effective)
    final[field] = reply if field == "response" else {"role": "assistant", "content": reply}
    return Answer(final)


def _done(head: dict[str, Any], field: str, reason: str) -> dict[str, Any]:
    body = dict(head)
    body[field] = "" if field == "response" else {"role": "assistant", "content": ""}
    body.update({"done": True, "done_reason": reason})
    return body


def _stream(
    state: ServerState,
    runner: Runner,
    keep_alive_ns: int,
    turn: Turn,
    chunks: list[str],
    final: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    try:
        for chunk in chunks:
            content: Any = chunk
            if turn.field == "message":
                content = {"role": "assistant", "content": chunk}
            yield {**turn.head, "created_at": _now(), turn.field: content, "done": False}
        yield final
    finally:
        # Runs when the stream ends or the client goes away (the generator is closed).
        state.sched.release(runner, keep_alive_ns)


def _vector(seed: str, dimensions: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(f"{counter}\0{seed}".encode()).digest()
        counter += 1
    values = [b / 127.5 - 1.0 for b in raw[:dimensions]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _dimensions(model: Model, request: dict[str, Any]) -> int:
    info = model.gguf()
    size = info.arch_value("embedding_length") if info else None
    size = size if isinstance(size, int) and 0 < size <= 8192 else 16
    wanted = request.get("dimensions")
    return min(size, wanted) if isinstance(wanted, int) and wanted > 0 else size


def embed(state: ServerState, request: dict[str, Any]) -> Answer:
    """``POST /api/embed``: one deterministic unit vector per input string."""
    name = str(request.get("model") or "")
    model = find_model(state, name, f'model "{name}" not found, try pulling it first')
    raw = request.get("input")
    if isinstance(raw, str):
        inputs = [raw] if raw else []
    else:
        inputs = [str(item) for item in raw or []]
    runner = _acquire(state, model)
    state.sched.release(runner, _keep_alive(state, request))
    if not inputs:
        return Answer({"model": name, "embeddings": []})
    dims = _dimensions(model, request)
    vectors = [_vector(f"{model.short_name}\0{text}", dims) for text in inputs]
    metrics = _metrics(runner, " ".join(inputs), 0)
    return Answer(
        {
            "model": name,
            "embeddings": vectors,
            "total_duration": metrics["total_duration"],
            "load_duration": metrics["load_duration"],
            "prompt_eval_count": metrics["prompt_eval_count"],
        }
    )


def embeddings(state: ServerState, request: dict[str, Any]) -> Answer:
    """``POST /api/embeddings`` (the older single-prompt form)."""
    name = str(request.get("model") or "")
    model = find_model(state, name, f'model "{name}" not found, try pulling it first')
    runner = _acquire(state, model)
    state.sched.release(runner, _keep_alive(state, request))
    prompt = str(request.get("prompt") or "")
    if not prompt:
        return Answer({"embedding": []})
    return Answer(
        {"embedding": _vector(f"{model.short_name}\0{prompt}", _dimensions(model, request))}
    )


def _keep_alive(state: ServerState, request: dict[str, Any]) -> int:
    value = keep_alive_from(request)
    return state.keep_alive_ns if value is None else value
