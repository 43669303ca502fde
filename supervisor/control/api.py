"""What the control server needs from the daemon.

The daemon implements ``SupervisorAPI``; the control server only calls it, after checking the
caller's rights, so an implementation never sees an unauthorised request or an invalid name.
"""

from __future__ import annotations

from typing import Protocol

from supervisor.status import DaemonStatus, TenantStatus


class SupervisorAPI(Protocol):
    """The daemon as seen by the control server.

    Tenant methods raise ``KeyError`` for an unknown tenant (the server answers 404). The
    actions raise a ``SupervisorError`` whose message tells the operator what went wrong and
    what to do when they refuse or fail (the server answers 409 with that message); any other
    exception is a bug (500, logged with its traceback).
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
