"""``janus-supervisord``: wiring of config, tenants, relays, control server and signals.

Start-up order: load and check the config; resolve (or create) each tenant's user; make the
state, home and store directories; bind the control socket and every tenant socket; then run
one supervision task and one relay per tenant plus the control server in one task group.
SIGTERM or SIGINT stops every tenant in parallel, removes the sockets and exits 0. SIGHUP
reloads the config file and applies only the difference (``supervisor.reload``); SIGUSR1 reopens
the tenant log files. Under systemd the daemon reports readiness, a count of tenants per state,
reloads and a watchdog ping (``supervisor.systemd``, ``supervisor.watch``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import click

from supervisor import __version__
from supervisor.backend import (
    Backend,
    NetnsBackend,
    allocate_backend,
    network_mode,
    network_note,
)
from supervisor.config import Config, TenantConfig, load_config
from supervisor.control.metrics_http import MetricsListener
from supervisor.control.server import ControlServer, open_control_socket
from supervisor.dirs import ensure_dir, owned_by
from supervisor.errors import ConfigError, SpawnError, SupervisorError
from supervisor.leftovers import become_subreaper
from supervisor.logs import LogFollower, TenantLog
from supervisor.metrics import RELOADS, TenantSample, watch_tenants
from supervisor.modelfile import variant_request
from supervisor.policy import PolicySource
from supervisor.preflight import preflight, refuse_planted_links
from supervisor.privileges import (
    Identity,
    current_identity,
    ensure_system_user,
    group_id,
    is_root,
    nofile_shortfall,
    resolve_identity,
    user_id,
)
from supervisor.provision import VariantPlan
from supervisor.relay import Relay
from supervisor.reload import ReloadPlan, apply_plan, load_new_config, plan_reload
from supervisor.runtime import DaemonTasks, TaskHandle
from supervisor.sockets import BoundSocket, bind_unix_socket
from supervisor.spawn import watch_children_with_pidfd
from supervisor.status import DaemonStatus, TenantState, TenantStatus
from supervisor.syscheck import run_check
from supervisor.systemd import Notifier
from supervisor.tenant import Tenant, TenantSetup
from supervisor.watch import StateWatch

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

T = TypeVar("T")

class Supervisor:
    """All tenants of one daemon; implements the control plane's ``SupervisorAPI``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = is_root()
        self.tenants: dict[str, Tenant] = {}
        self.sockets: dict[str, BoundSocket] = {}
        self.built: dict[str, dict[str, Mapping[str, Any]]] = {}
        self.notifier = Notifier(None)
        self.watch = StateWatch(self.notifier, lambda: self.tenants)
        self.closing = False
        self.control: ControlServer | None = None
        self.tasks: DaemonTasks | None = None
        self._relays: dict[str, TaskHandle] = {}
        self._watchers: dict[str, TaskHandle] = {}
        self._reload_lock = anyio.Lock()
        self._reload_scope: anyio.CancelScope | None = None

    # -- SupervisorAPI -------------------------------------------------------------------------
    def daemon_status(self) -> DaemonStatus:
        return DaemonStatus(version=__version__, pid=os.getpid(),
                            tenants=[t.status() for t in self.tenants.values()])

    def tenant_names(self) -> list[str]:
        return list(self.tenants)

    def tenant_status(self, name: str) -> TenantStatus:
        return self.tenants[name].status()

    def tenant_uid(self, name: str) -> int | None:
        return self.tenants[name].setup.identity.uid

    async def start_tenant(self, name: str) -> TenantStatus:
        await self.tenants[name].start()
        return self.tenants[name].status()

    async def stop_tenant(self, name: str) -> TenantStatus:
        await self.tenants[name].stop()
        return self.tenants[name].status()

    async def restart_tenant(self, name: str) -> TenantStatus:
        await self.tenants[name].restart()
        return self.tenants[name].status()

    async def wait_ready(self, name: str, timeout_s: float) -> TenantStatus:
        await self.tenants[name].wait_ready(timeout_s)
        return self.tenants[name].status()

    async def rebuild_tenant(self, name: str, variant: str | None) -> TenantStatus:
        tenant = self.tenants[name]
        names = [v.name for v in tenant.cfg.variants]
        if variant is not None and variant not in names:
            raise LookupError(f"tenant {name} has no variant {variant!r} (configured: "
                              f"{', '.join(names) or 'none'})")
        await self._detached(lambda: tenant.rebuild(variant))
        return tenant.status()

    async def reload(self, dry_run: bool = False) -> ReloadPlan:
        return await self._detached(lambda: self._reload(dry_run))

    def tenant_logs(self, name: str, lines: int) -> list[str]:
        return self.tenants[name].output.tail(lines)

    def follow_logs(self, name: str, lines: int) -> contextlib.AbstractContextManager[LogFollower]:
        return self.tenants[name].output.follow(lines)

    def reopen_logs(self) -> list[str]:
        paths = []
        for tenant in self.tenants.values():
            tenant.output.reopen()
            paths.append(str(tenant.output.path))
        log.info("janus-supervisord: reopened %d tenant log files", len(paths))
        return paths

    def samples(self) -> list[TenantSample]:
        """What ``GET /metrics`` reports about each tenant, read now."""
        found = []
        for name, tenant in self.tenants.items():
            status = tenant.status()
            found.append(TenantSample(
                name=name, state=status.state, ready=status.ready, pid=status.pid,
                restarts=status.restarts, restarts_by_cause=dict(tenant.restarts_by_cause),
                probe_failures=tenant.probe_failures, uptime_s=status.uptime_s,
                time_to_ready_s=self.watch.time_to_ready.get(name)))
        return found

    # -- running: tasks per tenant, reload, shutdown -------------------------------------------
    async def _detached(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` so that a client leaving does not cancel it (see ``DaemonTasks``)."""
        return await (action() if self.tasks is None else self.tasks.detached(action))

    def attach(self, tg: anyio.abc.TaskGroup, notifier: Notifier) -> None:
        """Run from now on in ``tg``, reporting to systemd through ``notifier``."""
        self.tasks = DaemonTasks(tg)
        self.notifier = self.watch.notifier = notifier

    def launch(self, name: str) -> None:
        """Start tenant ``name``'s supervision loop, relay and state watch."""
        assert self.tasks is not None, "attach() first"
        tenant = self.tenants[name]
        self.tasks.start_soon(f"tenant {name}", tenant.run)
        self._relays[name] = self.tasks.start(f"relay {name}", self._relay_runner(name))
        self._watchers[name] = self.tasks.start(f"watch {name}",
                                                lambda: self.watch.follow(tenant))

    def _relay_runner(self, name: str) -> Callable[[], Awaitable[None]]:
        relay, sock = make_relay(self.tenants[name]), self.sockets[name].sock
        return lambda: relay.serve(sock)

    async def _reload(self, dry_run: bool) -> ReloadPlan:
        plan: ReloadPlan | None = None
        async with self._reload_lock:
            # Shutdown cancels this scope: what was applied stays, the rest is dropped.
            with anyio.CancelScope() as self._reload_scope:
                plan = await self._reload_locked(dry_run)
            self._reload_scope = None
        if plan is None:
            raise SupervisorError("janus-supervisord is shutting down; the reload was "
                                  "interrupted and only partly applied")
        if not dry_run:
            RELOADS.labels("applied" if plan.ok else "failed").inc()
        return plan

    async def _reload_locked(self, dry_run: bool) -> ReloadPlan:
        if self.closing:
            raise SupervisorError("janus-supervisord is shutting down; reload refused")
        try:
            new = load_new_config(self.config.source, as_root=self.root)
            plan = plan_reload(self.config, new, self.built, dry_run=dry_run)
        except ConfigError:
            RELOADS.labels("invalid").inc()
            raise
        if dry_run:
            return plan
        self.watch.reload_started()
        try:
            return await apply_plan(self, plan, new)
        finally:
            self.watch.reload_done()

    async def reload_on_signal(self) -> None:
        """SIGHUP: reload and log the outcome (there is no client to answer)."""
        try:
            plan = await self.reload()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("janus-supervisord: reload: %s", problem)
            log.error("janus-supervisord: SIGHUP: the config has %d problem(s); nothing was "
                      "changed; fix them and reload again", len(exc.problems))
            return
        except SupervisorError as exc:
            log.error("janus-supervisord: SIGHUP: reload failed: %s", exc)
            return
        summary = ", ".join(f"{c.tenant} {c.action}" for c in plan.changes) or "no tenants"
        level = logging.INFO if plan.ok else logging.ERROR
        log.log(level, "janus-supervisord: SIGHUP: reload %s (%s)",
                "applied" if plan.ok else "applied with errors", summary)

    # -- ReloadTarget --------------------------------------------------------------------------
    def take_config(self, config: Config) -> None:
        self.config = config
        for tenant in self.tenants.values():
            tenant.apply_config(config)
            tenant.output.configure(config.log_dir, max_bytes=config.log_max_bytes,
                                    backups=config.log_backups)
        if self.control is not None:
            self.control.apply_control(config.control)

    async def add_tenant(self, name: str) -> str:
        tenant = self.prepare_tenant(name)
        self.tenants[name] = tenant
        try:
            self.sockets[name] = self.bind_socket(name)
        except BaseException:
            del self.tenants[name]
            tenant.output.close()
            raise
        self.launch(name)
        await tenant.wait_for(lambda: tenant.state is not TenantState.STOPPED)
        return f"started ({tenant.state})"

    async def remove_tenant(self, name: str) -> str:
        tenant = self.tenants[name]
        await tenant.shutdown()
        for handles in (self._relays, self._watchers):
            if (handle := handles.pop(name, None)) is not None:
                await handle.stop()
        if (bound := self.sockets.pop(name, None)) is not None:
            bound.close()
        tenant.output.close()
        del self.tenants[name]
        self.built.pop(name, None)
        self.watch.forget(name)
        return "stopped and removed; its store and log files stay"

    async def relaunch_tenant(self, name: str) -> str:
        tenant = self.tenants[name]
        # New user, home or store; hooks wired to the relay (in_flight) stay.
        tenant.setup = dataclasses.replace(self.setup_tenant(name),
                                           in_flight=tenant.setup.in_flight)
        if tenant.state is TenantState.STOPPED:
            return "stopped by an admin: the new settings apply at its next start"
        await tenant.restart()
        if tenant.state is TenantState.FAILED:
            raise SpawnError(f"tenant {name}: restart with the new settings failed: "
                             f"{tenant.last_error}")
        return f"restarted (pid {tenant.status().pid})"

    async def rebuild_variants(self, name: str, variants: list[str]) -> str:
        tenant = self.tenants[name]
        # A build under way uses the old definitions: let it end, then build the new ones.
        await tenant.wait_for(lambda: tenant.state is not TenantState.PROVISIONING)
        if tenant.state not in (TenantState.READY, TenantState.DEGRADED):
            return f"{tenant.state}: the new variants are built at its next start"
        for variant in variants:
            await tenant.rebuild(variant)
        if tenant.state is TenantState.DEGRADED:
            raise SpawnError(f"tenant {name}: rebuild left it degraded: {tenant.last_error}")
        return f"re-created {', '.join(variants)} (pid {tenant.status().pid} kept)"

    async def revive_tenant(self, name: str) -> str | None:
        tenant = self.tenants[name]
        if tenant.state is not TenantState.FAILED:
            return None
        await tenant.start()
        return f"was failed: started again ({tenant.state})"

    async def rebind_tenant(self, name: str) -> str:
        old = self.sockets.get(name)
        moved = old is None or old.path != self.config.tenants[name].socket.path
        # A new path is bound before the old one goes (raising here changes nothing); the
        # same path can only be bound again once the old socket is gone.
        bound = self.bind_socket(name) if moved else None
        if (relay := self._relays.pop(name, None)) is not None:
            await relay.stop()
        if old is not None:
            del self.sockets[name]
            old.close()
        self.sockets[name] = bound if bound is not None else self.bind_socket(name)
        assert self.tasks is not None
        self._relays[name] = self.tasks.start(f"relay {name}", self._relay_runner(name))
        return f"endpoint re-bound at {self.sockets[name].path}"

    async def shutdown(self) -> None:
        """Stop every tenant in parallel; a reload under way is cancelled first."""
        self.closing = True
        self.notifier.stopping()
        longest_s = max((t.drain_timeout_s + t.stop_timeout_s
                         for t in self.config.tenants.values()), default=0.0)
        self.notifier.extend_timeout(longest_s + 15.0)
        if self._reload_scope is not None:
            self._reload_scope.cancel()
        async with self._reload_lock:
            pass  # the cancelled reload has let go: no tenant is added after this
        async with anyio.create_task_group() as tg:
            for tenant in list(self.tenants.values()):
                tg.start_soon(tenant.shutdown)

    # -- setup ---------------------------------------------------------------------------------
    def _identity(self, name: str, cfg: TenantConfig) -> Identity:
        if not self.root:
            identity = current_identity()
            log.warning(
                "tenant %s: not running as root, so its server runs as %s like every tenant "
                "(configured user %s is not used): stores, sockets and backends are not "
                "isolated between tenants", name, identity.user, cfg.user,
                extra={"tenant": name})
            return identity
        if cfg.create_user:
            identity, created = ensure_system_user(cfg.user)
            if created:
                log.info("tenant %s: created system user %s (uid %d, no login, no password)",
                         name, identity.user, identity.uid, extra={"tenant": name})
        else:
            identity = resolve_identity(cfg.user)
        if identity.uid == 0:
            raise SpawnError(f"tenant {name}: user {cfg.user!r} has uid 0; a tenant never runs "
                             "as root: configure an unprivileged user")
        return identity

    def _private_home(self, name: str) -> Path:
        return self.config.state_dir / "homes" / name

    def _home(self, name: str, cfg: TenantConfig, identity: Identity) -> Path:
        """The tenant's HOME: configured, else its passwd home if it owns it, else private."""
        if cfg.home is not None:
            ensure_dir(cfg.home, uid=identity.uid, gid=identity.gid, mode=0o700)
            return cfg.home
        if self.root and owned_by(identity.home, identity.uid):
            return identity.home
        home = self._private_home(name)
        ensure_dir(home.parent, uid=0, gid=0, mode=0o755)
        ensure_dir(home, uid=identity.uid, gid=identity.gid, mode=0o700)
        return home

    def _backend_for(self, name: str) -> Backend:
        cfg = self.config.tenants[name]
        if network_mode(cfg.network, root=self.root) == "isolated":
            current = self.tenants[name].backend if name in self.tenants else None
            # One object per tenant: attach() releases the previous server's namespace.
            return current if isinstance(current, NetnsBackend) else NetnsBackend(name)
        taken = [port for n, t in self.tenants.items()
                 if n != name and t.backend and (port := t.backend.host_port) is not None]
        taken += [t.port for t in self.config.tenants.values() if t.port is not None]
        return allocate_backend(name, cfg.port, self.config.ollama.port_range, taken)

    def _plans(self, name: str) -> list[VariantPlan]:
        cfg = self.config.tenants[name]
        plans = []
        for variant in cfg.variants:
            plan = variant_request(self.config, name, variant)
            plans.append(VariantPlan(variant.name, plan.request, plan.files))
        # What the tenant builds now: a reload compares the new requests with these.
        self.built[name] = {p.name: p.request for p in plans}
        return plans

    def prepare(self) -> None:
        """Resolve identities, make directories and build a ``Tenant`` for each config entry."""
        ensure_dir(self.config.state_dir, uid=os.getuid(), gid=os.getgid(), mode=0o755)
        for name in self.config.tenants:
            self.tenants[name] = self.prepare_tenant(name)

    def prepare_tenant(self, name: str) -> Tenant:
        """A ``Tenant`` for config entry ``name``: its setup and its log (not started)."""
        output = TenantLog(name, self.config.log_dir, max_bytes=self.config.log_max_bytes,
                           backups=self.config.log_backups)
        return Tenant(name, self.config, self.setup_tenant(name), output)

    def setup_tenant(self, name: str) -> TenantSetup:
        """Resolve the user of tenant ``name``, make its home and store; at start or reload."""
        cfg = self.config.tenants[name]
        identity = self._identity(name, cfg)
        if (hard := nofile_shortfall(cfg.nofile)) is not None:
            log.warning("tenant %s: nofile %d is above the daemon's hard limit %d and the "
                        "daemon may not raise it (no CAP_SYS_RESOURCE); the server gets %d",
                        name, cfg.nofile, hard, hard, extra={"tenant": name})
        if (note := network_note(name, cfg.network, cfg.port, root=self.root)) is not None:
            log.warning("%s", note, extra={"tenant": name})
        try:
            refuse_planted_links("models_dir", cfg.models_dir)
            if cfg.home is not None:
                refuse_planted_links("home", cfg.home)
            home = self._home(name, cfg, identity)
            ensure_dir(cfg.models_dir, uid=identity.uid, gid=identity.gid, mode=0o700)
        except SpawnError as exc:
            # The preflight before every start repeats this: only this tenant fails.
            log.error("tenant %s: %s; it will not start until this is fixed", name, exc,
                      extra={"tenant": name})
            home = cfg.home or self._private_home(name)
        return TenantSetup(
            identity=identity,
            home=home,
            backend_for=lambda n=name: self._backend_for(n),  # type: ignore[misc]
            plans=lambda n=name: self._plans(n),  # type: ignore[misc]
            preflight=lambda n=name, i=identity, h=home: preflight(  # type: ignore[misc]
                i, home=h, store=self.config.tenants[n].models_dir,
                binary=self.config.ollama.binary,
                isolated=network_mode(self.config.tenants[n].network, root=self.root)
                == "isolated"),
        )

    def bind_sockets(self) -> None:
        """Bind every tenant's endpoint with its configured owner, group and mode."""
        for name in self.tenants:
            self.sockets[name] = self.bind_socket(name)

    def bind_socket(self, name: str) -> BoundSocket:
        """Bind tenant ``name``'s endpoint as its config says; raises ``ControlError``."""
        sock_cfg = self.config.tenants[name].socket
        identity = self.tenants[name].setup.identity
        uid = user_id(sock_cfg.owner) if sock_cfg.owner and self.root else identity.uid
        gid = group_id(sock_cfg.group) if sock_cfg.group and self.root else identity.gid
        if not self.root:
            uid, gid = os.getuid(), os.getgid()
        return bind_unix_socket(sock_cfg.path, mode=sock_cfg.mode, uid=uid, gid=gid)

    def close_sockets(self) -> None:
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()


def _ctl_command() -> str:
    """How to run the CLI from here: by name if PATH finds this installation's, else its path."""
    beside = Path(sys.argv[0]).resolve().parent / "janus-supervisorctl"
    on_path = shutil.which("janus-supervisorctl")
    if on_path and (not beside.exists() or Path(on_path).resolve() == beside):
        return "janus-supervisorctl"
    if beside.exists():
        return str(beside)
    return f"{sys.executable} -m supervisor.cli"


def announce(sup: Supervisor) -> None:
    """Tell the operator where the endpoints are and what to try next."""
    control = sup.config.control.socket
    lines = [f"janus-supervisord {__version__}: control socket {control}"]
    for name, tenant in sup.tenants.items():
        lines.append(f"  tenant {name}: socket {sup.config.tenants[name].socket.path} "
                     f"(runs as {tenant.setup.identity.user})")
    first = next(iter(sup.tenants), None)
    lines.append(f"next: {_ctl_command()} --socket {control} status")
    if first:
        lines.append(f"      curl --unix-socket {sup.config.tenants[first].socket.path} "
                     "http://localhost/api/tags")
    print("\n".join(lines), file=sys.stderr, flush=True)


def make_relay(tenant: Tenant) -> Relay:
    """The relay in front of ``tenant``'s endpoint (made again when its socket is re-bound)."""
    policy = PolicySource(tenant.name, lambda t=tenant: t.cfg)  # type: ignore[misc]
    relay = Relay(tenant, tenant.connect_backend_socket,
                  lambda t=tenant: t.cfg.connect_wait_s,  # type: ignore[misc]
                  policy=policy)
    # A stop or restart lets the requests this relay has in flight finish first.
    tenant.setup.in_flight = relay.requests_in_flight
    return relay


async def serve(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit code."""
    become_subreaper()
    watch_children_with_pidfd()
    # One daemon per control socket: bind it before anything else, so that a second daemon
    # on the same config stops here and leaves the first one's files, sockets and tenants be.
    control_socket = open_control_socket(config.control)
    sup = Supervisor(config)
    try:
        sup.prepare()
        sup.bind_sockets()
    except BaseException:
        control_socket.close()
        sup.close_sockets()
        raise
    server = sup.control = ControlServer(sup, config.control, control_socket)
    await server.start()
    watch_tenants(sup.samples)
    metrics_tcp = MetricsListener(config.control.metrics_address or "")
    if config.control.metrics_address:
        await metrics_tcp.start()
    notifier = Notifier.from_environment()
    try:
        async with anyio.create_task_group() as tg:
            sup.attach(tg, notifier)
            _ask_for_start_time(sup)
            for name in sup.tenants:
                sup.launch(name)
            sup.watch.report()  # READY=1 at once when there are no tenants
            if (interval_s := notifier.watchdog_interval_s) is not None:
                tg.start_soon(notifier.keep_watchdog, interval_s, name="watchdog")
            announce(sup)
            await _wait_for_shutdown(sup, tg)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await metrics_tcp.close()
            await server.close()
        sup.close_sockets()
    log.info("janus-supervisord: every tenant stopped; exiting")
    return EXIT_OK


def _ask_for_start_time(sup: Supervisor) -> None:
    """READY=1 waits for every first start: ask systemd for the longest one plus a margin."""
    longest_s = max((t.start_timeout_s for t in sup.config.tenants.values()), default=0.0)
    sup.notifier.extend_timeout(longest_s + 60.0)


async def _wait_for_shutdown(sup: Supervisor, tg: anyio.abc.TaskGroup) -> None:
    """Serve signals until SIGTERM/SIGINT; then stop every tenant.

    SIGHUP reloads the config (in the background, so that a SIGTERM still ends a long
    reload); SIGUSR1 reopens the tenant log files (logrotate).
    """
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    with anyio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("janus-supervisord: SIGHUP received; reloading %s", sup.config.source)
                tg.start_soon(sup.reload_on_signal, name="reload")
                continue
            if signum == signal.SIGUSR1:
                sup.reopen_logs()
                continue
            log.info("janus-supervisord: %s received; stopping %d tenants",
                     signal.Signals(signum).name, len(sup.tenants))
            break
    await sup.shutdown()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="YAML configuration file.")
@click.option("--check", is_flag=True, help="Validate the config and exit (0 valid, 2 invalid).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(__version__, prog_name="janus-supervisord")
def main(config_path: Path, check: bool, verbose: bool) -> None:
    """Supervise one `ollama serve` per tenant.

    Example: janus-supervisord --config /etc/janus-supervisor/janus-supervisor.yaml
    """
    if check:
        sys.exit(run_check(config_path, as_root=is_root(), out=sys.stdout))
    _configure_logging(verbose)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"janus-supervisord: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        code = anyio.run(serve, config, backend="asyncio")
    except SupervisorError as exc:
        print(f"janus-supervisord: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
