"""Configuration: one YAML file loaded into pydantic models.

Precedence: values in the file win over the defaults written beside each field here. Relative
paths in the file are resolved against the directory holding the file. Unknown keys are errors.
``load_config`` reports every problem at once as a ``ConfigError`` naming file, line, field path,
value and fix; ``check_system`` adds what depends on the machine; ``run_check`` is ``--check``.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from supervisor import modelfile
from supervisor.errors import ConfigError, ConfigProblem
from supervisor.policy import DEFAULT_MAX_BODY_BYTES, model_key

DEFAULT_CONTROL_SOCKET = Path("/run/janus-supervisor/control.sock")
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the final NUL
TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
MODE_FIX = 'write the mode as a quoted octal string such as "0660"'

Loc = tuple[str | int, ...]


class _Problems(ValueError):
    """Several problems found by one validator, each at a path below the validated value."""

    def __init__(self, items: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in items))
        self.items = items


class _Found(list[tuple[Loc, str]]):
    """Problems as (location, message) pairs, in the order found."""

    def add(self, loc: Loc, message: str) -> None:
        self.append((loc, message))


class _YamlOctal(int):
    """An integer written in YAML 1.1 octal form (``0660``), as opposed to a decimal one."""


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(os.path.normpath(Path(base) / value))
    return value


def _fits_sun_path(value: Path) -> Path:
    if (size := len(os.fsencode(value))) > SUN_PATH_MAX:
        raise ValueError(
            f"{str(value)!r} is {size} bytes, longer than the {SUN_PATH_MAX} bytes "
            "a unix socket address holds; choose a shorter directory such as "
            "/run/janus-supervisor"
        )
    return value


def _parse_mode(value: Any, info: ValidationInfo) -> int:
    """File mode from a quoted octal string, a YAML octal int, or (from Python) any int."""
    if isinstance(value, int) and not isinstance(value, bool):
        if (info.context or {}).get("from_yaml") and not isinstance(value, _YamlOctal):
            raise ValueError(f"{value!r} is read as a decimal number, not octal; {MODE_FIX}")
        mode = int(value)
    elif isinstance(value, str) and (match := re.fullmatch(r"(?:0o)?([0-7]+)", value.strip())):
        mode = int(match[1], 8)
    else:
        raise ValueError(f"{value!r} is not an octal file mode; {MODE_FIX}")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} (0o{mode:o}) has bits outside 0o777; {MODE_FIX}")
    return mode


ResolvedPath = Annotated[Path, AfterValidator(_resolve)]
SocketPath = Annotated[Path, AfterValidator(_resolve), AfterValidator(_fits_sun_path)]
Mode = Annotated[int, BeforeValidator(_parse_mode)]


def _check_env(env: dict[str, str]) -> dict[str, str]:
    """Refuse what the daemon sets itself; ``unix://`` in OLLAMA_HOST is case C14."""
    found = _Found()
    for key, value in env.items():
        # Both forms end up in the URL path, which `ollama serve` ignores (facts §1).
        if key == "OLLAMA_HOST" and ("unix:" in value.lower() or value.startswith("/")):
            found.add(
                (key,),
                f"{value!r} does not give a unix socket: Ollama listens on "
                "TCP only and would silently bind 127.0.0.1:11434, where tenants set "
                "up this way collide; remove OLLAMA_HOST and use the "
                "tenant's `socket` setting to get a unix socket",
            )
        elif key == "OLLAMA_HOST":
            found.add(
                (key,),
                f"{value!r}: the daemon sets OLLAMA_HOST (a private loopback "
                "backend); remove it, and use `port` or `socket` instead",
            )
        elif key == "OLLAMA_MODELS":
            found.add(
                (key,),
                f"{value!r}: the daemon sets OLLAMA_MODELS from the tenant's "
                "`models_dir`; remove it and set models_dir instead",
            )
    if found:
        raise _Problems(found)
    return env


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SocketConfig(StrictModel):
    """A tenant's unix socket endpoint. A plain string in YAML is taken as ``path``."""

    path: SocketPath = Field(description="where the daemon binds the tenant's socket")
    owner: str | None = Field(None, description="socket owner; default the tenant's user")
    group: str | None = Field(None, description="socket group; default the user's primary group")
    mode: Mode = Field(0o660, description='permission bits, an octal string such as "0660"')


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class VariantConfig(StrictModel):
    """A model built in the tenant's store: either from a Modelfile or from inline fields."""

    name: str = Field(description="model name to create, e.g. janus-pro-7b-dev")
    modelfile: ResolvedPath | None = Field(None, description="Modelfile path (relative here)")
    from_: str | None = Field(None, alias="from", description="base model name (inline form)")
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="typed as PARAMETER")
    messages: list[Message] = Field(default_factory=list)
    license: list[str] = Field(default_factory=list)
    adapters: list[ResolvedPath] = Field(default_factory=list)

    @field_validator("parameters")
    @classmethod
    def _typed(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        where = f"variant {info.data.get('name')}"
        try:
            return modelfile.type_parameters(value, where=where)
        except modelfile.ParameterErrors as exc:
            raise _Problems([((key,), message) for key, message in exc.items]) from None

    @model_validator(mode="after")
    def _one_source(self) -> VariantConfig:
        if (self.modelfile is None) == (self.from_ is None):
            raise ValueError(
                f"variant {self.name!r} needs exactly one of `modelfile` (a "
                "Modelfile path) or `from` (a base model name)"
            )
        inline = [
            k
            for k in ("system", "template", "parameters", "messages", "license", "adapters")
            if getattr(self, k)
        ]
        if self.modelfile is not None and inline:
            raise ValueError(
                f"variant {self.name!r} has a modelfile, so {', '.join(inline)} "
                "belong in the Modelfile; move them there or use `from`"
            )
        return self


BaseSource = Literal["store", "shared", "gguf", "pull"]


DEFAULT_SOURCES: tuple[BaseSource, ...] = ("store", "shared", "gguf")


class BaseModelConfig(StrictModel):
    """Where a base model named by variants comes from when a tenant's store lacks it."""

    gguf: ResolvedPath | None = Field(None, description="local GGUF file to import")
    projector: ResolvedPath | None = Field(None, description="optional projector (mmproj) GGUF")
    template: str | None = Field(None, description="chat template to give the imported model")
    sources: list[BaseSource] = Field(
        default_factory=lambda: list(DEFAULT_SOURCES),
        description="where to look, in order: store (already there), shared (shared_store), "
        "gguf (local file), pull (registry; network: host tenants only, never by default)",
    )
    shared_store: ResolvedPath | None = Field(
        None, description="read-only Ollama store (manifests/, blobs/) to link or copy from"
    )
    shared_link: Literal["hardlink", "copy"] = Field(
        "hardlink", description="hardlink blobs when on the same filesystem and safe, else copy"
    )

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(
                f"{value!r} must list each source once, e.g. [store, shared, gguf, pull]"
            )
        return value

    @model_validator(mode="after")
    def _sources_configured(self) -> BaseModelConfig:
        if "sources" not in self.model_fields_set:
            return self
        needs = {"shared": ("shared_store", self.shared_store), "gguf": ("gguf", self.gguf)}
        for source in self.sources:
            key, value = needs.get(source, ("", True))
            if value is None:
                raise ValueError(f"sources lists {source!r} but {key} is not set; set {key} "
                                 f"or remove {source!r} from sources")
        return self


class OllamaConfig(StrictModel):
    """The server binary and what every tenant's server gets."""

    binary: ResolvedPath = Field(Path("/usr/local/bin/ollama"), description="ollama executable")
    env: dict[str, str] = Field(default_factory=dict, description="env given to every tenant")
    port_range: tuple[int, int] = Field(
        (21434, 21533), description="loopback ports for backends without an explicit port"
    )

    _env = field_validator("env")(_check_env)

    @field_validator("port_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= 65535:
            raise ValueError(
                f"{list(value)} is not a port range; write [low, high] with "
                "1 <= low <= high <= 65535, e.g. [21434, 21533]"
            )
        return value


def parse_loopback_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on a loopback address; raises ``ValueError``."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    fix = "write a loopback address and port such as 127.0.0.1:9464"
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT; {fix}")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{value!r} is not a loopback address: /metrics there has no access check and "
            f"names every tenant; {fix}"
        )
    return host, int(port)


class ControlConfig(StrictModel):
    """The daemon's control socket and who may use it."""

    socket: SocketPath = Field(DEFAULT_CONTROL_SOCKET, description="control socket path")
    mode: Mode = Field(0o660, description="control socket permission bits")
    group: str | None = Field(None, description="control socket group; default root's")
    admin_group: str | None = Field(None, description="members may do everything")
    read_group: str | None = Field(None, description="members may read every tenant")
    metrics_address: str | None = Field(
        None, description="loopback HOST:PORT that also serves GET /metrics, without access checks"
    )

    @field_validator("metrics_address")
    @classmethod
    def _loopback(cls, value: str | None) -> str | None:
        if value is not None:
            parse_loopback_address(value)
        return value


OperationName = Literal["read", "infer", "manage"]


class PolicyConfig(StrictModel):
    """What clients of a tenant's socket may do; enforced by the relay (see README)."""

    operations: Literal["all"] | list[OperationName] = Field(
        default_factory=lambda: list[OperationName](["read", "infer"]),
        description="route groups allowed: read, infer, manage; or all (unknown routes too)",
    )
    models: Literal["variants", "any"] | list[str] = Field(
        "variants",
        description="models requests may name: variants (the tenant's own), any, or a list",
    )
    images: bool = Field(True, description="whether requests may carry images")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, description="largest JSON body the relay buffers to inspect"
    )
    max_blob_bytes: int | None = Field(None, description="largest blob upload; default no limit")

    @field_validator("operations", mode="before")
    @classmethod
    def _operations(cls, value: Any) -> Any:
        if value == "all":
            return value
        if not isinstance(value, list):
            raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
                f"{value!r} is not an operations setting; write a list such as [read, infer], "
                "or all"
            )
        if not value:
            raise ValueError("an empty list allows nothing; list read, infer, manage, or write all")
        if "all" in value:
            raise ValueError("write `operations: all` on its own, not inside a list")
        for item in value:
            if item not in ("read", "infer", "manage"):
                raise ValueError(f"{item!r} is not an operation; use read, infer and manage")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        if value in ("variants", "any"):
            return value
        if not isinstance(value, list):
            raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
                f"{value!r} is not a models setting; write variants, any, or a list of model "
                f"names such as [{value}]"
            )
        if not value:
            raise ValueError("an empty list allows no model; write variants, any or some names")
        found = _Found()
        for index, name in enumerate(value):
            if not isinstance(name, str) or model_key(name) is None:
                found.add(
                    (index,),
                    f"{name!r} is not a model name Ollama accepts; write e.g. janus-pro-7b-qa "
                    "or namespace/model:tag",
                )
        if found:
            raise _Problems(found)
        return value

    @field_validator("max_body_bytes")
    @classmethod
    def _body_limit(cls, value: int) -> int:
        if value < 1024:
            raise ValueError(f"{value!r} is too small for any request; give at least 1024 bytes")
        return value

    @field_validator("max_blob_bytes")
    @classmethod
    def _blob_limit(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"{value!r} must be greater than 0, or leave it out for no limit")
        return value


