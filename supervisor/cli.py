"""``janus-supervisorctl``: the command line of janus-supervisord's control socket.

One command maps to one control route. The CLI must answer in a few tens of milliseconds, so it
imports only click and the standard library, never aiohttp, pydantic, anyio or the daemon's
modules, and speaks HTTP/1.1 on the unix socket itself: ``http.client`` would add some 14 ms
of email and ssl imports, a quarter of the budget. Exit codes: ``supervisor.exitcodes``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import socket
import stat
import sys
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import click

from supervisor import __version__
from supervisor import exitcodes as ec

PROG = "janus-supervisorctl"
SOCKET_ENV = "JANUS_SUPERVISOR_SOCKET"
COMPLETE_ENV = "_JANUS_SUPERVISORCTL_COMPLETE"
# Same as supervisor.config.DEFAULT_CONTROL_SOCKET, which cannot be imported here (pydantic).
DEFAULT_SOCKET = "/run/janus-supervisor/control.sock"
READ_TIMEOUT_S = 10.0
ACTION_TIMEOUT_S = 300.0
MAX_WAIT_PER_REQUEST_S = 300.0  # the daemon caps ?wait= at this
MAX_REPLY_BYTES = 16 * 1024 * 1024
ERROR_WIDTH = 60
# Same rule as supervisor.control.server.TENANT_NAME.
TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

EPILOG = f"""\b
Examples:
  {PROG} status
  {PROG} restart dev
  {PROG} ready dev --wait --timeout 120

\b
Exit codes: 0 done/ready, 1 action failed, 2 usage or unknown tenant,
3 daemon unreachable, 4 not ready, 5 permission denied.

\b
Shell completion (bash; zsh and fish likewise):
  eval "$({COMPLETE_ENV}=bash_source {PROG})"
