"""Every process started for a tenant: tracked while it runs, recorded on disk, ended for good.

Ollama's runners share the server's process group, but a runner (or anything it starts) may
call ``setsid`` and leave the group, and a runner outlives a SIGKILLed server. So the daemon is a
child subreaper (orphans come back to it), observes the server's descendants every probe period,
and records them with their start times in ``<state_dir>/run/<tenant>.json``. A stop ends the
group and every recorded process. A daemon that starts after its predecessor was killed reads the
record and ends what is left — but only processes whose uid and start time match the record, so
a pid reused by an unrelated process is never signalled.

A runner that called ``setsid`` less than one observation before the old daemon was killed is in
neither the record nor the recorded group. It still runs with the tenant's uid, carries the
tenant's store (``OLLAMA_MODELS=<models_dir>``, inherited from the server) in its environment, and
started before the new daemon did; those three together mark it as a leftover too.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_START_TOLERANCE_S = 0.05

# Pids of running servers. asyncio waits for these itself, so the orphan reaper must leave
# them alone, and they are never anyone's orphans.
SERVER_PIDS: set[int] = set()


@dataclass(frozen=True)
class ProcRef:
    """A process identified by pid *and* start time (a bare pid can be reused)."""

    pid: int
    start: float

    def matches(self, proc: psutil.Process) -> bool:
        try:
            return abs(proc.create_time() - self.start) < _START_TOLERANCE_S
        except psutil.Error:
            return False


def become_subreaper() -> None:
    """Make orphaned descendants re-parent to this process instead of init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("janus-supervisord: cannot become a child subreaper (errno %d); processes "
                    "that leave a tenant's process group may escape supervision",
                    ctypes.get_errno())


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc/PID/task/*/children (no scan of every process).

    Falls back to psutil's full scan on kernels without CONFIG_PROC_CHILDREN.
    """
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    try:
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(k) for k in f.read().split())
    except FileNotFoundError:
        try:
            return [p.pid for p in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    except OSError:
        pass
    return kids


def own_children() -> list[int]:
    """The daemon's children: servers are forked by the event-loop (main) thread, and orphans
    re-parent to the main thread of a subreaper, so its list is the only one to read."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(k) for k in f.read().split()]
    except FileNotFoundError:
        return children_of(pid)
    except OSError:
        return []


def descendants_of(pid: int) -> list[int]:
    """Every descendant of ``pid``, breadth first."""
    found: list[int] = []
    queue = children_of(pid)
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children_of(child))
    return found


def ref_of(pid: int) -> ProcRef | None:
    try:
        return ProcRef(pid, psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def store_marker(models_dir: Path) -> bytes:
    """The environment entry every process of a tenant's server inherits: its store."""
    return os.fsencode(f"OLLAMA_MODELS={models_dir}")


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


def reap_orphans() -> None:
    """Collect exit statuses of orphans re-parented to us (not the servers asyncio waits for)."""
    for pid in own_children():
        if pid not in SERVER_PIDS and _is_zombie(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


class ProcessTracker:
    """The processes of one server instance, persisted to ``record`` when it changes."""

    def __init__(self, server_pid: int, uid: int, models_dir: Path, record: Path | None) -> None:
        self.server = ref_of(server_pid) or ProcRef(server_pid, time.time())
        self.pgid = server_pid
        self.uid = uid
        self.known: dict[int, ProcRef] = {server_pid: self.server}
        self._marker = store_marker(models_dir)
        self._record = record
        self._save()

    def observe(self) -> None:
        """Add the server's current descendants and orphans that carry its store in their env."""
        found = descendants_of(self.server.pid) if self._server_alive() else []
        for pid in own_children():
            if pid in self.known or pid in SERVER_PIDS:
                continue
            if _environ_has(pid, self._marker):
                found.append(pid)
        changed = False
        for pid in found:
            if pid not in self.known and (ref := ref_of(pid)) is not None:
                self.known[pid] = ref
                changed = True
        if changed:
            self._save()

    def _server_alive(self) -> bool:
        # A server the daemon spawned is its own child: its pid cannot be reused before
        # asyncio has reaped it, and SERVER_PIDS drops it at that moment. That check is free;
        # anything else is checked by start time.
        if self.server.pid in SERVER_PIDS:
            return True
        try:
            return self.server.matches(psutil.Process(self.server.pid))
        except psutil.Error:
            return False

    def survivors(self) -> list[psutil.Process]:
        """Live processes of this instance: recorded ones and current group members."""
        self.observe()
        alive = []
        for ref in self.known.values():
            try:
                proc = psutil.Process(ref.pid)
            except psutil.Error:
                continue
            if ref.matches(proc) and _live(proc):
                alive.append(proc)
        return alive

    def kill_survivors(self) -> int:
        """SIGKILL every surviving process of this instance; returns how many were signalled."""
        survivors = self.survivors()
        for proc in survivors:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        return len(survivors)

    def forget(self) -> None:
        """The instance is gone: drop the on-disk record."""
        if self._record is not None:
            self._record.unlink(missing_ok=True)

    def _save(self) -> None:
        if self._record is None:
            return
        data = {
            "uid": self.uid,
            "pgid": self.pgid,
            "server": [self.server.pid, self.server.start],
            "known": [[r.pid, r.start] for r in self.known.values()],
            "marker": os.fsdecode(self._marker),
        }
        tmp = self._record.with_suffix(".tmp")
        try:
            self._record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._record)
        except OSError as exc:
            log.warning("cannot record tenant processes in %s (%s); a killed daemon's leftovers "
                        "may then go unnoticed", self._record, exc.strerror)


def _own_start() -> float:
    return psutil.Process(os.getpid()).create_time()


def _recorded_survivors(data: dict[str, object], markers: set[bytes],
                        started_before: float) -> list[psutil.Process]:
    uid = int(data["uid"])  # type: ignore[call-overload]
    pgid = int(data["pgid"])  # type: ignore[call-overload]
    server_start = float(data["server"][1])  # type: ignore[index]
    known = data["known"]
    refs = {int(p): ProcRef(int(p), float(s)) for p, s in known}  # type: ignore[attr-defined]
    found = []
    for proc in psutil.process_iter(["uids", "create_time"]):
        try:
            if proc.info["uids"].real != uid or not _live(proc):
                continue
            created = proc.info["create_time"]
            ref = refs.get(proc.pid)
            in_group = os.getpgid(proc.pid) == pgid and created >= server_start
        except (psutil.Error, OSError, AttributeError, TypeError):
            continue
        recorded = (ref is not None and ref.matches(proc)) or in_group
        # A runner that left the group before it was recorded: only the store marks it.
        if recorded or (created < started_before
                        and any(_environ_has(proc.pid, m) for m in markers)):
            found.append(proc)
    return found


def end_leftovers(tenant: str, record: Path, models_dir: Path | None = None,
                  timeout_s: float = 5.0, started_before: float | None = None) -> list[int]:
    """End what a previous daemon left running for ``tenant``; returns the pids killed.

    Only processes with the recorded uid are signalled, and of those only the ones whose start
    time matches a recorded process, that are in the recorded process group and started after
    the recorded server, or that started before this daemon (``started_before``, by default this
    process's start time) and carry the tenant's store marker (``OLLAMA_MODELS=<models_dir>``,
    from the record and from ``models_dir``) in their environment. Nothing happens without a
    record: a daemon that stopped the tenant cleanly removed it.
    """
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("tenant %s: unreadable process record %s (%s); ignoring it", tenant, record,
                    exc, extra={"tenant": tenant})
        return []
    markers = {store_marker(models_dir)} if models_dir is not None else set()
    if isinstance(data.get("marker"), str):
        markers.add(os.fsencode(data["marker"]))
    survivors = _recorded_survivors(data, markers,
                                    _own_start() if started_before is None else started_before)
    for proc in survivors:
        log.warning("tenant %s: ending pid %d (%s) left by a previous daemon", tenant, proc.pid,
                    _name(proc), extra={"tenant": tenant})
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(survivors, timeout=timeout_s)
    for proc in alive:
        log.error("tenant %s: pid %d survived SIGKILL for %gs", tenant, proc.pid, timeout_s,
                  extra={"tenant": tenant})
    record.unlink(missing_ok=True)
    return [p.pid for p in survivors]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"
