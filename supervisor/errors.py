"""Exceptions raised by janus-supervisor.

SupervisorError
 ├── ConfigError      the configuration file is invalid (carries every problem found)
 ├── SpawnError       a tenant's server could not be started (privileges, preflight, exec)
 ├── ProbeError       a probe of a tenant's backend failed
 ├── ProvisionError   a variant or base model could not be built
 └── ControlError     the control socket could not be served or reached

Messages say what failed, for which tenant, the offending value and what to do. Only
``daemon`` and ``cli`` turn these into exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class SupervisorError(Exception):
    """Base class of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file.

    ``location`` is the dotted field path (``tenants.dev.socket.mode``), ``line`` the 1-based
    line in ``file`` when it is known.
    """

    file: str
    location: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        loc = f" {self.location}:" if self.location else ""
        return f"{where}:{loc} {self.message}"


class ConfigError(SupervisorError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SpawnError(SupervisorError):
    """A tenant's server could not be started, including privilege and preflight failures."""


class ProbeError(SupervisorError):
    """A probe of a tenant's backend failed (timeout, refused, bad status)."""


class ProvisionError(SupervisorError):
    """A base model or variant could not be built in a tenant's store."""


class ControlError(SupervisorError):
    """The control socket could not be served or reached."""
