"""The tenant endpoint: a unix socket the daemon owns, relayed to the tenant's backend.

Stock Ollama cannot listen on a unix socket, and when bound to loopback it answers 403 to any
``Host`` that is not local-looking (``curl --unix-socket`` sends ``localhost``, but httpx and
``http+unix://`` clients send other names). So each client connection gets its own backend
connection; requests from the client are parsed with ``httptools`` and re-sent with
``Host: localhost``, bodies streamed chunk by chunk. While the tenant is not ready a new
connection waits a bounded time, then gets a 503 with an Ollama-style JSON error.

The tenant's ``TenantPolicy`` decides on each request line: refuse it (an Ollama-style JSON
error, counted in ``janus_policy_refusals_total`` and logged with the peer's uid), stream it, or
buffer its JSON body to check the models and images it names. A refused request never reaches
the server. Other headers, ``Origin`` included, pass unchanged, so Ollama's own CORS check
(``OLLAMA_ORIGINS``) still applies; dropping a foreign ``Origin`` would let any web page behind
a proxy drive the tenant.

Responses are copied byte for byte while an ``httptools`` response parser marks where each one
ends; only model lists (``/api/tags``, ``/api/ps``, ``/v1/models``) seen through a policy that
restricts models are buffered and rewritten. Requests on one connection are forwarded one at a
time: the next goes upstream when the previous response is complete, as Ollama would serve them
anyway. That keeps refusals in order and makes ``requests_in_flight`` exact.
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc

from supervisor.metrics import POLICY_REFUSALS
from supervisor.policy import Plan, Refusal, Rule, TenantPolicy
from supervisor.relay_http import (
    END,
    LISTING_LIMIT,
    Event,
    Exchange,
    Head,
    ListingExchange,
    ListingTooLarge,
    RequestReader,
    error_response,
)
from supervisor.sockets import peer_credentials

log = logging.getLogger(__name__)

_READ = 65536
# asyncio's transport reads up to 256 KiB at a time; asking for less makes anyio split (copy)
# every such chunk, which costs more CPU than the relay's own work on a streamed response.
_READ_UPSTREAM = 256 << 10
_HEAD_TIMEOUT_S = 10.0
_DISCARD_LIMIT = 64 << 10  # a refused body up to this size is read and dropped; larger: close
_LINGER_S = 2.0  # after a refusal that closes, read the client's leftovers this long
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_OPEN = Plan("", None)  # what every request gets when no policy is set
_STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class ReadinessGate(Protocol):
    """What the relay needs from a tenant."""

    name: str

    async def wait_ready(self, timeout_s: float) -> bool: ...

    def describe_state(self) -> str: ...


class _Close(Exception):
    """The client connection must end after what was sent; read its leftovers briefly."""


class _Mode(enum.Enum):
    IDLE = "idle"  # between requests
    FORWARD = "forward"  # the body goes upstream as it arrives
    INSPECT = "inspect"  # the body is buffered for the policy
    DISCARD = "discard"  # the request was refused; its body is dropped


class _Connection:
    """Relays one client connection to its backend connection under the tenant's policy."""

    def __init__(
        self,
        relay: Relay,
        client: anyio.abc.SocketStream,
        upstream: anyio.abc.SocketStream,
        reader: RequestReader,
        peer_uid: int | None,
    ) -> None:
        self._relay = relay
        self._client = client
        self._upstream = upstream
        self._reader = reader
        self._peer_uid = peer_uid
        self._out: list[bytes] = []  # for upstream, sent once per client read
        self._mode = _Mode.IDLE
        self._head: Head | None = None
        self._plan = _OPEN
        self._policy: TenantPolicy | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._exchange: Exchange | None = None
        self.linger = False  # the client gets no more answers; read its leftovers, then close

    # -- request side ---------------------------------------------------------------------
    async def pump_requests(self, scope: anyio.CancelScope) -> None:
        """Relay requests until the client is done; sets ``linger`` after a closing answer."""
        try:
            await self._read_requests()
        except _Close:
            self.linger = True
            scope.cancel()
        except _STREAM_ERRORS:
            scope.cancel()

    async def _read_requests(self) -> None:
        while True:
            try:
                data = await self._client.receive(_READ)
            except _STREAM_ERRORS:
                break
            events, error = self._reader.feed(data)
            for event in events:
                await self._on_event(event)
            await self._flush()
            if error is not None:
                await self._bad_request(error)
        # The client has sent all it will; the response may still be on its way.
        try:
            await self._upstream.send_eof()
        except (*_STREAM_ERRORS, OSError):
            pass

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, Head):
            await self._on_head(event)
        elif event is END:
            await self._on_end()
        elif self._mode is _Mode.FORWARD:
            await self._forward_body(event)
        elif self._mode is _Mode.INSPECT:
            await self._buffer_body(event)

    async def _on_head(self, head: Head) -> None:
        await self._flush()
        await self._wait_idle()
        self._head = head
        self._policy = policy = self._relay.current_policy()
        decision = _OPEN if policy is None else policy.check_head(head.method, head.target)
        if isinstance(decision, Refusal):
            await self._refuse(decision, pending=head.body_pending)
            return
        self._plan, self._size = decision, 0
        limit = policy.max_body_bytes if policy is not None and decision.inspect else None
        limit = decision.body_limit if decision.body_limit is not None else limit
        if limit is not None and (head.length or 0) > limit:
            await self._refuse(self._too_large(limit), pending=True)
        elif decision.inspect:
            self._mode, self._body = _Mode.INSPECT, []
            if head.expects_continue:
                await self._client.send(_CONTINUE)
        else:
            self._mode = _Mode.FORWARD
            self._begin_exchange(head, decision)
            self._out.append(head.encode())

    async def _forward_body(self, data: bytes) -> None:
        assert self._head is not None
        self._size += len(data)
        if self._plan.body_limit is not None and self._size > self._plan.body_limit:
            await self._abort_upload(self._plan.body_limit)
        self._out.append(b"%x\r\n%s\r\n" % (len(data), data) if self._head.chunked else data)

    async def _buffer_body(self, data: bytes) -> None:
        assert self._policy is not None
        self._size += len(data)
        if self._size > self._policy.max_body_bytes:
            self._body = []
            await self._refuse(self._too_large(self._policy.max_body_bytes), pending=True)
            return
        self._body.append(data)

    async def _on_end(self) -> None:
        head, mode = self._head, self._mode
        self._mode = _Mode.IDLE
        assert head is not None
        if mode is _Mode.FORWARD and head.chunked:
            self._out.append(b"0\r\n\r\n")
        elif mode is _Mode.INSPECT:
            assert self._policy is not None
            body, self._body = b"".join(self._body), []
            if refusal := self._policy.check_body(self._plan, body):
                await self._refuse(refusal, pending=False)
                return
            self._begin_exchange(head, self._plan)
            self._out += [head.encode(drop_expect=True), head.frame(body)]

    def _begin_exchange(self, head: Head, plan: Plan) -> None:
        if plan.listing is not None and head.method == "GET" and self._policy is not None:
            self._exchange = ListingExchange(self._policy, plan.listing)
        else:
            self._exchange = Exchange(head_only=head.method == "HEAD")
        self._relay._in_flight += 1

    async def _wait_idle(self) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.finished:
            if exchange.done is None:
                exchange.done = anyio.Event()
            await exchange.done.wait()

    async def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            await self._upstream.send(data)

    # -- refusals ---------------------------------------------------------------------------
    def _too_large(self, limit: int) -> Refusal:
        assert self._head is not None and self._policy is not None
        key = "max_blob_bytes" if self._plan.body_limit is not None else "max_body_bytes"
        return Refusal(
            413,
            Rule.TOO_LARGE,
            self._policy.tenant,
            f"{self._head.label}: the request body is larger than {limit} bytes "
            f"(tenants.{self._policy.tenant}.policy.{key}); send less, or an "
            "operator can raise the limit",
        )

    async def _refuse(self, refusal: Refusal, *, pending: bool) -> None:
        """Answer ``refusal`` in place of the server; raise ``_Close`` if the body must go."""
        head = self._head
        assert head is not None
        self._mode = _Mode.DISCARD if pending else _Mode.IDLE
        self._note_refusal(refusal, head)
        # Reading and dropping a small rest keeps the connection; a large one is not worth it.
        big = head.chunked or (head.length or 0) > _DISCARD_LIMIT or head.expects_continue
        close = not head.keep_alive or (pending and big)
        answer = error_response(
            refusal.status, refusal.message, close=close, head_only=head.method == "HEAD"
        )
        await self._client.send(answer)
        if close:
            raise _Close

    def _note_refusal(self, refusal: Refusal, head: Head) -> None:
        POLICY_REFUSALS.labels(refusal.tenant, str(refusal.rule)).inc()
        log.warning(
            "tenant %s: refused %s from uid %s (rule %s): %s",
            refusal.tenant,
            head.label,
            self._peer_uid,
            refusal.rule,
            refusal.reason,
            extra={"tenant": refusal.tenant, "rule": str(refusal.rule), "peer_uid": self._peer_uid},
        )

    async def _abort_upload(self, limit: int) -> None:
        """A streamed upload went past its limit: cut it off upstream and tell the client."""
        assert self._head is not None and self._exchange is not None
        exchange = self._exchange
        exchange.abandoned = True
        refusal = self._too_large(limit)
        self._note_refusal(refusal, self._head)
        if not exchange.responded:
            await self._client.send(error_response(refusal.status, refusal.message))
        raise _Close  # which closes the upstream connection: the server sees a cut body

    async def _bad_request(self, error: Exception) -> None:
        """The client's bytes are not HTTP: answer 400 after what it asked before, and close."""
        name = self._relay.tenant
        log.warning(
            "tenant %s: bad request from uid %s (%s); closing the connection",
            name,
            self._peer_uid,
            error,
            extra={"tenant": name, "peer_uid": self._peer_uid},
        )
        exchange = self._exchange
        if self._mode is _Mode.IDLE:
            await self._wait_idle()  # complete requests before the garbage get their answers
        elif exchange is not None and not exchange.finished:
            # The broken request is half sent: its answer will never be whole.
            exchange.abandoned = True
            if exchange.responded:
                raise _Close
        await self._client.send(error_response(400, f"tenant {name}: bad request: {error}"))
        raise _Close

    # -- response side ----------------------------------------------------------------------
    async def pump_responses(self, scope: anyio.CancelScope) -> None:
        """Copy the backend's bytes to the client, marking where each response ends."""
        try:
            while True:
                data = await self._upstream.receive(_READ_UPSTREAM)
                exchange = self._exchange
                if exchange is None or exchange.finished:
                    self._unsolicited(data)
                    return
                out = exchange.feed(data)
                if out and not exchange.abandoned:
                    exchange.responded = True
                    await self._client.send(out)
                if exchange.complete:
                    self._finish(exchange)
        except ListingTooLarge:
            name = self._relay.tenant
            await self._client.send(
                error_response(
                    502,
                    f"tenant {name}: the model list is larger than {LISTING_LIMIT} bytes and "
                    "cannot be filtered by the policy",
                )
            )
        except _STREAM_ERRORS:
            pass
        finally:
            scope.cancel()

    def _unsolicited(self, data: bytes) -> None:
        # Passing these on could interleave with a refusal being sent; the stream is broken.
        name = self._relay.tenant
        log.warning(
            "tenant %s: the server sent %d bytes no request asked for (%r); closing "
            "the client's connection",
            name,
            len(data),
            data[:60],
            extra={"tenant": name},
        )

    def _finish(self, exchange: Exchange) -> None:
        if not exchange.finished:
            exchange.finished = True
            self._relay._in_flight -= 1
            if exchange.done is not None:
                exchange.done.set()

    def close(self) -> None:
        """Account for a response that will never complete."""
        if self._exchange is not None:
            self._finish(self._exchange)