"""


class CtlError(Exception):
    """A failure shown as one line on stderr, ending the command with ``exit_code``."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class Reply:
    """Status code and decoded JSON body of one control request."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    def error_text(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return f"the daemon answered HTTP {self.status}"


class ControlClient:
    """Minimal HTTP/1.1 client for the control socket: one connection per request."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(self, method: str, target: str, *, timeout_s: float = READ_TIMEOUT_S) -> Reply:
        """Send one request; map transport and HTTP errors to ``CtlError``.

        Returns the reply for 200 and 503 (the not-ready answer of ``/ready``).
        """
        status, raw = self._exchange(method, target, timeout_s)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise CtlError(
                ec.FAILED, f"the daemon sent a reply that is not JSON ({method} {target})"
            )
        reply = Reply(status, body)
        if status in (200, 503):
            return reply
        if status == 403:
            raise CtlError(ec.PERMISSION, reply.error_text())
        if status in (400, 404):
            raise CtlError(ec.USAGE, reply.error_text())
        raise CtlError(ec.FAILED, reply.error_text())

    def _exchange(self, method: str, target: str, timeout_s: float) -> tuple[int, bytes]:
        request = (
            f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
            f"User-Agent: {PROG}/{__version__}\r\nAccept: application/json\r\n"
            + ("Content-Length: 0\r\n" if method == "POST" else "")
            + "Connection: close\r\n\r\n"
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            self._connect(sock)
            try:
                sock.sendall(request.encode("ascii"))
                return _read_reply(sock)
            except TimeoutError:
                raise CtlError(
                    ec.UNREACHABLE,
                    f"the daemon at {self.socket_path} did not answer within {timeout_s:g} s",
                ) from None
            except OSError as exc:
                raise CtlError(
                    ec.UNREACHABLE,
                    f"the daemon at {self.socket_path} dropped the connection: {_reason(exc)}",
                ) from None
        finally:
            sock.close()

    def _connect(self, sock: socket.socket) -> None:
        path = self.socket_path
        try:
            sock.connect(path)
        except PermissionError:
            raise CtlError(ec.PERMISSION, _permission_message(path)) from None
        except FileNotFoundError:
            raise CtlError(
                ec.UNREACHABLE,
                f"cannot reach the daemon at {path}: no such file (is janus-supervisord running?)",
            ) from None
        except ConnectionRefusedError:
            raise CtlError(
                ec.UNREACHABLE,
                f"cannot reach the daemon at {path}: connection refused (stale socket; is "
                "janus-supervisord running?)",
            ) from None
        except (TimeoutError, BlockingIOError):
            raise CtlError(
                ec.UNREACHABLE, f"cannot reach the daemon at {path}: it accepts no connections"
            ) from None
        except OSError as exc:
            raise CtlError(
                ec.UNREACHABLE, f"cannot reach the daemon at {path}: {_reason(exc)}"
            ) from None


def _read_reply(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP response; return its status code and body."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if not _receive_into(sock, data):
            raise ConnectionResetError("connection closed before a complete reply")
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise CtlError(ec.FAILED, f"the daemon sent a malformed reply: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    body = bytearray(rest)
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            if not _receive_into(sock, body):
                raise ConnectionResetError("connection closed in the middle of a reply")
        return int(parts[1]), bytes(body[:length])
    while _receive_into(sock, body):
        pass  # no length given: the reply ends when the daemon closes the connection
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return int(parts[1]), _dechunk(bytes(body))
    return int(parts[1]), bytes(body)


def _receive_into(sock: socket.socket, buffer: bytearray) -> bool:
    """Append what the socket has to ``buffer``; False at end of stream."""
    chunk = sock.recv(65536)
    if len(buffer) + len(chunk) > MAX_REPLY_BYTES:
        raise CtlError(ec.FAILED, f"the daemon's reply exceeds {MAX_REPLY_BYTES} bytes")
    buffer += chunk
    return bool(chunk)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def _permission_message(path: str) -> str:
    """One line naming the socket, its owner, group and mode, and the way in (case C6)."""
    try:
        st = os.stat(path)
    except OSError:
        return (
            f"permission denied on the control socket {path}; a directory above it is closed "
            "to you: run as root (sudo) or ask an administrator for access"
        )
    owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWGRP and st.st_gid != 0:
        hint = f"join group {group} (sudo usermod -aG {group} $USER, then log in again) or use sudo"
    else:
        hint = "only its owner may connect: run as root (sudo)"
    return (
        f"permission denied on the control socket {path} ({owner}:{group}, mode {mode:04o}); {hint}"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


# -- output ----------------------------------------------------------------------------------


def _format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _shorten(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_table(tenants: list[dict[str, Any]]) -> str:
    """The human ``status`` table: one row per tenant."""
    header = ["TENANT", "STATE", "READY", "PID", "USER", "UPTIME", "RESTARTS", "LAST ERROR"]
    rows = [
        [
            str(t.get("name", "?")),
            str(t.get("state", "?")),
            "yes" if t.get("ready") else "no",
            str(t["pid"]) if t.get("pid") else "-",
            str(t.get("user") or "-"),
            _format_uptime(t.get("uptime_s")),
            str(t.get("restarts", 0)),
            _shorten(t.get("last_error")),
        ]
        for t in tenants
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _describe(tenant: dict[str, Any]) -> str:
    state = tenant.get("state", "?")
    if tenant.get("ready"):
        return f"{tenant.get('name')}: ready (pid {tenant.get('pid')})"
    error = tenant.get("last_error")
    suffix = f": {_shorten(error, 100)}" if error else ""
    return f"{tenant.get('name')}: not ready ({state}){suffix}"


# -- commands --------------------------------------------------------------------------------


class _Group(click.Group):
    """Turns ``CtlError`` into one stderr line and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtlError as exc:
            click.echo(f"{PROG}: {exc.message}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from None


def _client(ctx: click.Context) -> ControlClient:
    return ControlClient(ctx.find_root().params["socket_path"])


def _complete_tenants(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Tenant names from the daemon, for shell completion; nothing when it cannot answer."""
    path = ctx.find_root().params.get("socket_path") or os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    try:
        reply = ControlClient(path).call("GET", "/v1/status", timeout_s=1.0)
    except CtlError:
        return []
    tenants = reply.body.get("tenants", []) if isinstance(reply.body, dict) else []
    names = [str(t.get("name")) for t in tenants]
    return [n for n in names if n.startswith(incomplete)]


def _tenant_path(name: str, suffix: str = "") -> str:
    if not TENANT_NAME.fullmatch(name):
        raise CtlError(
            ec.USAGE, f"invalid tenant name {name[:40]!r}: names match {TENANT_NAME.pattern}"
        )
    return f"/v1/tenants/{name}{suffix}"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
tenants_argument = click.argument("tenants", nargs=-1, shell_complete=_complete_tenants)

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(cls=_Group, context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "--socket",
    "socket_path",
    envvar=SOCKET_ENV,
    default=DEFAULT_SOCKET,
    show_default=False,  # shown unbroken in the text above; click would split it at a hyphen
    metavar="PATH",
    help=f"Control socket of janus-supervisord (env {SOCKET_ENV}).",
)
def cli(socket_path: str) -> None:
    """Control janus-supervisord: tenant status, readiness, start, stop, restart.

    \b
    The control socket is --socket PATH, else $JANUS_SUPERVISOR_SOCKET,
    else /run/janus-supervisor/control.sock (the default).
    """


@cli.command(epilog=f"Example: {PROG} status dev --json")
@tenants_argument
@json_option
@click.pass_context
def status(ctx: click.Context, tenants: tuple[str, ...], as_json: bool) -> None:
    """Show tenants (all, or those named); exit 0 only if every one shown is ready."""
    client = _client(ctx)
    if tenants:
        docs = [client.call("GET", _tenant_path(name)).body for name in tenants]
        shown: Any = docs
    else:
        shown = client.call("GET", "/v1/status").body
        docs = shown.get("tenants", [])
    if as_json:
        _emit_json(shown)
    elif docs:
        click.echo(format_table(docs))
    else:
        click.echo("no tenants configured")
    ctx.exit(ec.OK if all(d.get("ready") for d in docs) else ec.NOT_READY)


def _run_action(
    ctx: click.Context, verb: str, done: str, tenants: Iterable[str], all_: bool, as_json: bool
) -> NoReturn:
    client = _client(ctx)
    names = list(tenants)
    if all_ == bool(names):
        raise click.UsageError("name one or more tenants, or give --all (not both)")
    if all_:
        names = [t["name"] for t in client.call("GET", "/v1/status").body.get("tenants", [])]
    results, code = [], ec.OK
    for name in names:
        try:
            doc = client.call(
                "POST", _tenant_path(name, f"/{verb}"), timeout_s=ACTION_TIMEOUT_S
            ).body
        except CtlError as exc:
            if exc.exit_code in (ec.UNREACHABLE, ec.PERMISSION):
                raise
            click.echo(f"{PROG}: {name}: {exc.message}", err=True)
            code = code or exc.exit_code
            continue
        results.append(doc)
        if verb != "stop" and doc.get("state") == "failed":
            click.echo(
                f"{PROG}: {name}: {verb} failed: {_shorten(doc.get('last_error'), 200)}", err=True
            )
            code = code or ec.FAILED
        elif not as_json:
            click.echo(f"{name}: {done} ({doc.get('state')}, pid {doc.get('pid') or '-'})")
    if as_json:
        _emit_json(results)
    ctx.exit(code)


def _action_command(verb: str, done: str, summary: str) -> click.Command:
    @tenants_argument
    @click.option("--all", "all_", is_flag=True, help=f"{verb.capitalize()} every tenant.")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, tenants: tuple[str, ...], all_: bool, as_json: bool) -> None:
        _run_action(ctx, verb, done, tenants, all_, as_json)

    command.__doc__ = summary
    return cli.command(verb, epilog=f"Example: {PROG} {verb} dev qa")(command)


_action_command("start", "started", "Start tenants; returns once their servers are spawned.")
_action_command("stop", "stopped", "Stop tenants; returns once none of their processes is left.")
_action_command(
    "restart", "restarted", "Restart tenants; returns once the new servers are spawned."
)


@cli.command(epilog=f"Example: {PROG} ready dev --wait --timeout 120")
@click.argument("tenant", shell_complete=_complete_tenants)
@click.option("--wait", is_flag=True, help="Wait until the tenant is ready or the timeout ends.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=60,
    metavar="S",
    help="Seconds --wait waits at most.",
)
@json_option
@click.pass_context
def ready(ctx: click.Context, tenant: str, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Exit 0 if TENANT is ready, 4 if not (optionally waiting for it)."""
    client = _client(ctx)
    deadline = time.monotonic() + (timeout_s if wait else 0.0)
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        wait_s = min(remaining, MAX_WAIT_PER_REQUEST_S)
        target = _tenant_path(tenant, "/ready") + (f"?wait={wait_s:.3f}" if wait_s > 0 else "")
        doc = client.call("GET", target, timeout_s=wait_s + READ_TIMEOUT_S).body
        # Ask again only when the daemon's cap cut the wait short; an early not-ready answer
        # (a failed tenant, say) is final.
        if doc.get("ready") or remaining <= MAX_WAIT_PER_REQUEST_S:
            break
    if as_json:
        _emit_json(doc)
    else:
        click.echo(_describe(doc))
    ctx.exit(ec.OK if doc.get("ready") else ec.NOT_READY)


@cli.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """Print the versions of this tool and of the running daemon."""
    click.echo(f"{PROG} {__version__}")
    doc = _client(ctx).call("GET", "/v1/status").body
    click.echo(f"janus-supervisord {doc.get('version')} (pid {doc.get('pid')})")


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    cli.main(args=argv, prog_name=PROG, complete_var=COMPLETE_ENV)
    sys.exit(ec.OK)  # not reached: click exits


if __name__ == "__main__":
    main()
