"""Relay comparison: janus tenant socket vs direct TCP vs nginx (unix socket → TCP), one run.

One backend process (``backend.py``, standard-library asyncio, prebuilt 100-byte and 1 MiB
responses) is started by janus-supervisord as the "ollama binary" of one ``network: host``
tenant with a fixed loopback port; the three paths reach that same process:

- ``direct``: TCP to 127.0.0.1:PORT;
- ``janus``: the tenant's unix socket (the daemon's relay; policy ``operations: all``,
  ``models: any``, so no route or body checks, like a plain proxy);
- ``nginx``: Debian's nginx, own config in the scratch dir, ``worker_processes 1``, listening on
  a unix socket, ``proxy_pass`` to an upstream ``127.0.0.1:PORT`` with ``keepalive 16``,
  HTTP/1.1, ``Host: localhost``, ``proxy_buffering off``, ``keepalive_requests`` raised so
  no connection is closed mid-run (streams like the relay does);
- ``nginx-buffered``: the same nginx and upstream on a second unix socket with
  ``proxy_buffering on`` (nginx's default), for reference; the targets compare with ``nginx``.

The load generator is the same for all three: worker processes (fork), each with one
keep-alive connection (``bench_relay.Reader``), closed loop, ``GET /bench/small`` with 8
concurrent clients for requests/s and p50/p99 latency, then ``GET /bench/big`` (1 MiB) on one
connection for MB/s (10^6 bytes). Rounds alternate the paths. The proxy's own CPU time per
small request (the janus daemon; nginx's worker) is read from /proc around each load.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import bench_lifecycle  # type: ignore[import-not-found]
import psutil
import yaml
from bench_relay import Reader  # type: ignore[import-not-found]
from common import (  # type: ignore[import-not-found]
    REPO,
    ensure_nginx,
    scratch_dir,
    stop_process,
    throwaway_users,
)

SMALL = b"GET /bench/small HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"
BIG = b"GET /bench/big HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"
PATHS = ("direct", "janus", "nginx", "nginx-buffered")
Target = tuple[str, str]  # ("tcp", "PORT") or ("unix", PATH)


def _connect(target: Target) -> socket.socket:
    kind, where = target
    if kind == "tcp":
        sock = socket.create_connection(("127.0.0.1", int(where)), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(where)
    return sock


def _worker(target: Target, request: bytes, start_at: float, duration: float,
            out: Any) -> None:
    try:
        sock = _connect(target)
        reader = Reader(sock)
        for _ in range(10):
            reader.exchange(request)
        while time.monotonic() < start_at:
            time.sleep(0.0002)
        end = start_at + duration
        lat = array("q")
        moved = 0
        while True:
            t0 = time.perf_counter_ns()
            moved += reader.exchange(request)
            lat.append(time.perf_counter_ns() - t0)
            if time.monotonic() >= end:
                break
        elapsed = time.monotonic() - start_at
        sock.close()
        out.send((lat.tobytes(), moved, elapsed, None))
    except Exception as exc:  # noqa: BLE001  # reported by the parent
        out.send((b"", 0, 0.0, f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


def warm_up_s(clients: int) -> float:
    """Seconds from the start of ``load`` to its measured window (connections, warm-up)."""
    return 0.5 + 0.05 * clients


def load(target: Target, request: bytes, clients: int, duration: float) -> dict[str, Any]:
    """Closed-loop load: ``clients`` processes for ``duration`` s; latencies in ns."""
    ctx = mp.get_context("fork")
    start_at = time.monotonic() + warm_up_s(clients)
    pipes, procs = [], []
    for _ in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(target, request, start_at, duration, child))
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    lat, moved, elapsed, errors = array("q"), 0, 0.0, []
    for pipe, proc in zip(pipes, procs, strict=True):
        data, nbytes, secs, error = pipe.recv()
        proc.join(30)
        if error:
            errors.append(error)
            continue
        lat.frombytes(data)
        moved += nbytes
        elapsed = max(elapsed, secs)
    if errors:
        raise RuntimeError(f"load on {target}: {errors[0]}")
    return {"lat": lat, "requests": len(lat), "bytes": moved, "elapsed": elapsed}


def nginx_conf(root: Path, port: int) -> tuple[Path, str]:
    tmp = root / "nginx-tmp"
    tmp.mkdir()
    sock = root / "nginx.sock"
    conf = root / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
user root root;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{
        server 127.0.0.1:{port};
        keepalive 16;
        keepalive_requests 10000000;
    }}
    server {{
        listen unix:{sock};
        keepalive_requests 10000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_buffering off;
        }}
    }}
    server {{
        listen unix:{sock}.buffered;
        keepalive_requests 10000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_buffering on;
        }}
    }}
}}
""")
    return conf, str(sock)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(target: Target, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited {proc.returncode} while starting")
        try:
            with _connect(target) as sock:
                Reader(sock).exchange(SMALL)
                return
        except (OSError, RuntimeError, IndexError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _cpu(procs: list[psutil.Process]) -> float:
    """User+system CPU seconds of ``procs`` so far."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def _stop_nginx(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        workers = []
    stop_process(proc)
    for w in workers:
        try:
            w.kill()
        except psutil.Error:
            pass


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Measure the three paths, ``args.relay_rounds`` alternating rounds; raw results."""
    nginx = ensure_nginx()
    results: dict[str, dict[str, Any]] = {
        p: {"lat": array("q"), "rps": [], "mbps": [], "cpu_us": []} for p in PATHS}
    with throwaway_users(1) as users, scratch_dir("janus-bench-r") as root:
        backend = root / "backend.py"
        shutil.copy2(Path(__file__).with_name("backend.py"), backend)
        os.chmod(backend, 0o755)
        port = _free_port()
        config = {
            "control": {"socket": str(root / "run" / "control.sock")},
            "ollama": {"binary": str(backend), "port_range": [port, port]},
            "state_dir": str(root / "state"),
            "log_dir": str(root / "log"),
            "tenants": {"relay": {
                "user": users[0], "models_dir": str(root / "stores" / "relay"),
                "socket": str(root / "run" / "relay.sock"), "network": "host", "port": port,
                "policy": {"operations": "all", "models": "any"},
            }},
        }
        (root / "relay.yaml").write_text(yaml.safe_dump(config))
        daemon = ng = None
        try:
            with open(root / "daemon.log", "wb") as err:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "supervisor.daemon", "--config",
                     str(root / "relay.yaml")], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            conf, ng_sock = nginx_conf(root, port)
            with open(root / "nginx.out", "wb") as out:
                ng = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"],
                                      stdout=out, stderr=subprocess.STDOUT)
            targets: dict[str, Target] = {
                "direct": ("tcp", str(port)),
                "janus": ("unix", str(root / "run" / "relay.sock")),
                "nginx": ("unix", ng_sock),
                "nginx-buffered": ("unix", ng_sock + ".buffered"),
            }
            try:
                for name in PATHS:
                    _wait(targets[name], 60, [daemon, ng])
            except BaseException:
                print((root / "daemon.log").read_text(errors="replace")[-2000:],
                      file=sys.stderr)
                raise
            # the proxy's own CPU per small request: the daemon, or nginx's worker(s)
            proxies: dict[str, list[psutil.Process]] = {
                "direct": [], "janus": [psutil.Process(daemon.pid)],
                "nginx": psutil.Process(ng.pid).children(),
            }
            proxies["nginx-buffered"] = proxies["nginx"]
            for rnd in range(args.relay_rounds):
                for name in PATHS:
                    spy = None
                    if name == "janus" and rnd == 0 and getattr(args, "relay_profile", None):
                        # py-spy the daemon during the first round's 100-byte load
                        spy = subprocess.Popen(
                            [bench_lifecycle.py_spy(),
                             "record", "-p", str(daemon.pid), "-f", "raw", "-o",
                             args.relay_profile, "-d",
                             str(math.ceil(warm_up_s(args.relay_clients) + args.relay_duration))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    cpu0 = _cpu(proxies[name])
                    small = load(targets[name], SMALL, args.relay_clients, args.relay_duration)
                    cpu = _cpu(proxies[name]) - cpu0
                    if spy is not None:
                        spy.wait()
                    res = results[name]
                    res["lat"].extend(small["lat"])
                    if proxies[name]:
                        res["cpu_us"].append(cpu / small["requests"] * 1e6)
                    res["rps"].append(small["requests"] / small["elapsed"])
                    big = load(targets[name], BIG, 1, args.relay_big_duration)
                    res["mbps"].append(big["bytes"] / big["elapsed"] / 1e6)
        finally:
            _stop_nginx(ng)
            stop_process(daemon)
    for res in results.values():
        lat = sorted(res.pop("lat"))
        res["p50_us"] = lat[len(lat) // 2] / 1000 if lat else float("nan")
        res["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else 0.0
        res["samples"] = len(lat)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
