"""The tenant relay over real sockets: a unix socket in front of a loopback TCP backend,
with and without a tenant policy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import httptools
import httpx
import pytest

from supervisor.config import TenantConfig
from supervisor.metrics import REGISTRY
from supervisor.policy import TenantPolicy
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
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                if b"chunked" not in head.lower() and len(body) < length:
                    continue
                self.received.append(data)
                answer = json.dumps({"head": head.decode(), "body_len": len(body)}).encode()
                await stream.send(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                data = b""

    async def connect(self) -> socket.socket:
        return await connect_tcp_socket(self.port)


async def connect_tcp_socket(port: int) -> socket.socket:
    """A connected non-blocking socket to ``127.0.0.1:port``, as ``Backend.connect_socket``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


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
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        None,
                    )
                    if length is not None and len(body) >= length:
                        return data


def body_of(answer: bytes) -> dict[str, object]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


async def run_relay(  # type: ignore[no-untyped-def]
    tmp_path: Path, gate: Gate, wait_s: float = 5.0
):
    backend = EchoBackend()
    path = tmp_path / "dev.sock"
    sock = unix_listener(path)
    relay = Relay(gate, backend.connect, lambda: wait_s)
    return backend, path, sock, relay


@contextlib.asynccontextmanager
async def relay_running(backend, relay: Relay, sock: socket.socket):  # type: ignore[no-untyped-def]
    """The backend and the relay serve while the body runs; both stop afterwards."""
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(relay.serve, sock)
        yield
        tg.cancel_scope.cancel()


