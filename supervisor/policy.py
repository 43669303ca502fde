"""Per-tenant API policy: which Ollama routes, models and images a tenant socket lets through.

The relay asks ``TenantPolicy.check_head`` about every request line. The answer is a
``Refusal`` or a ``Plan``: stream the request as it is, or buffer its JSON body (at most
``max_body_bytes``) so that ``check_body`` can look at the model names and images in it, and
perhaps filter the model list in the response (``filter_listing``). Nothing here does I/O.

Routes are Ollama's (``server/routes.go`` ``GenerateRoutes``), grouped in three operations:
``read``, ``infer`` and ``manage``. A route the table does not know is refused (404, or 405 for
a known path with another method) unless ``operations`` is ``all``.

Bodies are read the way Go's ``encoding/json`` fills Ollama's request structs: object keys match
field names case-insensitively and the last match wins. Rather than guess which duplicate Go
picks, every value whose key could match a field is checked.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

if TYPE_CHECKING:
    from supervisor.config import TenantConfig

DEFAULT_MAX_BODY_BYTES = 8 << 20


class Operation(enum.Enum):
    """A group of Ollama routes that a policy allows or not."""

    READ = "read"
    INFER = "infer"
    MANAGE = "manage"

    def __str__(self) -> str:
        return self.value


class Rule(enum.Enum):
    """Why a request was refused; the ``rule`` label of ``janus_policy_refusals_total``."""

    OPERATION = "operation"
    UNKNOWN_ROUTE = "unknown_route"
    MODEL = "model"
    IMAGES = "images"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Refusal:
    """An answer the relay gives instead of forwarding a request."""

    status: int
    rule: Rule
    tenant: str
    reason: str  # what was refused and why, then what to do

    @property
    def message(self) -> str:
        """The ``{"error": …}`` text; the official clients raise it as ``ResponseError``."""
        return f"tenant {self.tenant}: {self.reason}"


# ---- request bodies as Go decodes them ------------------------------------------------


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in document order, duplicates kept."""


def _may_name(key: str, field: str) -> bool:
    """Whether Go's decoder could store ``key`` into the struct field named ``field``.

    ASCII letters match case-insensitively; a non-ASCII character might fold to the ASCII
    letter in its place (``ſ`` folds to ``s``, the Kelvin sign to ``k``), so it counts as a
    possible match too: a superset of Go's matches, which only makes the checks stricter.
    """
    if key == field:
        return True
    if len(key) != len(field):
        return False
    if key.isascii():
        return key.lower() == field
    return all(c.lower() == f or not c.isascii() for c, f in zip(key, field, strict=True))


def _values(obj: _Object, field: str) -> list[Any]:
    """Every non-null value Go might decode into ``field``."""
    return [v for k, v in obj if v is not None and _may_name(k, field)]


def _objects(values: Iterable[Any]) -> Iterable[_Object]:
    for value in values:
        if isinstance(value, list):
            yield from (item for item in value if isinstance(item, _Object))


def _top_images(obj: _Object) -> bool:
    """``/api/generate``: a non-empty ``images`` list."""
    return any(bool(v) for v in _values(obj, "images"))


def _message_images(obj: _Object) -> bool:
    """``/api/chat``: a non-empty ``images`` list in any of ``messages``."""
    return any(_top_images(m) for m in _objects(_values(obj, "messages")))


_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def _image_parts(*fields: str) -> Callable[[_Object], bool]:
    """OpenAI/Anthropic shapes: a content part of an image type anywhere under ``fields``."""

    def check(obj: _Object) -> bool:
        stack: list[Any] = [v for f in fields for v in _values(obj, f)]
        while stack:
            value = stack.pop()
            if isinstance(value, _Object):
                if any(t in _IMAGE_PARTS for t in _values(value, "type") if isinstance(t, str)):
                    return True
                stack.extend(v for _, v in value)
            elif isinstance(value, list):
                stack.extend(value)
        return False

    return check


def _always(obj: _Object) -> bool:
    return True


