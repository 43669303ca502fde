"""``janus-supervisord``: wiring of config, tenants, relays, control server and signals.

Start-up order: load and check the config; resolve (or create) each tenant's user; make the
state, home and store directories; bind the control socket and every tenant socket; then run
one supervision task and one relay per tenant plus the control server in one task group.
SIGTERM or SIGINT stops every tenant in parallel, removes the sockets and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import anyio
import click

from supervisor import __version__
from supervisor.backend import Backend, allocate_backend
from supervisor.config import Config, TenantConfig, load_config, run_check
from supervisor.control.server import ControlServer, open_control_socket
from supervisor.dirs import ensure_dir, owned_by
from supervisor.errors import ConfigError, SupervisorError
from supervisor.logs import TenantLog
from supervisor.modelfile import variant_request
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
from supervisor.sockets import BoundSocket, bind_unix_socket
from supervisor.status import DaemonStatus, TenantStatus
from supervisor.tenant import Tenant, TenantSetup

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class Supervisor:
    """All tenants of one daemon; implements the control plane's ``SupervisorAPI``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = is_root()
        self.tenants: dict[str, Tenant] = {}
        self.sockets: dict[str, BoundSocket] = {}

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
            return ensure_system_user(cfg.user, self._private_home(name))
        return resolve_identity(cfg.user)

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
        taken = [t.backend.port for n, t in self.tenants.items() if n != name and t.backend]
        taken += [t.port for t in self.config.tenants.values() if t.port is not None]
        return allocate_backend(name, cfg.port, self.config.ollama.port_range, taken)

    def _plans(self, name: str) -> list[VariantPlan]:
        cfg = self.config.tenants[name]
        plans = []
        for variant in cfg.variants:
            plan = variant_request(self.config, name, variant)
            plans.append(VariantPlan(variant.name, plan.request, plan.files))
        return plans

    def prepare(self) -> None:
        """Resolve identities, make directories and build a ``Tenant`` for each config entry."""
        ensure_dir(self.config.state_dir, uid=os.getuid(), gid=os.getgid(), mode=0o755)
        for name, cfg in self.config.tenants.items():
            identity = self._identity(name, cfg)
            if (hard := nofile_shortfall(cfg.nofile)) is not None:
                log.warning("tenant %s: nofile %d is above the daemon's hard limit %d and the "
                            "daemon may not raise it (no CAP_SYS_RESOURCE); the server gets %d",
                            name, cfg.nofile, hard, hard, extra={"tenant": name})
            home = self._home(name, cfg, identity)
            ensure_dir(cfg.models_dir, uid=identity.uid, gid=identity.gid, mode=0o700)
            setup = TenantSetup(
                identity=identity,
                home=home,
                backend_for=lambda n=name: self._backend_for(n),  # type: ignore[misc]
                plans=lambda n=name: self._plans(n),  # type: ignore[misc]
            )
            output = TenantLog(name, self.config.log_dir)
            self.tenants[name] = Tenant(name, self.config, setup, output)

    def bind_sockets(self) -> None:
        """Bind every tenant's endpoint with its configured owner, group and mode."""
        for name, tenant in self.tenants.items():
            sock_cfg = self.config.tenants[name].socket
            identity = tenant.setup.identity
            uid = user_id(sock_cfg.owner) if sock_cfg.owner and self.root else identity.uid
            gid = group_id(sock_cfg.group) if sock_cfg.group and self.root else identity.gid
            if not self.root:
                uid, gid = os.getuid(), os.getgid()
            self.sockets[name] = bind_unix_socket(sock_cfg.path, mode=sock_cfg.mode, uid=uid,
                                                  gid=gid)

    def close_sockets(self) -> None:
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()


def announce(sup: Supervisor) -> None:
    """Tell the operator where the endpoints are and what to try next."""
    control = sup.config.control.socket
    lines = [f"janus-supervisord {__version__}: control socket {control}"]
    for name, tenant in sup.tenants.items():
        lines.append(f"  tenant {name}: socket {sup.config.tenants[name].socket.path} "
                     f"(runs as {tenant.setup.identity.user})")
    first = next(iter(sup.tenants), None)
    lines.append(f"next: janus-supervisorctl --socket {control} status")
    if first:
        lines.append(f"      curl --unix-socket {sup.config.tenants[first].socket.path} "
                     "http://localhost/api/tags")
    print("\n".join(lines), file=sys.stderr, flush=True)


async def serve(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit code."""
    sup = Supervisor(config)
    sup.prepare()
    control_socket = open_control_socket(config.control)
    try:
        sup.bind_sockets()
    except BaseException:
        control_socket.close()
        sup.close_sockets()
        raise
    server = ControlServer(sup, config.control, control_socket)
    await server.start()
    try:
        async with anyio.create_task_group() as tg:
            for name, tenant in sup.tenants.items():
                tg.start_soon(tenant.run, name=f"tenant {name}")
                relay = Relay(tenant, tenant.connect_backend,
                              lambda t=tenant: t.cfg.connect_wait_s)  # type: ignore[misc]
                tg.start_soon(relay.serve, sup.sockets[name].sock, name=f"relay {name}")
            announce(sup)
            await _wait_for_shutdown(sup)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await server.close()
        sup.close_sockets()
    log.info("janus-supervisord: every tenant stopped; exiting")
    return EXIT_OK


async def _wait_for_shutdown(sup: Supervisor) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.warning("janus-supervisord: SIGHUP received, but reloading the config is "
                            "not supported by this version; restart the daemon to apply changes")
                continue
            log.info("janus-supervisord: %s received; stopping %d tenants",
                     signal.Signals(signum).name, len(sup.tenants))
            break
    async with anyio.create_task_group() as tg:
        for tenant in sup.tenants.values():
            tg.start_soon(tenant.shutdown)


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
