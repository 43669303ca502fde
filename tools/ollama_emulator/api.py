"""Request decoding and errors with the texts Ollama's handlers produce."""

from __future__ import annotations

import json
from typing import Any

from .envconfig import FOREVER_NS
from .gofmt import parse_go_duration
from .names import ModelName

_GO_KIND = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
}
_ACCEPTS = {
    "string": (str,),
    "bool": (bool,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}


class ApiError(Exception):
    """An error answer: HTTP status and the ``{"error": message}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return _GO_KIND.get(type(value), "value")


def decode_request(body: bytes, go_type: str, fields: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Decode a JSON request like gin's ``ShouldBindJSON`` into a dict.

    ``fields`` maps a JSON key to (JSON kind, Go type name) for the type checks Go's decoder
    would fail on. Raises ApiError 400 (``missing request body`` for an empty body).
    """
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise ApiError(400, "missing request body")
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _decode_error_text(text, exc)) from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {_kind_of(value)} into Go value of type api.{go_type}"
        )
    for key, (kind, go_name) in fields.items():
        item = value.get(key)
        if item is None:
            continue
        if not isinstance(item, _ACCEPTS[kind]) or (kind != "bool" and isinstance(item, bool)):
            raise ApiError(
                400,
                f"json: cannot unmarshal {_kind_of(item)} into Go struct field "
                f"{go_type}.{key} of type {go_name}",
            )
    return value


def _decode_error_text(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[exc.pos]
    return f"invalid character '{char}' looking for beginning of value"


def stream_requested(request: dict[str, Any]) -> bool:
    """Streaming unless the request says ``"stream": false``."""
    return request.get("stream") is not False


def keep_alive_from(request: dict[str, Any]) -> int | None:
    """The request's ``keep_alive`` in ns (None when absent); raises ApiError 400."""
    value = request.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, f"Unsupported type: '{type(value).__name__}'")
    if isinstance(value, str):
        try:
            duration = parse_go_duration(value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
    else:
        duration = int(value * 1_000_000_000)
    return FOREVER_NS if duration < 0 else duration


def model_field(request: dict[str, Any]) -> str:
    """``model``, or the deprecated ``name`` when ``model`` is empty."""
    return str(request.get("model") or request.get("name") or "")


def pull_error_text(name: ModelName, insecure: bool = False) -> str:
    """The error an offline pull reports after ``pulling manifest``."""
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{name.host}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
    return f'pull model manifest: Get "{url}": dial tcp: lookup {name.host}: no such host'
