"""One tenant's life cycle: spawn, probe, provision, watch, restart, stop.

``Tenant.run`` is a long-lived task in the daemon's task group. Each turn of its loop runs one
*instance* of the server: spawn it, wait until ``GET /`` answers, build the variants, then probe
liveness until the process dies, stops answering, or an admin action cancels the instance. The
instance always ends with the server and its whole process group gone.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from supervisor.backend import Backend
from supervisor.config import Config, TenantConfig
from supervisor.errors import ProbeError, SpawnError
from supervisor.logs import TenantLog
from supervisor.ollama_api import OllamaAPI
from supervisor.privileges import Identity, build_environment, make_preexec
from supervisor.provision import VariantPlan, build_variant, ensure_base, provision_error
from supervisor.spawn import ServerProcess, spawn_server
from supervisor.status import ExitInfo, TenantState, TenantStatus, VariantState, VariantStatus

log = logging.getLogger(__name__)

_STARTUP_POLL_FIRST_S = 0.02
_STARTUP_POLL_MAX_S = 0.5


class Outcome(enum.Enum):
    """Why an instance of the server ended."""

    EXITED = "exited"
    UNHEALTHY = "liveness failed"
    START_TIMEOUT = "start timeout"
    SPAWN_FAILED = "spawn failed"
    STOP = "stopped by admin"
    RESTART = "restart requested"
    SHUTDOWN = "daemon shutdown"


@dataclass
class TenantSetup:
    """What the daemon resolved for a tenant before its first start."""

    identity: Identity
    home: Path
    backend_for: Callable[[], Backend]
    plans: Callable[[], list[VariantPlan]]
    preflight: Callable[[], Awaitable[None]] | None = None  # raises SpawnError


class Tenant:
    """Supervises one tenant's server. Public methods are called from the control plane."""

    def __init__(self, name: str, config: Config, setup: TenantSetup, output: TenantLog) -> None:
        self.name = name
        self.config = config
        self.setup = setup
        self.output = output
        self.state = TenantState.STOPPED
        self.since = time.time()
        self.server: ServerProcess | None = None
        self.backend: Backend | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.last_error: str | None = None
        self.next_start_at: float | None = None
        self.variants: dict[str, VariantStatus] = {}
        self._want_running = True
        self._pending: Outcome | None = None
        self._instance_scope: anyio.CancelScope | None = None
        self._changed = anyio.Event()
        self._wake = anyio.Event()
        self._done = anyio.Event()
        self._failures = 0

    @property
    def cfg(self) -> TenantConfig:
        return self.config.tenants[self.name]

    # -- state ---------------------------------------------------------------------------------
    def _set_state(self, state: TenantState, cause: str) -> None:
        if state is self.state:
            return
        level = logging.WARNING if state in (TenantState.BACKOFF, TenantState.DEGRADED,
                                             TenantState.FAILED) else logging.INFO
        log.log(level, "tenant %s: %s -> %s (%s)", self.name, self.state, state, cause,
                extra={"tenant": self.name})
        self.state = state
        self.since = time.time()
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def ready(self) -> bool:
        return self.state is TenantState.READY

    def describe_state(self) -> str:
        return str(self.state)

    def status(self) -> TenantStatus:
        server = self.server if self.server and self.server.running else None
        return TenantStatus(
            name=self.name,
            state=self.state,
            ready=self.ready,
            pid=server.pid if server else None,
            user=self.setup.identity.user,
            uid=self.setup.identity.uid,
            socket=str(self.cfg.socket.path),
            backend=self.backend.address if self.backend else None,
            uptime_s=round(time.time() - server.started_at, 3) if server else None,
            since=self.since,
            restarts=self.restarts,
            last_exit=self.last_exit,
            last_error=self.last_error,
            next_start_at=self.next_start_at,
            variants=list(self.variants.values()),
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the tenant to be ready; returns whether it is."""
        with anyio.move_on_after(timeout_s):
            while not self.ready:
                await self._changed.wait()
        return self.ready

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def connect_backend(self) -> anyio.abc.SocketStream:
        if self.backend is None:
            raise OSError(f"tenant {self.name} has no backend yet")
        return await self.backend.connect()

    # -- admin actions -------------------------------------------------------------------------
    def _interrupt(self, outcome: Outcome) -> None:
        self._pending = outcome
        if self._instance_scope is not None:
            self._instance_scope.cancel()
        self._wake.set()

    async def restart(self) -> None:
        """Stop the current server (if any) and start a new one; returns once it is spawned."""
        self._want_running = True
        old = self.server.pid if self.server and self.server.running else None
        self._interrupt(Outcome.RESTART)
        await self.wait_for(lambda: self.server is not None and self.server.running
                            and self.server.pid != old or self.state is TenantState.FAILED)

    async def stop(self) -> None:
        """Stop the server and keep it stopped; returns when no process of it is left."""
        self._want_running = False
        self._interrupt(Outcome.STOP)
        await self.wait_for(lambda: self.state is TenantState.STOPPED)

    async def start(self) -> None:
        """Start a stopped tenant; returns once its server is spawned (or failed to spawn)."""
        if self.state is not TenantState.STOPPED:
            return
        self._want_running = True
        self._wake.set()
        await self.wait_for(lambda: self.state is not TenantState.STOPPED)

    def apply_config(self, config: Config) -> None:
        """Take a new config whose launch settings for this tenant are unchanged.

        Supervisor-side knobs (probe periods, backoff, timeouts) apply from the next use on;
        the running server is not touched.
        """
        self.config = config

    async def rebuild(self, variant: str | None = None) -> None:
        """Re-run provisioning on the running server (all variants, or only ``variant``).

        Raises ``SpawnError`` when the tenant has no running server to build on.
        """
        if self.server is None or not self.server.running or self.state not in (
            TenantState.READY, TenantState.DEGRADED):
            raise SpawnError(f"tenant {self.name} is {self.state}; rebuild needs a running "
                             "server (ready or degraded)")
        await self._provision(OllamaAPI(self.connect_backend), only=variant, force=True)

    async def shutdown(self) -> None:
        """Stop for good (daemon exit); returns when the run loop has ended."""
        self._want_running = False
        self._interrupt(Outcome.SHUTDOWN)
        await self._done.wait()

    # -- supervision loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """The tenant's supervision loop; ends after ``shutdown``."""
        try:
            while self._pending is not Outcome.SHUTDOWN:
                if not self._want_running:
                    self._set_state(TenantState.STOPPED, self._pending.value if self._pending
                                    else "not started")
                    await self._sleep_until_woken(None)
                    continue
                self._pending = None
                outcome = await self._run_instance()
                await self._after(outcome)
        finally:
            self._set_state(TenantState.STOPPED, "daemon shutdown")
            self._done.set()

    async def _sleep_until_woken(self, delay_s: float | None) -> None:
        self._wake = anyio.Event()
        with anyio.move_on_after(delay_s if delay_s is not None else float("inf")):
            await self._wake.wait()

    async def _after(self, outcome: Outcome) -> None:
        if outcome in (Outcome.STOP, Outcome.SHUTDOWN):
            return
        self.restarts += 1
        if outcome is Outcome.RESTART:
            return
        self._failures += 1
        delay = min(self.cfg.backoff_initial_s * 2 ** (self._failures - 1), self.cfg.backoff_max_s)
        self.next_start_at = time.time() + delay
        self._set_state(TenantState.BACKOFF, f"{outcome.value}; next start in {delay:g}s")
        await self._sleep_until_woken(delay)
        self.next_start_at = None

    async def _run_instance(self) -> Outcome:
        self._set_state(TenantState.STARTING, "spawning server")
        try:
            server = await self._spawn()
        except SpawnError as exc:
            self.last_error = str(exc)
            log.error("tenant %s: %s", self.name, exc, extra={"tenant": self.name})
            return self._pending or Outcome.SPAWN_FAILED
        outcome = Outcome.EXITED
        with anyio.CancelScope() as scope:
            self._instance_scope = scope
            if self._pending is not None:
                scope.cancel()
            outcome = await self._supervise(server)
        self._instance_scope = None
        if self._pending is not None:
            outcome = self._pending
        await self._reap(server, outcome)
        return outcome

    async def _spawn(self) -> ServerProcess:
        setup = self.setup
        self.backend = setup.backend_for()
        env = dict(self.config.ollama.env)
        env.update(self.cfg.env)
        env["OLLAMA_HOST"] = self.backend.ollama_host
        env["OLLAMA_MODELS"] = str(self.cfg.models_dir)
        server = await spawn_server(
            self.config.ollama.binary,
            ["serve"],
            env=build_environment(setup.identity, setup.home, env),
            cwd=setup.home,
            preexec=make_preexec(setup.identity, nofile=self.cfg.nofile),
            sink=self.output.write,
        )
        self.backend.attach(server.pid)
        self.server = server
        log.info("tenant %s: started server pid %d as %s on %s", self.name, server.pid,
                 setup.identity.user, self.backend.address, extra={"tenant": self.name})
        self._changed.set()
        self._changed = anyio.Event()
        return server

    async def _supervise(self, server: ServerProcess) -> Outcome:
        """Bring the server up and watch it; returns why the instance should end."""
        outcome = Outcome.EXITED
        async with anyio.create_task_group() as tg:

            async def watch_exit() -> None:
                await server.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_exit)
            api = OllamaAPI(self.connect_backend)
            try:
                await self._wait_serving(api, server)
            except ProbeError as exc:
                self.last_error = str(exc)
                outcome = Outcome.START_TIMEOUT
                tg.cancel_scope.cancel()
                return outcome
            await self._provision(api)
            outcome = await self._watch_liveness(api)
            tg.cancel_scope.cancel()
        return outcome

    async def _wait_serving(self, api: OllamaAPI, server: ServerProcess) -> None:
        """Poll ``GET /`` fast, backing off, until 200; bounded by ``start_timeout_s``."""
        delay = _STARTUP_POLL_FIRST_S
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            with anyio.move_on_after(max(self.cfg.probe_timeout_s, delay)):
                try:
                    if await api.is_running():
                        return
                except ProbeError:
                    pass
            await anyio.sleep(delay)
            delay = min(delay * 1.5, _STARTUP_POLL_MAX_S)
        raise ProbeError(f"tenant {self.name}: GET / did not answer 200 within "
                         f"{self.cfg.start_timeout_s:g}s (start_timeout_s); see its log")

    async def _provision(self, api: OllamaAPI, *, only: str | None = None,
                         force: bool = False) -> None:
        self._set_state(TenantState.PROVISIONING, "rebuild requested" if force
                        else "server answers GET /")
        plans = self.setup.plans()
        old = self.variants
        self.variants = {p.name: old.get(p.name) or VariantStatus(name=p.name) for p in plans}
        own = {p.name.lower() for p in plans} | {f"{p.name.lower()}:latest" for p in plans}
        failed = [f"variant {name}: {v.error}" for name, v in self.variants.items()
                  if only is not None and name != only and v.state is VariantState.FAILED]
        for plan in plans:
            if only is not None and plan.name != only:
                continue
            status = self.variants[plan.name]
            status.state = VariantState.BUILDING
            try:
                base = plan.request.get("from")
                if base and str(base).lower() not in own:
                    await ensure_base(api, str(base), self.config.base_models.get(str(base)),
                                      self.output.note)
                await build_variant(api, plan, self.output.note, force=force)
            except Exception as exc:  # noqa: BLE001 - one variant's failure must not stop others
                status.state, status.error = VariantState.FAILED, provision_error(exc)
                failed.append(f"variant {plan.name}: {status.error}")
                self.output.note(f"variant {plan.name} failed: {status.error}")
                continue
            status.state, status.error = VariantState.READY, None
        if failed:
            self.last_error = "; ".join(failed)
            self._set_state(TenantState.DEGRADED, self.last_error)
        else:
            self.last_error = None
            self._failures = 0
            self._set_state(TenantState.READY, "server answers and every variant is built")

    async def _watch_liveness(self, api: OllamaAPI) -> Outcome:
        failures = 0
        while True:
            await anyio.sleep(self.cfg.probe_period_s)
            reason = None
            with anyio.move_on_after(self.cfg.probe_timeout_s) as timeout:
                try:
                    if not await api.is_running():
                        reason = "GET / did not answer 200"
                except ProbeError as exc:
                    reason = str(exc)
            if timeout.cancelled_caught:
                reason = f"timeout after {self.cfg.probe_timeout_s:g}s"
            if reason is None:
                failures = 0
                continue
            failures += 1
            threshold = self.cfg.probe_failure_threshold
            log.warning("tenant %s: liveness failed %d/%d (%s)%s", self.name, failures, threshold,
                        reason, "; restarting" if failures >= threshold else "",
                        extra={"tenant": self.name})
            if failures >= threshold:
                self.last_error = f"liveness failed {failures}/{threshold} ({reason})"
                return Outcome.UNHEALTHY

    async def _reap(self, server: ServerProcess, outcome: Outcome) -> None:
        """End the server and its process group, whatever state they are in."""
        with anyio.CancelScope(shield=True):
            if server.running:
                self._set_state(TenantState.STOPPING, outcome.value)
            result = await server.stop(self.cfg.stop_timeout_s)
        self.last_exit = result.exit
        if outcome is Outcome.EXITED:
            self.last_error = f"server exited unexpectedly ({result.exit.describe()})"
            log.error("tenant %s: server pid %d %s", self.name, server.pid,
                      result.exit.describe(), extra={"tenant": self.name})
        elif result.killed:
            log.warning("tenant %s: server pid %d killed after stop timeout %gs", self.name,
                        server.pid, self.cfg.stop_timeout_s, extra={"tenant": self.name})
        self._changed.set()
        self._changed = anyio.Event()
