"""``janus-supervisorctl``: the command line of janus-supervisord's control socket.

One command maps to one control route. The CLI must answer in a few tens of milliseconds
(``status`` under 60 ms; ``tools/bench_cli.py`` measures it), so it imports only click and the
standard library, never aiohttp, pydantic, anyio or the daemon's modules; the requests go
through ``supervisor.ctl_client``. Plain ``status`` calls, the ones scripts and monitoring
repeat, are answered here without even importing click (a third of the budget); everything
else goes to the click commands in ``supervisor.cli_commands``. Exit codes:
``supervisor.exitcodes``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from supervisor import exitcodes as ec
from supervisor.ctl_client import PROG, ControlClient, CtlError

SOCKET_ENV = "JANUS_SUPERVISOR_SOCKET"
COMPLETE_ENV = "_JANUS_SUPERVISORCTL_COMPLETE"
# Same as supervisor.config.DEFAULT_CONTROL_SOCKET, which cannot be imported here (pydantic).
DEFAULT_SOCKET = "/run/janus-supervisor/control.sock"
ERROR_WIDTH = 60
# Same rules as supervisor.control.server.TENANT_NAME and VARIANT_NAME.
TENANT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
DEFAULT_LOG_LINES = 100


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


def tenant_path(name: str, suffix: str = "") -> str:
    if not TENANT_NAME.fullmatch(name):
        raise CtlError(
            ec.USAGE, f"invalid tenant name {name[:40]!r}: names match {TENANT_NAME.pattern}"
        )
    return f"/v1/tenants/{name}{suffix}"



def show_status(client: ControlClient, tenants: Sequence[str], as_json: bool) -> int:
    """Print the status of ``tenants`` (every one when empty); 0 only if all shown are ready."""
    if tenants:
        docs = [client.call("GET", tenant_path(name)).body for name in tenants]
        shown: Any = docs
    else:
        shown = client.call("GET", "/v1/status").body
        docs = shown.get("tenants", [])
    if as_json:
        text = json.dumps(shown, indent=2)
    else:
        text = format_table(docs) if docs else "no tenants configured"
    sys.stdout.write(text + "\n")
    return ec.OK if all(d.get("ready") for d in docs) else ec.NOT_READY


def fast_status(argv: Sequence[str]) -> int | None:
    """Answer ``[--socket PATH] status [TENANT...] [--json]`` without click.

    Returns the exit code, or None for any other command line (click then parses it, with
    its help and usage errors).
    """
    if COMPLETE_ENV in os.environ:
        return None
    args = list(argv)
    socket_path = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET  # as click reads an envvar
    if len(args) >= 2 and args[0] == "--socket":
        socket_path, args = args[1], args[2:]
    elif args and args[0].startswith("--socket="):
        socket_path, args = args[0].partition("=")[2], args[1:]
    if args[:1] != ["status"] or args.count("--json") > 1:
        return None
    names = [a for a in args[1:] if a != "--json"]
    if not all(TENANT_NAME.fullmatch(name) for name in names):
        return None
    try:
        return show_status(ControlClient(socket_path), names, "--json" in args)
    except CtlError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        return exc.exit_code


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else argv
    if (code := fast_status(args)) is not None:
        sys.exit(code)
    from supervisor.cli_commands import cli

    cli.main(args=args, prog_name=PROG, complete_var=COMPLETE_ENV)
    sys.exit(ec.OK)  # not reached: click exits


def __getattr__(name: str) -> Any:
    # ``supervisor.cli.cli``, the click group, is loaded only when asked for.
    if name == "cli":
        from supervisor.cli_commands import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
