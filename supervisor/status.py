"""Tenant life-cycle states and the status documents the control plane returns.

These pydantic models are the wire shape of ``GET /v1/status`` and ``GET /v1/tenants/{name}``;
the CLI reads the same field names from the JSON.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel


class TenantState(str, enum.Enum):
    """Where a tenant is in its life cycle; the same words appear in logs, JSON and CLI."""

    STOPPED = "stopped"
    STARTING = "starting"
    PROVISIONING = "provisioning"
    READY = "ready"
    DEGRADED = "degraded"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class VariantState(str, enum.Enum):
    """Build state of one variant in a tenant's store."""

    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class VariantStatus(BaseModel):
    name: str
    state: VariantState = VariantState.PENDING
    error: str | None = None


class ExitInfo(BaseModel):
    """How a server process ended: ``code`` for a normal exit, ``signal`` name if killed."""

    code: int | None = None
    signal: str | None = None
    at: float | None = None
    killed_after_timeout: bool = False

    def describe(self) -> str:
        text = f"killed by {self.signal}" if self.signal else f"exit code {self.code}"
        if self.killed_after_timeout:
            text += "; killed after stop timeout"
        return text


class TenantStatus(BaseModel):
    """Everything the control plane reports about one tenant."""

    name: str
    state: TenantState
    ready: bool
    pid: int | None = None
    user: str
    uid: int | None = None
    socket: str
    backend: str | None = None
    uptime_s: float | None = None
    since: float
    restarts: int = 0
    last_exit: ExitInfo | None = None
    last_error: str | None = None
    next_start_at: float | None = None
    variants: list[VariantStatus] = []


class DaemonStatus(BaseModel):
    """Answer of ``GET /v1/status``."""

    version: str
    pid: int
    tenants: list[TenantStatus]
