"""What the control server needs from the daemon.

The daemon implements ``SupervisorAPI``; the control server only calls it, after checking the
caller's rights, so an implementation never sees an unauthorised request or an invalid name.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from pydantic import BaseModel

from supervisor.reload import ReloadPlan
from supervisor.status import DaemonStatus, TenantStatus


class LogLines(BaseModel):
    """Answer of ``GET /v1/tenants/{name}/logs`` without ``follow``."""

    tenant: str
    lines: list[str]


class LogStream(Protocol):
    """New log lines of one tenant for one follower (``logs?follow=1``)."""

    dropped: int  # lines lost because the client read too slowly

    async def next_lines(self) -> list[str] | None:
        """Wait for lines and return them; None once the stream has ended."""
        ...

    def close(self) -> None:
        """End the stream (the daemon or its control server is going away)."""
        ...


class SupervisorAPI(Protocol):
    """The daemon as seen by the control server.

    Tenant methods raise ``KeyError`` for an unknown tenant (the server answers 404). The
    actions raise a ``SupervisorError`` whose message tells the operator what went wrong and
    what to do when they refuse or fail (the server answers 409 with that message); any other
    exception is a bug (500, logged with its traceback). When a client leaves, its request's
    task is cancelled: an action must then either finish anyway (reload, rebuild run on in
    the daemon) or leave the tenant in a consistent state.
    """

    def daemon_status(self) -> DaemonStatus:
        """Version, pid and the status of every tenant."""
        ...

    def tenant_names(self) -> list[str]:
        """Names of the configured tenants."""
        ...

    def tenant_status(self, name: str) -> TenantStatus:
        """Current status of one tenant."""
        ...

    def tenant_uid(self, name: str) -> int | None:
        """Uid the tenant's server runs as (its user may read the tenant), None if unknown."""
        ...

    async def start_tenant(self, name: str) -> TenantStatus:
        """Start a stopped or failed tenant; return once its server is spawned."""
        ...

    async def stop_tenant(self, name: str) -> TenantStatus:
        """Stop a tenant; return once no process of it is left."""
        ...

    async def restart_tenant(self, name: str) -> TenantStatus:
        """Stop then start a tenant; return once the new server is spawned."""
        ...

    async def wait_ready(self, name: str, timeout_s: float) -> TenantStatus:
        """Return the tenant's status as soon as it is ready, or after ``timeout_s`` seconds."""
        ...

    async def rebuild_tenant(self, name: str, variant: str | None) -> TenantStatus:
        """Re-create the tenant's variants (or only ``variant``) on its running server.

        Raises ``LookupError`` (not ``KeyError``) for a variant the tenant does not have.
        """
        ...

    async def reload(self, dry_run: bool) -> ReloadPlan:
        """Re-read the config file and apply the difference (or only plan it).

        Raises ``ConfigError`` listing every problem when the new file is invalid; nothing
        is changed then.
        """
        ...

    def tenant_logs(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the tenant's output kept in memory."""
        ...

    def follow_logs(self, name: str, lines: int) -> AbstractContextManager[LogStream]:
        """A stream of the last ``lines`` lines, then every new one, while the context lasts."""
        ...

    def reopen_logs(self) -> list[str]:
        """Reopen every tenant's log file (after logrotate); returns the paths."""
        ...
