"""One lifecycle trial of N emulator tenants under janus-supervisord or under supervisord.

Both trials measure the same things the same way (probes, kill loop and config of
``tools/bench_lifecycle.py``):

- ``cold_s``: daemon exec until every tenant answers ``GET /`` with 200 (janus: through the
  tenant socket; supervisord: on the tenant's loopback TCP port);
- ``idle_cpu_s``: the daemon's user+system CPU over the idle window;
- ``rss_mib``: resident memory of the daemon (plus any root-owned helper process of it) after
  the idle window;
- ``cli_ms``: wall time of ``status`` (fresh CLI process each run);
- ``kill_pid_s`` / ``kill_answer_s``: ``kill -9`` of a tenant's server until a new process of the
  tenant's user exists / until the tenant answers again (one sample per killed tenant);
- ``stop_s``: SIGTERM to the daemon until no process of any tenant user is left.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_cli  # type: ignore[import-not-found]
import bench_lifecycle  # type: ignore[import-not-found]
import psutil
from common import (  # type: ignore[import-not-found]
    REPO,
    copy_emulator,
    scratch_dir,
    stop_process,
    uid,
)

SUPERVISORD_PORT_BASE = 28100
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def answers_tcp(port: str) -> bool:
    """``GET /`` on 127.0.0.1:port answers 200 (the probe for supervisord's tenants)."""
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _guarded(probe: Callable[[str], bool], daemon: subprocess.Popen[bytes],
             log: Path) -> Callable[[str], bool]:
    """``probe`` that fails fast (with the daemon's log) when the daemon has died."""
    def check(target: str) -> bool:
        if daemon.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"daemon exited {daemon.returncode} during the trial:\n{tail}")
        return probe(target)
    return check


