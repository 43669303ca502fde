"""The click commands of ``janus-supervisorctl`` (see ``supervisor.cli``, the entry point).

Each command maps to one control route, prints a table or a line by default and the daemon's
JSON with ``--json``, and exits with a code of ``supervisor.exitcodes``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import click

from supervisor import __version__
from supervisor import exitcodes as ec
from supervisor.cli import (
    COMPLETE_ENV,
    DEFAULT_LOG_LINES,
    DEFAULT_SOCKET,
    SOCKET_ENV,
    VARIANT_NAME,
    _shorten,
    show_status,
    tenant_path,
)
from supervisor.ctl_client import PROG, READ_TIMEOUT_S, ControlClient, CtlError

ACTION_TIMEOUT_S = 300.0
MAX_WAIT_PER_REQUEST_S = 300.0  # the daemon caps ?wait= at this
RECONNECT_S = 0.1  # ready --wait: how often to look for a daemon that is not up yet

EPILOG = f"""\b
Examples:
  {PROG} status
  {PROG} restart dev
  {PROG} ready dev --wait --timeout 120
  {PROG} reload --dry-run
  {PROG} logs dev -f

\b
Exit codes: 0 done/ready, 1 action failed, 2 usage or unknown tenant,
3 daemon unreachable, 4 not ready, 5 permission denied.

\b
Shell completion (bash; zsh and fish likewise):
  eval "$({COMPLETE_ENV}=bash_source {PROG})"
"""


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
    """Control janus-supervisord: status, actions, reload, logs.

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
    # Plain invocations never get here: supervisor.cli.fast_status answers them.
    ctx.exit(show_status(_client(ctx), tenants, as_json))


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
                "POST", tenant_path(name, f"/{verb}"), timeout_s=ACTION_TIMEOUT_S
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
        target = tenant_path(tenant, "/ready") + (f"?wait={wait_s:.3f}" if wait_s > 0 else "")
        try:
            doc = client.call("GET", target, timeout_s=wait_s + READ_TIMEOUT_S).body
        except CtlError as exc:
            # A daemon that is starting or restarting has no control socket yet: wait for it.
            if exc.exit_code != ec.UNREACHABLE or remaining <= 0:
                raise
            time.sleep(min(RECONNECT_S, remaining))
            continue
        # Ask again only when the daemon's cap cut the wait short; an early not-ready answer
        # (a failed tenant, say) is final.
        if doc.get("ready") or remaining <= MAX_WAIT_PER_REQUEST_S:
            break
    if as_json:
        _emit_json(doc)
    else:
        click.echo(_describe(doc))
    ctx.exit(ec.OK if doc.get("ready") else ec.NOT_READY)


@cli.command(epilog=f"Example: {PROG} rebuild dev janus-pro-7b-dev")
@click.argument("tenant", shell_complete=_complete_tenants)
@click.argument("variant", required=False)
@json_option
@click.pass_context
def rebuild(ctx: click.Context, tenant: str, variant: str | None, as_json: bool) -> None:
    """Re-create TENANT's variants (or VARIANT) in place."""
    if variant is not None and not VARIANT_NAME.fullmatch(variant):
        raise CtlError(ec.USAGE, f"invalid variant name {variant[:40]!r}")
    target = tenant_path(tenant, "/rebuild") + (f"?variant={variant}" if variant else "")
    client = _client(ctx)
    progress: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if not as_json and sys.stderr.isatty():
        # Uploads, copies and pulls report bytes in the tenant's log; show them as bars.
        from supervisor.cli_progress import rebuild_progress

        progress = rebuild_progress(client, tenant_path(tenant, "/logs?lines=1&follow=1"))
    with progress:
        doc = client.call("POST", target, timeout_s=ACTION_TIMEOUT_S).body
    if as_json:
        _emit_json(doc)
    what = variant or "every variant"
    if doc.get("state") != "ready":
        reason = _shorten(doc.get("last_error"), 200)
        state = doc.get("state")
        raise CtlError(ec.FAILED, f"{tenant}: rebuild of {what} left it {state}: {reason}")
    if not as_json:
        click.echo(f"{tenant}: rebuilt {what} (ready, pid {doc.get('pid')})")


