#!/usr/bin/env python3
"""Wall time of ``janus-supervisorctl status``: median of N fresh processes (budget 60 ms).

Without ``--socket`` it serves the real control server with three static tenants in a thread
of its own, so only the CLI's start-up, one request and the table are measured:

    .venv/bin/python tools/bench_cli.py            # 20 runs
    .venv/bin/python tools/bench_cli.py --socket /run/janus-supervisor/control.sock

Exit status 0 when the median is within ``--budget-ms``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.config import ControlConfig
from supervisor.control import ControlServer
from supervisor.sockets import bind_unix_socket
from supervisor.status import DaemonStatus, TenantState, TenantStatus


class StaticAPI:
    """Three ready tenants; only the read routes ``status`` uses."""

    def __init__(self) -> None:
        self.tenants = [
            TenantStatus(name=name, state=TenantState.READY, ready=True, pid=1000 + i,
                         user=f"janus_{name}", socket=f"/run/janus-supervisor/{name}.sock",
                         since=0.0, uptime_s=3600.0)
            for i, name in enumerate(("admin", "dev", "qa"))
        ]

    def daemon_status(self) -> DaemonStatus:
        return DaemonStatus(version="bench", pid=os.getpid(), tenants=self.tenants)

    def tenant_names(self) -> list[str]:
        return [t.name for t in self.tenants]

    def tenant_status(self, name: str) -> TenantStatus:
        return next(t for t in self.tenants if t.name == name)

    def tenant_uid(self, name: str) -> int | None:
        return None

    def __getattr__(self, name: str) -> object:
        async def not_benchmarked(*args: object) -> None:
            raise NotImplementedError(f"{name} is not part of the benchmark")

        return not_benchmarked


def serve_in_thread(path: Path) -> threading.Event:
    """Run a control server on ``path`` until the returned event is set."""
    ready, stop = threading.Event(), threading.Event()

    async def main() -> None:
        bound = bind_unix_socket(path, mode=0o600, uid=os.geteuid(), gid=os.getegid())
        control = ControlConfig(socket=path, mode=0o600)
        server = ControlServer(StaticAPI(), control, bound)  # type: ignore[arg-type]
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.close()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    if not ready.wait(10):
        raise SystemExit("bench_cli: the control server did not start; see the error above")
    return stop


def measure(command: list[str], runs: int) -> list[float]:
    warm = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
    if warm.returncode not in (0, 4):  # 4: some tenant not ready, still a full answer
        raise SystemExit(f"bench_cli: {' '.join(command)} exited {warm.returncode}")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", help="measure against this running daemon instead")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--budget-ms", type=float, default=60.0)
    parser.add_argument("--cli", nargs="+", default=[sys.executable, "-m", "supervisor.cli"],
                        help="the CLI to run (default: this Python with -m supervisor.cli)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="janus-bench-") as scratch:
        path = Path(args.socket or Path(scratch) / "control.sock")
        stop = None if args.socket else serve_in_thread(path)
        samples = measure([*args.cli, "--socket", str(path), "status"], args.runs)
        if stop is not None:
            stop.set()
    median = statistics.median(samples)
    print(f"janus-supervisorctl status: median {median:.1f} ms, best {min(samples):.1f} ms, "
          f"worst {max(samples):.1f} ms over {len(samples)} runs (budget {args.budget_ms:g} ms)")
    return 0 if median <= args.budget_ms else 1


if __name__ == "__main__":
    sys.exit(main())
