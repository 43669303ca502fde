"""``ollama-emulator serve``: the startup sequence, the listener and shutdown.

Order as in ``cmd.RunServer`` and ``server.Serve``: key pair, listen (socket bound here),
"server config", blob prune, "Listening on …", GPU discovery (the startup delay), and only
then HTTP. SIGINT/SIGTERM: close the listener, drop connections, SIGKILL and reap the
runners, exit 0; a second signal is ignored. SIGHUP keeps its default action.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import threading
from typing import Any

from .api import ApiError
from .envconfig import (
    HostSetting,
    allowed_origins,
    config_map,
    env_bool,
    join_host_port,
    keep_alive_ns,
    models_dir,
    parse_host,
)
from .faults import Knobs, arm_crash, write_dump
from .fsutil import PathError
from .gofmt import errno_text
from .httpserver import EmulatorServer
from .keys import KeyError_, initialize_keypair
from .middleware import local_addresses, origin_config_error
from .routes import build_routes
from .sched import Scheduler
from .slogtext import default_log, go_panic, slog, write_line
from .state import ServerState
from .store import Store

CLOUD_SINCE = (0, 16, 2)
PRUNE_AGE_SINCE = (0, 21, 0)


class ListenError(Exception):
    """The listener could not be created; the text follows ``Error: ``."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``0.12.0`` → (0, 12, 0); anything unparsable counts as very new."""
    try:
        return tuple(int(part) for part in version.split("-")[0].split("."))
    except ValueError:
        return (999,)


def listen(setting: HostSetting) -> tuple[socket.socket, str]:
    """Bind and listen like ``net.Listen("tcp", host:port)``; returns (socket, shown address)."""
    port = int(setting.port)
    if setting.host == "":
        return _listen_wildcard(port)
    try:
        ip = ipaddress.ip_address(setting.host.split("%")[0])
        address = str(ip)
    except ValueError:
        address = _resolve(setting.host, port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return _bind(family, address, port, join_host_port(address, str(port)))


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(f"listen tcp: lookup {host}: no such host") from exc
    # Go prefers the first IPv4 address for a listener.
    addresses = [str(info[4][0]) for info in infos]
    return next((a for a in addresses if ":" not in a), addresses[0])


def _listen_wildcard(port: int) -> tuple[socket.socket, str]:
    try:
        sock, shown = _bind(socket.AF_INET6, "::", port, f":{port}", dual_stack=True)
        return sock, shown
    except ListenError:
        if socket.has_ipv6 and _ipv6_usable():
            raise
    return _bind(socket.AF_INET, "0.0.0.0", port, f":{port}")


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
        return True
    except OSError:
        return False


def _bind(
    family: int, address: str, port: int, shown_in_error: str, dual_stack: bool = False
) -> tuple[socket.socket, str]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise ListenError(f"listen tcp {shown_in_error}: bind: {errno_text(exc)}") from exc
    bound_ip, bound_port = sock.getsockname()[:2]
    return sock, join_host_port("::" if dual_stack else bound_ip, str(bound_port))


def _error(text: str) -> int:
    write_line(sys.stderr, f"Error: {text}")
    return 1


def run_server(entry_script: str) -> int:
    """The ``serve`` command; returns the exit status."""
    knobs = Knobs.from_env()
    if knobs.dump_path:
        try:
            write_dump(knobs.dump_path, sys.argv)
        except OSError as exc:
            write_line(sys.stderr, f"janus-emulator: cannot write JANUS_EMU_DUMP: {exc}")
    arm_crash(knobs)
    home = os.environ.get("HOME", "")
    if not home:
        return _error("$HOME is not defined")
    try:
        initialize_keypair(home)
    except KeyError_ as exc:
        return _error(str(exc))
    setting = parse_host(os.environ.get("OLLAMA_HOST", ""))
    if setting.bad_port is not None:
        default_log(
            "WARN", "invalid port, using default", port=setting.bad_port, default=setting.port
        )
    try:
        sock, shown = listen(setting)
    except ListenError as exc:
        return _error(str(exc))
    return _serve(sock, shown, setting, knobs, home, entry_script)


def _serve(
    sock: socket.socket,
    shown: str,
    setting: HostSetting,
    knobs: Knobs,
    home: str,
    entry_script: str,
) -> int:
    version = version_tuple(knobs.version)
    store = Store(models_dir(home))
    slog("INFO", "routes.go:1259", "server config", env=config_map(setting, store.root))
    if version >= CLOUD_SINCE:
        slog(
            "INFO",
            "routes.go:1265",
            f"Ollama cloud disabled: {str(env_bool('OLLAMA_NO_CLOUD')).lower()}",
        )
    try:
        store.ensure_dirs()
        store.fix_blobs()
    except PathError as exc:
        return _error(f"{exc}: ensure path elements are traversable")
    if not env_bool("OLLAMA_NOPRUNE"):
        _prune(store, 3600.0 if version >= PRUNE_AGE_SINCE else 0.0)
    origins = allowed_origins()
    panic = origin_config_error(origins)
    if panic is not None:
        return go_panic(
            panic,
            [
                ("github.com/gin-contrib/cors.New(...)", "server/routes.go:1826"),
                (
                    "github.com/ollama/ollama/server.(*Server).GenerateRoutes(...)",
                    "server/routes.go:1826",
                ),
                ("github.com/ollama/ollama/server.Serve(...)", "server/routes.go:1998"),
            ],
        )
    state = _make_state(store, knobs, sock, origins, entry_script)
    server = EmulatorServer(sock, state, build_routes(version >= CLOUD_SINCE), local_addresses())
    _install_signal_handlers(state)
    slog("INFO", "routes.go:1310", f"Listening on {shown} (version {knobs.version})")
    _start_runners_at_start(state)
    return _discover_and_serve(server, state)


def _make_state(
    store: Store, knobs: Knobs, sock: socket.socket, origins: list[str], entry_script: str
) -> ServerState:
    bound = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
    if isinstance(bound, ipaddress.IPv6Address) and bound.ipv4_mapped is not None:
        bound = bound.ipv4_mapped
    sched = Scheduler([sys.executable, entry_script])
    return ServerState(
        store, sched, knobs, keep_alive_ns(), env_bool("OLLAMA_NOPRUNE"), bound.is_loopback, origins
    )


def _prune(store: Store, min_age_s: float) -> None:
    try:
        total, removed = store.prune(min_age_s)
    except (ValueError, OSError) as exc:
        slog(
            "WARN",
            "routes.go:1290",
            "corrupt manifests detected, skipping prune operation.  Re-pull or delete to clear",
            error=str(exc),
        )
        return
    slog("INFO", "images.go:518", f"total blobs: {total}")
    slog("INFO", "images.go:525", f"total unused blobs removed: {removed}")


def _install_signal_handlers(state: ServerState) -> None:
    knobs = state.knobs

    def handle_stop(signum: int, _frame: Any) -> None:
        if knobs.exit_fast:
            os._exit(0)
        state.stopping.set()

    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if knobs.ignore_sigterm else handle_stop)


