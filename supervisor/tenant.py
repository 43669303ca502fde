"""One tenant's life cycle: spawn, probe, provision, watch, restart, stop.

``Tenant.run`` is a long-lived task in the daemon's task group. Each turn of its loop runs one
*instance* of the server: spawn it, wait until ``GET /`` answers, build the variants, then probe
liveness until the process dies, stops answering, or an admin action cancels the instance. The
instance always ends with the server and its whole process group gone.
"""

from __future__ import annotations

import collections
import enum
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from supervisor.backend import Backend
from supervisor.config import Config, TenantConfig
from supervisor.errors import ProbeError, SpawnError
from supervisor.leftovers import ProcessTracker, end_leftovers
from supervisor.logs import TenantLog
from supervisor.ollama_api import OllamaAPI
from supervisor.preflight import AccessCheck, PreflightError
from supervisor.privileges import Identity, Launch, build_environment
from supervisor.provision import (
    TenantStore,
    VariantPlan,
    build_variant,
    ensure_base,
    provision_error,
    uses_shared_store,
)
from supervisor.spawn import ServerProcess, spawn_server
from supervisor.status import ExitInfo, TenantState, TenantStatus, VariantState, VariantStatus

log = logging.getLogger(__name__)

_STARTUP_POLL_FIRST_S = 0.02
_STARTUP_POLL_MAX_S = 0.5
# One early look for descendants after ready, so that runners started during the start-up are
# on record well before the first probe period ends (a daemon killed meanwhile misses them).
_EARLY_OBSERVE_S = 1.0