def _parse_body(body: bytes) -> _Object | str:
    """The body as an ``_Object``, or why it is not one."""
    if not body.strip():
        return "the request body is empty; send a JSON object"
    try:
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_Object)
    except UnicodeDecodeError:
        return "the request body is not UTF-8 text; send a JSON object"
    except (ValueError, RecursionError) as exc:
        return f"the request body is not valid JSON ({exc}); send one JSON object"
    if not isinstance(value, _Object):
        return "the request body is not a JSON object; send one JSON object"
    return value


# ---- model names as Ollama compares them ------------------------------------------------

_MAX_NAME = 600  # host 350 + namespace, model and tag 80 each + separators
_PART_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


def model_key(name: str) -> str | None:
    """``host/namespace/model:tag`` in lower case, the way Ollama matches names.

    ``janus-pro-7b-qa`` becomes ``registry.ollama.ai/library/janus-pro-7b-qa:latest``. Returns
    None for a name Ollama would reject, and for one pinned to a digest (``name@sha256:…``),
    which a policy cannot tell apart from the name alone.
    """
    if len(name) > _MAX_NAME or "@" in name:
        return None
    return _model_key(name)


@functools.lru_cache(maxsize=1024)
def _model_key(name: str) -> str | None:
    rest, tag = name, "latest"
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
    parts = rest.split("/")
    if len(parts) > 3:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    host, namespace, model = ["registry.ollama.ai", "library"][: 3 - len(parts)] + parts
    host = host.partition("://")[2] or host
    named = {"host": host, "namespace": namespace, "model": model, "tag": tag}
    if not all(_valid_part(kind, part) for kind, part in named.items()):
        return None
    return f"{host}/{namespace}/{model}:{tag}".lower()


def _valid_part(kind: str, part: str) -> bool:
    if not part or len(part) > _PART_LIMITS[kind] or not _PART.fullmatch(part):
        return False
    return (kind != "namespace" or "." not in part) and (kind == "host" or ":" not in part)


# ---- routes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A response listing models: ``{list_key: [{name_key: "name:tag", …}, …]}``."""

    list_key: str
    name_keys: tuple[str, ...]


_NAME = ("model", "name")
_MODELS_LIST = Listing("models", _NAME)


@dataclass(frozen=True)
class Route:
    """One Ollama route and what the policy looks at in it."""

    operation: Operation
    models: tuple[str, ...] = ()  # body fields naming models
    images: Callable[[_Object], bool] | None = None
    listing: Listing | None = None  # model list in a GET response
    path_model: bool = False  # the last path segment names a model
    blob: bool = False  # a raw upload, streamed and limited by max_blob_bytes


def _routes() -> dict[tuple[str, str], Route]:
    read, infer, manage = Operation.READ, Operation.INFER, Operation.MANAGE
    plain = Route(read)
    table = {
        ("GET", "/"): plain,
        ("HEAD", "/"): plain,
        ("GET", "/api/version"): plain,
        ("HEAD", "/api/version"): plain,
        ("GET", "/api/status"): plain,
        ("GET", "/api/tags"): Route(read, listing=_MODELS_LIST),
        ("HEAD", "/api/tags"): plain,
        ("GET", "/api/ps"): Route(read, listing=_MODELS_LIST),
        ("POST", "/api/show"): Route(read, models=_NAME),
        ("POST", "/api/generate"): Route(infer, ("model",), _top_images),
        ("POST", "/api/chat"): Route(infer, ("model",), _message_images),
        ("POST", "/api/embed"): Route(infer, ("model",)),
        ("POST", "/api/embeddings"): Route(infer, ("model",)),
        ("POST", "/v1/chat/completions"): Route(infer, ("model",), _image_parts("messages")),
        ("POST", "/v1/completions"): Route(infer, ("model",)),
        ("POST", "/v1/embeddings"): Route(infer, ("model",)),
        ("GET", "/v1/models"): Route(infer, listing=Listing("data", ("id",))),
        ("GET", "/v1/models/:model"): Route(infer, path_model=True),
        ("POST", "/v1/responses"): Route(infer, ("model",), _image_parts("input")),
        ("POST", "/v1/messages"): Route(infer, ("model",), _image_parts("messages", "system")),
        ("POST", "/v1/images/generations"): Route(infer, ("model",)),
        ("POST", "/v1/images/edits"): Route(infer, ("model",), _always),
        ("POST", "/api/create"): Route(manage, (*_NAME, "from")),
        ("POST", "/api/copy"): Route(manage, ("source", "destination")),
        ("DELETE", "/api/delete"): Route(manage, _NAME),
        ("POST", "/api/pull"): Route(manage, _NAME),
        ("POST", "/api/push"): Route(manage, _NAME),
        ("POST", "/api/blobs/:digest"): Route(manage, blob=True),
        ("HEAD", "/api/blobs/:digest"): Route(manage),
    }
    return table


