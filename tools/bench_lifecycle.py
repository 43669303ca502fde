#!/usr/bin/env python3
"""Lifecycle benchmark of janus-supervisord with N emulator tenants (issue 4's figures).

Run as root from the repository (it creates N throwaway users and removes them):

    .venv/bin/python tools/bench_lifecycle.py --tenants 32 --startup-delay 0.5

Prints: cold start until every tenant answers through its socket and the CPU the daemon and
the tenants' processes used until then, daemon CPU over an idle period (liveness every 10 s),
kill -9 of a server → new pid and → answering again (median and range over several tenants),
and SIGTERM → every tenant process gone.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
# What the emulator's "#!/usr/bin/env python3" finds on the PATH a tenant is given.
EMULATOR_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable


def answers(sock_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(sock_path)
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def uid_pids(uid: int) -> set[int]:
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def make_config(root: Path, users: list[str], args: argparse.Namespace) -> Path:
    emulator = root / "ollama-emulator"
    shutil.copy2(REPO / "tools" / "ollama-emulator", emulator)
    shutil.copytree(REPO / "tools" / "ollama_emulator", root / "ollama_emulator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Compiled ahead, as an installed package would be (Ollama is a compiled binary): the
    # tenants cannot write a cache there, so each start would compile every module again.
    subprocess.run([EMULATOR_PYTHON, "-m", "compileall", "-q", str(root / "ollama_emulator")],
                   check=True, stdout=subprocess.DEVNULL)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() or p == emulator else 0o644)
    tenants = {}
    for i, user in enumerate(users):
        tenants[f"t{i:02d}"] = {
            "user": user,
            "models_dir": str(root / "stores" / f"t{i:02d}"),
            "socket": str(root / "run" / f"t{i:02d}.sock"),
            "network": args.network,
            "env": {"JANUS_EMU_STARTUP_DELAY_S": str(args.startup_delay)},
            "probe_period_s": 10,
            # The kills come after the idle window: by then every tenant has been ready this
            # long, so a kill measures a restart after a healthy run, never the backoff.
            "healthy_reset_s": min(20.0, args.idle),
            "stop_timeout_s": 5,
        }
    config = {
        "control": {"socket": str(root / "run" / "control.sock")},
        "ollama": {"binary": str(emulator), "port_range": [27000, 27999]},
        "state_dir": str(root / "state"),
        "log_dir": str(root / "log"),
        "tenants": tenants,
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def py_spy() -> str:
    """The py-spy to run: on the PATH, else beside this Python (the ``dev`` extra's venv)."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def wait_all(sockets: list[str], timeout_s: float = 120,
             probe: Callable[[str], bool] = answers) -> float:
    """Seconds until ``probe`` succeeds for every target (unix socket paths by default)."""
    began = time.monotonic()
    pending = list(sockets)
    while pending:
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{len(pending)} tenants not answering after {timeout_s}s")
        pending = [s for s in pending if not probe(s)]
        time.sleep(0.005)
    return time.monotonic() - began


def kill_trial(uid: int, sock_path: str,
               probe: Callable[[str], bool] = answers) -> tuple[float, float]:
    """kill -9 the server of ``uid``; seconds until a new pid, and until it answers again."""
    before = uid_pids(uid)
    server = min(before)  # the server is the oldest process of the user (runners come later)
    began = time.monotonic()
    os.kill(server, signal.SIGKILL)
    while not (uid_pids(uid) - before):
        time.sleep(0.0005)
    new_pid = time.monotonic() - began
    while not probe(sock_path):
        time.sleep(0.002)
    return new_pid, time.monotonic() - began


def cold_start_cpu(daemon_pid: int, uids: list[int]) -> str:
    """Where the CPU of a cold start went: the daemon, and every process of the tenant users.

    A tenant's process is the launcher that exec'd into the server, so its CPU covers both.
    Read right after every tenant answered; on a machine whose cores were busy all along,
    (daemon + tenants) / cores is a floor for the cold start before the startup delay.
    """
    daemon_s = sum(psutil.Process(daemon_pid).cpu_times()[:2])
    tenant_s = 0.0
    for uid in uids:
        for pid in uid_pids(uid):
            try:
                tenant_s += sum(psutil.Process(pid).cpu_times()[:2])
            except psutil.Error:
                pass
    cores = os.cpu_count() or 1
    return (f"CPU until all answering: daemon {daemon_s:.2f} s, tenant processes "
            f"{tenant_s:.2f} s ({tenant_s / len(uids) * 1000:.0f} ms each, launcher and "
            f"server); on {cores} cores at least {(daemon_s + tenant_s) / cores:.2f} s of work")


