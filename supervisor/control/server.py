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
=======  ==============================  =======================================================

Every other route is 404, a wrong method 405; errors are ``{"error": "..."}``. The caller is
the uid the kernel reports for the connection (``SO_PEERCRED``): root and members of
``control.admin_group`` may do everything, members of ``control.read_group`` may read every
tenant, a tenant's own user may read that tenant; anything else is 403 and a WARNING with the uid.

No route needs a body: bodies are capped at 64 KiB and must arrive within the request timeout,
headers likewise (aiohttp's keep-alive timer also bounds a connection that has not sent a whole
request yet), so a slow or flooding client is cut off while others are served.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import math
import os
import pwd
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web
from pydantic import BaseModel

from supervisor.config import ControlConfig
from supervisor.control.api import SupervisorAPI
from supervisor.errors import ControlError, SupervisorError
from supervisor.sockets import BoundSocket, bind_unix_socket, peer_credentials

log = logging.getLogger(__name__)

TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_BODY_BYTES = 64 * 1024
MAX_WAIT_S = 300.0
ROUTES_HELP = (
    "GET /v1/status, GET /v1/tenants/{name}, GET /v1/tenants/{name}/ready[?wait=S], "
    "POST /v1/tenants/{name}/start|stop|restart"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refusal(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        self._request_timeout_s = request_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None

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
        runner = web.AppRunner(
            self._make_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout_s,
            # The keep-alive timer also runs from accept until a request's headers are in:
            # it is what cuts off a client trickling its headers.
            keepalive_timeout=self._request_timeout_s,
            # A refused body is never read: close at once instead of draining it.
            lingering_time=0,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=64,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, self._bound.sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("control: serving on %s", self.path)

    async def close(self) -> None:
        """Stop serving, close the socket and remove its path."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
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

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._errors_as_json, self._limit_body],
        )
        app.router.add_get("/v1/status", self._status, allow_head=False)
        app.router.add_get("/v1/tenants/{name}", self._tenant, allow_head=False)
        app.router.add_get("/v1/tenants/{name}/ready", self._ready, allow_head=False)
        app.router.add_post("/v1/tenants/{name}/start", self._action("start"))
        app.router.add_post("/v1/tenants/{name}/stop", self._action("stop"))
        app.router.add_post("/v1/tenants/{name}/restart", self._action("restart"))
        return app

    # -- middlewares ---------------------------------------------------------------------

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = None
        try:
            return await handler(request)
        except _Refusal as exc:
            status, message = exc.status, exc.message
        except web.HTTPException as exc:
            status, message, headers = _router_error(request, exc)
        except Exception:
            log.exception("control: %s %s failed", request.method, _shown_path(request))
            return _error(500, "internal error in janus-supervisord; see its log")
        _log_refusal(request, status, message)
        return _error(status, message, headers)

    @web.middleware
    async def _limit_body(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise _Refusal(413, f"request body of {length} bytes refused; no route takes one")
        if request.body_exists:
            await self._drain_body(request)
        return await handler(request)

    async def _drain_body(self, request: web.Request) -> None:
        size = 0
        try:
            async with asyncio.timeout(self._request_timeout_s):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise _Refusal(413, f"request body over {MAX_BODY_BYTES} bytes refused")
        except TimeoutError:
            raise _Refusal(
                408, f"request body not received within {self._request_timeout_s:g} s"
            ) from None

    # -- read routes ---------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        caller = self._identify(request)
        status = self._api.daemon_status()
        if not caller.is_reader:
            own = [t for t in status.tenants if self._api.tenant_uid(t.name) == caller.uid]
            if not own:
                raise _forbidden(caller, "read the status", self._read_needs())
            status = status.model_copy(update={"tenants": own})
        return _json(status)

    async def _tenant(self, request: web.Request) -> web.Response:
        name = self._authorize_read(request)
        try:
            return _json(self._api.tenant_status(name))
        except KeyError:
            raise self._unknown(name) from None  # removed by a reload meanwhile

    async def _ready(self, request: web.Request) -> web.Response:
        name = self._authorize_read(request)
        wait_s = _parse_wait(request.query.getall("wait", []))
        try:
            if wait_s > 0:
                status = await self._api.wait_ready(name, wait_s)
            else:
                status = self._api.tenant_status(name)
        except KeyError:
            raise self._unknown(name) from None
        return _json(status, status=200 if status.ready else 503)

    def _authorize_read(self, request: web.Request) -> str:
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

        async def handle(request: web.Request) -> web.Response:
            name = _tenant_name(request)
            caller = self._identify(request)
            if not caller.is_admin:
                needs = f"needs admin ({self._admin_desc()})"
                raise _forbidden(caller, f"{verb} tenant {name}", needs)
            self._require_tenant(name)
            log.info(
                "tenant %s: %s requested by uid %d (pid %d) on the control socket",
                name,
                verb,
                caller.uid,
                caller.pid,
                extra={"tenant": name, "uid": caller.uid},
            )
            try:
                status = await act(name)
            except KeyError:
                raise self._unknown(name) from None
            except SupervisorError as exc:
                raise _Refusal(409, str(exc)) from exc
            return _json(status)

        return handle

    # -- identity and rights -------------------------------------------------------------

    def _identify(self, request: web.Request) -> Caller:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            raise _Refusal(400, "connection closed before the caller could be identified")
        pid, uid, gid = peer_credentials(sock)
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


def _router_error(
    request: web.Request, exc: web.HTTPException
) -> tuple[int, str, dict[str, str] | None]:
    """Status, message and headers for an answer of aiohttp's router (no route, wrong method)."""
    path = _shown_path(request)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"method {request.method} not allowed on {path}; use {allowed}"
        return 405, message, {"Allow": allowed}
    if isinstance(exc, web.HTTPNotFound):
        return 404, f"no route {path}; routes: {ROUTES_HELP}", None
    return exc.status, exc.reason, None


def _log_refusal(request: web.Request, status: int, message: str) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    pid, uid, _ = peer_credentials(sock) if sock is not None else (-1, -1, -1)
    name = request.match_info.get("name", "")
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


def _tenant_name(request: web.Request) -> str:
    name = request.match_info["name"]
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


def _json(model: BaseModel, *, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=model.model_dump_json() + "\n", content_type="application/json"
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(
        status=status,
        text=json.dumps({"error": message}) + "\n",
        content_type="application/json",
        headers=headers,
    )
    if status in (408, 413):
        response.force_close()  # the rest of the body is never read
    return response


def _shown_path(request: web.Request) -> str:
    """The request path as sent, still percent-encoded: safe to put in a log line."""
    return _clip(request.rel_url.raw_path)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