class TenantConfig(StrictModel):
    """One isolated Ollama instance: user, store, endpoint, variants and supervision knobs."""

    user: str = Field(description="OS user the tenant's server runs as")
    create_user: bool = Field(False, description="create the system user when it is missing")
    models_dir: ResolvedPath = Field(description="the tenant's OLLAMA_MODELS store")
    home: ResolvedPath | None = Field(None, description="HOME; default passwd home if writable")
    socket: SocketConfig
    network: Literal["isolated", "host"] | None = Field(
        None,
        description="isolated: a network namespace of the server's own (default as root); "
        "host: a loopback port any local user can reach (default, and only choice, unprivileged)",
    )
    port: int | None = Field(None, description="backend loopback port; default from range")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment")
    variants: list[VariantConfig] = Field(default_factory=list)
    nofile: int = Field(65536, description="RLIMIT_NOFILE of the server")
    start_timeout_s: float = Field(120.0, description="bound on starting (GET / answers 200)")
    stop_timeout_s: float = Field(10.0, description="SIGTERM to SIGKILL grace")
    probe_period_s: float = Field(10.0, description="liveness probe period")
    probe_timeout_s: float = Field(5.0, description="liveness probe timeout")
    probe_failure_threshold: int = Field(3, description="failed probes before a restart")
    backoff_initial_s: float = Field(1.0, description="first delay before a restart")
    backoff_max_s: float = Field(60.0, description="cap of the doubling restart delay")
    connect_wait_s: float = Field(30.0, description="how long a client waits for readiness")
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig, description="what clients of the tenant socket may do"
    )
    restart: Literal["always", "on-failure", "never"] = Field(
        "always", description="restart policy when the server ends by itself"
    )
    healthy_reset_s: float = Field(
        60.0, description="ready this long without interruption resets the backoff"
    )
    restart_budget: int = Field(10, description="automatic starts allowed per restart_window_s")
    restart_window_s: float = Field(600.0, description="window of the restart budget")
    deep_probe_every: int = Field(
        0, description="every Nth liveness probe also POSTs /api/show of a variant; 0 = off"
    )
    drain_timeout_s: float = Field(
        5.0, description="on stop/restart, wait this long for relayed requests to finish"
    )

    _env = field_validator("env")(_check_env)

    @field_validator("socket", mode="before")
    @classmethod
    def _socket_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("user")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if value == "root" or not USER_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} cannot be a tenant user; name an unprivileged user "
                "such as janus_dev (letters, digits, '_', '-', at most 32)"
            )
        return value

    @field_validator("user")
    @classmethod
    def _not_superuser(cls, value: str) -> str:
        # Another name for uid 0 (toor, a second root entry) is root all the same.
        entry = _user(value)
        if entry is not None and entry.pw_uid == 0:
            raise ValueError(
                f"{value!r} has uid 0; tenants never run as root: name an unprivileged user"
            )
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"{value!r} is not a TCP port; choose a free port in 1..65535")
        return value

    @field_validator(
        "nofile",
        "probe_failure_threshold",
        "start_timeout_s",
        "stop_timeout_s",
        "probe_period_s",
        "probe_timeout_s",
        "backoff_initial_s",
        "backoff_max_s",
        "connect_wait_s",
        "healthy_reset_s",
        "restart_budget",
        "restart_window_s",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"{value!r} must be greater than 0")
        return value

    @field_validator("deep_probe_every", "drain_timeout_s")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"{value!r} must be 0 or more")
        return value


