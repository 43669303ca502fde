"""Modelfiles, read the way ``ollama create -f`` reads them, and the ``/api/create`` requests
built from them and from inline variants.

The scanner follows the state machine of Ollama's ``parser/parser.go`` (reference facts §8):
case-insensitive instruction names, ``#`` comment lines, values running to the end of the line,
values in double quotes or triple double quotes that may span lines, an unterminated quote is
"unexpected EOF".
``PARAMETER`` values are typed as ``api.FormatParams`` types them; the same code types the
``parameters`` of inline YAML variants. Errors are ``ModelfileError`` (a ``ConfigError``) and
carry the Modelfile path and line.

Parsing is cached by path and file identity (inode, size, mtime, ctime), and file digests by
the same key, so the daemon may call ``variant_request`` often and a reload still sees edits.
``variant_request`` hashes local model files: call it from a worker thread when those are big.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import posixpath
import pwd
import re
import struct
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from supervisor.config import Config, VariantConfig

log = logging.getLogger(__name__)

# fmt: off
# Instruction names in the order of Ollama's error message.
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
ROLES = ("system", "user", "assistant")
# PARAMETER names by the type of their field in Ollama's api.Options.
INT_PARAMETERS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread",
                            "num_keep", "seed", "num_predict", "top_k", "repeat_last_n",
                            "draft_num_predict"})
FLOAT_PARAMETERS = frozenset({"temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                              "presence_penalty", "frequency_penalty"})
BOOL_PARAMETERS = frozenset({"use_mmap"})
LIST_PARAMETERS = frozenset({"stop"})
# Valid before Ollama v0.7; its CLI still accepts them but only warns and drops them.
DEPRECATED_PARAMETERS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all",
                                   "vocab_only", "use_mlock", "mirostat", "mirostat_tau",
                                   "mirostat_eta"})
# fmt: on
KNOWN_PARAMETERS = INT_PARAMETERS | FLOAT_PARAMETERS | BOOL_PARAMETERS | LIST_PARAMETERS

_BAD_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS[:-1])
_BAD_COMMAND += f', or "{COMMANDS[-1]}"'
_BAD_ROLE = 'message role must be one of "system", "user", or "assistant"'
_TRUE, _FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX][0-9a-fA-F_.]+([pP][+-]?[0-9]+)?")
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)


class ModelfileError(ConfigError):
    """A Modelfile cannot be read, parsed or turned into a request.

    ``path`` is the Modelfile, ``line`` the 1-based line when one applies, ``reason`` the text
    without the location.
    """

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        self.path, self.reason, self.line = path, reason, line
        super().__init__([ConfigProblem(file=str(path), location="", message=reason, line=line)])


@dataclass(frozen=True)
class Modelfile:
    """A parsed Modelfile; PARAMETER values are already typed, paths not yet resolved."""

    path: Path
    froms: tuple[tuple[str, int], ...]  # (argument, line) of each FROM
    adapters: tuple[tuple[str, int], ...] = ()
    drafts: tuple[tuple[str, int], ...] = ()
    template: str = ""
    system: str = ""
    license: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    requires: str = ""
    renderer: str = ""
    parser: str = ""


@dataclass(frozen=True)
class CreatePlan:
    """What it takes to build one model.

    ``request`` is the ``/api/create`` body as ``ollama create`` sends it, without ``stream``.
    ``files``, ``adapters`` and ``draft_files`` map the relative names used in the request to
    the local files that must be uploaded with ``POST /api/blobs/<digest>`` first.
    """

    request: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)
    draft_files: dict[str, Path] = field(default_factory=dict)

    def uploads(self) -> dict[str, Path]:
        """Every blob to upload, keyed by its ``sha256:<hex>`` digest."""
        found: dict[str, Path] = {}
        for key in ("files", "adapters", "draft_files"):
            local: dict[str, Path] = getattr(self, key)
            for name, digest in self.request.get(key, {}).items():
                found[digest] = local[name]
        return found


@dataclass(frozen=True)
class _Command:
    kind: str  # lower-case instruction name
    key: str  # PARAMETER name or MESSAGE role
    args: str
    line: int


# ---- parameters -------------------------------------------------------------------------


def type_parameter(name: str, value: str) -> int | float | bool | str:
    """Convert one PARAMETER value the way Ollama's ``api.FormatParams`` does.

    Raises ``ValueError`` with Ollama's wording (``unknown parameter 'x'``, ``invalid int
    value [x]`` …) followed by the fix. Deprecated names are not handled here.
    """
    if name in INT_PARAMETERS:
        if _INT.fullmatch(value) and -(2**63) <= int(value) < 2**63:
            return int(value)
        raise ValueError(f"invalid int value [{value}]: {name} takes a whole number")
    if name in FLOAT_PARAMETERS:
        number = _float32(value)
        if number is None:
            raise ValueError(f"invalid float value [{value}]: {name} takes a number such as 0.7")
        return number
    if name in BOOL_PARAMETERS:
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise ValueError(f"invalid bool value [{value}]: {name} takes true or false")
    if name in LIST_PARAMETERS:
        return value
    known = ", ".join(sorted(KNOWN_PARAMETERS))
    raise ValueError(f"unknown parameter '{name}'; known parameters: {known}")


def add_parameter(params: dict[str, Any], name: str, value: str) -> None:
    """Type ``value`` and store it; ``stop`` accumulates a list, other names keep the last."""
    typed = type_parameter(name, value)
    if name in LIST_PARAMETERS:
        params.setdefault(name, []).append(typed)
    else:
        params[name] = typed


class ParameterErrors(ValueError):
    """Bad inline parameters: ``items`` holds (parameter name, message) pairs."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {message}" for key, message in items))
        self.items = items


