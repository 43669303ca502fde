"""Where a tenant's server output goes: a per-tenant file, a ring for ``logs``, and stderr.

Each line of the server's stdout/stderr is written to ``<log_dir>/<tenant>.log`` (root-owned,
size-rotated), kept in an in-memory ring, and echoed to the daemon's stderr prefixed with the
tenant name so journald shows which team it came from. An unwritable log directory costs the file
only: the daemon warns once and keeps supervising.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

RING_LINES = 2000
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3


class TenantLog:
    """Collects one tenant's server output."""

    def __init__(self, tenant: str, log_dir: Path, *, echo: bool = True) -> None:
        self.tenant = tenant
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self._echo = echo
        self._file: logging.Handler | None = None
        path = log_dir / f"{tenant}.log"
        try:
            log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._file = logging.handlers.RotatingFileHandler(
                path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
            )
            self._file.setFormatter(logging.Formatter("%(message)s"))
        except OSError as exc:
            log.warning("tenant %s: cannot write log file %s (%s); keeping output in memory "
                        "and on stderr only", tenant, path, exc.strerror, extra={"tenant": tenant})

    def write(self, line: str) -> None:
        """Record one output line of the tenant's server."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        self.ring.append(f"{stamp} {line}")
        if self._file is not None:
            record = logging.LogRecord(self.tenant, logging.INFO, "", 0, f"{stamp} {line}",
                                       None, None)
            self._file.emit(record)
        if self._echo:
            sys.stderr.write(f"{self.tenant} | {line}\n")

    def note(self, message: str) -> None:
        """Record a line written by the daemon itself about this tenant (provisioning steps)."""
        self.write(f"[janus] {message}")

    def tail(self, lines: int) -> list[str]:
        return list(self.ring)[-lines:] if lines > 0 else []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
