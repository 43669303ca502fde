"""The relay's data path for one client connection, driven by asyncio transport callbacks.

The client's unix socket and the backend's TCP socket are asyncio transports; this module
reacts to what each delivers (``data_received``) and writes to the other at once. A plain
request and its response so cost no task switch and no change to the event loop's epoll set
(anyio's unix socket stream adds and removes a reader on every receive).

Flow control: when one side's write buffer passes its high-water mark, the other side is not
read until it drains, so a large upload or download moves through a bounded buffer. Requests
are handled as they are parsed; a request head that arrives while the previous response is
still coming is held, with the rest of what the client sent, and the client is not read until
that response is complete. Request heads are bounded in size and in time, and idle connections
closed (``relay_http.MAX_HEAD_BYTES``, ``relay_timers``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from time import monotonic
from typing import cast

import anyio

from supervisor import relay_timers
from supervisor.metrics import POLICY_REFUSALS
from supervisor.policy import Plan, Refusal, Rule, TenantPolicy
from supervisor.relay_backend import HELD, STARTING, BackendSide
from supervisor.relay_http import (
    END,
    LISTING_LIMIT,
    Event,
    Exchange,
    Head,
    HeadTooLarge,
    ListingExchange,
    ListingTooLarge,
    RequestReader,
    error_response,
)
from supervisor.relay_state import OPEN_PLAN, RelayState
from supervisor.relay_timers import Deadlines

log = logging.getLogger(__name__)

_DISCARD_LIMIT = 64 << 10  # a refused body up to this size is read and dropped; larger: close
_LINGER_S = 2.0  # after a refusal that closes, read the client's leftovers this long
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_EVENTS: list[Event] = []


class _Close(Exception):
    """The client connection must end after what was sent; read its leftovers briefly."""


class _Mode(enum.Enum):
    IDLE = "idle"  # between requests
    FORWARD = "forward"  # the body goes upstream as it arrives
    INSPECT = "inspect"  # the body is buffered for the policy
    DISCARD = "discard"  # the request was refused; its body is dropped


class Connection(asyncio.Protocol):
    """Relays one client connection to its backend connection under the tenant's policy.

    It is the protocol of the client's transport; ``relay`` sets both transports up and
    returns once both are closed.
    """

    def __init__(self, state: RelayState, reader: RequestReader, peer_uid: int | None) -> None:
        self._state = state
        self._reader = reader
        self._peer_uid = peer_uid
        self._client: asyncio.Transport
        self._backend: asyncio.Transport
        self._transports: list[asyncio.Transport] = []
        self._lost = 0
        self._lost_event = anyio.Event()
        self._holds = STARTING
        self._client_eof = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._events, self._next = _NO_EVENTS, 0  # parsed, and how many were handled
        self._error: Exception | None = None  # the parse error after those events
        self._out: list[bytes] = []  # for upstream, written once per client read
        self._mode = _Mode.IDLE
        self._head: Head | None = None
        self._plan = OPEN_PLAN
        self._policy: TenantPolicy | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._exchange: Exchange | None = None
        self._deadlines = Deadlines(self)
        self.lingering = False  # the client gets no more answers; its leftovers are dropped

    # -- setting up and tearing down ------------------------------------------------------------
    async def relay(self, client: socket.socket, backend: socket.socket) -> None:
        """Relay between the two connected sockets until both are closed; on cancellation,
        close both at once."""
        loop = asyncio.get_running_loop()
        try:
            # Wrapping takes a loop iteration or two and blocks on nothing.
            with anyio.CancelScope(shield=True):
                await loop.connect_accepted_socket(lambda: BackendSide(self), backend)
                await loop.connect_accepted_socket(lambda: self, client)
            if self._lost:
                self._abort()
            else:
                self.release_client(STARTING)
                self._backend.resume_reading()
                self._deadlines.start()
            await self._wait_lost()
        finally:
            self._abort()
            with anyio.CancelScope(shield=True):
                await self._wait_lost()

    async def _wait_lost(self) -> None:
        while self._lost < len(self._transports):
            self._lost_event = anyio.Event()
            await self._lost_event.wait()

    def _lost_one(self) -> None:
        self._lost += 1
        self._lost_event.set()

    def _abort(self) -> None:
        self._finish()
        for transport in self._transports:
            transport.abort()

    def _fail(self) -> None:
        name = self._state.tenant
        log.exception(
            "tenant %s: relaying a connection failed; closed it (other connections go on)",
            name,
            extra={"tenant": name},
        )
        self._abort()

    # -- client transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = client = cast(asyncio.Transport, transport)
        self._transports.append(client)
        client.pause_reading()  # until the setup is complete

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        reader, deadlines = self._reader, self._deadlines
        deadlines.active_at = monotonic()
        try:
            self._events, self._error = reader.feed(data)
            if reader.receiving is not deadlines.head:
                deadlines.receiving(reader.receiving)
            self._next = 0
            self._run_events()
        except _Close:
            self._linger()
        except Exception:  # noqa: BLE001 - _fail logs it with its traceback
            self._fail()

    def eof_received(self) -> bool:
        if self.lingering:
            return False
        # The client has sent all it will; the response may still be on its way.
        self._client_eof = True
        if not self._events:
            self._backend.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.stop()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._abort()
        self._lost_one()

    def pause_writing(self) -> None:
        self._backend.pause_reading()

    def resume_writing(self) -> None:
        self._backend.resume_reading()

    def hold_client(self, reason: int) -> None:
        """Stop reading the client for ``reason`` (one of the bits in ``relay_backend``)."""
        if not self._holds and not self._client_eof:
            self._client.pause_reading()
        self._holds |= reason

    def release_client(self, reason: int) -> None:
        """``reason`` is gone; read the client again if nothing else holds it."""
        self._holds &= ~reason
        # After the client's EOF the transport has dropped its reader; resuming would re-add it.
        if not self._holds and not self._client_eof:
            self._client.resume_reading()

    # -- request side ---------------------------------------------------------------------------
    def _run_events(self) -> bool:
        """Handle the client's events in order; False when they wait for a response."""
        events = self._events
        while self._next < len(events):
            event = events[self._next]
            if not isinstance(event, Head):
                self._next += 1
                self._on_event(event)
            elif self._answering():
                return self._hold()
            else:
                self._next += 1
                self._on_head(event)
        self._flush()
        if self._error is not None:
            if self._mode is _Mode.IDLE and self._answering():
                return self._hold()  # complete requests before the garbage get their answers
            self._bad_request(self._error)
        self._events = _NO_EVENTS
        if self._client_eof:
            self._backend.write_eof()
        return True

    def _answering(self) -> bool:
        exchange = self._exchange
        return exchange is not None and not exchange.finished

    def busy(self) -> bool:
        """A request body is being received or a response is outstanding (for the timers)."""
        return self._mode is not _Mode.IDLE or self._answering()

    def _hold(self) -> bool:
        self._flush()
        self.hold_client(HELD)
        return False

    def _release_held(self) -> None:
        """The response the held events waited for is complete: go on with them."""
        try:
            if self._run_events():
                self.release_client(HELD)
        except _Close:
            self._linger()

    def _on_event(self, event: bytes | None) -> None:
        if event is END:
            self._on_end()
        elif self._mode is _Mode.FORWARD:
            self._forward_body(event)
        elif self._mode is _Mode.INSPECT:
            self._buffer_body(event)

    def _on_head(self, head: Head) -> None:
        policy, decision = self._state.decide(head)
        self._head, self._policy = head, policy
        if isinstance(decision, Refusal):
            self._refuse(decision, pending=head.body_pending)
            return
        self._plan, self._size = decision, 0
        limit = policy.max_body_bytes if policy is not None and decision.inspect else None
        limit = decision.body_limit if decision.body_limit is not None else limit
        if limit is not None and (head.length or 0) > limit:
            self._refuse(self._too_large(limit), pending=True)
        elif decision.inspect:
            self._mode, self._body = _Mode.INSPECT, []
            if head.expects_continue:
                self._client.write(_CONTINUE)
        else:
            self._mode = _Mode.FORWARD
            self._begin_exchange(head, decision)
            self._out.append(head.encode())

    def _forward_body(self, data: bytes) -> None:
        assert self._head is not None
        self._size += len(data)
        if self._plan.body_limit is not None and self._size > self._plan.body_limit:
            self._abort_upload(self._plan.body_limit)
        self._out.append(b"%x\r\n%s\r\n" % (len(data), data) if self._head.chunked else data)

    def _buffer_body(self, data: bytes) -> None:
        assert self._policy is not None
        self._size += len(data)
        if self._size > self._policy.max_body_bytes:
            self._body = []
            self._refuse(self._too_large(self._policy.max_body_bytes), pending=True)
            return
        self._body.append(data)

    def _on_end(self) -> None:
        head, mode = self._head, self._mode
        self._mode = _Mode.IDLE
        assert head is not None
        if mode is _Mode.FORWARD and head.chunked:
            self._out.append(b"0\r\n\r\n")
        elif mode is _Mode.INSPECT:
            assert self._policy is not None
            body, self._body = b"".join(self._body), []
            if refusal := self._policy.check_body(self._plan, body):
                self._refuse(refusal, pending=False)
                return
            self._begin_exchange(head, self._plan)
            self._out += [head.encode(drop_expect=True), head.frame(body)]

    def _begin_exchange(self, head: Head, plan: Plan) -> None:
        exchange = self._exchange
        if plan.listing is not None and head.method == "GET" and self._policy is not None:
            self._exchange = ListingExchange(self._policy, plan.listing)
        elif exchange is not None and head.method != "HEAD" and exchange.reusable():
            exchange.restart()
        else:
            self._exchange = Exchange(head_only=head.method == "HEAD")
        self._state.in_flight += 1

    def _flush(self) -> None:
        out = self._out
        if out:
            self._backend.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # -- refusals -------------------------------------------------------------------------------
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

    def _refuse(self, refusal: Refusal, *, pending: bool) -> None:
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
        self._client.write(answer)
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

    def _abort_upload(self, limit: int) -> None:
        """A streamed upload went past its limit: cut it off upstream and tell the client."""
        assert self._head is not None and self._exchange is not None
        exchange = self._exchange
        exchange.abandoned = True
        refusal = self._too_large(limit)
        self._note_refusal(refusal, self._head)
        if not exchange.responded:
            self._client.write(error_response(refusal.status, refusal.message))
        raise _Close  # which aborts the backend connection: the server sees a cut body

    def _bad_request(self, error: Exception) -> None:
        """The client's bytes are not HTTP, or its head is too large: answer 400 (431) after
        what it asked before, and close."""
        name = self._state.tenant
        too_large = isinstance(error, HeadTooLarge)
        status, what = (431, "request head too large") if too_large else (400, "bad request")
        self._warn(f"{what} from uid %s (%s); closing the connection", error)
        exchange = self._exchange
        if self._mode is not _Mode.IDLE and exchange is not None and not exchange.finished:
            # The broken request is half sent: its answer will never be whole.
            exchange.abandoned = True
            if exchange.responded:
                raise _Close
        self._client.write(error_response(status, f"tenant {name}: {what}: {error}"))
        raise _Close

    def _warn(self, text: str, *args: object) -> None:
        name = self._state.tenant
        extra = {"tenant": name, "peer_uid": self._peer_uid}
        log.warning(f"tenant %s: {text}", name, self._peer_uid, *args, extra=extra)

    def head_timed_out(self) -> None:
        """A request head did not arrive in time: answer 408 and close."""
        limit = relay_timers.HEAD_TIMEOUT_S
        self._warn(f"request head from uid %s not complete within {limit:g} s; closing")
        text = f"tenant {self._state.tenant}: the request head did not arrive within {limit:g} s"
        self._client.write(error_response(408, text))
        self._linger()

    def idle_timed_out(self) -> None:
        """Nothing in progress and nothing received for a while: close, as servers do."""
        log.debug("tenant %s: closing an idle connection", self._state.tenant)
        self._deadlines.stop()
        self.backend_ended()

    def _linger(self) -> None:
        """Drop the backend connection, half-close the client's, and read and drop what it
        still sends for a while, so that it reads our answer, not a reset for unread data."""
        self.lingering = True
        self._deadlines.stop()
        self._events = _NO_EVENTS
        self._abort_backend()
        client = self._client
        client.write_eof()  # once the answer is out
        if self._client_eof:
            client.close()
            return
        if self._holds:
            self._holds = 0
            client.resume_reading()
        self._linger_timer = asyncio.get_running_loop().call_later(_LINGER_S, client.abort)

    def _abort_backend(self) -> None:
        self._finish()
        self._backend.abort()

    # -- response side --------------------------------------------------------------------------
    def backend_made(self, transport: asyncio.Transport) -> None:
        """The backend transport exists; it is read once the client's is set up too, so that
        what it sends finds the client's transport."""
        self._backend = transport
        self._transports.append(transport)
        transport.pause_reading()

    def response_received(self, data: bytes) -> None:
        """Copy the backend's bytes to the client, marking where each response ends."""
        exchange = self._exchange
        try:
            if exchange is None or exchange.finished:
                self._unsolicited(data)
                return
            out = exchange.feed(data)
            if out and not exchange.abandoned:
                exchange.responded = True
                self._client.write(out)
            if exchange.complete:
                self._finish()
                if self._holds & HELD:
                    self._release_held()
        except ListingTooLarge:
            self._listing_too_large()
        except Exception:  # noqa: BLE001 - _fail logs it with its traceback
            self._fail()

    def backend_ended(self) -> None:
        """The backend closed its side: the client's connection ends after what was sent."""
        if not self.lingering:
            self._abort_backend()
            self._client.close()

    def backend_lost(self) -> None:
        self.backend_ended()
        self._lost_one()

    def _listing_too_large(self) -> None:
        name = self._state.tenant
        text = (
            f"tenant {name}: the model list is larger than {LISTING_LIMIT} bytes and "
            "cannot be filtered by the policy"
        )
        self._client.write(error_response(502, text))
        self.backend_ended()

    def _unsolicited(self, data: bytes) -> None:
        # Passing these on could interleave with a refusal being sent; the stream is broken.
        name = self._state.tenant
        log.warning(
            "tenant %s: the server sent %d bytes no request asked for (%r); closing "
            "the client's connection",
            name,
            len(data),
            data[:60],
            extra={"tenant": name},
        )
        self.backend_ended()

    def _finish(self) -> None:
        """The current response is passed on, or will never be: it is no longer in flight."""
        exchange = self._exchange
        if exchange is not None and not exchange.finished:
            exchange.finished = True
            self._state.in_flight -= 1
            self._deadlines.active_at = monotonic()