def type_parameters(values: Mapping[str, Any], *, where: str, warn: bool = True) -> dict[str, Any]:
    """Type a YAML ``parameters`` mapping exactly as the same PARAMETER lines would be typed.

    A YAML scalar stands for the text of one PARAMETER line (``true`` for a YAML true); a list
    is allowed for ``stop`` only. Deprecated names are dropped, with a warning naming ``where``
    when ``warn``. Raises ``ParameterErrors`` listing every bad entry.
    """
    typed: dict[str, Any] = {}
    bad: list[tuple[str, str]] = []
    for key, raw in values.items():
        if key in DEPRECATED_PARAMETERS:
            if warn:
                log.warning(
                    "%s: parameter %s is deprecated and ignored (Ollama dropped it in "
                    "v0.7); remove it",
                    where,
                    key,
                )
            continue
        items = raw if isinstance(raw, list) and key in LIST_PARAMETERS else [raw]
        try:
            for item in items:
                add_parameter(typed, key, _scalar_text(key, item))
        except ValueError as exc:
            bad.append((key, str(exc)))
    if bad:
        raise ParameterErrors(bad)
    return typed


def _scalar_text(key: str, value: Any) -> str:
    """A YAML scalar as the text a PARAMETER line would carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"{value!r} is not a single value; {key} takes one number, word or string")


def _float32(text: str) -> float | None:
    """Go's ``strconv.ParseFloat(text, 32)``, as the shortest decimal that round-trips."""
    try:
        if _FLOAT.fullmatch(text):
            number = float(text)
        elif _HEX_FLOAT.fullmatch(text):
            number = float.fromhex(text.replace("_", ""))
        else:
            return None
        single = struct.unpack("<f", struct.pack("<f", number))[0]
    except (OverflowError, ValueError):
        return None
    if not math.isfinite(single):  # JSON cannot carry it, so the CLI fails to send it
        return None
    for digits in range(1, 10):
        short = float(f"{single:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == single:
            return short
    return float(single)


# ---- scanning ---------------------------------------------------------------------------

_NIL, _NAME, _VALUE, _PARAM, _ROLE, _COMMENT = range(6)


def _is_print(ch: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols, ASCII space."""
    return ch == " " or (ch != "" and unicodedata.category(ch)[0] in "LMNPS")


def _step(ch: str, state: int) -> tuple[int, str]:
    """Next state and the character to keep; state -1 means the character is not allowed."""
    if state == _NIL:
        if ch == "#":
            return _COMMENT, ""
        return (_NIL, "") if ch in " \t\r\n" else (_NAME, ch)
    if state == _NAME:
        if ch.isascii() and ch.isalpha():
            return _NAME, ch
        return (_VALUE, "") if ch in " \t" else (-1, "")
    if state == _VALUE:
        return (_NIL, ch) if ch in " \t\r\n" else (_VALUE, ch)
    if state in (_PARAM, _ROLE):
        if ch.isascii() and (ch.isalpha() or (state == _PARAM and (ch.isdigit() or ch == "_"))):
            return state, ch
        return (_VALUE, "") if ch in " \t" else (-1, "")
    return (_NIL, "") if ch in "\r\n" else (_COMMENT, "")


def _unquote(text: str) -> str | None:
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def _bad_char(state: int, word: str, ch: str) -> str:
    """Why ``ch`` may not follow ``word`` (an instruction, parameter name or role)."""
    at_end = ch in "\r\n"
    if state == _NAME:
        if at_end and word.lower() in COMMANDS:
            return f"{word.upper()} needs a value on the same line"
        return f"{_BAD_COMMAND}, not {(word + ch).strip()!r}"
    if state == _PARAM:
        if at_end:
            return f"PARAMETER {word} needs a value on the same line"
        return f"invalid character {ch!r} in PARAMETER name {word!r}: use letters, digits and _"
    if at_end and word in ROLES:
        return f"MESSAGE {word} needs a value on the same line"
    return f"{_BAD_ROLE}, not {(word + ch).strip()!r}"


def _scan(text: str, path: Path) -> list[_Command]:
    """Split ``text`` into commands, as Ollama's ``ParseFile`` does."""
    commands: list[_Command] = []
    state, buf, kind, key = _NIL, "", "", ""
    line = start = 1
    for i, ch in enumerate(text):
        here = line
        if ch == "\n" or (ch == "\r" and text[i + 1 : i + 2] != "\n"):
            line += 1
        nxt, keep = _step(ch, state)
        if nxt < 0:
            raise ModelfileError(path, _bad_char(state, buf, ch), start)
        if nxt != state:
            if state == _NAME:
                kind = buf.lower()
                if kind not in COMMANDS:
                    raise ModelfileError(path, f"{_BAD_COMMAND}, not {buf!r}", start)
                nxt = {"parameter": _PARAM, "message": _ROLE}.get(kind, nxt)
            elif state == _PARAM:
                key = buf
            elif state == _ROLE:
                if buf not in ROLES:
                    raise ModelfileError(path, f"{_BAD_ROLE}, not {buf!r}", start)
                key = buf
            elif state == _VALUE:
                value = _unquote(buf.strip(" \t\r\n"))
                # Inside an open quote, or at a space, the value goes on (spaces included).
                if value is None or keep in " \t":
                    buf += keep
                    continue
                commands.append(_Command(kind, key, value, start))
                key = ""
            buf, state = "", nxt
            if nxt == _NAME:
                start = here
        if _is_print(keep):
            buf += keep
    _flush(commands, state, buf, kind, key, start, path)
    return commands


def _flush(
    commands: list[_Command], state: int, buf: str, kind: str, key: str, start: int, path: Path
) -> None:
    """Handle the end of the text: the last value, or an unexpected EOF."""
    if state == _VALUE:
        value = _unquote(buf.strip(" \t\r\n"))
        if value is None:
            quote = '"""' if buf.lstrip().startswith('"""') else '"'
            raise ModelfileError(
                path,
                f"unexpected EOF: the quoted {kind.upper()} value is never closed; "
                f"end it with {quote}",
                start,
            )
        commands.append(_Command(kind, key, value, start))
    elif state in (_NAME, _PARAM, _ROLE):
        raise ModelfileError(path, f"unexpected EOF: {buf!r} has no value", start)
    if not any(c.kind == "from" for c in commands):
        raise ModelfileError(path, "no FROM line; add one such as `FROM janus-pro-7b`")


def _decode(data: bytes) -> str:
    """UTF-8, or UTF-16 when a byte-order mark says so (Go's ``unicode.BOMOverride``)."""
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", errors="replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", errors="replace")
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")


def parse_modelfile_text(text: str, path: Path) -> Modelfile:
    """Parse Modelfile ``text``; ``path`` names it in errors and anchors relative paths."""
    froms: list[tuple[str, int]] = []
    adapters: list[tuple[str, int]] = []
    drafts: list[tuple[str, int]] = []
    licenses: list[str] = []
    messages: list[tuple[str, str]] = []
    params: dict[str, Any] = {}
    single: dict[str, str] = {}
    for cmd in _scan(text, path):
        if cmd.kind in ("from", "adapter", "draft"):
            {"from": froms, "adapter": adapters, "draft": drafts}[cmd.kind].append(
                (cmd.args, cmd.line)
            )
        elif cmd.kind == "license":
            licenses.append(cmd.args)
        elif cmd.kind == "message":
            messages.append((cmd.key, cmd.args))
        elif cmd.kind == "requires":
            if not _SEMVER.fullmatch(cmd.args if cmd.args.startswith("v") else "v" + cmd.args):
                reason = f"requires must be a valid semver (e.g. 0.14.0), not {cmd.args!r}"
                raise ModelfileError(path, reason, cmd.line)
            single["requires"] = cmd.args.removeprefix("v")
        elif cmd.kind == "parameter":
            _modelfile_parameter(params, cmd, path)
        else:
            single[cmd.kind] = cmd.args
    return Modelfile(
        path,
        tuple(froms),
        tuple(adapters),
        tuple(drafts),
        license=tuple(licenses),
        messages=tuple(messages),
        parameters=params,
        **single,
    )


def _modelfile_parameter(params: dict[str, Any], cmd: _Command, path: Path) -> None:
    if cmd.key in DEPRECATED_PARAMETERS:
        log.warning(
            "%s:%d: PARAMETER %s is deprecated and ignored (Ollama dropped it in v0.7);"
            " remove the line",
            path,
            cmd.line,
            cmd.key,
        )
        return
    try:
        add_parameter(params, cmd.key, cmd.args)
    except ValueError as exc:
        raise ModelfileError(path, str(exc), cmd.line) from None


# ---- caching ----------------------------------------------------------------------------

_lock = threading.Lock()
_parsed: dict[Path, tuple[tuple[int, ...], Modelfile]] = {}
_digests: dict[Path, tuple[tuple[int, ...], str]] = {}


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def parse_modelfile(path: Path) -> Modelfile:
    """Read and parse the Modelfile at ``path``, from cache while the file is unchanged.

    Raises ``ModelfileError`` when the file is missing, unreadable or invalid.
    """
    path = Path(os.path.abspath(path))
    try:
        with open(path, "rb") as fh:
            key = _identity(os.fstat(fh.fileno()))
            with _lock:
                hit = _parsed.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
            data = fh.read()
    except FileNotFoundError:
        raise ModelfileError(
            path,
            "Modelfile not found; fix the path (relative paths start "
            "at the config file's directory)",
        ) from None
    except IsADirectoryError:
        raise ModelfileError(path, "is a directory, not a Modelfile; name the file") from None
    except OSError as exc:
        raise ModelfileError(
            path, f"cannot read the Modelfile ({exc.strerror}); make it readable by the daemon"
        ) from None
    parsed = parse_modelfile_text(_decode(data), path)
    with _lock:
        _parsed[path] = (key, parsed)
    return parsed


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of the file at ``path``, cached while the file is unchanged."""
    path = Path(os.path.abspath(path))
    key = _identity(os.stat(path))
    with _lock:
        hit = _digests.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    digest = "sha256:" + sha.hexdigest()
    with _lock:
        _digests[path] = (key, digest)
    return digest


# ---- local paths ------------------------------------------------------------------------


def _expand(arg: str, base: Path) -> str:
    """Ollama's ``expandPath``: absolute, ``~``, ``~user``, else relative to ``base``."""
    if arg.startswith("~"):
        user, _, rest = arg[1:].partition("/")
        try:
            entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
        except KeyError:
            raise ValueError(f"failed to find user '{user}'") from None
        return os.path.normpath(os.path.join(entry.pw_dir, rest))
    return os.path.normpath(os.path.join(base, arg))


def _model_files(path: str) -> list[str]:
    """The files a FROM/ADAPTER/DRAFT path stands for (Ollama's ``filesForModel`` order).

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when it is a
    directory without model files.
    """
    if not os.path.isdir(path):
        os.stat(path)
        return [path]

    def find(pattern: str) -> list[str]:
        return sorted(glob.glob(os.path.join(glob.escape(path), pattern)))

    weights = find("model*.safetensors")
    if weights:
        weights += find("*/model*.safetensors")
    else:
        weights = (
            find("consolidated*.safetensors")
            or find("pytorch_model*.bin")
            or find("consolidated*.pth")
            or find("*.gguf")
            or find("*.bin")
        )
    if not weights:
        raise ValueError("no Modelfile or safetensors files found")
    extra = find("*.json") + find("*/*.json") + find("chat_template.jinja")
    extra += find("tokenizer.model") or find("*/tokenizer.model")
    found = []
    for name in dict.fromkeys(weights + extra):
        real = os.path.realpath(name)
        rel = os.path.relpath(real, path)
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"insecure path: {rel}")
        found.append(real)
    return found


@dataclass
class _Sources:
    from_: str = ""
    files: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)


