"""The tenant relay over real sockets: a unix socket in front of a loopback TCP backend."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

from supervisor.relay import Relay

class Gate:
    def __init__(self, ready: bool) -> None:
        self.name = "dev"
        self.ready = ready
        self.event = anyio.Event()
        self.waiting = anyio.Event()

    async def wait_ready(self, timeout_s: float) -> bool:
        self.waiting.set()
        with anyio.move_on_after(timeout_s):
            while not self.ready:
                await self.event.wait()
        return self.ready

    def describe_state(self) -> str:
        return "ready" if self.ready else "starting"

    async def make_ready_once_waited(self) -> None:
        await self.waiting.wait()
        self.ready = True
        self.event.set()


class EchoBackend:
    """Answers each request with a JSON body describing what arrived (head and body)."""

    def __init__(self) -> None:
        self.port = 0
        self.received: list[bytes] = []

    async def serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    return
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                if b"chunked" in head.lower() and not body.endswith(b"0\r\n\r\n"):
                    continue
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                if b"chunked" not in head.lower() and len(body) < length:
                    continue
                self.received.append(data)
                answer = json.dumps({"head": head.decode(), "body_len": len(body)}).encode()
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(answer), answer))
                data = b""

    async def connect(self) -> anyio.abc.SocketStream:
        return await anyio.connect_tcp("127.0.0.1", self.port)


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    _OPENED.append(opened)
    yield opened
    for sock in opened:
        sock.close()
    _OPENED.pop()


_OPENED: list[list[socket.socket]] = []


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    sock.setblocking(False)
    _OPENED[-1].append(sock)
    return sock


async def request(path: Path, raw: bytes) -> bytes:
    async with await anyio.connect_unix(str(path)) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return data
                if b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), None)
                    if length is not None and len(body) >= length:
                        return data


def body_of(answer: bytes) -> dict[str, object]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def run_relay(tmp_path: Path, gate: Gate, wait_s: float = 5.0):  # type: ignore[no-untyped-def]
    backend = EchoBackend()
    path = tmp_path / "dev.sock"
    sock = unix_listener(path)
    relay = Relay(gate, backend.connect, lambda: wait_s)
    return backend, path, sock, relay


async def test_host_header_is_rewritten_to_localhost(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)

        answer = await request(path, b"GET /api/tags HTTP/1.1\r\nHost: example.com\r\n\r\n")
        tg.cancel_scope.cancel()

    head = str(body_of(answer)["head"])
    assert "Host: localhost" in head
    assert "example.com" not in head


async def test_chunked_request_body_arrives_whole(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    raw = (b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)

        await request(path, raw)
        tg.cancel_scope.cancel()

    sent = backend.received[0]
    assert sent.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


async def test_keepalive_requests_are_each_rewritten(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    one = b"POST /a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc"
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)
        async with await anyio.connect_unix(str(path)) as stream:
            for _ in range(2):
                await stream.send(one)
                with anyio.fail_after(5):
                    while len(backend.received) < _ + 1:
                        await anyio.sleep(0.005)
        tg.cancel_scope.cancel()

    assert len(backend.received) == 2
    assert all(b"Host: localhost" in r and b"a.example" not in r for r in backend.received)


async def test_not_ready_tenant_answers_503_with_ollama_error(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=False), wait_s=0.1)
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)

        answer = await request(path, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tg.cancel_scope.cancel()

    assert answer.startswith(b"HTTP/1.1 503")
    assert body_of(answer) == {"error": "tenant dev is not ready (state starting)"}
    assert backend.received == []


async def test_connection_waits_for_readiness_then_is_relayed(tmp_path: Path) -> None:
    gate = Gate(ready=False)
    backend, path, sock, relay = await run_relay(tmp_path, gate, wait_s=10)
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)
        tg.start_soon(gate.make_ready_once_waited)

        answer = await request(path, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tg.cancel_scope.cancel()

    assert answer.startswith(b"HTTP/1.1 200")


async def test_malformed_request_gets_400_and_never_reaches_backend(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)

        answer = await request(path, b"NOT HTTP AT ALL\x00\r\n\r\n")
        tg.cancel_scope.cancel()

    assert answer.startswith(b"HTTP/1.1 400")
    assert backend.received == []
