"""Follow every tenant's state for systemd and metrics.

One ``StateWatch.follow`` task per tenant wakes on each state change. The watch keeps which
tenants have had their first start (left ``stopped``/``starting`` once), sends systemd
``READY=1`` when all have, ``STATUS=`` with a count per state whenever that changes, and records
how long each server took from spawn to ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from supervisor.status import TenantState
from supervisor.systemd import Notifier, state_summary
from supervisor.tenant import Tenant

log = logging.getLogger(__name__)

_NOT_STARTED = (TenantState.STOPPED, TenantState.STARTING)


async def _state_change(tenant: Tenant, state: TenantState) -> None:
    await tenant.wait_for(lambda: tenant.state is not state)


class StateWatch:
    """What the daemon tells systemd, from the tenants' states; see the module docstring."""

    def __init__(self, notifier: Notifier, tenants: Callable[[], Mapping[str, Tenant]]) -> None:
        self.notifier = notifier
        self.started: set[str] = set()
        self.time_to_ready: dict[str, float] = {}
        self.ready_sent = False
        self._tenants = tenants
        self._timed_pid: dict[str, int] = {}
        self._reloading = False
        self._last_status: str | None = None

    async def follow(self, tenant: Tenant) -> None:
        """Note every state ``tenant`` is seen in; runs until cancelled."""
        while True:
            self.observe(tenant)
            await _state_change(tenant, tenant.state)

    def observe(self, tenant: Tenant) -> None:
        if tenant.state not in _NOT_STARTED:
            self.started.add(tenant.name)
        if tenant.state is TenantState.READY:
            self._time_ready(tenant)
        self.report()

    def _time_ready(self, tenant: Tenant) -> None:
        server = tenant.server
        if server is None or self._timed_pid.get(tenant.name) == server.pid:
            return  # ready again after a rebuild: not a start
        self._timed_pid[tenant.name] = server.pid
        self.time_to_ready[tenant.name] = round(time.time() - server.started_at, 3)

    def forget(self, name: str) -> None:
        """A tenant left the config."""
        self.started.discard(name)
        self.time_to_ready.pop(name, None)
        self._timed_pid.pop(name, None)
        self.report()

    def report(self) -> None:
        """``READY=1`` once every tenant has started, else ``STATUS=`` when it changed."""
        tenants = self._tenants()
        status = state_summary([str(t.state) for t in tenants.values()])
        if not self.ready_sent and not self._reloading and set(tenants) <= self.started:
            self.ready_sent = True
            self.notifier.ready(status)
            log.info("janus-supervisord: every tenant has had its first start (%s)", status)
        elif status != self._last_status:
            self.notifier.status(status)
        self._last_status = status

    def reload_started(self) -> None:
        self._reloading = True
        self.notifier.reloading()

    def reload_done(self) -> None:
        self._reloading = False
        if self.ready_sent:
            self._last_status = state_summary([str(t.state) for t in self._tenants().values()])
            self.notifier.ready(self._last_status)
        else:
            self.report()