def _resolve(mf: Modelfile) -> _Sources:
    """Decide which FROM lines are local imports and list every local file, without hashing."""
    found = _Sources()
    base = mf.path.parent
    for kind, entries in (("FROM", mf.froms), ("ADAPTER", mf.adapters), ("DRAFT", mf.drafts)):
        for arg, line in entries:
            try:
                local = _model_files(_expand(arg, base))
            except FileNotFoundError as exc:
                if kind == "FROM":
                    found.from_ = arg  # not a path next to the Modelfile: a model name
                    continue
                reason = f"{kind} {arg}: {exc.filename} does not exist; name an existing file"
                raise ModelfileError(mf.path, reason, line) from None
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ModelfileError(mf.path, f"{kind} {arg}: {reason}", line) from None
            if kind == "ADAPTER":
                found.adapters = local  # Ollama keeps only the last ADAPTER
            else:
                (found.files if kind == "FROM" else found.drafts).extend(local)
    same = {os.path.realpath(p) for p in found.files} & {os.path.realpath(p) for p in found.drafts}
    if same:
        reason = f"DRAFT must not reference the same local path as FROM: {min(same)}"
        raise ModelfileError(mf.path, reason, mf.drafts[0][1])
    return found


def check_modelfile(path: Path) -> Modelfile:
    """Parse the Modelfile and check its local paths (no hashing); raises ``ModelfileError``."""
    parsed = parse_modelfile(path)
    _resolve(parsed)
    return parsed