class Config(StrictModel):
    """The whole daemon configuration."""

    control: ControlConfig = Field(default_factory=ControlConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)
    state_dir: ResolvedPath = Field(Path("/var/lib/janus-supervisor"), description="daemon state")
    log_dir: ResolvedPath = Field(Path("/var/log/janus-supervisor"), description="tenant log files")
    log_max_bytes: int = Field(
        10 * 1024 * 1024, description="size at which a tenant's log file is rotated"
    )
    log_backups: int = Field(3, description="rotated log files kept per tenant")
    base_models: dict[str, BaseModelConfig] = Field(default_factory=dict)
    tenants: dict[str, TenantConfig]
    source: Path | None = Field(None, exclude=True, description="file this was loaded from")

    @field_validator("log_max_bytes")
    @classmethod
    def _log_size(cls, value: int) -> int:
        if value < 4096:
            raise ValueError(f"{value!r} is too small; give at least 4096 bytes, e.g. 10485760")
        return value

    @field_validator("log_backups")
    @classmethod
    def _log_backups(cls, value: int) -> int:
        if not 0 <= value <= 100:
            raise ValueError(f"{value!r} is not a number of files; give 0 to 100")
        return value


# ---- YAML and error locations -----------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that marks integers written in YAML 1.1 octal form (``mode: 0660``)."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    return _YamlOctal(value) if re.fullmatch(r"[-+]?0[0-7_]+", str(node.value)) else value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _compose(path: Path, text: str) -> tuple[yaml.Node | None, Any, list[ConfigProblem]]:
    """Node tree, data and duplicate-key problems; a syntax error raises ``ConfigError``."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        dups = _duplicate_keys(path, root)
        return root, None if root is None else loader.construct_document(root), dups
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        why = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        fix = f"YAML syntax error: {why}; fix the indentation or quoting there"
        line = mark.line + 1 if mark else None
        raise ConfigError([ConfigProblem(str(path), "", fix, line)]) from None
    finally:
        loader.dispose()


def _duplicate_keys(
    path: Path, node: yaml.Node | None, seen: set[int] | None = None
) -> list[ConfigProblem]:
    """PyYAML keeps the last of two equal keys silently; say so instead."""
    found: list[ConfigProblem] = []
    seen = set() if seen is None else seen
    if id(node) in seen:  # aliases share nodes, and may even form a cycle
        return found
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        return [p for item in node.value for p in _duplicate_keys(path, item, seen)]
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in lines and name != "<<":
                found.append(
                    ConfigProblem(
                        str(path),
                        name,
                        f"key {name!r} appears twice (lines {lines[name]} and {line}); keep one",
                        line,
                    )
                )
            lines.setdefault(name, line)
            found += _duplicate_keys(path, value, seen)
    return found


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest node along ``loc`` (a key's own line when it exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if str(k.value) == str(part)]
            if not hits:
                break
            line, node = hits[-1][0].start_mark.line + 1, hits[-1][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _dotted(loc: Loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _allowed_keys(loc: Loc) -> list[str]:
    """Keys of the model that holds ``loc``, found by following the field annotations."""
    ann: Any = Config
    for part in loc:
        while get_origin(ann) in (Union, Annotated) or type(ann).__name__ == "UnionType":
            ann = next(a for a in get_args(ann) if a is not type(None))
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            fields = {f.alias or n: f for n, f in ann.model_fields.items() if n != "source"}
            ann = fields[str(part)].annotation if str(part) in fields else None
        else:
            ann = get_args(ann)[-1] if get_origin(ann) in (dict, list) else None
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return sorted(f.alias or n for n, f in ann.model_fields.items() if n != "source")
    return []


_HINTS = (
    ("int", "write a whole number"),
    ("float", "write a number such as 2.5"),
    ("bool", "write true or false"),
    ("string", "write it as a quoted string"),
    ("dict", "write a mapping of `key: value` lines"),
    ("model", "write a mapping of `key: value` lines"),
    ("list", "write a list"),
    ("tuple", "write a list such as [21434, 21533]"),
    ("literal", "use one of the values named"),
)


def _explain(error: Any) -> list[tuple[Loc, str]]:
    """One pydantic error as (location, message with the value and the fix) pairs."""
    loc: Loc = tuple(p for p in error["loc"] if p != "[key]")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Problems):
        return [(loc + sub, message) for sub, message in cause.items]
    if isinstance(cause, ValueError):
        return [(loc, str(cause))]
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        return [(loc, f"unknown key {loc[-1]!r}; allowed keys here: {allowed}")]
    if error["type"] == "missing":
        return [(loc, f"required key {loc[-1]!r} is missing; add it")]
    hint = next((h for p, h in _HINTS if error["type"].startswith(p)), "fix the value")
    return [(loc, f"{error['msg']}, got {error['input']!r}; {hint}")]


# ---- loading ----------------------------------------------------------------------------


def _raw_path(value: Any, base: Path) -> Path | None:
    """A path as ``_resolve`` makes it, read from raw YAML data (None when not a string)."""
    if not isinstance(value, str) or not value:
        return None
    return Path(value) if Path(value).is_absolute() else Path(os.path.normpath(base / value))


def _raw_tenants(data: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    tenants = data.get("tenants")
    items = tenants.items() if isinstance(tenants, dict) else ()
    return {name: t for name, t in items if isinstance(t, dict)}


def _cross_problems(data: dict[str, Any], base: Path) -> list[tuple[Loc, str]]:
    """What no tenant shows alone: bad names, shared users/stores/sockets/ports, nesting.

    Works on the raw data, so that one invalid field does not hide a conflict elsewhere.
    """
    tenants = _raw_tenants(data)
    found = _Found()
    for name in tenants:
        if not TENANT_NAME.fullmatch(str(name)):
            found.add(
                ("tenants", name),
                f"tenant name {name!r} is not allowed; use a lowercase letter, then up to 31 "
                "of a-z 0-9 _ -",
            )
    control = data.get("control")
    control_socket = _raw_path(
        control.get("socket", str(DEFAULT_CONTROL_SOCKET))
        if isinstance(control, dict)
        else str(DEFAULT_CONTROL_SOCKET),
        base,
    )
    owners: dict[tuple[str, Any], Any] = {}
    stores = {n: _raw_path(t.get("models_dir"), base) for n, t in tenants.items()}
    for name, t in tenants.items():
        at: Loc = ("tenants", name)
        sock = t.get("socket")
        sock_path = _raw_path(sock.get("path") if isinstance(sock, dict) else sock, base)
        port = t.get("port") if type(t.get("port")) is int else None
        if port is not None and t.get("network") == "isolated":
            found.add(
                at + ("port",),
                f"{port!r}: port applies to network: host only; an isolated tenant's server "
                "listens on 127.0.0.1:11434 in a namespace of its own. Remove port, or set "
                "network: host",
            )
            port = None
        user = t.get("user") if isinstance(t.get("user"), str) else None
        for loc, value in (
            (("user",), user),
            (("models_dir",), stores[name]),
            (("socket", "path"), sock_path),
            (("port",), port),
        ):
            first = owners.setdefault((loc[0], value), name) if value is not None else name
            if first != name:
                shown = str(value) if isinstance(value, Path) else value
                found.add(
                    at + loc,
                    f"{shown!r} is already used by tenant {first!r}; give "
                    f"each tenant its own {_dotted(loc)}",
                )
        if sock_path is not None and sock_path == control_socket:
            found.add(
                at + ("socket", "path"),
                f"{str(sock_path)!r} is the control socket; choose another path for the tenant",
            )
        for other, store in stores.items():
            mine = stores[name]
            if mine and store and mine != store and mine.is_relative_to(store):
                found.add(
                    at + ("models_dir",),
                    f"{str(mine)!r} lies inside "
                    f"{str(store)!r}, the models_dir of tenant {other!r}; use "
                    "directories that do not nest",
                )
        found += _variant_problems(at, t.get("variants"), base)
    return found


def _variant_problems(at: Loc, variants: Any, base: Path) -> list[tuple[Loc, str]]:
    """Duplicate names, and every Modelfile read now, so a broken one is a config error."""
    found = _Found()
    first_index: dict[str, int] = {}
    for i, variant in enumerate(variants if isinstance(variants, list) else ()):
        if not isinstance(variant, dict):
            continue
        here = at + ("variants", i)
        name = variant.get("name")
        if isinstance(name, str) and (j := first_index.setdefault(name, i)) != i:
            found.add(
                here + ("name",),
                f"{name!r} is already the name of variants[{j}]; give each variant its own name",
            )
        if (path := _raw_path(variant.get("modelfile"), base)) is not None:
            try:
                modelfile.check_modelfile(path)
            except modelfile.ModelfileError as exc:
                where = f"{exc.path}:{exc.line}" if exc.line else str(exc.path)
                found.add(here + ("modelfile",), f"{where}: {exc.reason}")
        adapters = variant.get("adapters")
        for j, adapter in enumerate(adapters if isinstance(adapters, list) else ()):
            if (file := _raw_path(adapter, base)) is not None and not file.exists():
                found.add(
                    here + ("adapters", j),
                    f"{str(file)!r} does not exist; name an existing adapter file or directory",
                )
    return found


def load_config(path: Path) -> Config:
    """Read, validate and resolve the configuration file at ``path``; Modelfiles are parsed.

    Relative paths become absolute against the file's directory. Raises ``ConfigError`` with
    every problem found (file, line, field path, value, fix), also for a missing or unreadable
    file and for YAML syntax errors.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        fix = f"cannot read the configuration file ({why}); check the path and its permissions"
        raise ConfigError([ConfigProblem(str(path), "", fix)]) from None
    root, data, problems = _compose(path, text)
    if not isinstance(data, dict):
        fix = "the file must be a mapping with at least a `tenants:` key"
        raise ConfigError(problems + [ConfigProblem(str(path), "", fix, _line_of(root, ()))])
    base = path.parent.absolute()
    found = _Found()
    config = None
    if "source" in data:
        found.add(("source",), "unknown key 'source'; the daemon sets it")
    try:
        context = {"base_dir": base, "from_yaml": True}
        config = Config.model_validate({**data, "source": None}, context=context)
    except ValidationError as exc:
        found += [item for error in exc.errors() for item in _explain(error)]
    found += _cross_problems(data, base)
    problems += [
        ConfigProblem(str(path), _dotted(loc), msg, _line_of(root, loc)) for loc, msg in found
    ]
    if problems or config is None:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.location)))
    return config.model_copy(update={"source": path.absolute()})


# ---- the machine ------------------------------------------------------------------------


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
