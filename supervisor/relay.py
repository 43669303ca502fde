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

Clients are bounded: a request head (target and headers) over ``MAX_HEAD_BYTES`` (64 KiB) gets
431, one not complete ``HEAD_TIMEOUT_S`` (10 s) after its first byte gets 408, and a connection
idle for ``IDLE_TIMEOUT_S`` (300 s) is closed (``relay_timers``).

This module accepts connections and sets each one up (readiness, backend connection); the data
path itself runs on asyncio transport callbacks in ``relay_connection``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import anyio

from supervisor import relay_timers
from supervisor.policy import TenantPolicy
from supervisor.relay_connection import Connection
from supervisor.relay_http import RequestReader, error_response
from supervisor.relay_state import RelayState
from supervisor.sockets import peer_credentials

log = logging.getLogger(__name__)

_READ = 65536


class ReadinessGate(Protocol):
    """What the relay needs from a tenant."""

    name: str

    async def wait_ready(self, timeout_s: float) -> bool: ...

    def describe_state(self) -> str: ...


class Relay:
    """Accepts clients on a tenant's socket and relays them to its backend under its policy.

    ``connect_backend`` returns a connected non-blocking socket to the tenant's server (see
    ``Backend.connect_socket``) or raises ``OSError``. ``policy`` returns the tenant's current
    policy for each request (None: relay everything, as before policies existed); see
    ``supervisor.policy.PolicySource``.
    """

    def __init__(
        self,
        gate: ReadinessGate,
        connect_backend: Callable[[], Awaitable[socket.socket]],
        connect_wait_s: Callable[[], float],
        policy: Callable[[], TenantPolicy | None] | None = None,
    ) -> None:
        self._gate = gate
        self._connect_backend = connect_backend
        self._connect_wait_s = connect_wait_s
        self._state = RelayState(gate.name, policy or _no_policy)

    @property
    def tenant(self) -> str:
        return self._gate.name

    def current_policy(self) -> TenantPolicy | None:
        return self._state.policy()

    def requests_in_flight(self) -> int:
        """Requests forwarded to the backend whose response has not been passed on yet."""
        return self._state.in_flight

    async def serve(self, sock: socket.socket) -> None:
        """Serve clients on the listening ``sock`` until cancelled; the socket stays open.

        Cancelling closes every client connection and its backend connection.
        """
        async with anyio.create_task_group() as tg:
            while True:
                await anyio.wait_readable(sock)
                for client in _accept_waiting(sock):
                    tg.start_soon(self._handle_safely, client)

    async def _handle_safely(self, client: socket.socket) -> None:
        """One connection's failure must not end the relay for every other client."""
        try:
            await self._handle(client)
        except Exception:
            log.exception(
                "tenant %s: relaying a connection failed; closed it (other connections go on)",
                self.tenant,
                extra={"tenant": self.tenant},
            )
        finally:
            client.close()

    async def _handle(self, client: socket.socket) -> None:
        reader = RequestReader()
        if not await self._gate.wait_ready(self._connect_wait_s()):
            await self._refuse_unready(client, reader)
            return
        try:
            backend = await self._connect_backend()
        except OSError as exc:
            message = f"tenant {self.tenant}: backend unreachable ({exc.strerror or exc})"
            await self._refuse_unready(client, reader, message)
            return
        try:
            conn = Connection(self._state, reader, _peer_uid(client))
            await conn.relay(client, backend)
        finally:
            backend.close()

    async def _refuse_unready(
        self, client: socket.socket, reader: RequestReader, message: str | None = None
    ) -> None:
        """Read the request head (briefly) so the client sees the answer, then send 503."""
        loop = asyncio.get_running_loop()
        with anyio.move_on_after(relay_timers.HEAD_TIMEOUT_S):
            while not reader.head_seen:
                try:
                    data = await loop.sock_recv(client, _READ)
                except OSError:
                    break
                if not data or reader.feed(data)[1] is not None:
                    break
        state = self._gate.describe_state()
        text = message or f"tenant {self.tenant} is not ready (state {state})"
        try:
            await loop.sock_sendall(client, error_response(503, text))
        except OSError:
            pass


def _no_policy() -> TenantPolicy | None:
    return None


def _accept_waiting(sock: socket.socket) -> Iterator[socket.socket]:
    """The connections waiting on the listening ``sock``, as non-blocking sockets."""
    while True:
        try:
            client, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionAbortedError:
            continue  # gone before it was accepted
        client.setblocking(False)
        yield client


def _peer_uid(client: socket.socket) -> int | None:
    try:
        return peer_credentials(client)[1]
    except OSError:
        return None
