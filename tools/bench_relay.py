#!/usr/bin/env python3
"""Benchmark the tenant relay: small-chat latency and 1 MiB response throughput, policy off/on.

    .venv/bin/python tools/bench_relay.py [--rounds 5] [--requests 3000]
                                                    [--big 300] [--baseline-ref 567f20b]

Three processes: a tiny backend (httptools, loopback TCP) that answers ``POST /api/chat`` with
as many bytes as the request's ``options.num_predict`` asks, one ``Relay`` on a unix socket,
and this client with one keep-alive connection. Each measurement uses a fresh relay process:

- ``direct``: the client talks to the backend over TCP, no relay (reference);
- ``off``: ``Relay`` without a policy (Host rewrite, completion tracking);
- ``on``: ``Relay`` with qa's policy (read+infer, its variant only, no images): every chat
  body is buffered, parsed and checked;
- ``before``: with ``--baseline-ref``, ``supervisor/relay.py`` as of that git revision.

Prints the median and p90 latency of a small chat request, the relay process's CPU time per
small request, and the MiB/s of 1 MiB responses, each the median over interleaved rounds. Not a
test: numbers depend on the machine (on a small one, the three processes share the cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMALL_REPLY = 320  # about an Ollama non-streaming chat answer
BIG_REPLY = 1 << 20
Figures = tuple[float, float, float, float, float]  # µs median, p90, CPU/req; MiB/s; CPU/MiB


# ---- backend (child process) ------------------------------------------------------------


def run_backend() -> None:
    import asyncio

    import httptools

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.body = b""
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            size = json.loads(self.body or b"{}").get("options", {}).get("num_predict", 17)
            self.body = b""
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % size + b"x" * size
            )

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(serve())


# ---- relay (child process) --------------------------------------------------------------


class _Gate:
    name = "qa"

    async def wait_ready(self, timeout_s: float) -> bool:
        return True

    def describe_state(self) -> str:
        return "ready"


def _qa_policy() -> Any:
    from supervisor.config import TenantConfig
    from supervisor.policy import TenantPolicy

    cfg = TenantConfig.model_validate(
        {
            "user": "janus_qa",
            "models_dir": "/tmp/none",
            "socket": "/tmp/none.sock",
            "variants": [{"name": "janus-pro-7b-qa", "from": "janus-pro-7b"}],
            "policy": {"operations": ["read", "infer"], "models": "variants", "images": False},
        }
    )
    return TenantPolicy.from_config("qa", cfg)


def _relay_module(mode: str, ref: str | None) -> Any:
    if mode != "before":
        import supervisor.relay

        return supervisor.relay
    source = subprocess.run(
        ["git", "show", f"{ref}:supervisor/relay.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "relay_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("relay_before", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_relay(mode: str, sock_path: str, port: int, ref: str | None) -> None:
    import anyio

    module = _relay_module(mode, ref)

    async def connect() -> Any:
        if mode == "before" and not hasattr(module, "Connection"):
            return await anyio.connect_tcp("127.0.0.1", port)  # relay.py before transports
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        return sock

    if mode == "on":
        policy = _qa_policy()
        relay = module.Relay(_Gate(), connect, lambda: 5.0, policy=lambda: policy)
    else:
        relay = module.Relay(_Gate(), connect, lambda: 5.0)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(sock_path)
    sock.listen(64)
    sock.setblocking(False)

    async def serve() -> None:
        print("ready", flush=True)
        await relay.serve(sock)

    anyio.run(serve)


# ---- client -----------------------------------------------------------------------------


def chat_request(size: int) -> bytes:
    body = json.dumps(
        {
            "model": "janus-pro-7b-qa",
            "stream": False,
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "options": {"num_predict": size},
        }
    ).encode()
    return (
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class Reader:
    """Reads whole Content-Length responses from a socket into one reused buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(4 << 20)
        self.view = memoryview(self.buf)

    def exchange(self, request: bytes) -> int:
        """Send one request; read exactly one response; return its body size."""
        self.sock.sendall(request)
        have = 0
        while (end := self.buf.find(b"\r\n\r\n", 0, have)) < 0:
            have += self.sock.recv_into(self.view[have:])
        head = bytes(self.buf[:end]).lower()
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        left = end + 4 + length - have
        while left > 0:
            left -= self.sock.recv_into(self.view, min(left, len(self.buf)))
        return length


def cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds used so far by process ``pid`` (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(connect: Any, requests: int, big: int, relay_pid: int | None = None) -> Figures:
    """Latency of small chats, then throughput of 1 MiB answers, on one connection."""
    sock = connect()
    reader = Reader(sock)
    small, large = chat_request(SMALL_REPLY), chat_request(BIG_REPLY)
    for _ in range(requests // 10):
        reader.exchange(small)
    times = []
    cpu = cpu_s(relay_pid)
    for _ in range(requests):
        start = time.perf_counter_ns()
        reader.exchange(small)
        times.append(time.perf_counter_ns() - start)
    cpu_us = (cpu_s(relay_pid) - cpu) / requests * 1e6
    start, cpu = time.perf_counter(), cpu_s(relay_pid)
    moved = sum(reader.exchange(large) for _ in range(big)) / (1 << 20)
    rate = moved / (time.perf_counter() - start)
    cpu_per_mib = (cpu_s(relay_pid) - cpu) / moved * 1e6
    sock.close()
    times.sort()
    p90 = times[int(len(times) * 0.9)] / 1000
    return statistics.median(times) / 1000, p90, cpu_us, rate, cpu_per_mib


def spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Run this script with ``args``; returns the process and its first output line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def measure_mode(mode: str, port: str, requests: int, big: int, ref: str | None) -> Figures:
    if mode == "direct":
        return measure(lambda: socket.create_connection(("127.0.0.1", int(port))), requests, big)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/qa.sock"
        relay, _ = spawn("_relay", mode, path, port, ref or "")

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock

        try:
            return measure(connect, requests, big, relay.pid)
        finally:
            relay.terminate()
            relay.wait()


def bench(modes: list[str], rounds: int, requests: int, big: int, ref: str | None) -> None:
    """Measure every mode ``rounds`` times, interleaved; report the median of each figure."""
    backend, port = spawn("_backend")
    runs: dict[str, list[Figures]] = {mode: [] for mode in modes}
    try:
        for _ in range(rounds):
            for mode in modes:
                runs[mode].append(measure_mode(mode, port, requests, big, ref))
    finally:
        backend.terminate()
        backend.wait()
    results = {}
    for mode, figures in runs.items():
        medians = [statistics.median(column) for column in zip(*figures, strict=True)]
        results[mode] = (medians[0], medians[1], medians[2], medians[3], medians[4])
    report(results, rounds, requests, big)


def report(results: dict[str, Figures], rounds: int, requests: int, big: int) -> None:
    print(
        f"median of {rounds} interleaved rounds; per round: {requests} small chats "
        f"(reply {SMALL_REPLY} B) on one connection, then {big} responses of 1 MiB"
    )
    print(
        f"{'mode':<8} {'median µs':>10} {'p90 µs':>8} {'relay CPU µs/req':>17} {'MiB/s':>8} "
        f"{'relay CPU µs/MiB':>17}"
    )
    for mode, (median, p90, cpu, rate, cpu_mib) in results.items():
        per_req, per_mib = (f"{cpu:.1f}", f"{cpu_mib:.0f}") if mode != "direct" else ("-", "-")
        print(f"{mode:<8} {median:>10.1f} {p90:>8.1f} {per_req:>17} {rate:>8.0f} {per_mib:>17}")
    if "off" in results and "on" in results:
        added = results["on"][0] - results["off"][0]
        ratio = results["on"][3] / results["off"][3]
        print(
            f"policy on adds {added:.1f} µs to the median (target <= 100 µs); "
            f"1 MiB throughput on/off = {ratio:.2f}"
        )


def main() -> None:
    if sys.argv[1:2] == ["_backend"]:
        run_backend()
        return
    if sys.argv[1:2] == ["_relay"]:
        mode, path, port, ref = sys.argv[2:6]
        run_relay(mode, path, int(port), ref or None)
        return
    parser = argparse.ArgumentParser(description="Benchmark the tenant relay, policy off/on.")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per mode")
    parser.add_argument("--requests", type=int, default=3000, help="small chats per round")
    parser.add_argument("--big", type=int, default=300, help="1 MiB responses per round")
    parser.add_argument(
        "--baseline-ref",
        default=None,
        help="also measure supervisor/relay.py as of this git revision",
    )
    args = parser.parse_args()
    modes = ["direct", "off", "on"] + (["before"] if args.baseline_ref else [])
    bench(modes, args.rounds, args.requests, args.big, args.baseline_ref)


if __name__ == "__main__":
    main()