def _start_runners_at_start(state: ServerState) -> None:
    empty_details = {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
    for index in range(state.knobs.runners_at_start):
        name = f"janus-emu-runner-{index}:latest"
        info = {
            "name": name,
            "model": name,
            "size": 0,
            "digest": "",
            "details": empty_details,
            "size_vram": 0,
            "context_length": 4096,
        }
        try:
            state.sched.acquire(name, name, os.devnull, info)
        except ApiError as exc:
            slog("ERROR", "sched.go:455", "error loading llama server", error=exc.message)


def _meminfo_gib() -> tuple[str, str]:
    values = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total, available = values.get("MemTotal", 0), values.get("MemAvailable", 0)
    return f"{total / 2**30:.1f} GiB", f"{available / 2**30:.1f} GiB"


def _discover_and_serve(server: EmulatorServer, state: ServerState) -> int:
    # The socket is already listening: connects succeed, requests wait for "discovery".
    slog("INFO", "runner.go:67", "discovering available GPUs...")
    if state.stopping.wait(state.knobs.startup_delay_s):
        return _shutdown(server, state, serving=False)
    total, available = _meminfo_gib()
    slog(
        "INFO",
        "types.go:130",
        "inference compute",
        id="cpu",
        library="cpu",
        compute="",
        name="cpu",
        description="cpu",
        libdirs="ollama",
        driver="",
        pci_id="",
        type="",
        total=total,
        available=available,
    )
    slog(
        "INFO",
        "routes.go:1351",
        "vram-based default context",
        total_vram="0 B",
        default_num_ctx=4096,
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="http", daemon=True
    )
    thread.start()
    while not state.stopping.wait(1.0):
        pass
    return _shutdown(server, state, serving=True)


def _shutdown(server: EmulatorServer, state: ServerState, serving: bool) -> int:
    if serving:
        server.shutdown()
    server.server_close()
    server.drop_connections()
    state.sched.unload_all()
    sys.stdout.flush()
    sys.stderr.flush()
    # Like the Go server, leave at once: skip the interpreter's teardown of threads/modules.
    os._exit(0)
