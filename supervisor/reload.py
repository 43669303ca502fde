"""Reload: compare the running config with a new one and apply only the difference.

``plan_reload`` is pure: it sorts every tenant into one action.

=========  ======================================================  ============================
action     when                                                    what happens
=========  ======================================================  ============================
start      the tenant is new                                       prepared, bound, started
stop       the tenant is gone from the file                        stopped and forgotten; its
                                                                   store and log stay on disk
restart    a launch setting changed (``LAUNCH_FIELDS``,            new server with the new
           ``ollama.binary``, ``ollama.env``, unknown fields)      settings
rebuild    only variant definitions changed (the ``/api/create``   changed variants re-created
           request differs, so an edited Modelfile counts)         on the running server
apply      only supervisor-side knobs changed (``KNOB_FIELDS``,    taken in place; same pid
           log settings)
keep       nothing changed                                         untouched; same pid
=========  ======================================================  ============================

A changed ``socket`` re-binds the tenant's endpoint (``rebind``) whatever the action: the server
keeps running, connections open on the old socket are cut. ``apply_plan`` carries a plan out
through a ``ReloadTarget`` (the daemon), every tenant concurrently, and records each result.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
from pydantic import BaseModel

from supervisor.config import Config, TenantConfig, load_config
from supervisor.errors import ConfigError, SupervisorError
from supervisor.modelfile import variant_request
from supervisor.syscheck import check_system

log = logging.getLogger(__name__)

LAUNCH_FIELDS = frozenset(
    {"user", "create_user", "models_dir", "home", "network", "port", "env", "nofile"}
)
KNOB_FIELDS = frozenset(
    {
        "start_timeout_s",
        "stop_timeout_s",
        "probe_period_s",
        "probe_timeout_s",
        "probe_failure_threshold",
        "backoff_initial_s",
        "backoff_max_s",
        "connect_wait_s",
        "restart",
        "healthy_reset_s",
        "restart_budget",
        "restart_window_s",
        "deep_probe_every",
        "drain_timeout_s",
        "policy",  # the relay reads it at each request
    }
)
LOG_FIELDS = ("log_dir", "log_max_bytes", "log_backups")
CONTROL_IN_PLACE = ("mode", "group", "admin_group", "read_group")
CONTROL_NEEDS_RESTART = ("socket", "metrics_address")

Requests = Mapping[str, Mapping[str, Any]]  # variant name -> its /api/create request


class Action(str, enum.Enum):
    """What a reload does to one tenant; the same words in logs, JSON and CLI output."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    REBUILD = "rebuild"
    APPLY = "apply"
    KEEP = "keep"

    def __str__(self) -> str:
        return self.value


class TenantChange(BaseModel):
    """One tenant's part of a reload; ``result`` and ``ok`` are filled in once applied."""

    tenant: str
    action: Action
    reasons: list[str] = []
    variants: list[str] = []  # variants to re-create (action rebuild)
    rebind: bool = False  # the endpoint socket changed: re-bound, the server keeps running
    result: str | None = None
    ok: bool | None = None


class ReloadPlan(BaseModel):
    """Answer of ``POST /v1/reload``: the plan, and after applying it, how each step went."""

    source: str
    dry_run: bool
    changes: list[TenantChange]
    notes: list[str] = []
    applied: bool = False
    ok: bool = True


# ---- planning ---------------------------------------------------------------------------


def load_new_config(path: Path | None, *, as_root: bool) -> Config:
    """Load ``path`` and check it against this machine, as ``--check`` does.

    Raises ``ConfigError`` with every problem (file, line, field, fix) when the file is invalid
    or names users, groups, binaries or files this machine lacks; ``SupervisorError`` when the
    daemon was not started from a file.
    """
    if path is None:
        raise SupervisorError("the daemon was not started from a config file; nothing to reload")
    config = load_config(path)
    if problems := check_system(config, as_root=as_root):
        raise ConfigError(problems)
    return config


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)) or value is None:
        return "changed" if value is not None else "unset"
    return repr(str(value)) if hasattr(value, "__fspath__") else repr(value)