def _owned_pids(uids: set[int]) -> bool:
    """Whether any live process belongs to one of ``uids`` (one scan of /proc).

    Zombies do not count: an exited server that its supervisor has not reaped yet holds no
    port, memory or file any more (supervisord reaps once a second)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                            return True
            except (OSError, IndexError):
                pass
    return False


def _daemon_rss(pid: int) -> float:
    """MiB resident: the daemon and its root-owned descendants (helpers, not tenants)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            if child.uids().real == 0:
                total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _measure(daemon: subprocess.Popen[bytes], began: float, log: Path, targets: list[str],
             probe: Callable[[str], bool], users: list[str], cli: list[str],
             args: argparse.Namespace) -> dict[str, Any]:
    """Everything after the exec of the daemon, identical for both supervisors."""
    probe = _guarded(probe, daemon, log)
    bench_lifecycle.wait_all(targets, timeout_s=args.start_timeout, probe=probe)
    out: dict[str, Any] = {"cold_s": time.monotonic() - began}

    proc = psutil.Process(daemon.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    time.sleep(args.idle)
    out["idle_cpu_s"] = sum(proc.cpu_times()[:2]) - cpu0
    out["rss_mib"] = _daemon_rss(daemon.pid)

    out["cli_ms"] = bench_cli.measure(cli, args.cli_runs)

    out["kill_pid_s"], out["kill_answer_s"] = [], []
    for i in range(min(args.kills, len(users))):
        new_pid, answering = bench_lifecycle.kill_trial(uid(users[i]), targets[i], probe)
        out["kill_pid_s"].append(new_pid)
        out["kill_answer_s"].append(answering)
        time.sleep(0.05)

    uids = {uid(u) for u in users}
    began = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    while _owned_pids(uids):
        time.sleep(0.001)
    out["stop_s"] = time.monotonic() - began
    daemon.wait(timeout=60)
    return out


def janus_trial(users: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """janus-supervisord with ``network: host`` tenants (bench_lifecycle's config)."""
    with scratch_dir("janus-bench-j") as root:
        config = bench_lifecycle.make_config(
            root, users, argparse.Namespace(network="host", startup_delay=args.startup_delay,
                                            idle=args.idle))
        sockets = [str(root / "run" / f"t{i:02d}.sock") for i in range(len(users))]
        log = root / "daemon.log"
        daemon = None
        try:
            with open(log, "wb") as err:
                began = time.monotonic()
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "supervisor.daemon", "--config", str(config)],
                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            cli = [sys.executable, "-m", "supervisor.cli", "--socket",
                   str(root / "run" / "control.sock"), "status"]
            return _measure(daemon, began, log, sockets, bench_lifecycle.answers, users, cli,
                            args)
        finally:
            stop_process(daemon)
            _kill_users(users)


def supervisord_conf(root: Path, users: list[str], emulator: Path,
                     args: argparse.Namespace) -> tuple[Path, list[str]]:
    """supervisord.conf with one [program:tNN] per tenant; returns it and the ports."""
    ports = [str(SUPERVISORD_PORT_BASE + i) for i in range(len(users))]
    (root / "log").mkdir()
    lines = [
        "[unix_http_server]", f"file={root}/supervisor.sock", "chmod=0700", "",
        "[supervisord]", "nodaemon=true", f"logfile={root}/supervisord.log",
        f"pidfile={root}/supervisord.pid", f"childlogdir={root}/log", "user=root", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{root}/supervisor.sock", "",
    ]
    for i, (user, port) in enumerate(zip(users, ports, strict=True)):
        name = f"t{i:02d}"
        home, env = _tenant_env(root, name, user, port, args)
        lines += [
            f"[program:{name}]", f"command={emulator} serve", f"user={user}",
            f"directory={home}",
            "environment=" + ",".join(f'{k}="{v}"' for k, v in env.items()),
            "autostart=true", "autorestart=true", "startsecs=0", "startretries=10",
            "stopasgroup=true", "killasgroup=true", "stopwaitsecs=5",
            "redirect_stderr=true", f"stdout_logfile={root}/log/{name}.log", "",
        ]
    conf = root / "supervisord.conf"
    conf.write_text("\n".join(lines))
    return conf, ports


def _tenant_env(root: Path, name: str, user: str, port: str,
                args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """Home and store of one tenant (owned by its user) and its server's environment."""
    home, store = root / "home" / name, root / "stores" / name
    for d in (home, store):
        d.mkdir(parents=True)
        os.chown(d, uid(user), _gid(user))
        os.chmod(d, 0o700)
    return home, {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(store),
                  "HOME": str(home), "PATH": CLEAN_PATH,
                  "JANUS_EMU_STARTUP_DELAY_S": str(args.startup_delay)}


def bare_trial(users: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The emulators alone: N servers spawned straight from here (no supervisor), each as its
    user with supervisord's environment; seconds from the first spawn until all answer. The
    part of a cold start that is the emulator's own (Python start-up, imports, startup delay).
    """
    with scratch_dir("janus-bench-b") as root:
        emulator = copy_emulator(root)
        procs: list[subprocess.Popen[bytes]] = []
        ports = [str(SUPERVISORD_PORT_BASE + i) for i in range(len(users))]
        envs = [_tenant_env(root, f"t{i:02d}", u, p, args)
                for i, (u, p) in enumerate(zip(users, ports, strict=True))]
        try:
            began = time.monotonic()
            for user, (home, env) in zip(users, envs, strict=True):
                u, g = uid(user), _gid(user)
                procs.append(subprocess.Popen(
                    [str(emulator), "serve"], cwd=home, env=env, user=u, group=g,
                    extra_groups=[], start_new_session=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            bench_lifecycle.wait_all(ports, timeout_s=args.start_timeout, probe=answers_tcp)
            return {"cold_s": time.monotonic() - began}
        finally:
            for proc in procs:
                stop_process(proc)
            _kill_users(users)


def supervisord_trial(users: list[str], bin_dir: Path,
                      args: argparse.Namespace) -> dict[str, Any]:
    """PyPI supervisor's supervisord, one [program] per tenant, same users and emulator."""
    with scratch_dir("janus-bench-s") as root:
        emulator = copy_emulator(root)
        conf, ports = supervisord_conf(root, users, emulator, args)
        log = root / "supervisord.log"
        daemon = None
        try:
            with open(root / "supervisord.out", "wb") as out:
                began = time.monotonic()
                daemon = subprocess.Popen([str(bin_dir / "supervisord"), "-n", "-c", str(conf)],
                                          cwd=root, stdout=out, stderr=subprocess.STDOUT)
            cli = [str(bin_dir / "supervisorctl"), "-c", str(conf), "status"]
            return _measure(daemon, began, log, ports, answers_tcp, users, cli, args)
        finally:
            stop_process(daemon)
            _kill_users(users)


def _gid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _kill_users(users: list[str]) -> None:
    """Nothing of a trial survives into the next one (the users themselves stay)."""
    for user in users:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
    deadline = time.monotonic() + 5
    uids = {uid(u) for u in users}
    while _owned_pids(uids) and time.monotonic() < deadline:
        time.sleep(0.01)
