"""Shared state of one running emulated server."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .faults import Knobs
from .sched import Scheduler
from .store import Store


@dataclass
class ServerState:
    """Everything request handlers need: store, runners, knobs and listener facts."""

    store: Store
    sched: Scheduler
    knobs: Knobs
    keep_alive_ns: int
    noprune: bool
    loopback_only: bool
    origins: list[str]
    stopping: threading.Event = field(default_factory=threading.Event)