def _field_diffs(old: TenantConfig, new: TenantConfig, fields: frozenset[str]) -> list[str]:
    reasons = []
    for name in sorted(fields & set(type(new).model_fields)):
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if isinstance(after, (dict, list)) or isinstance(before, (dict, list)):
            reasons.append(f"{name} changed")
        else:
            reasons.append(f"{name} {_shown(before)} -> {_shown(after)}")
    return reasons


def _socket_diffs(old: TenantConfig, new: TenantConfig) -> list[str]:
    diffs = []
    for key in ("path", "owner", "group", "mode"):
        before, after = getattr(old.socket, key), getattr(new.socket, key)
        if before != after:
            shown = (f"{before:04o}", f"{after:04o}") if key == "mode" else (before, after)
            diffs.append(f"socket.{key} {shown[0]} -> {shown[1]}")
    return diffs


def wanted_requests(config: Config, name: str) -> dict[str, dict[str, Any]]:
    """Every variant's ``/api/create`` request for tenant ``name`` as the files say now.

    Raises ``ModelfileError`` (a ``ConfigError``) when a Modelfile or adapter is unreadable.
    """
    return {
        v.name: variant_request(config, name, v).request for v in config.tenants[name].variants
    }


def _variant_diffs(built: Requests, wanted: Requests) -> tuple[list[str], list[str]]:
    """(variants to re-create, reasons) comparing what was last built with what is wanted."""
    rebuild, reasons = [], []
    for name, request in wanted.items():
        before = built.get(name)
        if before is None:
            rebuild.append(name)
            reasons.append(f"variant {name} added")
        elif dict(before) != dict(request):
            keys = sorted(k for k in set(before) | set(request) if before.get(k) != request.get(k))
            rebuild.append(name)
            reasons.append(f"variant {name} changed ({', '.join(keys)})")
    for name in built:
        if name not in wanted:
            reasons.append(f"variant {name} left the config (kept in the store; `ollama rm` it)")
    return rebuild, reasons


def _global_launch(old: Config, new: Config) -> list[str]:
    reasons = []
    if old.ollama.binary != new.ollama.binary:
        reasons.append(f"ollama.binary {str(old.ollama.binary)!r} -> {str(new.ollama.binary)!r}")
    if old.ollama.env != new.ollama.env:
        reasons.append("ollama.env changed")
    return reasons


def _log_diffs(old: Config, new: Config) -> list[str]:
    return [
        f"{key} {_shown(getattr(old, key))} -> {_shown(getattr(new, key))}"
        for key in LOG_FIELDS
        if getattr(old, key) != getattr(new, key)
    ]


def plan_tenant(
    name: str, old: Config, new: Config, built: Requests | None
) -> TenantChange:
    """The change for a tenant present in both configs.

    ``built`` is what the tenant last built (None: unknown, use the old config's requests).
    """
    before, after = old.tenants[name], new.tenants[name]
    known = LAUNCH_FIELDS | KNOB_FIELDS | {"socket", "variants"}
    unknown = frozenset(type(after).model_fields) - known
    launch = _global_launch(old, new) + _field_diffs(before, after, LAUNCH_FIELDS)
    launch += [f"{r} (unclassified setting: restart to be safe)"
               for r in _field_diffs(before, after, unknown)]
    endpoint = _socket_diffs(before, after)
    if before.user != after.user and not (after.socket.owner and after.socket.group):
        endpoint.append("socket owner follows the new user")
    knobs = _field_diffs(before, after, KNOB_FIELDS) + _log_diffs(old, new)
    if built is None:
        built = wanted_requests(old, name)
    rebuild, variant_reasons = _variant_diffs(built, wanted_requests(new, name))
    change = TenantChange(tenant=name, action=Action.KEEP, rebind=bool(endpoint))
    if launch:
        change.action, change.reasons = Action.RESTART, launch + variant_reasons + knobs
    elif rebuild:
        change.action, change.variants = Action.REBUILD, rebuild
        change.reasons = variant_reasons + knobs
    elif knobs or variant_reasons:
        change.action, change.reasons = Action.APPLY, knobs + variant_reasons
    change.reasons = endpoint + change.reasons
    return change