class Relay:
    """Accepts clients on a tenant's socket and relays them to its backend under its policy.

    ``policy`` returns the tenant's current policy for each request (None: relay everything,
    as before policies existed); see ``supervisor.policy.PolicySource``.
    """

    def __init__(
        self,
        gate: ReadinessGate,
        connect_backend: Callable[[], Awaitable[anyio.abc.SocketStream]],
        connect_wait_s: Callable[[], float],
        policy: Callable[[], TenantPolicy | None] | None = None,
    ) -> None:
        self._gate = gate
        self._connect_backend = connect_backend
        self._connect_wait_s = connect_wait_s
        self._policy = policy
        self._in_flight = 0

    @property
    def tenant(self) -> str:
        return self._gate.name

    def current_policy(self) -> TenantPolicy | None:
        return self._policy() if self._policy is not None else None

    def requests_in_flight(self) -> int:
        """Requests forwarded to the backend whose response has not been passed on yet."""
        return self._in_flight

    async def serve(self, sock: socket.socket) -> None:
        """Serve clients on the listening ``sock`` until cancelled; the socket stays open."""
        listener = await anyio.abc.SocketListener.from_socket(sock)
        async with anyio.create_task_group() as tg:
            while True:
                client = await listener.accept()
                tg.start_soon(self._handle_safely, client)

    async def _handle_safely(self, client: anyio.abc.SocketStream) -> None:
        """One connection's failure must not end the relay for every other client."""
        try:
            await self._handle(client)
        except Exception:
            log.exception(
                "tenant %s: relaying a connection failed; closed it (other connections go on)",
                self.tenant,
                extra={"tenant": self.tenant},
            )

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            reader = RequestReader()
            if not await self._gate.wait_ready(self._connect_wait_s()):
                await self._refuse_unready(client, reader)
                return
            try:
                upstream = await self._connect_backend()
            except OSError as exc:
                message = f"tenant {self.tenant}: backend unreachable ({exc.strerror or exc})"
                await self._refuse_unready(client, reader, message)
                return
            conn = _Connection(self, client, upstream, reader, _peer_uid(client))
            try:
                async with upstream, anyio.create_task_group() as tg:
                    tg.start_soon(conn.pump_responses, tg.cancel_scope)
                    await conn.pump_requests(tg.cancel_scope)
            finally:
                conn.close()
            if conn.linger:
                await _linger(client)

    async def _refuse_unready(
        self, client: anyio.abc.SocketStream, reader: RequestReader, message: str | None = None
    ) -> None:
        """Read the request head (briefly) so the client sees the answer, then send 503."""
        with anyio.move_on_after(_HEAD_TIMEOUT_S):
            while not reader.head_seen:
                try:
                    _, error = reader.feed(await client.receive(_READ))
                except _STREAM_ERRORS:
                    break
                if error is not None:
                    break
        state = self._gate.describe_state()
        text = message or f"tenant {self.tenant} is not ready (state {state})"
        await _send_quietly(client, error_response(503, text))


def _peer_uid(client: anyio.abc.SocketStream) -> int | None:
    try:
        return peer_credentials(client.extra(anyio.abc.SocketAttribute.raw_socket))[1]
    except (OSError, anyio.TypedAttributeLookupError):
        return None


async def _linger(client: anyio.abc.SocketStream) -> None:
    """Half-close, then drop what the client still sends for a while, so that it reads our
    answer instead of a reset caused by unread data."""
    with anyio.move_on_after(_LINGER_S):
        try:
            await client.send_eof()
            while await client.receive(_READ):
                pass
        except (*_STREAM_ERRORS, OSError):
            pass


async def _send_quietly(stream: anyio.abc.SocketStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (*_STREAM_ERRORS, OSError):
        pass
