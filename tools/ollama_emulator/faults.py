"""Fault knobs (``JANUS_EMU_*`` environment variables) and the startup dump.

See the package docstring for the list. Times are seconds since the process started.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass

from .envconfig import env_bool, env_var
from .slogtext import write_line

DEFAULT_VERSION = "0.12.0"
_START = time.monotonic()


def _float_env(name: str, default: float | None) -> float | None:
    value = env_var(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        return default


@dataclass(frozen=True)
class Knobs:
    """All fault knobs, read once from the environment."""

    startup_delay_s: float
    crash_after_s: float | None
    crash_code: int
    wedge_after_s: float | None
    hang_after_s: float | None
    ignore_sigterm: bool
    exit_fast: bool
    fail_create: str
    runners_at_start: int
    dump_path: str
    version: str

    @classmethod
    def from_env(cls) -> Knobs:
        """Read every ``JANUS_EMU_*`` variable (bad numbers fall back to the defaults)."""
        return cls(
            startup_delay_s=_float_env("JANUS_EMU_STARTUP_DELAY_S", 0.05) or 0.0,
            crash_after_s=_float_env("JANUS_EMU_CRASH_AFTER_S", None),
            crash_code=int(_float_env("JANUS_EMU_CRASH_CODE", 1) or 0),
            wedge_after_s=_float_env("JANUS_EMU_WEDGE_AFTER_S", None),
            hang_after_s=_float_env("JANUS_EMU_HANG_AFTER_S", None),
            ignore_sigterm=env_bool("JANUS_EMU_IGNORE_SIGTERM"),
            exit_fast=env_bool("JANUS_EMU_EXIT_FAST"),
            fail_create=env_var("JANUS_EMU_FAIL_CREATE"),
            runners_at_start=int(_float_env("JANUS_EMU_RUNNERS_AT_START", 0) or 0),
            dump_path=env_var("JANUS_EMU_DUMP"),
            version=env_var("JANUS_EMU_VERSION") or DEFAULT_VERSION,
        )

    def wedged(self) -> bool:
        """True once ``JANUS_EMU_WEDGE_AFTER_S`` has passed (only ``GET /`` answers)."""
        return self.wedge_after_s is not None and _uptime_s() >= self.wedge_after_s

    def hung(self) -> bool:
        """True once ``JANUS_EMU_HANG_AFTER_S`` has passed (nothing answers)."""
        return self.hang_after_s is not None and _uptime_s() >= self.hang_after_s


def _uptime_s() -> float:
    return time.monotonic() - _START


def arm_crash(knobs: Knobs) -> None:
    """Exit with ``crash_code`` at ``crash_after_s`` without any cleanup (runners linger)."""
    crash_after_s = knobs.crash_after_s
    if crash_after_s is None:
        return

    def crash() -> None:
        time.sleep(max(0.0, crash_after_s - _uptime_s()))
        write_line(
            sys.stderr,
            f"janus-emulator: crashing with exit status {knobs.crash_code} "
            f"(JANUS_EMU_CRASH_AFTER_S={knobs.crash_after_s})",
        )
        os._exit(knobs.crash_code)

    threading.Thread(target=crash, name="crash", daemon=True).start()


def _groups() -> list[int]:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    return sorted(os.getgroups())


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_dump(path: str, argv: list[str]) -> None:
    """Write environment, ids, groups, cwd and umask as JSON to ``path`` (0644 less umask)."""
    try:
        cwd = os.getcwd()
    except OSError as exc:
        cwd = f"<{exc.strerror}>"
    data = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "egid": os.getegid(),
        "groups": _groups(),
        "cwd": cwd,
        "umask": f"{_umask():04o}",
        "argv": argv,
        "env": dict(sorted(os.environ.items())),
    }
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(temp, path)