def _daemon_notes(old: Config, new: Config) -> list[str]:
    notes = []
    for key in CONTROL_NEEDS_RESTART:
        if getattr(old.control, key) != getattr(new.control, key):
            notes.append(f"control.{key} changed: takes effect when the daemon restarts "
                         "(systemctl restart janus-supervisord)")
    for key in CONTROL_IN_PLACE:
        if getattr(old.control, key) != getattr(new.control, key):
            notes.append(f"control.{key} changed: applied now")
    if old.state_dir != new.state_dir:
        notes.append("state_dir changed: takes effect when the daemon restarts")
    if old.ollama.port_range != new.ollama.port_range:
        notes.append("ollama.port_range changed: used from each tenant's next start on")
    if old.base_models != new.base_models:
        notes.append("base_models changed: used when a store lacks a base model")
    return notes


def plan_reload(
    old: Config, new: Config, built: Mapping[str, Requests | None], *, dry_run: bool = False
) -> ReloadPlan:
    """Sort every tenant of ``old`` and ``new`` into one action; nothing is changed.

    ``built`` maps a running tenant to the variant requests it last built. Raises
    ``ConfigError`` when a variant's Modelfile cannot be read now.
    """
    changes = []
    for name in new.tenants:
        if name not in old.tenants:
            changes.append(TenantChange(tenant=name, action=Action.START, reasons=["new tenant"]))
        else:
            changes.append(plan_tenant(name, old, new, built.get(name)))
    for name in old.tenants:
        if name not in new.tenants:
            reason = "left the config; its store and log files stay on disk"
            changes.append(TenantChange(tenant=name, action=Action.STOP, reasons=[reason]))
    source = str(new.source or old.source or "<config>")
    return ReloadPlan(source=source, dry_run=dry_run, changes=changes,
                      notes=_daemon_notes(old, new))


# ---- applying ---------------------------------------------------------------------------


class ReloadTarget(Protocol):
    """What ``apply_plan`` needs from the daemon. Each method raises ``SupervisorError``."""

    async def remove_tenant(self, name: str) -> str: ...

    async def add_tenant(self, name: str) -> str: ...

    async def relaunch_tenant(self, name: str) -> str: ...

    async def rebuild_variants(self, name: str, variants: list[str]) -> str: ...

    async def rebind_tenant(self, name: str) -> str: ...

    async def revive_tenant(self, name: str) -> str | None:
        """Start a ``failed`` tenant again (a reload that changes it ends ``failed``)."""
        ...

    def take_config(self, config: Config) -> None: ...


async def _apply_change(target: ReloadTarget, change: TenantChange) -> None:
    steps: list[str] = []
    try:
        if change.rebind:
            steps.append(await target.rebind_tenant(change.tenant))
        if change.action is Action.START:
            steps.append(await target.add_tenant(change.tenant))
        elif change.action is Action.RESTART:
            steps.append(await target.relaunch_tenant(change.tenant))
        elif change.action is Action.REBUILD:
            steps.append(await target.rebuild_variants(change.tenant, change.variants))
        elif change.action is Action.APPLY:
            steps.append("applied in place")
        if change.action in (Action.REBUILD, Action.APPLY) or change.rebind:
            if (revived := await target.revive_tenant(change.tenant)) is not None:
                steps.append(revived)
        elif change.action is Action.KEEP and not change.rebind:
            steps.append("untouched")
    except SupervisorError as exc:
        change.ok, change.result = False, "; ".join([*steps, str(exc)])
        log.error("reload: tenant %s: %s failed: %s", change.tenant, change.action, exc,
                  extra={"tenant": change.tenant})
        return
    change.ok, change.result = True, "; ".join(steps)
    log.info("reload: tenant %s: %s (%s): %s", change.tenant, change.action,
             "; ".join(change.reasons) or "no change", change.result,
             extra={"tenant": change.tenant})


async def apply_plan(target: ReloadTarget, plan: ReloadPlan, new: Config) -> ReloadPlan:
    """Carry ``plan`` out: removed tenants first, then the new config, then the rest at once."""
    removed = [c for c in plan.changes if c.action is Action.STOP]
    for change in removed:
        try:
            change.result, change.ok = await target.remove_tenant(change.tenant), True
        except SupervisorError as exc:
            change.result, change.ok = str(exc), False
    target.take_config(new)
    async with anyio.create_task_group() as tg:
        for change in plan.changes:
            if change.action is not Action.STOP:
                tg.start_soon(_apply_change, target, change)
    plan.applied = True
    plan.ok = all(c.ok for c in plan.changes)
    return plan