class Outcome(enum.Enum):
    """Why an instance of the server ended."""

    EXITED = "exited"
    UNHEALTHY = "liveness failed"
    START_TIMEOUT = "start timeout"
    SPAWN_FAILED = "spawn failed"
    PREFLIGHT_FAILED = "preflight failed"
    INTERNAL_ERROR = "internal error"
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
    # Prepares the start and returns the checks to ask as the user; raises SpawnError.
    preflight: Callable[[], Awaitable[AccessCheck]] | None = None
    in_flight: Callable[[], int] | None = None  # relayed requests not yet answered


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
        self._failed = False
        self._healthy_for = 0.0
        self._auto_starts: collections.deque[float] = collections.deque()
        self._ready_since: float | None = None
        self._probes = 0
        self.restarts_by_cause: collections.Counter[str] = collections.Counter()
        self.probe_failures = 0
        self.record = config.state_dir / "run" / f"{name}.json"

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
        self._ready_since = self.since if state is TenantState.READY else None
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

    async def connect_backend_socket(self) -> socket.socket:
        """A connected non-blocking socket to the server, for the relay's transports."""
        if self.backend is None:
            raise OSError(f"tenant {self.name} has no backend yet")
        return await self.backend.connect_socket()

    # -- admin actions -------------------------------------------------------------------------
    def _interrupt(self, outcome: Outcome) -> None:
        self._pending = outcome
        if self._instance_scope is not None:
            self._instance_scope.cancel()
        self._wake.set()

    async def restart(self) -> None:
        """Stop the current server (if any) and start a new one; returns once it is spawned."""
        self._want_running = True
        self._clear_failure()
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
        """Start a stopped or failed tenant; returns once it has left that state."""
        if self.state not in (TenantState.STOPPED, TenantState.FAILED):
            return
        before = self.state
        self._want_running = True
        self._clear_failure()
        self._wake.set()
        await self.wait_for(lambda: self.state is not before)

    def _clear_failure(self) -> None:
        """An admin start/restart (or a reload that changes the tenant) leaves ``failed``."""
        self._failed = False
        self._failures = 0
        self._auto_starts.clear()

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

    async def _drain(self) -> None:
        """While new connections wait (not ready), let relayed requests finish, bounded."""
        in_flight = self.setup.in_flight
        if in_flight is None or not in_flight():
            return
        with anyio.move_on_after(self.cfg.drain_timeout_s):
            while in_flight():
                await anyio.sleep(0.02)
        if in_flight():
            log.warning("tenant %s: %d requests still running after drain_timeout_s %gs; "
                        "stopping anyway", self.name, in_flight(), self.cfg.drain_timeout_s,
                        extra={"tenant": self.name})

    # -- supervision loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """The tenant's supervision loop; ends after ``shutdown``."""
        try:
            # Before the first spawn: a killed daemon's runners must be gone before new ones
            # start (the GPU memory they hold, and never two servers for one tenant).
            await anyio.to_thread.run_sync(end_leftovers, self.name, self.record,
                                           self.cfg.models_dir)
            while self._pending is not Outcome.SHUTDOWN:
                if self._failed and self._want_running:
                    await self._sleep_until_woken(None)
                    continue
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
        """Apply the restart policy and budget to how the last instance ended."""
        if outcome in (Outcome.STOP, Outcome.SHUTDOWN, Outcome.PREFLIGHT_FAILED):
            return
        self.restarts_by_cause[outcome.value] += 1
        if outcome is Outcome.RESTART:
            self.restarts += 1
            return
        clean_exit = outcome is Outcome.EXITED and self.last_exit is not None and (
            self.last_exit.code == 0)
        policy = self.cfg.restart
        if policy == "never" or (policy == "on-failure" and clean_exit):
            self._want_running = False
            self._set_state(TenantState.STOPPED, f"{outcome.value}; restart policy {policy}")
            return
        if not self._within_budget():
            return
        self.restarts += 1
        delay = self._next_delay()
        if delay > 0:
            self.next_start_at = time.time() + delay
            self._set_state(TenantState.BACKOFF, f"{outcome.value}; next start in {delay:g}s")
            await self._sleep_until_woken(delay)
            self.next_start_at = None

    def _next_delay(self) -> float:
        """0 after a healthy run, then backoff_initial_s doubling up to backoff_max_s."""
        if self._healthy_for >= self.cfg.healthy_reset_s:
            self._failures = 0
            return 0.0
        self._failures += 1
        return float(min(self.cfg.backoff_initial_s * 2 ** (self._failures - 1),
                         self.cfg.backoff_max_s))

    def _within_budget(self) -> bool:
        """Count an automatic start; past the budget the tenant becomes ``failed``."""
        now = time.monotonic()
        window = self.cfg.restart_window_s
        while self._auto_starts and now - self._auto_starts[0] > window:
            self._auto_starts.popleft()
        if len(self._auto_starts) >= self.cfg.restart_budget:
            self._fail(f"restart budget spent: {len(self._auto_starts)} automatic starts in "
                       f"{window:g}s (restart_budget); last: {self.last_error}. Fix the cause, "
                       f"then 'janus-supervisorctl start {self.name}'")
            return False
        self._auto_starts.append(now)
        return True

    def _fail(self, reason: str) -> None:
        self._failed = True
        self.last_error = reason
        self._set_state(TenantState.FAILED, reason)

    async def _run_instance(self) -> Outcome:
        self._set_state(TenantState.STARTING, "preflight, then spawn")
        self._healthy_for = 0.0
        try:
            access = await self.setup.preflight() if self.setup.preflight is not None else None
        except SpawnError as exc:
            return self._preflight_failed(exc)
        try:
            server = await self._spawn(access)
        except PreflightError as exc:  # the checks the server's own process made
            return self._preflight_failed(exc)
        except SpawnError as exc:
            self.last_error = str(exc)
            log.error("tenant %s: %s", self.name, exc, extra={"tenant": self.name})
            return self._pending or Outcome.SPAWN_FAILED
        outcome = Outcome.EXITED
        with anyio.CancelScope() as scope:
            self._instance_scope = scope
            if self._pending is not None:
                scope.cancel()
            try:
                outcome = await self._supervise(server)
            except Exception as exc:
                log.exception("tenant %s: internal error while supervising pid %d; restarting "
                              "it", self.name, server.pid, extra={"tenant": self.name})
                self.last_error = f"internal error: {exc!r}"
                outcome = Outcome.INTERNAL_ERROR
        self._instance_scope = None
        if self._pending is not None:
            outcome = self._pending
        await self._reap(server, outcome)
        return outcome

    def _preflight_failed(self, exc: SpawnError) -> Outcome:
        log.error("tenant %s: preflight failed: %s", self.name, exc, extra={"tenant": self.name})
        self._fail(f"preflight failed: {exc}")
        return Outcome.PREFLIGHT_FAILED

    async def _spawn(self, access: AccessCheck | None) -> ServerProcess:
        setup = self.setup
        previous, self.backend = self.backend, setup.backend_for()
        env = dict(self.config.ollama.env)
        env.update(self.cfg.env)
        env["OLLAMA_HOST"] = self.backend.ollama_host
        env["OLLAMA_MODELS"] = str(self.cfg.models_dir)
        env.update({"OLLAMA_NOPRUNE": "1"} if uses_shared_store(self.config) else {})
        try:
            server = await spawn_server(
                self.config.ollama.binary,
                ["serve"],
                env=build_environment(setup.identity, setup.home, env),
                cwd=setup.home,
                launch=Launch(setup.identity, nofile=self.cfg.nofile,
                              new_netns=self.backend.isolated),
                sink=self.output.write,
                access=access,
            )
        except PreflightError:
            self.backend = previous  # nothing was started on the new one
            raise
        self.backend.attach(server.pid)
        server.tracker = ProcessTracker(server.pid, setup.identity.uid, self.cfg.models_dir,
                                        self.record)
        self.server = server
        log.info("tenant %s: started server pid %d as %s on %s", self.name, server.pid,
                 setup.identity.user, self.backend.address, extra={"tenant": self.name})
        self._changed.set()
        self._changed = anyio.Event()
        return server

    async def _supervise(self, server: ServerProcess) -> Outcome:
        """Bring the server up and watch it; returns why the instance should end."""
        outcome = Outcome.EXITED
        api = OllamaAPI(self.connect_backend)
        try:
            async with anyio.create_task_group() as tg:

                async def watch_exit() -> None:
                    await server.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_exit)
                try:
                    await self._wait_serving(api, server)
                except ProbeError as exc:
                    self.last_error = str(exc)
                    tg.cancel_scope.cancel()
                    return Outcome.START_TIMEOUT
                await self._provision(api)
                outcome = await self._watch_liveness(api)
                tg.cancel_scope.cancel()
        finally:
            await api.aclose()
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

    def _store(self) -> TenantStore:
        """The tenant's store, owner and network, as provisioning needs them."""
        isolated = self.backend.isolated if self.backend else self.cfg.network == "isolated"
        identity = self.setup.identity
        return TenantStore(self.name, self.cfg.models_dir, identity.uid, identity.gid,
                           "isolated" if isolated else "host")

    async def _provision(self, api: OllamaAPI, *, only: str | None = None,
                         force: bool = False) -> None:
        self._set_state(TenantState.PROVISIONING, "rebuild requested" if force
                        else "server answers GET /")
        plans = self.setup.plans()
        old = self.variants
        self.variants = {p.name: old.get(p.name) or VariantStatus(name=p.name) for p in plans}
        for name in old.keys() - self.variants.keys():
            self.output.note(f"variant {name}: no longer in the config; left in the store "
                             "(the daemon never deletes models)")
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
                                      self.output.note, self._store())
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
            self._set_state(TenantState.READY, "server answers and every variant is built")

    async def _probe(self, api: OllamaAPI) -> str | None:
        """One liveness probe (deep every ``deep_probe_every``); None when healthy."""
        self._probes += 1
        every = self.cfg.deep_probe_every
        deep = bool(every) and self._probes % every == 0 and bool(self.variants)
        with anyio.move_on_after(self.cfg.probe_timeout_s) as timeout:
            try:
                if not await api.is_running():
                    return "GET / did not answer 200"
                if deep and await api.show(next(iter(self.variants))) is None:
                    return "deep probe: /api/show does not find the variant"
            except ProbeError as exc:
                return str(exc)
        if timeout.cancelled_caught:
            what = "deep probe /api/show" if deep else "GET /"
            return f"{what} timeout after {self.cfg.probe_timeout_s:g}s"
        return None

    def _observe(self) -> None:
        if self.server is not None and self.server.tracker is not None:
            self.server.tracker.observe()

    async def _watch_liveness(self, api: OllamaAPI) -> Outcome:
        failures = 0
        early = min(_EARLY_OBSERVE_S, self.cfg.probe_period_s)
        await anyio.sleep(early)
        self._observe()
        delay = self.cfg.probe_period_s - early
        while True:
            await anyio.sleep(delay)
            delay = self.cfg.probe_period_s
            self._observe()
            if self._ready_since is not None:
                self._healthy_for = time.time() - self._ready_since
            reason = await self._probe(api)
            if reason is None:
                failures = 0
                continue
            failures += 1
            self.probe_failures += 1
            threshold = self.cfg.probe_failure_threshold
            log.warning("tenant %s: liveness failed %d/%d (%s)%s", self.name, failures, threshold,
                        reason, "; restarting" if failures >= threshold else "",
                        extra={"tenant": self.name})
            if failures >= threshold:
                self.last_error = f"liveness failed {failures}/{threshold} ({reason})"
                return Outcome.UNHEALTHY

    async def _reap(self, server: ServerProcess, outcome: Outcome) -> None:
        """End the server and everything started for it, whatever state they are in."""
        if self._ready_since is not None:
            self._healthy_for = time.time() - self._ready_since
        with anyio.CancelScope(shield=True):
            if server.running:
                self._set_state(TenantState.STOPPING, outcome.value)
                if outcome in (Outcome.STOP, Outcome.RESTART, Outcome.SHUTDOWN):
                    await self._drain()
            result = await server.stop(self.cfg.stop_timeout_s)
        self.last_exit = result.exit
        if outcome is Outcome.EXITED:
            self.last_error = f"server exited unexpectedly ({result.exit.describe()})"
            log.error("tenant %s: server pid %d %s", self.name, server.pid,
                      result.exit.describe(), extra={"tenant": self.name})
        elif result.killed:
            log.warning("tenant %s: server pid %d and its processes killed after stop timeout "
                        "%gs", self.name, server.pid, self.cfg.stop_timeout_s,
                        extra={"tenant": self.name})
        self._changed.set()
        self._changed = anyio.Event()
