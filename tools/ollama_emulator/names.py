"""Model names as Ollama parses them (``types/model/name.go``).

``llama3`` means ``registry.ollama.ai/library/llama3:latest``. The store keeps one manifest
file per name at ``manifests/<host>/<namespace>/<model>/<tag>``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_MISSING = "!"
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


@dataclass(frozen=True)
class ModelName:
    """A fully merged model name; ``is_valid`` says whether Ollama would accept it."""

    host: str
    namespace: str
    model: str
    tag: str

    def display_shortest(self) -> str:
        """``model:tag``, ``ns/model:tag`` or ``host/ns/model:tag`` (the tag always shown)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def parts(self) -> tuple[str, str, str, str]:
        """Path components below ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> tuple[str, ...]:
        """Case-insensitive identity, as ``getExistingName`` compares names."""
        return tuple(p.lower() for p in self.parts())

    def is_valid(self) -> bool:
        """True when every part is present and uses only allowed characters."""
        kinds = ("host", "namespace", "model", "tag")
        return all(_valid_part(kind, part) for kind, part in zip(kinds, self.parts(), strict=True))


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    index = s.rfind(sep)
    if index < 0:
        return s, "", False
    return s[:index], s[index + len(sep) :], True


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    before, after, found = _cut_last(s, sep)
    if not found:
        return before, after, False
    return before or _MISSING, after or _MISSING, True


def parse_name(text: str) -> ModelName:
    """Parse ``text`` and fill missing parts with the defaults (``ParseName``)."""
    host = namespace = model = tag = ""
    s = text
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, _digest, _ = _cut_last(s, "@")
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = _cut_promised(s, "/")
        if not promised:
            namespace = s
        else:
            host = s.partition("://")[2] if "://" in s else s
    return ModelName(
        host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG
    )


def _is_alnum_underscore(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def _valid_part(kind: str, part: str) -> bool:
    if not part or len(part) > _MAX_LEN[kind]:
        return False
    for index, ch in enumerate(part):
        if index == 0:
            if not _is_alnum_underscore(ch):
                return False
        elif ch in "_-":
            continue
        elif ch == ".":
            if kind == "namespace":
                return False
        elif ch == ":":
            if kind != "host":
                return False
        elif not _is_alnum_underscore(ch):
            return False
    return True