def summary(values: list[float]) -> str:
    if not values:
        return "not measured (--kills 0)"
    return (f"median {statistics.median(values) * 1000:7.1f} ms  "
            f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})")


def run(args: argparse.Namespace) -> None:
    root = Path(f"/tmp/janus-bench-{secrets.token_hex(3)}")
    root.mkdir(mode=0o755)
    tag = secrets.token_hex(2)
    users = [f"jb{tag}{i:02d}" for i in range(args.tenants)]
    for user in users:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", user], check=True)
    daemon = None
    try:
        config = make_config(root, users, args)
        sockets = [str(root / "run" / f"t{i:02d}.sock") for i in range(args.tenants)]
        began = time.monotonic()
        prefix = ["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []
        with open(root / "daemon.log", "wb") as daemon_log:  # the daemon keeps its own copy
            daemon = subprocess.Popen([sys.executable, *prefix, "-m", "supervisor.daemon",
                                       "--config", str(config)], cwd=REPO, stderr=daemon_log)
        while not all(os.path.exists(s) for s in sockets):
            time.sleep(0.002)
        cold = wait_all(sockets)
        print(f"cold start, daemon exec to all {args.tenants} answering: "
              f"{time.monotonic() - began:.3f} s (sockets bound to all answering {cold:.3f} s)")
        print(cold_start_cpu(daemon.pid, [_uid(u) for u in users]))

        proc = psutil.Process(daemon.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        rss = proc.memory_info().rss
        if args.profile:
            subprocess.run([py_spy(), "record", "-p", str(daemon.pid), "-d", str(int(args.idle)),
                            "-f", "raw", "-o", args.profile], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(args.idle)
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        print(f"daemon CPU over {args.idle:.0f} s idle (liveness every 10 s): {cpu:.3f} s; "
              f"RSS {rss / 2**20:.1f} MiB")

        log_text = (root / "daemon.log").read_text(errors="replace")
        unplanned = [line for line in log_text.splitlines()
                     if "-> backoff" in line or "liveness failed" in line]
        print(f"unplanned restarts or failed probes before the kill trials: {len(unplanned)}")
        for line in unplanned[:5]:
            print("  " + line[:160])
        new_pids, answering = [], []
        for i in range(min(args.kills, args.tenants)):
            a, b = kill_trial(_uid(users[i]), sockets[i])
            new_pids.append(a)
            answering.append(b)
        print(f"kill -9 -> new pid:          {summary(new_pids)}")
        print(f"kill -9 -> answering again:  {summary(answering)}")

        uids = [_uid(u) for u in users]
        began = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        while any(uid_pids(u) for u in uids):
            time.sleep(0.001)
        gone = time.monotonic() - began
        daemon.wait(timeout=60)
        print(f"SIGTERM -> every tenant process gone: {gone * 1000:.1f} ms "
              f"(daemon exited after {(time.monotonic() - began) * 1000:.1f} ms, "
              f"code {daemon.returncode})")
    except BaseException:
        print((root / "daemon.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for user in users:
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
            subprocess.run(["userdel", user], capture_output=True, check=False)
            subprocess.run(["groupdel", user], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=32)
    parser.add_argument("--startup-delay", type=float, default=0.5)
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window, seconds")
    parser.add_argument("--kills", type=int, default=10, help="tenants to kill -9, one by one")
    parser.add_argument("--network", choices=["host", "isolated"], default="host")
    parser.add_argument("--profile", help="py-spy the daemon during the idle window into FILE")
    parser.add_argument("--cprofile", help="run the daemon under cProfile, stats into FILE")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_lifecycle: run as root (it creates throwaway users)")
    run(args)


if __name__ == "__main__":
    main()