ROUTES = _routes()
_PATH_GROUPS: dict[str, Operation] = {path: r.operation for (_, path), r in ROUTES.items()}
_PARAM_PREFIXES = ("/api/blobs/", "/v1/models/")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def route_key(path: str) -> str:
    """The route table's key for a decoded path (``:digest``/``:model`` for parameters)."""
    for prefix in _PARAM_PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix) :]:
            return prefix + (":digest" if prefix == "/api/blobs/" else ":model")
    return path


def request_path(target: bytes) -> str | None:
    """The percent-decoded path of a request target, as Go routes it; None if malformed."""
    if target.startswith(b"/") and b"?" not in target and b"%" not in target:
        return target.decode("latin-1")
    try:
        raw = httptools.parse_url(target).path or b"/"
    except httptools.HttpParserInvalidURLError:
        return None
    if _BAD_ESCAPE.search(raw):
        return None  # Go's net/http answers 400 to such a request line
    return unquote(raw.decode("latin-1"), errors="replace")


# ---- the policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How the relay handles one allowed request."""

    label: str  # "POST /api/chat", for logs
    route: Route | None  # None: a route the table does not know, allowed by `all`
    inspect: bool = False  # buffer the body (max_body_bytes) and call check_body
    listing: Listing | None = None  # filter the model list in the response
    body_limit: int | None = None  # for a streamed upload: refuse beyond this many bytes


