"""The daemon's task group as the ``Supervisor`` uses it after start-up.

Per-tenant tasks (relay, state watch) must be stoppable one by one when a reload removes a
tenant or re-binds its socket; actions started by a control request (reload, rebuild) must not
end half-way when the client goes away. Both run in the daemon's own task group, so a daemon
shutdown still cancels them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.abc

from supervisor.errors import SupervisorError

T = TypeVar("T")


class TaskHandle:
    """One task that can be stopped on its own; ``stop`` returns once it has ended."""

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None
        self.done = anyio.Event()

    async def run(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            with anyio.CancelScope() as self.scope:
                await fn()
        finally:
            self.done.set()

    async def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
        await self.done.wait()


class DaemonTasks:
    """Starts tasks in the daemon's task group ``tg``."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def start_soon(self, label: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A task that lives until the daemon stops (a tenant's supervision loop)."""
        self._tg.start_soon(fn, name=label)

    def start(self, label: str, fn: Callable[[], Awaitable[None]]) -> TaskHandle:
        """A task that can be stopped alone through the returned handle."""
        handle = TaskHandle()
        self._tg.start_soon(handle.run, fn, name=label)
        return handle

    async def detached(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` as a task of its own and wait for its result.

        Cancelling the caller (a client that left) does not cancel the action. Raises what the
        action raised, or ``SupervisorError`` when the daemon's shutdown cancelled it.
        """
        done = anyio.Event()
        outcome: list[T] = []
        failure: list[Exception] = []

        async def run() -> None:
            try:
                outcome.append(await action())
            except Exception as exc:  # noqa: BLE001 - handed over to the waiting caller
                failure.append(exc)
            finally:
                done.set()

        self._tg.start_soon(run, name="control action")
        await done.wait()
        if failure:
            raise failure[0]
        if not outcome:
            raise SupervisorError("janus-supervisord is shutting down; the action was cancelled")
        return outcome[0]