# ---- requests ---------------------------------------------------------------------------


def _request_names(paths: Iterable[str]) -> dict[str, str]:
    """Names the CLI gives uploaded files: the base name, or the path below a common root."""
    unique = list(dict.fromkeys(paths))
    root = os.path.commonpath([os.path.dirname(p) for p in unique]) if len(unique) > 1 else ""
    names = {}
    for item in unique:
        name = os.path.basename(item)
        rel = os.path.relpath(item, root) if root else ""
        if rel and rel not in (".", "..") and not rel.startswith("../"):
            name = rel
        names[item] = posixpath.normpath(name)
    return names


def _digests_for(paths: list[str]) -> tuple[dict[str, str], dict[str, Path]]:
    names = _request_names(paths)
    return (
        {names[p]: file_digest(Path(p)) for p in names},
        {names[p]: Path(p) for p in names},
    )


def _plan(model: str, sources: _Sources, fields: dict[str, Any]) -> CreatePlan:
    """Assemble the request in the CLI's field order, leaving out empty fields (omitempty)."""
    files, local_files = _digests_for(sources.files)
    adapters, local_adapters = _digests_for(sources.adapters)
    drafts, local_drafts = _digests_for(sources.drafts)
    request: dict[str, Any] = {"model": model}
    ordered = {
        "from": sources.from_,
        "files": files,
        "adapters": adapters,
        **fields,
        "draft_files": drafts,
    }
    request.update((k, v) for k, v in ordered.items() if v)
    return CreatePlan(request, local_files, local_adapters, local_drafts)