@dataclass(frozen=True)
class TenantPolicy:
    """A tenant's policy compiled for the relay; build it with ``from_config``.

    ``operations`` None allows every route, unknown ones too; ``models`` None allows any
    model, else it holds ``model_key`` forms; ``shown_models`` is what messages list.
    """

    tenant: str
    operations: frozenset[Operation] | None
    models: frozenset[str] | None
    shown_models: tuple[str, ...]
    images: bool
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_blob_bytes: int | None = None

    @classmethod
    def from_config(cls, tenant: str, cfg: TenantConfig) -> TenantPolicy:
        """Compile ``cfg.policy``; ``models: variants`` means the names in ``cfg.variants``."""
        pol = cfg.policy
        ops = None if pol.operations == "all" else frozenset(Operation(o) for o in pol.operations)
        names: Sequence[str] | None = pol.models if isinstance(pol.models, list) else None
        if pol.models == "variants":
            names = [v.name for v in cfg.variants]
        keys = None if names is None else frozenset(k for n in names if (k := model_key(n)))
        return cls(
            tenant,
            ops,
            keys,
            tuple(names or ()),
            pol.images,
            pol.max_body_bytes,
            pol.max_blob_bytes,
        )

    def _refuse(self, status: int, rule: Rule, reason: str) -> Refusal:
        return Refusal(status, rule, self.tenant, reason)

    def _setting(self, key: str) -> str:
        return f"tenants.{self.tenant}.policy.{key}"

    def check_head(self, method: str, target: bytes) -> Refusal | Plan:
        """Decide from the request line alone: refuse, stream, or inspect the body."""
        path = request_path(target)
        if path is None:
            return self._refuse(
                400, Rule.MALFORMED, f"{method} {target[:200]!r}: malformed request target"
            )
        key = route_key(path)
        label = f"{method} {path[:200]}"
        route = ROUTES.get((method, key))
        if route is None:
            return self._unknown_route(method, key, label)
        if self.operations is not None and route.operation not in self.operations:
            return self._operation_refusal(route.operation, label)
        if (
            route.path_model
            and self.models is not None
            and (refusal := self._check_names([path.rsplit("/", 1)[1]]))
        ):
            return refusal
        inspect = bool(route.models and self.models is not None)
        inspect = inspect or (route.images is not None and not self.images)
        listing = route.listing if self.models is not None else None
        limit = self.max_blob_bytes if route.blob else None
        return Plan(label, route, inspect, listing, limit)

    def _unknown_route(self, method: str, key: str, label: str) -> Refusal | Plan:
        group = _PATH_GROUPS.get(key)
        if self.operations is None:
            return Plan(label, None)
        if method == "OPTIONS" and group is not None:
            # CORS preflight: Ollama's middleware answers it; no handler runs.
            if group in self.operations:
                return Plan(label, None)
            return self._operation_refusal(group, label)
        if group is not None:
            return self._refuse(
                405, Rule.UNKNOWN_ROUTE, f"{label}: Ollama does not take {method} on this path"
            )
        return self._refuse(
            404,
            Rule.UNKNOWN_ROUTE,
            f"{label} is not a route this socket relays (only Ollama's known routes pass "
            f"unless {self._setting('operations')} is all)",
        )

    def _operation_refusal(self, operation: Operation, label: str) -> Refusal:
        allowed = ", ".join(sorted(str(o) for o in self.operations or ())) or "none"
        return self._refuse(
            403,
            Rule.OPERATION,
            f"{label} is a {operation} operation, which this socket does not allow (allowed: "
            f"{allowed}); an operator can add {operation} to {self._setting('operations')}",
        )

    def check_body(self, plan: Plan, body: bytes) -> Refusal | None:
        """Check a buffered JSON body against the models and images rules."""
        route = plan.route
        if route is None:
            return None
        obj = _parse_body(body)
        if isinstance(obj, str):
            return self._refuse(400, Rule.MALFORMED, f"{plan.label}: {obj}")
        if route.models and self.models is not None:
            names = [v for f in route.models for v in _values(obj, f)]
            if any(not isinstance(n, str) for n in names):
                fields = " or ".join(repr(f) for f in route.models)
                return self._refuse(
                    400, Rule.MALFORMED, f"{plan.label}: {fields} must be a string naming a model"
                )
            if not any(names):
                return self._refuse(
                    400, Rule.MALFORMED, f"{plan.label}: the request names no model; set 'model'"
                )
            if refusal := self._check_names([n for n in names if n]):
                return refusal
        if route.images is not None and not self.images and route.images(obj):
            return self._refuse(
                400,
                Rule.IMAGES,
                f"images are not allowed ({self._setting('images')} is false); "
                "send the request without images",
            )
        return None

    def _check_names(self, names: list[str]) -> Refusal | None:
        allowed = self.models
        for name in names:
            if allowed is not None and model_key(name) not in allowed:
                shown = ", ".join(self.shown_models) or "none"
                return self._refuse(
                    403,
                    Rule.MODEL,
                    f"model {name[:200]!r} is not allowed here (allowed: {shown}); use one of "
                    f"those, or an operator can list it in {self._setting('models')}",
                )
        return None

    def allows_model(self, name: Any) -> bool:
        """Whether a model name from a server response may be shown through this socket."""
        if self.models is None:
            return True
        return isinstance(name, str) and model_key(name) in self.models

    def filter_listing(self, listing: Listing, body: bytes) -> bytes | None:
        """The response body without the models this policy hides; None to leave it as is."""
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        items = value.get(listing.list_key) if isinstance(value, dict) else None
        if not isinstance(items, list):
            return None
        value[listing.list_key] = [item for item in items if self._shows(listing, item)]
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def _shows(self, listing: Listing, item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        names = [item[k] for k in listing.name_keys if k in item]
        return bool(names) and all(self.allows_model(n) for n in names)


class PolicySource:
    """The current compiled policy of a tenant, recompiled when its config object changes.

    ``cfg`` returns the tenant's current ``TenantConfig`` (a reload replaces the object).
    """

    def __init__(self, tenant: str, cfg: Callable[[], TenantConfig]) -> None:
        self._tenant = tenant
        self._cfg = cfg
        self._seen: TenantConfig | None = None
        self._policy: TenantPolicy | None = None

    def __call__(self) -> TenantPolicy:
        cfg = self._cfg()
        if cfg is not self._seen or self._policy is None:
            self._policy = TenantPolicy.from_config(self._tenant, cfg)
            self._seen = cfg
        return self._policy
