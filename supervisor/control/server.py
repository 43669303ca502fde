"""The control server: a fixed set of HTTP/1.1 + JSON routes on the daemon's unix socket.

=======  ==============================  =======================================================
method   route                           answer
=======  ==============================  =======================================================
GET      /v1/status                      DaemonStatus, only the tenants the caller may read
GET      /v1/tenants/{name}              TenantStatus
GET      /v1/tenants/{name}/ready        TenantStatus; 200 when ready, else 503; ``?wait=S``
                                         waits up to S seconds (at most 300) for readiness
POST     /v1/tenants/{name}/start        TenantStatus once the server is spawned
POST     /v1/tenants/{name}/stop         TenantStatus once no process of the tenant is left
POST     /v1/tenants/{name}/restart      TenantStatus once the new server is spawned
POST     /v1/tenants/{name}/rebuild      TenantStatus once its variants (or ``?variant=V``)
                                         are re-created on the running server
GET      /v1/tenants/{name}/logs         LogLines: the last ``?lines=N`` (default 100) lines;
                                         with ``?follow=1`` NDJSON ``{"line": ...}`` chunks,
                                         old lines then new ones, until the client leaves
POST     /v1/reload                      ReloadPlan once applied; ``?dry_run=1`` plans only;
                                         422 with ``problems`` for an invalid file
POST     /v1/logs/reopen                 ``{"reopened": [paths]}`` (for logrotate)
GET      /metrics                        Prometheus text of ``supervisor.metrics.REGISTRY``
=======  ==============================  =======================================================

Every other route is 404, a wrong method 405; errors are ``{"error": "..."}``. The caller is
the uid the kernel reports for the connection (``SO_PEERCRED``): root and members of
``control.admin_group`` may do everything, members of ``control.read_group`` may read every
tenant, a tenant's own user may read that tenant (status, readiness, logs); ``/metrics`` needs
read access to every tenant; anything else is 403 and a WARNING with the uid. Actions (start,
stop, restart, rebuild, reload, reopen) need admin.

When a client leaves, its request's task is cancelled (that is how a ``logs?follow=1`` stream
ends); the daemon finishes reloads and rebuilds on its own.

No route needs a body: bodies are capped at 64 KiB and must arrive within the request timeout,
headers likewise, so a slow or flooding client is cut off while others are served (HTTP
framing: ``supervisor.control.http``).
"""

from __future__ import annotations

import grp
import json
import logging
import math
import os
import pwd
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pydantic import BaseModel

from supervisor.config import ControlConfig
from supervisor.control.api import LogLines, LogStream, SupervisorAPI
from supervisor.control.http import HTTPServer, Request, Response
from supervisor.control.metrics_http import metrics_response
from supervisor.errors import ConfigError, ControlError, SupervisorError
from supervisor.logs import RING_LINES
from supervisor.sockets import BoundSocket, bind_unix_socket, peer_credentials

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_BODY_BYTES = 64 * 1024
MAX_WAIT_S = 300.0
DEFAULT_LOG_LINES = 100
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
ROUTES_HELP = (
    "GET /v1/status, GET /v1/tenants/{name}, GET /v1/tenants/{name}/ready[?wait=S], "
    "GET /v1/tenants/{name}/logs[?lines=N&follow=1], "
    "POST /v1/tenants/{name}/start|stop|restart|rebuild[?variant=V], "
    "POST /v1/reload[?dry_run=1], POST /v1/logs/reopen, GET /metrics"
)

Handler = Callable[[Request], Awaitable[Response]]