def format_plan(plan: dict[str, Any]) -> str:
    """The human ``reload`` output: one row per tenant, then the daemon-wide notes."""
    applied = bool(plan.get("applied"))
    header = ["TENANT", "ACTION", *(["RESULT"] if applied else []), "CHANGES"]
    rows = []
    for change in plan.get("changes", []):
        action = str(change.get("action")) + (" +rebind" if change.get("rebind") else "")
        result = ["ok" if change.get("ok") else "FAILED"] if applied else []
        changes = "; ".join(change.get("reasons") or []) or "-"
        if applied and not change.get("ok"):
            changes = f"{changes} => {change.get('result')}"
        rows.append([str(change.get("tenant")), action, *result, changes])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in [header, *rows]]
    if plan.get("dry_run"):
        lines.insert(0, f"dry run of {plan.get('source')}: nothing was changed")
    lines += [f"note: {note}" for note in plan.get("notes", [])]
    return "\n".join(lines)


@cli.command(epilog=f"Example: {PROG} reload --dry-run")
@click.option("--dry-run", is_flag=True, help="Print the plan without applying it.")
@json_option
@click.pass_context
def reload(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Re-read the config file; apply only what changed."""
    target = "/v1/reload" + ("?dry_run=1" if dry_run else "")
    reply = _client(ctx).call("POST", target, timeout_s=ACTION_TIMEOUT_S, accept=(200, 422))
    if reply.status == 422:
        for problem in reply.body.get("problems", []):
            click.echo(f"{PROG}: {problem}", err=True)
        raise CtlError(ec.FAILED, reply.error_text())
    if as_json:
        _emit_json(reply.body)
    else:
        click.echo(format_plan(reply.body))
    changes = reply.body.get("changes", [])
    failed = [str(c.get("tenant")) for c in changes if c.get("ok") is False]
    if failed or not reply.body.get("ok", True):
        where = "the JSON above" if as_json else "the table above"
        raise CtlError(ec.FAILED, f"reload: {len(failed)} of {len(changes)} tenants failed "
                                  f"({', '.join(failed)}); see {where}")


@cli.command(epilog=f"Example: {PROG} logs dev -n 50 -f")
@click.argument("tenant", shell_complete=_complete_tenants)
@click.option("-n", "--lines", type=click.IntRange(min=0), default=DEFAULT_LOG_LINES,
              help="How many recent lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@json_option
@click.pass_context
def logs(ctx: click.Context, tenant: str, lines: int, follow: bool, as_json: bool) -> None:
    """Print TENANT's recent output; -f keeps following."""
    client = _client(ctx)
    target = tenant_path(tenant, f"/logs?lines={lines}")
    if not follow:
        doc = client.call("GET", target).body
        if as_json:
            _emit_json(doc)
        else:
            for line in doc.get("lines", []):
                click.echo(line)
        return
    try:
        for record in client.stream(target + "&follow=1"):
            _echo_record(record, as_json)
    except KeyboardInterrupt:
        ctx.exit(ec.OK)  # Ctrl-C is how a follow ends
    click.echo(f"{PROG}: the daemon ended the stream of {tenant} (tenant removed, or the "
               "daemon is stopping)", err=True)


def _echo_record(record: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record))
    elif "dropped" in record:
        click.echo(f"{PROG}: {record['dropped']} lines dropped (reading too slowly)", err=True)
    else:
        click.echo(record.get("line", ""))


@cli.command("reopen-logs", epilog=f"Example (logrotate postrotate): {PROG} reopen-logs")
@json_option
@click.pass_context
def reopen_logs(ctx: click.Context, as_json: bool) -> None:
    """Reopen the tenant log files (after logrotate)."""
    doc = _client(ctx).call("POST", "/v1/logs/reopen").body
    if as_json:
        _emit_json(doc)
    else:
        for path in doc.get("reopened", []):
            click.echo(f"reopened {path}")


@cli.command()
@json_option
@click.pass_context
def version(ctx: click.Context, as_json: bool) -> None:
    """Print the versions of this tool and of the running daemon."""
    doc = _client(ctx).call("GET", "/v1/status").body
    if as_json:
        _emit_json({"cli": __version__, "daemon": doc.get("version"), "pid": doc.get("pid")})
        return
    click.echo(f"{PROG} {__version__}")
    click.echo(f"janus-supervisord {doc.get('version')} (pid {doc.get('pid')})")