def modelfile_request(path: Path, model: str) -> CreatePlan:
    """The ``/api/create`` plan for ``ollama create <model> -f <path>``.

    Raises ``ModelfileError`` (a ``ConfigError``) for a missing or invalid Modelfile or local
    file; ``OSError`` only when a local file vanishes while it is being hashed.
    """
    mf = parse_modelfile(path)
    fields = {
        "template": mf.template,
        "license": list(mf.license),
        "system": mf.system,
        "parameters": dict(mf.parameters),
        "messages": [{"role": role, "content": text} for role, text in mf.messages],
        "renderer": mf.renderer,
        "parser": mf.parser,
        "requires": mf.requires,
    }
    return _plan(model, _resolve(mf), fields)


def variant_request(config: Config, tenant: str, variant: VariantConfig) -> CreatePlan:
    """The ``/api/create`` plan for one variant of ``tenant``, from its Modelfile or inline fields.

    Inline ``parameters`` were typed when the config was loaded. Raises ``ModelfileError``
    when a Modelfile or adapter is missing or invalid now.
    """
    if variant.modelfile is not None:
        return modelfile_request(variant.modelfile, variant.name)
    adapters: list[str] = []
    for adapter in variant.adapters:
        try:
            adapters += _model_files(str(adapter))
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            reason = f"tenant {tenant}: variant {variant.name}: adapter {adapter}: {why}"
            raise ModelfileError(config.source or Path("<config>"), reason) from None
    fields = {
        "template": variant.template or "",
        "license": list(variant.license),
        "system": variant.system or "",
        "parameters": dict(variant.parameters),
        "messages": [{"role": m.role, "content": m.content} for m in variant.messages],
    }
    sources = _Sources(from_=variant.from_ or "", adapters=adapters)
    return _plan(variant.name, sources, fields)


def base_model_request(config: Config, name: str) -> CreatePlan:
    """The ``/api/create`` plan that imports base model ``name`` from its local GGUF file(s).

    Raises ``KeyError`` when ``name`` is not under ``base_models`` and ``ValueError`` when it
    names no ``gguf`` file.
    """
    base = config.base_models[name]
    if base.gguf is None:
        raise ValueError(f"base model {name!r} has no gguf file in the config")
    paths = [str(base.gguf)] + ([str(base.projector)] if base.projector else [])
    return _plan(name, _Sources(files=paths), {"template": base.template or ""})