class _Refusal(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a control connection, and what they may do."""

    pid: int
    uid: int
    gid: int
    is_admin: bool
    is_reader: bool


def open_control_socket(control: ControlConfig) -> BoundSocket:
    """Bind the control socket from config: owned by the daemon, group ``control.group``.

    Raises ``ControlError`` when the group does not exist or the socket cannot be bound
    (another daemon holds it, a non-socket file is in the way, unsafe directory).
    """
    gid = os.getegid()
    if control.group is not None:
        try:
            gid = grp.getgrnam(control.group).gr_gid
        except KeyError:
            raise ControlError(
                f"control.group: no group named {control.group!r}; create it "
                f"(groupadd --system {control.group}) or change control.group"
            ) from None
    return bind_unix_socket(control.socket, mode=control.mode, uid=os.geteuid(), gid=gid)


class ControlServer:
    """Serves the control routes on ``bound`` inside the running asyncio event loop.

    Takes ownership of ``bound``: ``close`` stops serving, closes the socket and removes its
    path. ``request_timeout_s`` bounds how long a client may take to send a request's headers
    and, separately, its body; ``shutdown_timeout_s`` how long ``close`` lets running requests
    (``ready?wait``, actions) finish before cancelling them.
    """

    def __init__(
        self,
        api: SupervisorAPI,
        control: ControlConfig,
        bound: BoundSocket,
        *,
        request_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self._api = api
        self._control = control
        self._bound = bound
        self._http = HTTPServer(
            self._dispatch,
            request_timeout_s=request_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            max_body_bytes=MAX_BODY_BYTES,
        )
        self._routes = self._make_routes()
        self._streams: set[LogStream] = set()

    @property
    def path(self) -> str:
        return os.fspath(self._bound.path)

    async def start(self) -> None:
        """Start accepting connections; returns once the socket is served."""
        for key in ("admin_group", "read_group"):
            group = getattr(self._control, key)
            if group is not None and _group_gid(group) is None:
                log.warning(
                    "control.%s: no group named %r; nobody gets its rights until it exists",
                    key,
                    group,
                )
        await self._http.serve_unix(self._bound.sock)
        log.info("control: serving on %s", self.path)

    async def close(self) -> None:
        """Stop serving, close the socket and remove its path; end every log stream first."""
        for stream in list(self._streams):
            stream.close()
        await self._http.close()
        self._bound.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _make_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        tenant = "/v1/tenants/(?P<name>[^/]+)"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/v1/status", self._status),
            ("GET", tenant, self._tenant),
            ("GET", f"{tenant}/ready", self._ready),
            ("POST", f"{tenant}/start", self._action("start")),
            ("POST", f"{tenant}/stop", self._action("stop")),
            ("POST", f"{tenant}/restart", self._action("restart")),
            ("POST", f"{tenant}/rebuild", self._rebuild),
            ("GET", f"{tenant}/logs", self._logs),
            ("POST", "/v1/reload", self._reload),
            ("POST", "/v1/logs/reopen", self._reopen_logs),
            ("GET", "/metrics", self._metrics),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in routes]

    def apply_control(self, control: ControlConfig) -> None:
        """Take access settings from a reload: groups at once, socket mode and group in place.

        A new ``control.socket`` path needs a daemon restart (the reload plan says so).
        """
        old, self._control = self._control, control
        if (old.mode, old.group) == (control.mode, control.group):
            return
        gid = _group_gid(control.group) if control.group else os.getegid()
        try:
            if not self._bound.is_published():
                raise FileNotFoundError(f"{self.path} is no longer the daemon's socket")
            os.chown(self._bound.path, -1, -1 if gid is None else gid, follow_symlinks=False)
            os.chmod(self._bound.path, control.mode)
        except OSError as exc:
            log.warning(
                "control: cannot apply mode %04o and group %s to %s (%s); restart the "
                "daemon to apply them",
                control.mode,
                control.group,
                self.path,
                exc,
            )

    # -- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        """Route ``request``; every refusal is answered as JSON and logged with the caller."""
        try:
            if request.body_error is not None:
                raise _Refusal(*request.body_error)
            return await self._route(request)(request)
        except _Refusal as exc:
            _log_refusal(request, exc.status, exc.message)
            return _error(exc.status, exc.message, exc.headers)
        except Exception:
            log.exception("control: %s %s failed", request.method, _shown_path(request))
            return _error(500, "internal error in janus-supervisord; see its log")

    def _route(self, request: Request) -> Handler:
        """The handler of the request's method and path; a 404 or 405 refusal otherwise."""
        path = request.path
        allowed = []
        for method, pattern, handler in self._routes:
            if (match := pattern.fullmatch(path)) is None:
                continue
            if method == request.method:
                request.params = match.groupdict()
                return handler
            allowed.append(method)
        shown = _shown_path(request)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise _Refusal(
                405,
                f"method {request.method} not allowed on {shown}; use {methods}",
                {"Allow": methods},
            )
        raise _Refusal(404, f"no route {shown}; routes: {ROUTES_HELP}")

    # -- read routes ---------------------------------------------------------------------

    async def _status(self, request: Request) -> Response:
        caller = self._identify(request)
        status = self._api.daemon_status()
        if not caller.is_reader:
            own = [t for t in status.tenants if self._api.tenant_uid(t.name) == caller.uid]
            if not own:
                raise _forbidden(caller, "read the status", self._read_needs())
            status = status.model_copy(update={"tenants": own})
        return _json(status)

    async def _tenant(self, request: Request) -> Response:
        name = self._authorize_read(request)
        try:
            return _json(self._api.tenant_status(name))
        except KeyError:
            raise self._unknown(name) from None  # removed by a reload meanwhile

    async def _ready(self, request: Request) -> Response:
        name = self._authorize_read(request)
        wait_s = _parse_wait(request.query.get("wait", []))
        try:
            if wait_s > 0:
                status = await self._api.wait_ready(name, wait_s)
            else:
                status = self._api.tenant_status(name)
        except KeyError:
            raise self._unknown(name) from None
        return _json(status, status=200 if status.ready else 503)

    async def _logs(self, request: Request) -> Response:
        name = self._authorize_read(request)
        lines = _parse_lines(request.query.get("lines", []))
        follow = _parse_flag("follow", request.query.get("follow", []))
        try:
            if follow:
                stream = self._api.follow_logs(name, lines)
            else:
                return _json(LogLines(tenant=name, lines=self._api.tenant_logs(name, lines)))
        except KeyError:
            raise self._unknown(name) from None
        body = self._stream_lines(stream)
        await anext(body)  # the follower is registered before the answer's head goes out
        return Response(200, body, content_type="application/x-ndjson")

    async def _stream_lines(
        self, opened: AbstractContextManager[LogStream]
    ) -> AsyncGenerator[bytes, None]:
        """NDJSON ``{"line": ...}`` chunks until the stream ends or the client leaves.

        The first chunk is empty: it comes once the stream is open.
        """
        with opened as stream:
            self._streams.add(stream)
            try:
                yield b""
                dropped = 0
                while (batch := await stream.next_lines()) is not None:
                    records: list[dict[str, object]] = [{"line": line} for line in batch]
                    if stream.dropped > dropped:
                        records.insert(0, {"dropped": stream.dropped - dropped})
                        dropped = stream.dropped
                    yield "".join(json.dumps(r) + "\n" for r in records).encode()
            finally:
                self._streams.discard(stream)

    async def _metrics(self, request: Request) -> Response:
        caller = self._identify(request)
        if not caller.is_reader:
            groups = [g for g in (self._control.admin_group, self._control.read_group) if g]
            who = ", ".join(["root", *(f"group {g}" for g in groups)])
            raise _forbidden(caller, "read /metrics", f"needs read access to every tenant ({who})")
        return metrics_response()

    def _authorize_read(self, request: Request) -> str:
        name = _tenant_name(request)
        caller = self._identify(request)
        if not (caller.is_reader or self._owns(caller, name)):
            raise _forbidden(caller, f"read tenant {name}", self._read_needs())
        self._require_tenant(name)
        return name

    # -- actions -------------------------------------------------------------------------

    def _action(self, verb: str) -> Handler:
        actions = {
            "start": self._api.start_tenant,
            "stop": self._api.stop_tenant,
            "restart": self._api.restart_tenant,
        }
        act = actions[verb]

        async def handle(request: Request) -> Response:
            name = self._authorize_action(request, verb)
            try:
                status = await act(name)
            except KeyError:
                raise self._unknown(name) from None
            except SupervisorError as exc:
                raise _Refusal(409, str(exc)) from exc
            return _json(status)

        return handle

    def _authorize_action(self, request: Request, verb: str) -> str:
        """Name of the tenant an admin acts on; the request is logged with the caller's uid."""
        name = _tenant_name(request)
        caller = self._require_admin(request, f"{verb} tenant {name}")
        self._require_tenant(name)
        log.info(
            "tenant %s: %s requested by uid %d (pid %d) on the control socket",
            name,
            verb,
            caller.uid,
            caller.pid,
            extra={"tenant": name, "uid": caller.uid},
        )
        return name

    def _require_admin(self, request: Request, what: str) -> Caller:
        caller = self._identify(request)
        if not caller.is_admin:
            raise _forbidden(caller, what, f"needs admin ({self._admin_desc()})")
        return caller

    async def _rebuild(self, request: Request) -> Response:
        variant = _parse_variant(request.query.get("variant", []))
        name = self._authorize_action(request, "rebuild" + (f" {variant}" if variant else ""))
        try:
            status = await self._api.rebuild_tenant(name, variant)
        except KeyError:
            raise self._unknown(name) from None
        except LookupError as exc:
            raise _Refusal(404, str(exc.args[0] if exc.args else exc)) from None
        except SupervisorError as exc:
            raise _Refusal(409, str(exc)) from exc
        return _json(status)

    async def _reload(self, request: Request) -> Response:
        dry_run = _parse_flag("dry_run", request.query.get("dry_run", []))
        what = "reload the configuration" + (" (dry run)" if dry_run else "")
        caller = self._require_admin(request, what)
        log.info(
            "control: %s requested by uid %d (pid %d)",
            what,
            caller.uid,
            caller.pid,
            extra={"uid": caller.uid},
        )
        try:
            plan = await self._api.reload(dry_run)
        except ConfigError as exc:
            return _invalid_config(exc)
        except SupervisorError as exc:
            raise _Refusal(409, str(exc)) from exc
        return _json(plan)

    async def _reopen_logs(self, request: Request) -> Response:
        caller = self._require_admin(request, "reopen the log files")
        paths = self._api.reopen_logs()
        log.info(
            "control: log files reopened for uid %d (pid %d): %d files",
            caller.uid,
            caller.pid,
            len(paths),
            extra={"uid": caller.uid},
        )
        return Response(200, json.dumps({"reopened": paths}).encode())

    # -- identity and rights -------------------------------------------------------------

    def _identify(self, request: Request) -> Caller:
        if request.sock is None:
            raise _Refusal(400, "connection closed before the caller could be identified")
        pid, uid, gid = peer_credentials(request.sock)
        is_admin = uid == 0 or _is_member(self._control.admin_group, uid, gid)
        is_reader = is_admin or _is_member(self._control.read_group, uid, gid)
        return Caller(pid=pid, uid=uid, gid=gid, is_admin=is_admin, is_reader=is_reader)

    def _owns(self, caller: Caller, name: str) -> bool:
        if name not in self._api.tenant_names():
            return False
        return self._api.tenant_uid(name) == caller.uid

    def _admin_desc(self) -> str:
        group = self._control.admin_group
        return f"root or group {group}" if group else "root"

    def _read_needs(self) -> str:
        groups = [g for g in (self._control.admin_group, self._control.read_group) if g]
        who = ["root", *(f"group {g}" for g in groups)]
        return f"needs read access ({', '.join(who)} or the tenant's own user)"

    def _require_tenant(self, name: str) -> None:
        if name not in self._api.tenant_names():
            raise self._unknown(name)

    def _unknown(self, name: str) -> _Refusal:
        known = ", ".join(sorted(self._api.tenant_names())) or "none"
        return _Refusal(404, f"no tenant named {name!r} (configured: {known})")


def _forbidden(caller: Caller, what: str, needs: str) -> _Refusal:
    return _Refusal(403, f"uid {caller.uid} may not {what}: {needs}")


def _log_refusal(request: Request, status: int, message: str) -> None:
    sock = request.sock
    pid, uid, _ = peer_credentials(sock) if sock is not None else (-1, -1, -1)
    name = request.params.get("name", "")
    log.warning(
        "control: refused %s %s from uid %d (pid %d) with %d: %s",
        request.method,
        _shown_path(request),
        uid,
        pid,
        status,
        _clip(message, 160),
        extra={"tenant": name if TENANT_NAME.fullmatch(name) else None, "uid": uid},
    )


def _tenant_name(request: Request) -> str:
    name = request.params["name"]
    if not TENANT_NAME.fullmatch(name):
        raise _Refusal(
            400,
            f"invalid tenant name {_clip(name, 40)!r}: names match {TENANT_NAME.pattern}",
        )
    return name


def _parse_wait(values: list[str]) -> float:
    """Seconds to wait from ``?wait=S``: 0 when absent, capped at ``MAX_WAIT_S``."""
    if not values:
        return 0.0
    try:
        wait_s = float(values[-1])
    except ValueError:
        wait_s = math.nan
    if not (math.isfinite(wait_s) and wait_s >= 0):
        raise _Refusal(400, f"wait={_clip(values[-1], 40)!r}: expected seconds, e.g. wait=30")
    return min(wait_s, MAX_WAIT_S)


def _parse_lines(values: list[str]) -> int:
    """``?lines=N``: 0 to the ring size, default ``DEFAULT_LOG_LINES``."""
    if not values:
        return DEFAULT_LOG_LINES
    raw = values[-1]
    if not raw.isdigit():
        raise _Refusal(400, f"lines={_clip(raw, 40)!r}: expected a whole number, e.g. lines=50")
    return min(int(raw), RING_LINES)


def _parse_flag(key: str, values: list[str]) -> bool:
    if not values:
        return False
    raw = values[-1].lower()
    if raw not in ("1", "0", "true", "false", "yes", "no", ""):
        raise _Refusal(400, f"{key}={_clip(raw, 40)!r}: expected 1 or 0")
    return raw in ("1", "true", "yes", "")


def _parse_variant(values: list[str]) -> str | None:
    if not values:
        return None
    if not VARIANT_NAME.fullmatch(values[-1]):
        raise _Refusal(400, f"variant={_clip(values[-1], 40)!r} is not a model name")
    return values[-1]


def _invalid_config(exc: ConfigError) -> Response:
    """422 naming every problem of the new config file; nothing was changed."""
    problems = [str(p) for p in exc.problems]
    message = (
        f"the configuration has {len(problems)} problem(s); nothing was changed. "
        "Fix them and reload again"
    )
    log.error("control: reload refused: %s: %s", message, "; ".join(problems))
    body = json.dumps({"error": message, "problems": problems}) + "\n"
    return Response(422, body.encode())


def _is_member(group: str | None, uid: int, gid: int) -> bool:
    """Whether the caller belongs to ``group``: its connection's gid, or the group database."""
    if group is None:
        return False
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == entry.gr_gid:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid == entry.gr_gid or user.pw_name in entry.gr_mem


def _group_gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _json(model: BaseModel, *, status: int = 200) -> Response:
    return Response(status, model.model_dump_json().encode() + b"\n")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message}) + "\n"
    # After a 408 or 413 the rest of the body is never read: the connection closes.
    return Response(status, body.encode(), headers=dict(headers or {}), close=status in (408, 413))


def _shown_path(request: Request) -> str:
    """The request path as sent, still percent-encoded: safe to put in a log line."""
    return _clip(request.raw_path)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