async def test_host_header_is_rewritten_to_localhost(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    async with relay_running(backend, relay, sock):
        answer = await request(path, b"GET /api/tags HTTP/1.1\r\nHost: example.com\r\n\r\n")

    head = str(body_of(answer)["head"])
    assert "Host: localhost" in head
    assert "example.com" not in head


async def test_chunked_request_body_arrives_whole(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    raw = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with relay_running(backend, relay, sock):
        await request(path, raw)

    sent = backend.received[0]
    assert sent.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


async def test_keepalive_requests_are_each_rewritten(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    one = b"POST /a HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc"
    async with (
        relay_running(backend, relay, sock),
        await anyio.connect_unix(str(path)) as stream,
    ):
        for _ in range(2):
            await stream.send(one)
            with anyio.fail_after(5):
                while len(backend.received) < _ + 1:
                    await anyio.sleep(0.005)

    assert len(backend.received) == 2
    assert all(b"Host: localhost" in r and b"a.example" not in r for r in backend.received)


async def test_not_ready_tenant_answers_503_with_ollama_error(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=False), wait_s=0.1)
    async with relay_running(backend, relay, sock):
        answer = await request(path, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

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
    async with relay_running(backend, relay, sock):
        answer = await request(path, b"NOT HTTP AT ALL\x00\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 400")
    assert backend.received == []


# ---- the tenant policy at the socket ----------------------------------------------------

MODELS = ["janus-pro-7b:latest", "janus-pro-7b-qa:latest", "janus-pro-7b-dev:latest"]


def qa_policy(**overrides: object) -> TenantPolicy:
    cfg = TenantConfig.model_validate(
        {
            "user": "janus_qa",
            "models_dir": "/tmp/none",
            "socket": "/tmp/none.sock",
            "variants": [{"name": "janus-pro-7b-qa", "from": "janus-pro-7b"}],
            "policy": {"operations": ["read", "infer"], "images": False, **overrides},
        }
    )
    return TenantPolicy.from_config("qa", cfg)


class _Request:
    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""


class ApiBackend:
    """A small Ollama stand-in that records each request and answers by route.

    ``hold`` keeps the answer to ``POST /api/chat`` back until it is set.
    """

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[_Request] = []
        self.arrived = anyio.Event()
        self.hold: anyio.Event | None = None

    async def serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._handle)

    async def connect(self) -> socket.socket:
        return await connect_tcp_socket(self.port)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        done: list[_Request] = []
        current = _Request()

        class Collect:
            def on_url(self, url: bytes) -> None:
                current.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                current.headers.append((name, value))

            def on_body(self, body: bytes) -> None:
                current.body += body

            def on_message_complete(self) -> None:
                nonlocal current
                current.method = parser.get_method()
                done.append(current)
                current = _Request()

        parser = httptools.HttpRequestParser(Collect())
        async with stream:
            while True:
                try:
                    parser.feed_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while done:
                    request = done.pop(0)
                    self.requests.append(request)
                    self.arrived.set()
                    await stream.send(await self._answer(request))

    async def _answer(self, request: _Request) -> bytes:
        if request.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"
        if request.url == b"/api/tags":
            body = json.dumps({"models": [{"name": m, "model": m} for m in MODELS]}).encode()
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            )
        if request.url == b"/api/chat" and self.hold is not None:
            await self.hold.wait()
        body = json.dumps({"url": request.url.decode(), "body_len": len(request.body)}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def uds_client(path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    return httpx.AsyncClient(transport=transport, base_url="http://ollama.example", timeout=10)


def refusals(rule: str) -> float:
    return (
        REGISTRY.get_sample_value("janus_policy_refusals_total", {"tenant": "qa", "rule": rule})
        or 0.0
    )


CHAT = {"model": "janus-pro-7b-qa", "messages": [{"role": "user", "content": "hi"}]}
WITH_IMAGE = {**CHAT, "messages": [{"role": "user", "content": "hi", "images": ["AAAA"]}]}


async def run_policy_relay(  # type: ignore[no-untyped-def]
    tmp_path: Path, policy: TenantPolicy | None = None
):
    backend = ApiBackend()
    path = tmp_path / "qa.sock"
    sock = unix_listener(path)
    relay = Relay(
        Gate(ready=True), backend.connect, lambda: 5.0, policy=(lambda: policy) if policy else None
    )
    return backend, path, sock, relay


async def test_refused_request_never_reaches_backend_and_keeps_the_connection(
    tmp_path: Path,
) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    before = refusals("images")
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        refused = await http.post("/api/chat", json=WITH_IMAGE)
        answered = await http.post("/api/chat", json=CHAT)

    assert refused.status_code == 400
    assert refused.json() == {
        "error": "tenant qa: images are not allowed (tenants.qa.policy."
        "images is false); send the request without images"
    }
    assert answered.status_code == 200
    assert [r.url for r in backend.requests] == [b"/api/chat"]
    assert refusals("images") == before + 1


async def test_refusal_is_logged_with_rule_route_and_peer_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        with caplog.at_level(logging.WARNING, logger="supervisor.relay_connection"):
            await http.request("DELETE", "/api/delete", json={"model": "janus-pro-7b-qa"})

    [record] = [r for r in caplog.records if r.name == "supervisor.relay_connection"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"tenant qa: refused DELETE /api/delete from uid {os.getuid()} (rule operation): "
    )
    assert record.__dict__["tenant"] == "qa"


async def test_allowed_request_arrives_unchanged_but_for_host(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    body = json.dumps(CHAT).encode()
    raw = (
        b"POST /api/chat HTTP/1.1\r\nHost: ollama.example\r\nX-Trace: 1\r\n"
        b"Origin: http://localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with relay_running(backend, relay, sock):
        answer = await request(path, raw)

    [seen] = backend.requests
    assert answer.startswith(b"HTTP/1.1 200")
    assert seen.body == body
    assert seen.headers == [
        (b"X-Trace", b"1"),
        (b"Origin", b"http://localhost"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Host", b"localhost"),
    ]


async def test_chunked_inspected_body_is_relayed_whole(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    body = json.dumps(CHAT).encode()
    raw = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (body[:5], len(body) - 5, body[5:])
    )
    async with relay_running(backend, relay, sock):
        answer = await request(path, raw)

    assert answer.startswith(b"HTTP/1.1 200")
    assert backend.requests[0].body == body


async def test_model_list_shows_only_allowed_models(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        tags = await http.get("/api/tags")
        head = await http.head("/")

    assert [m["name"] for m in tags.json()["models"]] == ["janus-pro-7b-qa:latest"]
    assert tags.headers["content-length"] == str(len(tags.content))
    assert "transfer-encoding" not in tags.headers
    assert head.status_code == 200


async def test_without_policy_model_list_passes_untouched(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        tags = await http.get("/api/tags")
        refused_elsewhere = await http.post("/api/create", json={"model": "x"})

    assert [m["name"] for m in tags.json()["models"]] == MODELS
    assert refused_elsewhere.status_code == 200


async def test_oversized_body_gets_413_and_never_reaches_backend(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy(max_body_bytes=1024))
    big = {**CHAT, "pad": "x" * 200_000}
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        answer = await http.post("/api/chat", json=big)

    assert answer.status_code == 413
    assert "tenants.qa.policy.max_body_bytes" in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    assert backend.requests == []


async def test_blob_upload_beyond_its_limit_is_cut_off(tmp_path: Path) -> None:
    policy = qa_policy(operations=["manage"], max_blob_bytes=100_000)
    backend, path, sock, relay = await run_policy_relay(tmp_path, policy)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 65536

    async with relay_running(backend, relay, sock), uds_client(path) as http:
        declared = await http.post("/api/blobs/sha256:00", content=b"x" * 200_000)
        streamed = await http.post("/api/blobs/sha256:00", content=chunks())

    assert declared.status_code == streamed.status_code == 413
    assert "tenants.qa.policy.max_blob_bytes" in streamed.json()["error"]
    assert backend.requests == []


async def test_requests_in_flight_counts_forwarded_until_answered(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    backend.hold = anyio.Event()
    seen: list[int] = []
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        async with anyio.create_task_group() as inner:
            inner.start_soon(functools.partial(http.post, "/api/chat", json=CHAT))
            await backend.arrived.wait()
            seen.append(relay.requests_in_flight())
            backend.hold.set()
        seen.append(relay.requests_in_flight())
        await http.head("/")
        seen.append(relay.requests_in_flight())

    assert seen == [1, 0, 0]


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    body = json.dumps(CHAT).encode()
    chat = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    create = b"POST /api/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with (
        relay_running(backend, relay, sock),
        await anyio.connect_unix(str(path)) as stream,
    ):
        await stream.send(chat + create + head + chat + last)
        await stream.send_eof()
        data = b""
        with anyio.fail_after(10):
            while chunk := await receive_or_empty(stream):
                data += chunk

    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"403", b"200", b"200", b"200"]
    assert [r.url for r in backend.requests] == [b"/api/chat", b"/", b"/api/chat", b"/api/version"]
    assert relay.requests_in_flight() == 0


async def receive_or_empty(stream: anyio.abc.SocketStream) -> bytes:
    try:
        return await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


async def test_expect_continue_on_inspected_route_is_answered_by_the_relay(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    body = json.dumps(CHAT).encode()
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with (
        relay_running(backend, relay, sock),
        await anyio.connect_unix(str(path)) as stream,
    ):
        await stream.send(head)
        with anyio.fail_after(10):
            interim = await stream.receive()
            await stream.send(body)
            final = await stream.receive()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200")
    assert (b"Expect", b"100-continue") not in backend.requests[0].headers


async def test_percent_encoded_route_is_judged_as_decoded(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        answer = await http.post("/api/%63reate", json={"model": "janus-pro-7b-qa"})

    assert answer.status_code == 403
    assert backend.requests == []


async def test_broken_chunked_body_gets_400_without_waiting_for_the_server(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    raw = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nzz\r\n"
    )
    async with relay_running(backend, relay, sock):
        answer = await request(path, raw)

    assert answer.startswith(b"HTTP/1.1 400")
    assert relay.requests_in_flight() == 0


async def test_absolute_form_target_reaches_the_server_as_a_path(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    raw = b"GET http://ollama:11434/api/version?x=1 HTTP/1.1\r\nHost: ollama\r\n\r\n"
    async with relay_running(backend, relay, sock):
        answer = await request(path, raw)

    assert answer.startswith(b"HTTP/1.1 200")
    assert [r.url for r in backend.requests] == [b"/api/version?x=1"]


async def test_refused_head_request_gets_no_body_and_keeps_the_connection(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    async with relay_running(backend, relay, sock), uds_client(path) as http:
        refused = await http.head("/api/blobs/sha256:00")
        answered = await http.get("/api/version")

    assert refused.status_code == 403 and refused.content == b""
    assert answered.status_code == 200 and answered.json()["url"] == "/api/version"


# ---- flow control, stray bytes and stopping, over raw sockets ------------------------------

LARGE = 64 << 20  # far more than every socket buffer on the way can hold


class RawBackend:
    """A backend on plain non-blocking sockets; ``handler`` runs once per connection."""

    def __init__(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.handler = handler
        self.port = 0

    async def serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            task_status.started()
            async with anyio.create_task_group() as tg:
                while True:
                    conn, _ = await loop.sock_accept(listener)
                    tg.start_soon(self._run, conn)

    async def _run(self, conn: socket.socket) -> None:
        with conn:
            await self.handler(conn)

    async def connect(self) -> socket.socket:
        return await connect_tcp_socket(self.port)


class Sender:
    """Sends bytes on a non-blocking socket; ``stalled`` is set once the peer has taken
    nothing for half a second (it stopped reading, and every buffer on the way is full)."""

    def __init__(self) -> None:
        self.sent = 0
        self.stalled = anyio.Event()

    async def send(self, sock: socket.socket, total: int) -> None:
        block = b"x" * (1 << 16)
        while self.sent < total:
            try:
                self.sent += sock.send(block[: total - self.sent])
                continue
            except BlockingIOError:
                pass
            with anyio.move_on_after(0.5) as waited:
                await anyio.wait_writable(sock)
            if waited.cancelled_caught:
                self.stalled.set()


async def read_head(sock: socket.socket) -> bytes:
    """Read up to the end of a message head; return what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.get_running_loop().sock_recv(sock, 65536)
        assert chunk, "the peer closed before the end of the head"
        data += chunk
    return data.partition(b"\r\n\r\n")[2]


async def count_bytes(sock: socket.socket, wanted: int) -> int:
    """Read until ``wanted`` bytes came or the peer closed; return how many came."""
    got = 0
    while got < wanted:
        chunk = await asyncio.get_running_loop().sock_recv(sock, 1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


async def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    _OPENED[-1].append(sock)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


def raw_relay(tmp_path: Path, handler) -> tuple[RawBackend, Path, socket.socket, Relay]:  # type: ignore[no-untyped-def]
    backend = RawBackend(handler)
    path = tmp_path / "raw.sock"
    return backend, path, unix_listener(path), Relay(Gate(ready=True), backend.connect, lambda: 5.0)


async def test_client_that_stops_reading_holds_back_a_large_response(tmp_path: Path) -> None:
    sender = Sender()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % LARGE

    async def answer_large(conn: socket.socket) -> None:
        await read_head(conn)
        await asyncio.get_running_loop().sock_sendall(conn, head)
        await sender.send(conn, LARGE)

    backend, path, sock, relay = raw_relay(tmp_path, answer_large)
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        await asyncio.get_running_loop().sock_sendall(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(20):
            await sender.stalled.wait()
            held_back = LARGE - sender.sent
            received = await count_bytes(client, len(head) + LARGE)

    assert held_back > LARGE // 2
    assert received == len(head) + LARGE


async def test_backend_that_stops_reading_holds_back_a_large_upload(tmp_path: Path) -> None:
    sender, release = Sender(), anyio.Event()

    async def absorb_when_released(conn: socket.socket) -> None:
        early = len(await read_head(conn))
        await release.wait()
        body = b"%d" % (early + await count_bytes(conn, LARGE - early))
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        await asyncio.get_running_loop().sock_sendall(conn, answer)

    backend, path, sock, relay = raw_relay(tmp_path, absorb_when_released)
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        head = b"POST /api/blobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % LARGE
        await asyncio.get_running_loop().sock_sendall(client, head)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender.send, client, LARGE)
                await sender.stalled.wait()
                held_back = LARGE - sender.sent
                release.set()
            answer = await asyncio.get_running_loop().sock_recv(client, 65536)

    assert held_back > LARGE // 2
    assert answer.endswith(b"\r\n\r\n%d" % LARGE)


async def test_bytes_no_request_asked_for_close_the_client_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def chatter(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(conn, b"unasked-for bytes")
        await loop.sock_recv(conn, 1)  # until the relay closes

    backend, path, sock, relay = raw_relay(tmp_path, chatter)
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        with anyio.fail_after(10):
            answer = await asyncio.get_running_loop().sock_recv(client, 65536)

    assert answer == b""
    assert "the server sent 17 bytes no request asked for" in caplog.text


async def test_stopping_the_relay_closes_its_open_connections(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    relay_scope = anyio.CancelScope()

    async def serve_until_stopped() -> None:
        with relay_scope:
            await relay.serve(sock)

    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        tg.start_soon(serve_until_stopped)
        async with await anyio.connect_unix(str(path)) as stream:
            await stream.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(10):
                first = b""
                while not first.endswith(b"}"):
                    first += await stream.receive()
                relay_scope.cancel()
                rest = await receive_or_empty(stream)
        tg.cancel_scope.cancel()

    assert first.startswith(b"HTTP/1.1 200")
    assert rest == b""
    assert relay.requests_in_flight() == 0


# ---- bounds on request heads and idle connections -----------------------------------------


async def recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes (or resets)."""
    data = b""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


async def send_endless(sock: socket.socket, block: bytes, sent: list[int], pause: float) -> None:
    """Send ``block`` again and again (``pause`` apart) until the peer stops taking it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.sock_sendall(sock, block)
        except OSError:
            return
        sent[0] += len(block)
        if pause:
            await anyio.sleep(pause)


ENDLESS_HEAD = b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX: "


async def test_oversized_head_gets_431_and_the_relay_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, qa_policy())
    sent = [0]
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        await asyncio.get_running_loop().sock_sendall(client, ENDLESS_HEAD)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_endless, client, b"a" * 4096, sent, 0)
                answer = await recv_all(client)
                sent_by_answer = sent[0]
                tg.cancel_scope.cancel()
        async with uds_client(path) as http:
            after = await http.get("/api/version")

    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close\r\n" in answer
    assert body_of(answer) == {
        "error": "tenant dev: request head too large: the request line and headers are larger "
        "than 65536 bytes; send fewer or shorter headers"
    }
    # Refused after a bounded amount (the socket buffers on the way hold some more).
    assert sent_by_answer < 4 << 20
    assert after.status_code == 200
    assert [r.url for r in backend.requests] == [b"/api/version"]
    assert f"tenant dev: request head too large from uid {os.getuid()}" in caplog.text


async def test_oversized_head_in_one_piece_is_refused_after_earlier_requests(
    tmp_path: Path,
) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    first = b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"
    huge = b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: %s\r\n" % (b"p" * 70_000) + b"\r\n"
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        await asyncio.get_running_loop().sock_sendall(client, first + huge)
        with anyio.fail_after(10):
            data = await recv_all(client)

    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200", b"431"]
    assert [r.url for r in backend.requests] == [b"/api/version"]
    assert relay.requests_in_flight() == 0


async def test_head_just_under_the_limit_is_relayed(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    pads = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(60))
    raw = b"GET /api/version HTTP/1.1\r\nHost: x\r\n" + pads + b"\r\n"
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        loop = asyncio.get_running_loop()
        for i in range(0, len(raw), 1000):  # in pieces, so that the head spans reads
            await loop.sock_sendall(client, raw[i : i + 1000])
        with anyio.fail_after(10):
            answer = await loop.sock_recv(client, 65536)

    assert answer.startswith(b"HTTP/1.1 200")
    assert len(backend.requests[0].headers) == 61


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("supervisor.relay_timers.HEAD_TIMEOUT_S", 0.3)
    monkeypatch.setattr("supervisor.relay_timers.IDLE_TIMEOUT_S", 0.3)


@pytest.mark.usefixtures("short_timeouts")
async def test_head_sent_byte_by_byte_gets_408(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        await asyncio.get_running_loop().sock_sendall(client, ENDLESS_HEAD)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_endless, client, b"a", [0], 0.02)
                answer = await recv_all(client)
                tg.cancel_scope.cancel()

    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert body_of(answer) == {"error": "tenant dev: the request head did not arrive within 0.3 s"}
    assert backend.requests == []


@pytest.mark.usefixtures("short_timeouts")
async def test_idle_connections_are_closed_quietly(tmp_path: Path) -> None:
    backend, path, sock, relay = await run_policy_relay(tmp_path, None)
    async with relay_running(backend, relay, sock):
        silent = await unix_client(path)
        used = await unix_client(path)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(used, b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(10):
            assert await recv_all(silent) == b""
            answer = await recv_all(used)

    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"}")  # the response, then the close: no error answer


@pytest.mark.usefixtures("short_timeouts")
async def test_slow_streaming_response_and_slow_upload_are_not_cut(tmp_path: Path) -> None:
    pieces = 12  # 0.1 s apart: four times the (short) timeouts

    async def stream_slowly(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await read_head(conn)
        await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            await anyio.sleep(0.1)
            await loop.sock_sendall(conn, b"1\r\nx\r\n")
        await loop.sock_sendall(conn, b"0\r\n\r\n")
        await loop.sock_recv(conn, 1)  # until the relay closes

    backend, path, sock, relay = raw_relay(tmp_path, stream_slowly)
    async with relay_running(backend, relay, sock):
        client = await unix_client(path)
        await asyncio.get_running_loop().sock_sendall(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with anyio.fail_after(10):
            streamed = await recv_all(client)  # the whole response, then the idle close
    assert streamed.endswith(b"1\r\nx\r\n" * pieces + b"0\r\n\r\n")

    echo, path, sock, relay = await run_relay(tmp_path, Gate(ready=True))
    upload = b"POST /api/blobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % pieces
    async with relay_running(echo, relay, sock), await anyio.connect_unix(str(path)) as stream:
        await stream.send(upload)
        for _ in range(pieces):
            await anyio.sleep(0.1)
            await stream.send(b"u")
        with anyio.fail_after(10):
            uploaded = await stream.receive()
    assert uploaded.startswith(b"HTTP/1.1 200")
    assert body_of(uploaded)["body_len"] == pieces
